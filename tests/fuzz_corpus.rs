//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`, seeds and whatever `scripts/fuzz` kept)
//! through the same entry points the fuzz targets call, so an input that once crashed a decoder
//! keeps being tried in every test run. Each must return, not panic; each target's corpus must
//! be there (a missing one fails, it is not skipped).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 8] = [
    ("json_envelope", |d| {
        let _ = sluice::fuzz::json_envelope(d);
    }),
    ("json_row", |d| {
        let _ = sluice::fuzz::json_row(d);
    }),
    ("json_onepass", |d| {
        let _ = sluice::fuzz::json_onepass(d);
    }),
    ("avro_confluent", |d| {
        let _ = sluice::fuzz::avro_confluent(d);
    }),
    ("pgoutput", |d| {
        let _ = sluice::fuzz::pgoutput(d);
    }),
    ("csv_file", |d| {
        let _ = sluice::fuzz::csv_file(d);
    }),
    ("config_yaml", |d| {
        let _ = sluice::fuzz::config(d);
    }),
    ("link_header", |d| {
        let _ = sluice::fuzz::link_header(d);
    }),
];

#[test]
fn every_kept_fuzz_input_is_decoded_or_refused_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("the corpus of `{name}` ({}): {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let started = Instant::now();
            target(&data);
            // Generous (a debug build, a busy machine): a decoder that loops is what this catches.
            assert!(started.elapsed() < Duration::from_secs(10), "{}: took {:?}", path.display(), started.elapsed());
            n += 1;
        }
        assert!(n > 0, "the corpus of `{name}` is empty");
        total += n;
    }
    eprintln!("fuzz corpus: {total} inputs replayed");
}

#[test]
fn seeds_mean_what_they_say() {
    let seed = |t: &str, f: &str| {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(t).join(f)).unwrap()
    };
    assert_eq!(sluice::fuzz::json_envelope(&seed("json_envelope", "create")), (1, 0));
    assert_eq!(sluice::fuzz::json_envelope(&seed("json_envelope", "delete_and_bad")), (1, 1));
    // Taken by the one-pass decoder as rows and as envelopes; a fraction in an integer field
    // makes it step aside for the rows (in an envelope, `n` is no field of the envelope's).
    assert_eq!(sluice::fuzz::json_onepass(&seed("json_onepass", "rows")), (true, true));
    assert_eq!(sluice::fuzz::json_onepass(&seed("json_onepass", "fraction_in_int")), (false, true));
    assert!(sluice::fuzz::pgoutput(&seed("pgoutput", "begin")));
    assert_eq!(sluice::fuzz::config(&seed("config_yaml", "quickstart")), 0);
    assert_eq!(
        sluice::fuzz::link_header(&seed("link_header", "github")).as_deref(),
        Some("https://api.example/items?page=2")
    );
    let (records, malformed) = sluice::fuzz::csv_file(&seed("csv_file", "rows"));
    assert!(records >= 2 && malformed >= 1, "{records} records, {malformed} malformed");
}
