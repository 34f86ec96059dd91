//! Fuzz target: see `sluice::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::fuzz::config(data);
});
