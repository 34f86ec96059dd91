//! Fuzz target: see `sluice::fuzz::avro_confluent`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice::fuzz::avro_confluent(data);
});
