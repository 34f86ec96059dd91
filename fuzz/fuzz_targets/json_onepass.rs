//! Fuzz target: see `sluice::fuzz::json_onepass`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::fuzz::json_onepass(data);
});
