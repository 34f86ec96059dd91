//! Fuzz target: see `sluice::fuzz::link_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::fuzz::link_header(data);
});
