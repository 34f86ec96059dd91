//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which replays
//! what they found: every decoder of outside input, driven as sluice drives it. Each returns
//! normally for any input — a refusal is a result — so a panic, a hang or a runaway allocation
//! is a bug. Not API; hidden from the docs.

use std::sync::{Arc, OnceLock};

use sluice_engine::avro::{RegistryError, SchemaRegistry};
use sluice_engine::connector::{InputMessage, PayloadFormat, Transform as _};
use sluice_engine::schema::RowSchema;
use sluice_sql::{SqlStage, TransformSpec};

/// The columns every SQL-stage target declares: one of each type a schema can name.
const COLUMNS: &str = r#"{"id": "int64", "n": "int32", "name": "string", "amount": "float64", "ok": "bool", "at": "timestamp", "day": "date"}"#;

/// A runtime and a stage per payload format, built once per process.
fn stage(format: PayloadFormat) -> &'static (tokio::runtime::Runtime, tokio::sync::Mutex<SqlStage>) {
    static STAGES: OnceLock<[(tokio::runtime::Runtime, tokio::sync::Mutex<SqlStage>); 3]> = OnceLock::new();
    let all = STAGES.get_or_init(|| {
        [PayloadFormat::Debezium, PayloadFormat::Json, PayloadFormat::Avro].map(|f| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let row: RowSchema = serde_json::from_str(COLUMNS).expect("the fuzz schema");
            let spec = TransformSpec { sql: Some("SELECT * FROM source".into()), ..TransformSpec::default() };
            let built = rt.block_on(SqlStage::new("fuzz", &row, f, &spec)).expect("planning the fuzz stage");
            let built = if f == PayloadFormat::Avro { built.with_registry(Arc::new(OneSchema)) } else { built };
            (rt, tokio::sync::Mutex::new(built))
        })
    });
    match format {
        PayloadFormat::Debezium => &all[0],
        PayloadFormat::Json => &all[1],
        PayloadFormat::Avro => &all[2],
    }
}

/// Runs `data` through the SQL stage as messages of `format`: the input is cut at each `0xFF`
/// byte (which no UTF-8 text holds) into several payloads, so batches of many messages are
/// tried too. Returns the output rows and the rejected messages.
fn through_stage(format: PayloadFormat, data: &[u8]) -> (usize, usize) {
    let (rt, stage) = stage(format);
    let msgs: Vec<InputMessage<'_>> = data
        .split(|b| *b == 0xFF)
        .map(|p| InputMessage { key: None, payload: Some(p), timestamp_ms: Some(0) })
        .collect();
    rt.block_on(async {
        let mut stage = stage.lock().await;
        match stage.process(&msgs).await {
            Ok(out) => (out.rows(), out.rejected.len()),
            Err(_) => (0, msgs.len()),
        }
    })
}

/// Debezium envelopes (JSON) into Arrow.
pub fn json_envelope(data: &[u8]) -> (usize, usize) {
    through_stage(PayloadFormat::Debezium, data)
}

/// Plain JSON rows into Arrow.
pub fn json_row(data: &[u8]) -> (usize, usize) {
    through_stage(PayloadFormat::Json, data)
}

/// The SQL stage's one-pass JSON decoder against its general path (pre-check, arrow-json),
/// payloads cut at each `0xFF` byte as above, as rows and as Debezium envelopes of a row
/// holding every type it builds. Panics where the two read a batch differently — the one
/// finding this target exists for; returns whether the one-pass decoder took each.
pub fn json_onepass(data: &[u8]) -> (bool, bool) {
    static ROW: OnceLock<RowSchema> = OnceLock::new();
    let row = ROW.get_or_init(sluice_sql::differential::row);
    let payloads: Vec<&[u8]> = data.split(|b| *b == 0xFF).collect();
    let check = |envelope| sluice_sql::differential::agree(row, envelope, &payloads).unwrap_or_else(|e| panic!("{e}"));
    (check(false), check(true))
}

/// Confluent-framed Avro (magic byte, schema id, datum) into Arrow; every id names the one
/// schema of [`OneSchema`].
pub fn avro_confluent(data: &[u8]) -> (usize, usize) {
    through_stage(PayloadFormat::Avro, data)
}

/// One pgoutput message.
pub fn pgoutput(data: &[u8]) -> bool {
    sluice_connectors::fuzz::pgoutput(data).is_ok()
}

/// A CSV file through the `file` source: (records, malformed lines).
pub fn csv_file(data: &[u8]) -> (usize, usize) {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("sluice-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    });
    sluice_connectors::fuzz::csv_file(dir, data)
}

/// A config file through the whole loader; the number of problems found.
pub fn config(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    match crate::config::load_text(std::path::Path::new("config.yaml"), &text, &crate::registry()) {
        Ok(_) => 0,
        Err(rejected) => rejected.errors.len(),
    }
}

/// A `Link` header's next page.
pub fn link_header(data: &[u8]) -> Option<String> {
    sluice_connectors::fuzz::link_header(&String::from_utf8_lossy(data))
}

/// A registry holding one writer schema, the record of the fuzz columns as a change envelope
/// would carry them.
#[derive(Debug)]
struct OneSchema;

fn one_schema() -> Arc<apache_avro::Schema> {
    static SCHEMA: OnceLock<Arc<apache_avro::Schema>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = r#"{"type": "record", "name": "row", "fields": [
                {"name": "id", "type": ["null", "long"]}, {"name": "n", "type": ["null", "int"]},
                {"name": "name", "type": ["null", "string"]}, {"name": "amount", "type": ["null", "double"]},
                {"name": "ok", "type": ["null", "boolean"]},
                {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
                {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]}]}"#;
            Arc::new(apache_avro::Schema::parse_str(text).expect("the fuzz Avro schema"))
        })
        .clone()
}

#[async_trait::async_trait]
impl SchemaRegistry for OneSchema {
    async fn schema(&self, _id: u32) -> Result<Arc<apache_avro::Schema>, RegistryError> {
        Ok(one_schema())
    }

    async fn register(&self, _subject: &str, _schema: &apache_avro::Schema) -> Result<u32, RegistryError> {
        Ok(1)
    }
}
