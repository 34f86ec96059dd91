//! # sluice-connectors
//!
//! One module per connector, each a type implementing [`Connector`] (see [`connector`]); the
//! registry that lists them is in the `sluice` crate, so a crate outside this workspace can add
//! its own:
//!
//! | connector  | type | source | sink | module |
//! |------------|------|--------|------|--------|
//! | `generate` | [`GenerateConnector`] | yes | | [`generate`] |
//! | `file`     | [`FileConnector`] | yes | yes | [`file`] |
//! | `http`     | [`HttpConnector`] | yes | yes | [`http_source`], [`http`] |
//! | `kafka`    | [`KafkaConnector`] | yes | yes | [`kafka`] |
//! | `postgres` | [`PostgresConnector`] | yes | yes | [`postgres_query`] (pulls), [`postgres_cdc`] (change data capture), [`postgres`] (sink) |
//! | `s3`       | [`S3Connector`] | | yes | [`s3`] |
//! | `stdout`   | [`StdoutConnector`] | | yes | [`stdout`] |
//!
//! A connector is a *connection* type (settings and credentials, written once under
//! `connections:` and shared by flows) plus per-flow *options* types for its source and sink
//! sides. Config is parsed in two steps — first the connection's `type`, then its body and the
//! flows' options with that connector's types — so every struct can deny unknown fields and
//! errors name the exact field.

pub mod connector;
pub mod encode;
pub mod file;
#[doc(hidden)]
pub mod fuzz;
pub mod generate;
pub mod guard;
pub mod halving;
pub mod http;
pub mod http_source;
pub mod json_text;
pub mod kafka;
pub mod postgres;
pub mod postgres_cdc;
pub mod postgres_query;
pub mod s3;
pub mod schema_registry;
pub mod stdout;

pub use connector::{BuiltSink, Connector, Context, HealthCheck, Input, ObjectColumns, Unsupported};
pub use file::FileConnector;
pub use generate::GenerateConnector;
pub use http::HttpConnector;
pub use kafka::KafkaConnector;
pub use postgres::PostgresConnector;
pub use s3::S3Connector;
pub use stdout::StdoutConnector;
