//! Entry points for the fuzz targets in `fuzz/` and the test that replays their corpus: the
//! decoders of outside input that are not otherwise public. Not API; hidden from the docs.

use sluice_engine::connector::{Poll, Source as _, SourceItem};

use crate::file::{FileConnection, FileSource, FileSourceOptions};

pub use crate::http_source::fuzz_next_link as link_header;
pub use crate::postgres_cdc::fuzz_pgoutput as pgoutput;

/// Reads `data` as a CSV file (header line, then records) through the `file` source, in
/// `dir`; returns the records and the malformed lines it gave.
pub fn csv_file(dir: &std::path::Path, data: &[u8]) -> (usize, usize) {
    let path = dir.join("fuzz.csv");
    if std::fs::write(&path, data).is_err() {
        return (0, 0);
    }
    let conn = FileConnection { path: dir.to_owned() };
    let Ok(mut source) = FileSource::new(&conn, "fuzz.csv", FileSourceOptions::default()) else { return (0, 0) };
    futures::executor::block_on(async {
        let (mut records, mut malformed) = (0, 0);
        if source.open(None).await.is_err() {
            return (0, 0);
        }
        while let Ok(Poll::Items(items)) = source.poll(1000).await {
            for item in items {
                match item {
                    SourceItem::Record { .. } => records += 1,
                    SourceItem::Malformed { .. } => malformed += 1,
                    SourceItem::Checkpoint { .. } => {}
                }
            }
        }
        (records, malformed)
    })
}
