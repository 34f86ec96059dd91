//! `logfmt`: rows appended as logfmt lines (`id=7 name="Ada L." amount=12.5`) to a file below
//! the connection's directory — a small sink that shows each part of a connector:
//!
//! - the connection (shared settings) and the per-flow options, each a serde struct that
//!   denies unknown fields, so a typo is an error with its line;
//! - the health check `sluice connections test` runs;
//! - the sink's three outcomes: `Ok` (every row durably written), `Ok` with rows refused (a
//!   row longer than `max_line_bytes` goes to the flow's dead-letter topic with the reason, the
//!   rest are written), `Err` (the runtime retries if the error says a retry can help).
//!
//! ```yaml
//! connections:
//!   logs: { type: logfmt, dir: out }
//! flows:
//!   - name: orders
//!     source: { connection: gen, object: orders, options: { count: 100 } }
//!     destination: { connection: logs, object: orders.log, options: { max_line_bytes: 200 } }
//! ```

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::Deserialize;
use sluice::engine::arrow_array::RecordBatch;
use sluice::engine::arrow_cast::display::{ArrayFormatter, FormatOptions};
use sluice::engine::connector::{RejectedRow, Sink, WriteContext, Written};
use sluice::engine::error::ConnectorError;
use sluice::{BuiltSink, Connector, Context, Input, Unsupported};

/// The connector; registered with `sluice::registry().with(LogfmtConnector)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogfmtConnector;

/// `type: logfmt` — where the files go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogfmtConnection {
    /// The directory flows' `object` files are written in (created if missing).
    pub dir: PathBuf,
}

/// A flow's destination options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogfmtOptions {
    /// Rows whose line would be longer are refused (to the dead-letter topic), not cut.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
}

fn default_max_line() -> usize {
    4096
}

#[async_trait]
impl Connector for LogfmtConnector {
    const NAME: &'static str = "logfmt";
    type Connection = LogfmtConnection;
    // A destination only: sluice refuses a flow that reads from a `logfmt` connection.
    type SourceOptions = Unsupported;
    type SinkOptions = LogfmtOptions;

    async fn healthcheck(&self, ctx: Context<'_>, conn: &LogfmtConnection) -> Result<String, ConnectorError> {
        check_dir(ctx.connection, conn)
    }

    fn build_source(
        &self,
        _: Context<'_>,
        _: &LogfmtConnection,
        _: &str,
        options: &Unsupported,
        _: bool,
    ) -> Result<Input, ConnectorError> {
        match *options {}
    }

    fn check_sink(
        &self,
        ctx: Context<'_>,
        _: &LogfmtConnection,
        object: &str,
        options: &LogfmtOptions,
    ) -> Result<(), ConnectorError> {
        // Refused at `sluice validate`, with the flow's destination line, not at run time.
        if object.is_empty() || object.contains("..") {
            return Err(ConnectorError::User(format!(
                "logfmt connection `{}`: `object` must name a file below the directory",
                ctx.connection
            )));
        }
        if options.max_line_bytes < 16 {
            return Err(ConnectorError::User("`max_line_bytes` must be at least 16".into()));
        }
        Ok(())
    }

    async fn build_sink(
        &self,
        ctx: Context<'_>,
        conn: &LogfmtConnection,
        object: &str,
        options: &LogfmtOptions,
    ) -> Result<BuiltSink, ConnectorError> {
        self.check_sink(ctx, conn, object, options)?;
        std::fs::create_dir_all(&conn.dir)
            .map_err(|e| ConnectorError::io(format!("creating directory {}", conn.dir.display()), e))?;
        let path = conn.dir.join(object);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ConnectorError::io(format!("opening {} for append", path.display()), e))?;
        let sink = LogfmtSink { path, file, max_line: options.max_line_bytes, buf: String::new() };
        let (name, conn) = (ctx.connection.to_owned(), conn.clone());
        Ok(BuiltSink { sink: Box::new(sink), healthcheck: Box::pin(async move { check_dir(&name, &conn) }) })
    }
}

fn check_dir(name: &str, conn: &LogfmtConnection) -> Result<String, ConnectorError> {
    match std::fs::metadata(&conn.dir) {
        Ok(m) if m.is_dir() => Ok(format!("directory {} exists", conn.dir.display())),
        Ok(_) => Err(ConnectorError::User(format!("logfmt connection `{name}`: {} is not a directory", conn.dir.display()))),
        Err(_) => Ok(format!("directory {} will be created", conn.dir.display())),
    }
}

struct LogfmtSink {
    path: PathBuf,
    file: File,
    max_line: usize,
    /// The text of one write, kept between writes so its memory is reused.
    buf: String,
}

#[async_trait]
impl Sink for LogfmtSink {
    async fn write(&mut self, batches: &[RecordBatch], _: WriteContext<'_>) -> Result<Written, ConnectorError> {
        let mut written = Written::all();
        self.buf.clear();
        let mut index = 0;
        let options = FormatOptions::default().with_null("");
        for batch in batches {
            let schema = batch.schema();
            let columns = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConnectorError::User(format!("formatting rows for {}: {e}", self.path.display())))?;
            for row in 0..batch.num_rows() {
                let start = self.buf.len();
                for (field, column) in schema.fields().iter().zip(&columns) {
                    let value = column.value(row).to_string();
                    let sep = if self.buf.len() == start { "" } else { " " };
                    if value.is_empty() || value.contains([' ', '"', '=']) {
                        let _ = write!(self.buf, "{sep}{}={value:?}", field.name());
                    } else {
                        let _ = write!(self.buf, "{sep}{}={value}", field.name());
                    }
                }
                if self.buf.len() - start > self.max_line {
                    // A refused row: it goes to the flow's DLQ with this reason; the rest of
                    // the batch is still written.
                    let len = self.buf.len() - start;
                    self.buf.truncate(start);
                    let reason = format!("the line would be {len} bytes, over max_line_bytes ({})", self.max_line);
                    written.rejected.push(RejectedRow { index, reason });
                } else {
                    self.buf.push('\n');
                }
                index += 1;
            }
        }
        // Acknowledged means on disk: the runtime commits offsets once this returns `Ok`. A
        // failure here is worth retrying (a full disk may be freed): I/O errors say so.
        let doing = || format!("writing {}", self.path.display());
        self.file.write_all(self.buf.as_bytes()).map_err(|e| ConnectorError::io(doing(), e))?;
        self.file.sync_data().map_err(|e| ConnectorError::io(doing(), e))?;
        Ok(written)
    }

    fn describe(&self) -> String {
        format!("logfmt {}", self.path.display())
    }
}
