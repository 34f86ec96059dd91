//! The conformance checks every connector passes, for sluice's own connectors
//! (`tests/conformance.rs`) and for those written outside the repository (see CONNECTORS.md).
//!
//! A connector is checked through the registry, built from a config text exactly as `sluice run`
//! builds it ([`Fixture`]); what cannot be known generically — how to add changes upstream, how
//! to make a destination fail for a while, how to read it back — the test supplies.
//!
//! **Sources** ([`check_source`]): read to the end without acknowledging anything, then again
//! from a chain of restarts. Each restart opens at a position a record or checkpoint carried,
//! must read exactly what the first read gave after that position — nothing acknowledged again,
//! nothing unacknowledged skipped — and acknowledges ([`Source::committed`]) only up to the next
//! restart's position although it read further, as a process does that dies before Kafka
//! acknowledged the rest. A source that lets go of upstream data before `committed` (a queue
//! consumed on read) fails here.
//!
//! **Sinks** ([`check_sink`]): a batch with a row the destination refuses answers `Ok` with that
//! row in [`Written::rejected`], not a failed batch; the sink is then dropped without `close`
//! (a crash after the acknowledgement) and a new one writes the same batch again, as the runtime
//! does when the offsets were not committed; a write during an outage fails with a retriable
//! error within a bound, and the same batch written again after the outage succeeds; in the end
//! every row that was not refused is in the destination (at least once) and the refused one is
//! not.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde_json::{Value, json};
use sluice_connectors::{BuiltSink, Context, Input};
use sluice_engine::connector::{Poll, Position, Source, SourceItem, WriteContext, Written};
use sluice_engine::kafka::KafkaSettings;

use crate::config::{Config, Flow, KafkaSection};
use crate::registry::Registry;

/// How long a read to the end may take, and a write during an outage may take to fail.
const LIMIT: Duration = Duration::from_secs(90);
/// Items asked for per poll: small, so a source's paging and positions inside a read are used.
const POLL_MAX: usize = 7;
/// Restarts per source check, spread over the positions the first read gave.
const RESTARTS: usize = 6;

/// A broken promise of the connector contract, saying which and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

fn violation(what: impl Into<String>) -> Violation {
    Violation(what.into())
}

/// Connections and flows to check, loaded from config text as `sluice run` loads a file.
pub struct Fixture {
    config: Config,
    own: KafkaSettings,
}

impl Fixture {
    /// Loads the config at `path` (a whole config: `kafka`, `connections`, `flows`) with
    /// `registry`'s connectors. sluice's own cluster is the `kafka:` section's
    /// `bootstrap_servers`.
    pub fn load(registry: &Registry, path: &Path) -> Result<Fixture, Violation> {
        let config = crate::config::load(path, registry).map_err(|r| {
            violation(format!(
                "the fixture's config does not load: {}",
                r.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ))
        })?;
        let own = match &config.kafka {
            KafkaSection::External(s) => s.clone(),
            KafkaSection::Embedded { settings, .. } => settings.clone(),
        };
        Ok(Fixture { config, own })
    }

    fn flow(&self, name: &str) -> Result<&Flow, Violation> {
        self.config.flows.iter().find(|f| f.name == name).ok_or_else(|| violation(format!("no flow `{name}`")))
    }

    /// Builds flow `name`'s input as `sluice run` does (not following: reads end).
    pub fn input(&self, name: &str) -> Result<Input, Violation> {
        let flow = self.flow(name)?;
        let conn = self.connection(&flow.source_connection)?;
        let ctx = Context::new(&flow.source_connection, &self.own, &flow.name);
        conn.build_source(ctx, &flow.source_object, &flow.source, false)
            .map_err(|e| violation(format!("building the source of flow `{name}`: {e}")))
    }

    /// Builds flow `name`'s sink and its health check.
    pub async fn sink(&self, name: &str) -> Result<BuiltSink, Violation> {
        let flow = self.flow(name)?;
        let conn = self.connection(&flow.destination_connection)?;
        let ctx = Context::new(&flow.destination_connection, &self.own, &flow.name);
        conn.build_sink(ctx, &flow.destination_object, &flow.destination)
            .await
            .map_err(|e| violation(format!("building the sink of flow `{name}`: {e}")))
    }

    fn connection(&self, name: &str) -> Result<&crate::registry::Connection, Violation> {
        self.config.connections.get(name).ok_or_else(|| violation(format!("no connection `{name}`")))
    }
}

/// What a source check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceReport {
    /// A source was read and restarted.
    Checked {
        /// Records (and malformed inputs) the first read gave.
        records: usize,
        /// Distinct positions among them.
        positions: usize,
        /// Restarts made, each compared with the first read.
        restarts: usize,
        /// Items read again at restarts because they shared the restart's position (counting
        /// checkpoints, which carry no record).
        reread: usize,
    },
    /// The input is a Kafka topic the sink worker consumes: its positions are consumer-group
    /// offsets, which the runtime commits (the runtime's own tests check those).
    Topic,
}

/// One item as compared across reads: what it says, not when it was read.
fn identity(item: &SourceItem) -> Option<Value> {
    match item {
        SourceItem::Record { record, .. } => Some(json!({
            "op": record.op.code(), "key": record.key, "before": record.before, "after": record.after,
            "after_json": record.after_json.as_ref().map(|j| j.get()),
        })),
        SourceItem::Malformed { payload, reason, .. } => {
            Some(json!({"malformed": String::from_utf8_lossy(payload), "reason": reason}))
        }
        SourceItem::Checkpoint { .. } => None,
    }
}

fn position(item: &SourceItem) -> &Position {
    match item {
        SourceItem::Record { position, .. }
        | SourceItem::Checkpoint { position }
        | SourceItem::Malformed { position, .. } => position,
    }
}

/// Opens `source` at `resume` and polls it until it says it is exhausted.
async fn read_to_end(source: &mut dyn Source, resume: Option<Position>) -> Result<Vec<SourceItem>, Violation> {
    let at = resume.as_ref().map_or_else(|| "the start".to_owned(), |p| format!("position {p}"));
    source.open(resume).await.map_err(|e| violation(format!("opening the source at {at}: {e}")))?;
    let started = Instant::now();
    let mut items = Vec::new();
    loop {
        if started.elapsed() > LIMIT {
            return Err(violation(format!(
                "reading from {at}: not exhausted after {} s ({} items)",
                LIMIT.as_secs(),
                items.len()
            )));
        }
        let polled = match source.poll(POLL_MAX).await {
            // The runtime polls again after a backoff (a 429, a dropped connection).
            Err(e) if e.is_retriable() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            other => other.map_err(|e| violation(format!("polling the source from {at}: {e}")))?,
        };
        match polled {
            Poll::Items(more) => {
                if more.len() > POLL_MAX {
                    return Err(violation(format!("a poll for {POLL_MAX} items gave {}", more.len())));
                }
                items.extend(more);
            }
            Poll::Idle => tokio::time::sleep(Duration::from_millis(50)).await,
            Poll::Exhausted => return Ok(items),
        }
    }
}

/// Checks a flow's source: a first read, changes made upstream by `more` (if given) read by a
/// restart from where the first read ended, then a chain of restarts (see the module map).
pub async fn check_source(
    fixture: &Fixture,
    flow: &str,
    more: Option<&mut (dyn FnMut() + Send)>,
) -> Result<SourceReport, Violation> {
    let open = || match fixture.input(flow)? {
        Input::Source(s) => Ok(Some(s)),
        Input::Topic { .. } => Ok(None),
    };
    let Some(mut first) = open()? else { return Ok(SourceReport::Topic) };
    let mut reference = read_to_end(first.as_mut(), None).await?;
    drop(first);
    if let Some(more) = more {
        more();
        let last = reference.last().map(|i| position(i).clone());
        let mut second = open()?.ok_or_else(|| violation("the input changed from a source to a topic"))?;
        reference.extend(read_to_end(second.as_mut(), last).await?);
    }
    let ids: Vec<Option<Value>> = reference.iter().map(identity).collect();
    let records = ids.iter().flatten().count();
    if records == 0 {
        return Err(violation("the fixture gave the source nothing to read"));
    }
    // A restart may only be made where the position changes: items sharing one are a unit the
    // source cannot resume inside (a transaction).
    let boundaries: Vec<usize> = (0..reference.len())
        .filter(|&i| i + 1 == reference.len() || position(&reference[i]) != position(&reference[i + 1]))
        .collect();
    let cuts = spread(&boundaries, RESTARTS);
    let mut reread = 0;
    for (n, &cut) in cuts.iter().enumerate() {
        let at = position(&reference[cut]).clone();
        let mut source = open()?.ok_or_else(|| violation("the input changed from a source to a topic"))?;
        let got: Vec<Value> =
            read_to_end(source.as_mut(), Some(at.clone())).await?.iter().filter_map(identity).collect();
        // Records sharing the restart position may come again (the unit it names: an inclusive
        // cursor, a transaction); nothing before them may, and nothing after may be missing.
        let unit = (0..=cut).rev().take_while(|&i| position(&reference[i]) == &at).last().unwrap_or(cut);
        let suffix = |from: usize| ids[from..].iter().flatten().cloned().collect::<Vec<Value>>();
        let want = suffix(cut + 1);
        let Some(again) = (unit..=cut + 1).find(|&from| suffix(from) == got).map(|from| cut + 1 - from) else {
            return Err(violation(format!(
                "restarted at position {at} (after item {cut} of {}): read {} records, {}",
                reference.len(),
                got.len(),
                difference(&want, &got)
            )));
        };
        reread += again;
        // Acknowledge only as far as the next restart will open, although this one read more.
        if let Some(&next) = cuts.get(n + 1) {
            let upto = position(&reference[next]);
            source.committed(upto).await.map_err(|e| violation(format!("acknowledging position {upto}: {e}")))?;
        }
    }
    Ok(SourceReport::Checked { records, positions: boundaries.len(), restarts: cuts.len(), reread })
}

/// Up to `n` of `all`, evenly spread, always with the first and the last.
fn spread(all: &[usize], n: usize) -> Vec<usize> {
    if all.len() <= n {
        return all.to_vec();
    }
    let mut out: Vec<usize> = (0..n).map(|k| all[k * (all.len() - 1) / (n - 1)]).collect();
    out.dedup();
    out
}

/// How `got` differs from `want`, briefly.
fn difference(want: &[Value], got: &[Value]) -> String {
    let first = want.iter().zip(got).position(|(w, g)| w != g).unwrap_or(want.len().min(got.len()));
    match (want.get(first), got.get(first)) {
        (Some(w), Some(g)) => format!("expected {} records; record {first} is {g}, expected {w}", want.len()),
        (Some(w), None) => format!("expected {} records; record {first} ({w}) is missing", want.len()),
        (None, Some(g)) => format!("expected {} records; record {first} ({g}) is one too many", want.len()),
        (None, None) => "the same records".to_owned(),
    }
}

/// A destination as the sink check drives it.
pub trait Destination {
    /// The `id` of a row the destination refuses for good (a constraint, a 400), if it can be
    /// made to refuse one; rows have ids 1 to 20.
    fn refused_id(&self) -> Option<i64>;
    /// Starts an outage the sink should see as transient (a reset connection, a 503); `false`
    /// when the destination cannot have one (say why in the test).
    fn break_down(&mut self) -> bool;
    /// Ends the outage.
    fn recover(&mut self);
    /// The rows in the destination as `(id, name)`; `None` when they cannot be read back.
    fn delivered(&mut self) -> Option<Vec<(i64, String)>>;
}

/// What a sink check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReport {
    /// Whether a row was refused and reported so.
    pub refused: bool,
    /// Whether an outage was survived.
    pub outage: bool,
    /// Rows read back (`None`: the destination cannot be read), counting duplicates.
    pub delivered: Option<usize>,
    /// Rows delivered more than once (a batch is written twice in the check).
    pub duplicates: usize,
}

/// The rows of the sink check: `id` 1 to 20 and a `name` from it.
fn batch(ids: std::ops::RangeInclusive<i64>) -> Result<RecordBatch, Violation> {
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]));
    let id: ArrayRef = Arc::new(Int64Array::from_iter_values(ids.clone()));
    let name: ArrayRef = Arc::new(StringArray::from_iter_values(ids.map(|i| format!("row-{i}"))));
    RecordBatch::try_new(schema, vec![id, name]).map_err(|e| violation(format!("building the test batch: {e}")))
}

/// Checks a flow's sink against `dest` (see the module map).
pub async fn check_sink(fixture: &Fixture, flow: &str, dest: &mut dyn Destination) -> Result<SinkReport, Violation> {
    let refused = dest.refused_id();
    let built = fixture.sink(flow).await?;
    match tokio::time::timeout(LIMIT, built.healthcheck).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(violation(format!("the health check of a healthy destination failed: {e}"))),
        Err(_) => return Err(violation("the health check did not answer")),
    }
    let mut sink = built.sink;
    let a = [batch(1..=10)?];
    let b = [batch(11..=20)?];
    let (id_a, id_b) = ("conformance/0:0-9", "conformance/0:10-19");
    write(sink.as_mut(), &a, id_a, "conformance-1", refused).await?;
    // A crash after the acknowledgement, before the offsets were committed: a new sink gets the
    // same batch again.
    drop(sink);
    let mut sink = fixture.sink(flow).await?.sink;
    write(sink.as_mut(), &a, id_a, "conformance-2", refused).await?;
    let outage = dest.break_down();
    if outage {
        let ctx = WriteContext { batch_id: id_b, run_id: "conformance-2" };
        let failed = tokio::time::timeout(LIMIT, sink.write(&b, ctx)).await;
        dest.recover();
        match failed {
            Err(_) => {
                return Err(violation(format!(
                    "a write during an outage neither failed nor returned in {} s",
                    LIMIT.as_secs()
                )));
            }
            Ok(Ok(_)) => return Err(violation("a write during an outage said the rows were delivered")),
            Ok(Err(e)) if !e.is_retriable() => {
                return Err(violation(format!("a write during an outage failed for good, not as retriable: {e}")));
            }
            Ok(Err(_)) => {}
        }
    }
    write(sink.as_mut(), &b, id_b, "conformance-2", refused).await?;
    sink.close().await.map_err(|e| violation(format!("closing the sink: {e}")))?;
    let rows = dest.delivered();
    let mut report =
        SinkReport { refused: refused.is_some(), outage, delivered: rows.as_ref().map(Vec::len), duplicates: 0 };
    if let Some(rows) = rows {
        for id in 1..=20 {
            let copies: Vec<&String> = rows.iter().filter(|(i, _)| *i == id).map(|(_, n)| n).collect();
            if Some(id) == refused {
                if !copies.is_empty() {
                    return Err(violation(format!("the refused row {id} is in the destination")));
                }
                continue;
            }
            if copies.is_empty() {
                return Err(violation(format!("row {id} was acknowledged but is not in the destination")));
            }
            if let Some(bad) = copies.iter().find(|n| **n != &format!("row-{id}")) {
                return Err(violation(format!("row {id} arrived as `{bad}`")));
            }
            report.duplicates += copies.len() - 1;
        }
    }
    Ok(report)
}

/// Writes `batches`; `Ok` must list exactly the refused row, if it is among them.
async fn write(
    sink: &mut dyn sluice_engine::connector::Sink,
    batches: &[RecordBatch],
    batch_id: &str,
    run_id: &str,
    refused: Option<i64>,
) -> Result<(), Violation> {
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.values().to_vec()).unwrap_or_default()
        })
        .collect();
    let ctx = WriteContext { batch_id, run_id };
    let written: Written = tokio::time::timeout(LIMIT, sink.write(batches, ctx))
        .await
        .map_err(|_| {
            violation(format!("writing batch {batch_id} to a healthy destination took over {} s", LIMIT.as_secs()))
        })?
        .map_err(|e| violation(format!("writing batch {batch_id} (one refused row at most) failed whole: {e}")))?;
    let want: Vec<usize> = ids.iter().position(|i| Some(*i) == refused).into_iter().collect();
    let got: Vec<usize> = written.rejected.iter().map(|r| r.index).collect();
    if got != want {
        return Err(violation(format!(
            "writing batch {batch_id}: rows {got:?} were reported refused, expected {want:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_spread_with_the_first_and_the_last() {
        assert_eq!(spread(&[1, 2, 3], 6), [1, 2, 3]);
        assert_eq!(spread(&(0..100).collect::<Vec<_>>(), 3), [0, 49, 99]);
    }

    #[test]
    fn differences_name_the_first_record_that_differs() {
        let (a, ab, b) = ([json!(1)], [json!(1), json!(2)], [json!(2)]);
        assert!(difference(&ab, &a).contains("missing"));
        assert!(difference(&a, &ab).contains("one too many"));
        assert!(difference(&a, &b).contains("record 0 is 2"));
    }
}
