//! `generate`: deterministic synthetic change records, for demos, tests and benchmarks.
//!
//! Record `n` (its `seq`) belongs to key `n % keys` and is that key's `n / keys`-th change: the
//! first change of a key is a create, the rest are updates. Values come from a ChaCha stream
//! seeded with `seed` and positioned at `n`, so record `n` is the same whether a run starts at 0
//! or resumes at `n` after a crash — which is what lets tests check every record by its `seq`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_engine::connector::{Poll, Position, Source, SourceItem};
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Op, now_ms};
use sluice_engine::schema::{ColumnType, RowSchema};

use crate::connector::{BuiltSink, Connector, Context, Input, Unsupported};

/// The `generate` connector: synthetic data, a source only.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerateConnector;

#[async_trait]
impl Connector for GenerateConnector {
    const NAME: &'static str = "generate";
    type Connection = GenerateConnection;
    type SourceOptions = GenerateOptions;
    type SinkOptions = Unsupported;

    async fn healthcheck(&self, _: Context<'_>, _: &GenerateConnection) -> Result<String, ConnectorError> {
        Ok("synthetic data; nothing to reach".into())
    }

    fn source_schema(&self, _: &str, _: &GenerateOptions) -> Option<RowSchema> {
        Some(schema())
    }

    fn build_source(
        &self,
        _: Context<'_>,
        _: &GenerateConnection,
        object: &str,
        options: &GenerateOptions,
        _follow: bool,
    ) -> Result<Input, ConnectorError> {
        Ok(Input::Source(Box::new(GenerateSource::new(object, options.clone())?)))
    }

    fn check_sink(
        &self,
        _: Context<'_>,
        _: &GenerateConnection,
        _: &str,
        o: &Unsupported,
    ) -> Result<(), ConnectorError> {
        match *o {}
    }

    async fn build_sink(
        &self,
        _: Context<'_>,
        _: &GenerateConnection,
        _: &str,
        o: &Unsupported,
    ) -> Result<BuiltSink, ConnectorError> {
        match *o {}
    }
}

/// The `generate` connection: nothing to connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConnection {}

/// Per-flow options of a `generate` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateOptions {
    /// How many records to generate; unset means no end (for continuous flows).
    pub count: Option<u64>,
    /// Records per second; 0 generates as fast as Kafka accepts them.
    #[serde(default)]
    pub rate_per_sec: u64,
    /// Number of distinct keys the changes cycle over.
    #[serde(default = "default_keys")]
    pub keys: u64,
    /// Seed for the generated values; the same seed gives the same records.
    #[serde(default)]
    pub seed: u64,
}

fn default_keys() -> u64 {
    1000
}

/// The customer names of generated rows (the benchmarks' data uses them too).
pub const NAMES: [&str; 8] = ["ada", "grace", "alan", "edsger", "barbara", "donald", "frances", "ken"];
/// The categories of generated rows.
pub const CATEGORIES: [&str; 5] = ["books", "games", "garden", "music", "tools"];

/// The columns every generated row has.
pub fn schema() -> RowSchema {
    RowSchema::new(vec![
        ("id".into(), ColumnType::Int64),
        ("seq".into(), ColumnType::Int64),
        ("version".into(), ColumnType::Int64),
        ("name".into(), ColumnType::String),
        ("category".into(), ColumnType::String),
        ("amount".into(), ColumnType::Int64),
    ])
}

/// A running generator.
pub struct GenerateSource {
    opts: GenerateOptions,
    object: String,
    rng: ChaCha8Rng,
    next: u64,
    started: Instant,
    emitted_since_start: u64,
}

impl GenerateSource {
    /// A generator for `object` (used as the source table name in metadata).
    pub fn new(object: &str, opts: GenerateOptions) -> Result<Self, ConnectorError> {
        if opts.keys == 0 {
            return Err(ConnectorError::User("generate: `keys` must be at least 1".into()));
        }
        let rng = ChaCha8Rng::seed_from_u64(opts.seed);
        Ok(GenerateSource {
            opts,
            object: object.to_owned(),
            rng,
            next: 0,
            started: Instant::now(),
            emitted_since_start: 0,
        })
    }

    /// Record number `n`.
    pub fn record(&mut self, n: u64) -> ChangeRecord {
        // Two 64-bit draws per record: position the stream at record n's words.
        self.rng.set_word_pos(u128::from(n) * 4);
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        let keys = self.opts.keys;
        let id = n % keys;
        let version = n / keys;
        let mut after = Map::new();
        after.insert("id".into(), json!(id));
        after.insert("seq".into(), json!(n));
        after.insert("version".into(), json!(version));
        after.insert("name".into(), json!(NAMES[(a % NAMES.len() as u64) as usize]));
        after.insert("category".into(), json!(CATEGORIES[((a >> 32) % CATEGORIES.len() as u64) as usize]));
        after.insert("amount".into(), json!(b % 1000));
        let mut key = Map::new();
        key.insert("id".into(), json!(id));
        let mut source = Map::new();
        source.insert("connector".into(), json!("generate"));
        source.insert("table".into(), json!(self.object));
        source.insert("seq".into(), json!(n));
        ChangeRecord {
            key,
            before: None,
            after: Some(after),
            after_json: None,
            op: if version == 0 { Op::Create } else { Op::Update },
            source,
            ts_ms: now_ms(),
        }
    }
}

#[async_trait]
impl Source for GenerateSource {
    async fn open(&mut self, resume: Option<Position>) -> Result<(), ConnectorError> {
        self.next = resume.as_ref().and_then(|p| p.get("next_seq")).and_then(Value::as_u64).unwrap_or(0);
        self.started = Instant::now();
        self.emitted_since_start = 0;
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Poll, ConnectorError> {
        let remaining = self.opts.count.map_or(u64::MAX, |c| c.saturating_sub(self.next));
        if remaining == 0 {
            return Ok(Poll::Exhausted);
        }
        let mut n = remaining.min(max as u64);
        if self.opts.rate_per_sec > 0 {
            let rate = self.opts.rate_per_sec;
            let due = (self.started.elapsed().as_secs_f64() * rate as f64) as u64;
            let allowed = due.saturating_sub(self.emitted_since_start);
            if allowed == 0 {
                // Sleep until the next record is due rather than spinning.
                let next_at = (self.emitted_since_start + 1) as f64 / rate as f64;
                let wait = next_at - self.started.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.001, 1.0))).await;
                return Ok(Poll::Items(Vec::new()));
            }
            n = n.min(allowed);
        }
        let mut items = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let seq = self.next;
            let record = self.record(seq);
            self.next += 1;
            items.push(SourceItem::Record { record, position: json!({ "next_seq": self.next }) });
        }
        self.emitted_since_start += n;
        Ok(Poll::Items(items))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opts(count: u64) -> GenerateOptions {
        GenerateOptions { count: Some(count), rate_per_sec: 0, keys: 10, seed: 42 }
    }

    #[tokio::test]
    async fn records_are_deterministic_and_resumable() {
        let mut a = GenerateSource::new("orders", opts(100)).unwrap();
        a.open(None).await.unwrap();
        let Poll::Items(all) = a.poll(1000).await.unwrap() else { panic!() };
        assert_eq!(all.len(), 100);
        assert!(matches!(a.poll(10).await.unwrap(), Poll::Exhausted));

        let mut b = GenerateSource::new("orders", opts(100)).unwrap();
        b.open(Some(json!({"next_seq": 60}))).await.unwrap();
        let Poll::Items(tail) = b.poll(1000).await.unwrap() else { panic!() };
        assert_eq!(tail.len(), 40);
        for (x, y) in all[60..].iter().zip(&tail) {
            let (SourceItem::Record { record: x, .. }, SourceItem::Record { record: y, .. }) = (x, y) else { panic!() };
            assert_eq!(x.after, y.after);
            assert_eq!(x.key, y.key);
        }
    }

    #[tokio::test]
    async fn first_change_of_a_key_is_a_create() {
        let mut g = GenerateSource::new("orders", opts(25)).unwrap();
        let r0 = g.record(3);
        let r1 = g.record(13);
        assert_eq!(r0.op, Op::Create);
        assert_eq!(r1.op, Op::Update);
        assert_eq!(r0.key, r1.key);
    }
}
