//! # sluice-engine
//!
//! The core every other crate builds on. A map:
//!
//! - [`record`]: the change record (Debezium envelope) every source emits.
//! - [`connector`]: one trait per role — [`Source`](connector::Source),
//!   [`Transform`](connector::Transform), [`Sink`](connector::Sink) — free of Kafka.
//! - [`avro`]: Arrow rows as Avro records (object container files, Avro payloads).
//! - [`schema`]: declared row schemas (`name: type`).
//! - [`secret`]: credentials that never print.
//! - [`kafka`]: the one place that builds rdkafka clients and names sluice's topics.
//! - [`producer`]: the Kafka producer every flow writes through (no busy-polling thread).
//! - [`broker`]: the embedded Kafka-protocol broker (tansu), for one-machine set-ups.
//! - [`runtime`]: the source task and the sink worker, which keep the at-least-once promises.
//! - [`ledger`]: per-flow counters for the progress line and the run summary.
//! - [`inbox`]: the sink worker's batch of consumed messages, in buffers reused between batches.
//! - [`offsets`]: which offsets a sink worker may commit (the contiguous finished prefix).
//! - [`error`]: the engine's error enums.
//! - [`errors_policy`]: what a flow does with bad records (dlq, drop, fail, a threshold).

pub mod avro;
pub mod broker;
pub mod connector;
pub mod error;
pub mod errors_policy;
pub mod inbox;
pub mod kafka;
pub mod ledger;
pub mod offsets;
pub mod producer;
pub mod record;
pub mod runtime;
pub mod schema;
pub mod secret;

pub use arrow_array;
pub use arrow_schema;
