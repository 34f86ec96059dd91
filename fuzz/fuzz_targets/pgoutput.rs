//! Fuzz target: see `sluice::fuzz::pgoutput`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::fuzz::pgoutput(data);
});
