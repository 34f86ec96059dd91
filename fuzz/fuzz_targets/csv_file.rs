//! Fuzz target: see `sluice::fuzz::csv_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::fuzz::csv_file(data);
});
