//! # sluice-core
//!
//! What every other crate builds on, free of I/O: no Kafka client, broker, SQL engine or cloud
//! SDK is linked here. A map:
//!
//! - [`record`]: the change record (Debezium envelope) every source emits.
//! - [`connector`]: one trait per role — [`Source`](connector::Source),
//!   [`Transform`](connector::Transform), [`Sink`](connector::Sink) — and what each returns:
//!   positions, source items, delivery outcomes ([`Written`](connector::Written)).
//! - [`error`]: what connectors and the SQL stage return, and whose fault it is.
//! - [`schema`]: declared row schemas (`name: type`).
//! - [`avro`]: Arrow rows as Avro records, and the schema registry a codec asks.
//! - [`names`]: the hidden column names and dead-letter headers, defined once.

pub mod avro;
pub mod connector;
pub mod error;
pub mod names;
pub mod record;
pub mod schema;

pub use arrow_array;
pub use arrow_cast;
pub use arrow_schema;
