//! One batch of the sink worker: transform, dead-letter what the transform refused, write to
//! the sink (retrying), dead-letter what the sink refused.

use std::time::Instant;

use tracing::Instrument as _;

use super::FlowContext;
use super::dead_letters::{DeadLetters, Origin, confirm};
use super::retry::write_with_retry;
use crate::connector::{InputMessage, Sink, Transform, WriteContext, Written};
use crate::error::FlowError;
use crate::errors_policy::ErrorMode;
use crate::inbox::Batch;
use crate::telemetry::Stage;

use crate::ledger::Ledger;

/// What became of one processed batch's messages: each is counted once, in one of delivered,
/// filtered, dead-lettered or dropped, so the ledger balances however many rows a message gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct BatchDone {
    /// Messages with at least one row delivered (and none refused).
    pub(super) delivered: u64,
    /// Messages that gave no row.
    pub(super) filtered: u64,
    /// Messages dead-lettered: refused by the transform, or a row of theirs by the sink.
    pub(super) dlq: u64,
    /// Messages that would have been dead-lettered, under `errors.policy: drop`.
    pub(super) dropped: u64,
    /// Rows the destination took (a query may give a message several rows, or none).
    pub(super) rows: u64,
    /// Bytes of Arrow data handed to the destination.
    pub(super) bytes_out: u64,
}

pub(super) async fn process_batch(
    ctx: &FlowContext,
    topic: &str,
    batch: Batch<'_>,
    transform: &mut dyn Transform,
    sink: &mut dyn Sink,
    dlq: &DeadLetters,
) -> Result<BatchDone, FlowError> {
    // A dead letter cut to fit the DLQ is refused as it is: what is left of it is not the
    // record, and running it through the flow would deliver a fragment or fail misleadingly.
    let truncated: Vec<usize> = (0..batch.len()).filter(|&i| batch.truncated(i)).collect();
    let inputs: Vec<InputMessage<'_>> = (0..batch.len())
        .map(|i| InputMessage {
            key: batch.key(i),
            payload: if truncated.contains(&i) { None } else { batch.payload(i) },
            timestamp_ms: batch.messages[i].timestamp_ms,
        })
        .collect();
    let transforming = Instant::now();
    let mut out = transform.process(&inputs).instrument(tracing::info_span!("sql", records = inputs.len())).await?;
    let took = transforming.elapsed();
    let decode = out.decode_time.unwrap_or_default().min(took);
    if out.decode_time.is_some() {
        ctx.metrics.stage(Stage::Decode, decode);
    }
    ctx.metrics.stage(Stage::Sql, took - decode);
    for r in out.rejected.iter_mut().filter(|r| truncated.contains(&r.index)) {
        r.reason = "replay: this dead letter was cut to fit the DLQ (sluice.truncated); the whole record is at its \
                    origin (sluice.source, or sluice.topic/partition/offset), not here"
            .into();
    }
    if let Some(first) = out.rejected.first() {
        ctx.errors.admit(&ctx.flow, "sql", out.rejected.len() as u64, &first.reason)?;
    }
    let dropping = ctx.errors.mode() == ErrorMode::Drop;
    // Dead letters first: their acknowledgement must precede the commit as much as the sink's.
    let mut futures = Vec::with_capacity(out.rejected.len());
    for r in out.rejected.iter().filter(|_| !dropping) {
        let origin = origin_of(batch, r.index, topic, "sql")?;
        futures.push(
            dlq.send(batch.key(r.index), batch.payload(r.index).unwrap_or_default(), &r.reason, origin)
                .await
                .map_err(ctx.kafka_err(format!("producing to {}", ctx.kafka.dlq_topic(&ctx.flow))))?,
        );
    }
    confirm(futures)
        .await
        .map_err(ctx.kafka_err(format!("confirming delivery to {}", ctx.kafka.dlq_topic(&ctx.flow))))?;
    let rows = out.rows();
    let written = if rows > 0 {
        let batch_id = batch_id(topic, batch);
        let write = WriteContext { batch_id: &batch_id, run_id: &ctx.run_id };
        let writing = Instant::now();
        let w = write_with_retry(&ctx.metrics, sink, &out.batches, write, &ctx.batch.retry, &ctx.shutdown)
            .instrument(tracing::info_span!("sink_write", rows))
            .await;
        ctx.metrics.stage(Stage::SinkWrite, writing.elapsed());
        w?
    } else {
        Written::all()
    };
    let refused = dead_letter_refused(ctx, topic, batch, &out, &written, dlq, dropping).await?;
    let done = tally(batch.len(), &out, &written, &refused);
    let done = if dropping { BatchDone { dropped: done.dlq, dlq: 0, ..done } } else { done };
    let bytes_out = if rows > 0 { out.batches.iter().map(|b| b.get_array_memory_size() as u64).sum() } else { 0 };
    let done = BatchDone { bytes_out, ..done };
    Ledger::add(&ctx.ledger.dropped, done.dropped as usize);
    Ok(done)
}

/// What the sink's refusals were dead-lettered as: the input messages their rows came from, and
/// how many refused rows had no such message (an aggregate's rows).
#[derive(Debug, Default)]
struct Refused {
    messages: std::collections::HashSet<usize>,
    unattributed: usize,
}

/// Counts each of a batch's `n` messages once.
fn tally(n: usize, out: &crate::connector::Transformed, written: &Written, refused: &Refused) -> BatchDone {
    let rows = out.rows();
    let rows_delivered = rows.saturating_sub(written.rejected.len()) as u64;
    let mut rejected: Vec<usize> = out.rejected.iter().map(|r| r.index).collect();
    rejected.sort_unstable();
    rejected.dedup();
    let mut done = BatchDone { rows: rows_delivered, ..BatchDone::default() };
    match &out.origins {
        Some(origins) => {
            // Per message: refused by the transform, else a row refused by the sink, else a
            // row delivered, else filtered.
            let refused_rows: std::collections::HashSet<usize> = written.rejected.iter().map(|r| r.index).collect();
            let mut gave = vec![false; n];
            for (row, &m) in origins.iter().enumerate() {
                if !refused_rows.contains(&row) && m < n {
                    gave[m] = true;
                }
            }
            for (i, gave) in gave.into_iter().enumerate() {
                if rejected.binary_search(&i).is_ok() || refused.messages.contains(&i) {
                    done.dlq += 1;
                } else if gave {
                    done.delivered += 1;
                } else {
                    done.filtered += 1;
                }
            }
        }
        None => {
            // No lineage (an aggregate): rows stand for the messages that were not refused, as
            // many as there are rows, the rest were folded in (filtered).
            let open = (n - rejected.len()) as u64;
            done.delivered = rows_delivered.min(open);
            let dead = (refused.unattributed as u64).min(open - done.delivered);
            done.dlq = rejected.len() as u64 + dead;
            done.filtered = open - done.delivered - dead;
        }
    }
    done
}

/// Sends the rows the destination refused to the DLQ (or drops them, as the policy says) and
/// says which input messages that was.
///
/// A refused row is traced back to the message it came from through the transform's lineage,
/// so the dead letter carries the original key, payload and offset — what a replay needs. A
/// query without row lineage (an aggregate) has no original; the refused output row itself,
/// as JSON, is the dead letter then.
async fn dead_letter_refused(
    ctx: &FlowContext,
    topic: &str,
    batch: Batch<'_>,
    out: &crate::connector::Transformed,
    written: &Written,
    dlq: &DeadLetters,
    dropping: bool,
) -> Result<Refused, FlowError> {
    let mut refused = Refused::default();
    let Some(first) = written.rejected.first() else { return Ok(refused) };
    let n = written.rejected.len();
    ctx.errors.admit(&ctx.flow, "sink", n as u64, &first.reason)?;
    let producing = || ctx.kafka_err(format!("producing to {}", ctx.kafka.dlq_topic(&ctx.flow)));
    let mut futures = Vec::with_capacity(n);
    for r in &written.rejected {
        match out.origins.as_ref().and_then(|o| o.get(r.index)) {
            Some(&i) => {
                // Two output rows of one message refused: one dead letter for the message.
                if !refused.messages.insert(i) || dropping {
                    continue;
                }
                let origin = origin_of(batch, i, topic, "sink")?;
                futures.push(
                    dlq.send(batch.key(i), batch.payload(i).unwrap_or_default(), &r.reason, origin)
                        .await
                        .map_err(producing())?,
                );
            }
            None => {
                refused.unattributed += 1;
                if dropping {
                    continue;
                }
                let row = output_row_json(&out.batches, r.index)?;
                futures.push(dlq.send(None, &row, &r.reason, Origin::stage("sink")).await.map_err(producing())?);
            }
        }
    }
    confirm(futures)
        .await
        .map_err(ctx.kafka_err(format!("confirming delivery to {}", ctx.kafka.dlq_topic(&ctx.flow))))?;
    Ok(refused)
}

/// One output row as a JSON object, for a dead letter without an original message.
fn output_row_json(batches: &[arrow_array::RecordBatch], mut index: usize) -> Result<Vec<u8>, FlowError> {
    for b in batches {
        if index < b.num_rows() {
            let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
            w.write(&b.slice(index, 1))
                .and_then(|()| w.finish())
                .map_err(|e| FlowError::Internal(format!("encoding a refused row as JSON for the DLQ: {e}")))?;
            let mut row = w.into_inner();
            if row.last() == Some(&b'\n') {
                row.pop();
            }
            return Ok(row);
        }
        index -= b.num_rows();
    }
    Err(FlowError::Internal(format!("the sink refused row {index}, past the end of its batch")))
}

/// The origin a dead letter for message `index` of the batch carries (the index as the
/// transform or the sink named it).
fn origin_of<'a>(batch: Batch<'a>, index: usize, topic: &'a str, stage: &'static str) -> Result<Origin<'a>, FlowError> {
    let source = batch.source(index, topic).ok_or_else(|| {
        FlowError::Internal(format!("row {index} traced to no message of a {}-message batch", batch.len()))
    })?;
    Ok(Origin {
        stage,
        kafka: Some(source),
        attempts: batch.attempts(index),
        source: None,
        traceparent: batch.traceparent(index),
    })
}

/// A name for a batch that is the same every time the same messages are written: the topic
/// and each partition's offset range ("t/0:100-199,2:7-40").
fn batch_id(topic: &str, batch: Batch<'_>) -> String {
    let mut ranges: std::collections::BTreeMap<i32, (i64, i64)> = std::collections::BTreeMap::new();
    for m in batch.messages {
        let r = ranges.entry(m.partition).or_insert((m.offset, m.offset));
        r.0 = r.0.min(m.offset);
        r.1 = r.1.max(m.offset);
    }
    let parts: Vec<String> = ranges.iter().map(|(p, (lo, hi))| format!("{p}:{lo}-{hi}")).collect();
    format!("{topic}/{}", parts.join(","))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::connector::{RejectedRow, Transformed};
    use arrow_array::{Int64Array, RecordBatch};

    fn rows(n: usize) -> Vec<RecordBatch> {
        let a = Int64Array::from((0..n as i64).collect::<Vec<_>>());
        vec![RecordBatch::try_from_iter([("x", std::sync::Arc::new(a) as arrow_array::ArrayRef)]).unwrap()]
    }

    fn rejected(indices: &[usize]) -> Vec<RejectedRow> {
        indices.iter().map(|&index| RejectedRow { index, reason: "r".into() }).collect()
    }

    fn balanced(n: usize, d: &BatchDone) {
        assert_eq!((d.delivered + d.filtered + d.dlq + d.dropped) as usize, n, "{d:?}");
    }

    #[test]
    fn every_message_is_counted_once_however_many_rows_it_gave() {
        // Six messages: 0 rejected; 1 gave two rows (a UNION ALL); 2 gave one row the sink
        // refused; 3 gave nothing; 4 and 5 one row each.
        let out = Transformed {
            batches: rows(5),
            rejected: rejected(&[0]),
            origins: Some(vec![1, 1, 2, 4, 5]),
            decode_time: None,
        };
        let written = Written { rejected: rejected(&[2]) };
        let refused = Refused { messages: [2].into_iter().collect(), unattributed: 0 };
        let d = tally(6, &out, &written, &refused);
        assert_eq!(d, BatchDone { delivered: 3, filtered: 1, dlq: 2, dropped: 0, rows: 4, bytes_out: 0 });
        balanced(6, &d);
    }

    #[test]
    fn without_lineage_rows_stand_for_messages() {
        // An aggregate: ten messages, one rejected, one output row.
        let out = Transformed { batches: rows(1), rejected: rejected(&[3]), origins: None, decode_time: None };
        let d = tally(10, &out, &Written::all(), &Refused::default());
        assert_eq!(d, BatchDone { delivered: 1, filtered: 8, dlq: 1, dropped: 0, rows: 1, bytes_out: 0 });
        // More rows than messages (a query that multiplies without lineage) still balances.
        let out = Transformed { batches: rows(30), rejected: Vec::new(), origins: None, decode_time: None };
        let d = tally(10, &out, &Written::all(), &Refused::default());
        assert_eq!((d.delivered, d.filtered, d.rows), (10, 0, 30));
        balanced(10, &d);
    }
}
