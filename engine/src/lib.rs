//! # sluice-engine
//!
//! The runtime and the Kafka plumbing, above the I/O-free `sluice-core` (whose modules it
//! re-exports: [`record`], [`connector`], [`schema`], [`avro`], [`names`]). A map:
//!
//! - [`secret`]: credentials that never print.
//! - [`kafka`]: the one place that builds rdkafka clients and names sluice's topics.
//! - [`producer`]: the Kafka producer every flow writes through (no busy-polling thread).
//! - [`broker`]: the embedded Kafka-protocol broker (tansu), for one-machine set-ups.
//! - [`runtime`]: the source task and the sink worker, which keep the at-least-once promises.
//! - [`ledger`]: per-flow counters for the progress line and the run summary.
//! - [`inbox`]: the sink worker's batch of consumed messages, in buffers reused between batches.
//! - [`offsets`]: which offsets a sink worker may commit (the contiguous finished prefix).
//! - [`error`]: the core's errors and the one that stops a flow.
//! - [`errors_policy`]: what a flow does with bad records (dlq, drop, fail, a threshold).
//! - [`telemetry`]: metrics and traces (OpenTelemetry; OTLP and Prometheus exports).

pub mod broker;
pub mod error;
pub mod errors_policy;
pub mod inbox;
pub mod kafka;
pub mod ledger;
pub mod offsets;
pub mod producer;
pub mod runtime;
pub mod secret;
pub mod telemetry;

pub use sluice_core::{arrow_array, arrow_cast, arrow_schema, avro, connector, names, record, schema};
