//! `file`: JSON-lines or CSV files as a source, JSON-lines files as a sink.
//!
//! The connection names a base directory; a flow's `object` is a file or a directory below it
//! (a directory is read file by file in name order). The source's position is the file and the
//! next line, so a restarted flow resumes there. A line that does not parse is sent to the DLQ
//! with its file and line number and the flow goes on.
//!
//! A JSON line travels as its own text (see [`crate::json_text`]): numbers keep their digits,
//! and a line that names a field twice is refused. A UTF-8 byte-order mark at the start of a
//! file is skipped. A line longer than [`MAX_LINE_BYTES`] is not held whole: its first bytes
//! go to the DLQ with its length.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sluice_engine::connector::{Poll, Position, Sink, Source, SourceItem, WriteContext, Written};
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Op, now_ms};

use crate::encode;
use crate::json_text;

use crate::connector::{BuiltSink, Connector, Context, Input};

/// The `file` connection: a base directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnection {
    /// Directory that flows' `object` paths are relative to.
    pub path: PathBuf,
}

/// The `file` connector: files below a directory, as a source or a destination.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileConnector;

#[async_trait]
impl Connector for FileConnector {
    const NAME: &'static str = "file";
    type Connection = FileConnection;
    type SourceOptions = FileSourceOptions;
    type SinkOptions = FileSinkOptions;

    async fn healthcheck(&self, ctx: Context<'_>, conn: &FileConnection) -> Result<String, ConnectorError> {
        test_connection(ctx.connection, conn)
    }

    // The files are read at run time; they may not exist yet.
    fn check_source(
        &self,
        _: Context<'_>,
        _: &FileConnection,
        _: &str,
        _: &FileSourceOptions,
    ) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn build_source(
        &self,
        _: Context<'_>,
        conn: &FileConnection,
        object: &str,
        options: &FileSourceOptions,
        _follow: bool,
    ) -> Result<Input, ConnectorError> {
        Ok(Input::Source(Box::new(FileSource::new(conn, object, options.clone())?)))
    }

    // The file is created at run time.
    fn check_sink(
        &self,
        _: Context<'_>,
        _: &FileConnection,
        _: &str,
        _: &FileSinkOptions,
    ) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn build_sink(
        &self,
        ctx: Context<'_>,
        conn: &FileConnection,
        object: &str,
        options: &FileSinkOptions,
    ) -> Result<BuiltSink, ConnectorError> {
        let sink = Box::new(FileSink::new(conn, object, options.clone())?);
        let (name, conn) = (ctx.connection.to_owned(), conn.clone());
        Ok(BuiltSink { sink, healthcheck: Box::pin(async move { test_connection(&name, &conn) }) })
    }
}

/// Checks that a `file` connection's directory exists and is a directory.
pub fn test_connection(name: &str, c: &FileConnection) -> Result<String, ConnectorError> {
    match std::fs::metadata(&c.path) {
        Ok(m) if m.is_dir() => Ok(format!("directory {} exists", c.path.display())),
        Ok(_) => {
            Err(ConnectorError::User(format!("file connection `{name}`: {} is not a directory", c.path.display())))
        }
        // Sinks create it on first write; say so rather than fail.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(format!("directory {} does not exist yet; a file sink creates it", c.path.display()))
        }
        Err(e) => Err(ConnectorError::io(format!("file connection `{name}`: reading {}", c.path.display()), e)),
    }
}

/// File formats a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
}

/// Per-flow options of a `file` source.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileSourceOptions {
    /// `jsonl` or `csv`; by default taken from each file's extension (`.csv` is CSV).
    pub format: Option<FileFormat>,
    /// Fields that identify a row; they become the Kafka key. None: records are unkeyed.
    #[serde(default)]
    pub key: Vec<String>,
}

/// Per-flow options of a `file` sink.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileSinkOptions {}

/// Reads files in name order, line by line.
pub struct FileSource {
    files: Vec<PathBuf>,
    opts: FileSourceOptions,
    /// Index into `files` of the file being read.
    current: usize,
    reader: Option<Reader>,
    /// Line number (1-based) of the next line to read in the current file.
    line: u64,
    /// Lines to skip in the first file after a resume.
    skip_to: u64,
}

enum Reader {
    Lines(BufReader<File>),
    Csv(csv::StringRecordsIntoIter<BufReader<File>>, csv::StringRecord),
}

impl FileSource {
    /// A source over `object` below the connection's directory.
    pub fn new(conn: &FileConnection, object: &str, opts: FileSourceOptions) -> Result<Self, ConnectorError> {
        let root = conn.path.join(object);
        let files = list_files(&root)?;
        Ok(FileSource { files, opts, current: 0, reader: None, line: 1, skip_to: 1 })
    }

    fn name(&self) -> String {
        self.files.get(self.current).map(|p| p.display().to_string()).unwrap_or_default()
    }

    fn format_of(&self, path: &Path) -> FileFormat {
        self.opts.format.unwrap_or_else(|| {
            if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
                FileFormat::Csv
            } else {
                FileFormat::Jsonl
            }
        })
    }

    fn open_current(&mut self) -> Result<(), ConnectorError> {
        let path = &self.files[self.current];
        let file = File::open(path).map_err(|e| ConnectorError::io(format!("opening {}", path.display()), e))?;
        self.reader = Some(match self.format_of(path) {
            FileFormat::Jsonl => {
                let mut r = BufReader::new(file);
                skip_bom(&mut r).map_err(|e| ConnectorError::io(format!("reading {}", path.display()), e))?;
                Reader::Lines(r)
            }
            FileFormat::Csv => {
                let mut file = BufReader::new(file);
                skip_bom(&mut file).map_err(|e| ConnectorError::io(format!("reading {}", path.display()), e))?;
                let mut r = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(file);
                let headers = r
                    .headers()
                    .map_err(|e| {
                        let context = format!("reading CSV header of {}", path.display());
                        // A disk that failed may pass; a header that does not parse will not.
                        if e.is_io_error() {
                            ConnectorError::retriable(context, e.to_string())
                        } else {
                            ConnectorError::User(format!("{context}: {e}"))
                        }
                    })?
                    .clone();
                self.line = 2;
                Reader::Csv(r.into_records(), headers)
            }
        });
        if !matches!(self.reader, Some(Reader::Csv(..))) {
            self.line = 1;
        }
        Ok(())
    }

    fn record(
        &self,
        key: Map<String, Value>,
        after: Option<Map<String, Value>>,
        after_json: Option<Box<RawValue>>,
    ) -> ChangeRecord {
        let mut source = Map::new();
        source.insert("connector".into(), json!("file"));
        source.insert("file".into(), json!(self.name()));
        source.insert("line".into(), json!(self.line));
        ChangeRecord { key, before: None, after, after_json, op: Op::Read, source, ts_ms: now_ms() }
    }

    /// The key of a row: its `key` fields, null where missing.
    fn key_of(&self, get: impl Fn(&str) -> Option<Value>) -> Map<String, Value> {
        self.opts.key.iter().map(|k| (k.clone(), get(k).unwrap_or(Value::Null))).collect()
    }
}

fn list_files(root: &Path) -> Result<Vec<PathBuf>, ConnectorError> {
    let meta = std::fs::metadata(root).map_err(|e| ConnectorError::io(format!("reading {}", root.display()), e))?;
    if meta.is_file() {
        return Ok(vec![root.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| ConnectorError::io(format!("listing {}", root.display()), e))? {
        let entry = entry.map_err(|e| ConnectorError::io(format!("listing {}", root.display()), e))?;
        let p = entry.path();
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if p.is_file() && !hidden {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

#[async_trait]
impl Source for FileSource {
    async fn open(&mut self, resume: Option<Position>) -> Result<(), ConnectorError> {
        if let Some(p) = resume {
            let file = p.get("file").and_then(Value::as_str).unwrap_or_default();
            if let Some(i) = self.files.iter().position(|f| f.display().to_string() == file) {
                self.current = i;
                self.skip_to = p.get("next_line").and_then(Value::as_u64).unwrap_or(1);
            }
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Poll, ConnectorError> {
        let mut items = Vec::new();
        while items.len() < max {
            if self.current >= self.files.len() {
                break;
            }
            if self.reader.is_none() {
                self.open_current()?;
            }
            let name = self.name();
            // One line (or CSV record) per iteration.
            let next: Option<Line> = match self.reader.as_mut() {
                Some(Reader::Lines(r)) => {
                    match read_line(r, MAX_LINE_BYTES).map_err(|e| ConnectorError::io(format!("reading {name}"), e))? {
                        ReadLine::End => None,
                        ReadLine::TooLong { start, len } => Some(Line::Bad(
                            start,
                            format!(
                                "a line of {len} bytes is longer than a line may be ({MAX_LINE_BYTES} bytes); its start is kept"
                            ),
                        )),
                        ReadLine::Line(mut buf) => {
                            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                                buf.pop();
                            }
                            if buf.iter().all(u8::is_ascii_whitespace) {
                                Some(Line::Blank)
                            } else {
                                Some(match String::from_utf8(buf) {
                                    Err(e) => Line::Bad(e.into_bytes(), "the line is not valid UTF-8".into()),
                                    Ok(text) => match json_text::object_fields(text.trim()) {
                                        Err(why) => Line::Bad(text.into_bytes(), why.to_string()),
                                        Ok(fields) => {
                                            let key = self.key_of(|k| {
                                                fields.iter().find(|(n, _)| n == k).map(|(_, v)| json_text::value_of(v))
                                            });
                                            let trimmed = text.trim().len() == text.len();
                                            let text = if trimmed { text } else { text.trim().to_owned() };
                                            match RawValue::from_string(text) {
                                                Ok(raw) => Line::Json(key, raw),
                                                Err(e) => Line::Bad(Vec::new(), format!("invalid JSON: {e}")),
                                            }
                                        }
                                    },
                                })
                            }
                        }
                    }
                }
                Some(Reader::Csv(records, headers)) => match records.next() {
                    None => None,
                    Some(Ok(rec)) => {
                        let mut m = Map::new();
                        for (h, v) in headers.iter().zip(rec.iter()) {
                            m.insert(h.to_owned(), if v.is_empty() { Value::Null } else { json!(v) });
                        }
                        Some(Line::Row(m))
                    }
                    Some(Err(e)) => {
                        let raw = e.to_string().into_bytes();
                        Some(Line::Bad(raw, format!("invalid CSV: {e}")))
                    }
                },
                None => None,
            };
            let Some(next) = next else {
                // End of this file: on to the next one.
                self.reader = None;
                self.current += 1;
                self.skip_to = 1;
                continue;
            };
            let line = self.line;
            self.line += 1;
            if line < self.skip_to {
                continue;
            }
            let position = json!({ "file": name, "next_line": self.line });
            match next {
                Line::Blank => {}
                Line::Json(key, raw) => {
                    items.push(SourceItem::Record { record: self.record(key, None, Some(raw)), position })
                }
                Line::Row(row) => {
                    let key = self.key_of(|k| row.get(k).cloned());
                    items.push(SourceItem::Record { record: self.record(key, Some(row), None), position })
                }
                Line::Bad(payload, why) => items.push(SourceItem::Malformed {
                    payload,
                    reason: format!("{name} line {line}: {why}"),
                    position,
                }),
            }
        }
        if items.is_empty() && self.current >= self.files.len() {
            return Ok(Poll::Exhausted);
        }
        Ok(Poll::Items(items))
    }
}

/// The longest line the source holds in memory; a longer one is dead-lettered by its start.
/// (Far more than any record the cluster takes: `kafka.max_record_bytes` decides what is too
/// large to send, with the record whole in hand; this only keeps a runaway line — a file with no
/// newlines — from taking the memory.)
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// How much of a line that is too long to hold is kept for its dead letter.
const KEPT_OF_LONG_LINE: usize = 64 * 1024;

/// What one line of a file is.
enum Line {
    /// Nothing but white space: skipped.
    Blank,
    /// A JSON object: its key, and its text as written.
    Json(Map<String, Value>, Box<RawValue>),
    /// A CSV record's fields.
    Row(Map<String, Value>),
    /// Not a record: the bytes to dead-letter and why.
    Bad(Vec<u8>, String),
}

/// What reading a line gave.
enum ReadLine {
    /// The end of the file.
    End,
    /// A line, with its end of line.
    Line(Vec<u8>),
    /// A line longer than the limit: its first bytes and its whole length (it was read past).
    TooLong { start: Vec<u8>, len: usize },
}

/// Reads one line, holding at most `max` bytes of it.
fn read_line(r: &mut impl BufRead, max: usize) -> std::io::Result<ReadLine> {
    let mut buf = Vec::new();
    let (mut len, mut too_long) = (0usize, false);
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        len += take;
        if !too_long && len > max {
            too_long = true;
            buf.truncate(KEPT_OF_LONG_LINE);
        }
        if !too_long {
            buf.extend_from_slice(&chunk[..take]);
        } else if buf.len() < KEPT_OF_LONG_LINE {
            let room = KEPT_OF_LONG_LINE - buf.len();
            buf.extend_from_slice(&chunk[..take.min(room)]);
        }
        r.consume(take);
        if done {
            break;
        }
    }
    Ok(match (len, too_long) {
        (0, _) => ReadLine::End,
        (_, false) => ReadLine::Line(buf),
        (len, true) => ReadLine::TooLong { start: buf, len },
    })
}

/// Skips a UTF-8 byte-order mark at the start of a file.
fn skip_bom(r: &mut impl BufRead) -> std::io::Result<()> {
    if r.fill_buf()?.starts_with(json_text::BOM) {
        r.consume(json_text::BOM.len());
    }
    Ok(())
}

/// Appends rows as JSON lines to one file, synced to disk before each write is acknowledged.
pub struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    /// A sink writing `object` below the connection's directory (parents are created).
    pub fn new(conn: &FileConnection, object: &str, _opts: FileSinkOptions) -> Result<Self, ConnectorError> {
        let path = conn.path.join(object);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ConnectorError::io(format!("creating directory {}", parent.display()), e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ConnectorError::io(format!("opening {} for append", path.display()), e))?;
        Ok(FileSink { path, file })
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batches: &[RecordBatch], _: WriteContext<'_>) -> Result<Written, ConnectorError> {
        let mut buf = Vec::new();
        encode::json_lines(batches, &mut buf)?;
        let ctx = || format!("writing {}", self.path.display());
        self.file.write_all(&buf).map_err(|e| ConnectorError::io(ctx(), e))?;
        // Acknowledged means on disk: offsets are committed right after this returns.
        self.file.sync_data().map_err(|e| ConnectorError::io(ctx(), e))?;
        Ok(Written::all())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn malformed_lines_carry_their_line_number_and_the_rest_flows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{\"id\":1}\n{oops\n\n[1]\n{\"id\":2}\n").unwrap();
        let conn = FileConnection { path: dir.path().to_owned() };
        let mut s =
            FileSource::new(&conn, "a.jsonl", FileSourceOptions { format: None, key: vec!["id".into()] }).unwrap();
        s.open(None).await.unwrap();
        let Poll::Items(items) = s.poll(100).await.unwrap() else { panic!() };
        let kinds: Vec<String> = items
            .iter()
            .map(|i| match i {
                SourceItem::Record { record, .. } => format!("ok {}", serde_json::to_string(&record.key).unwrap()),
                SourceItem::Malformed { reason, .. } => format!("bad {}", reason.split(": ").next().unwrap()),
                SourceItem::Checkpoint { .. } => "checkpoint".to_owned(),
            })
            .collect();
        let f = dir.path().join("a.jsonl").display().to_string();
        assert_eq!(
            kinds,
            vec![
                "ok {\"id\":1}".to_string(),
                format!("bad {f} line 2"),
                format!("bad {f} line 4"),
                "ok {\"id\":2}".to_string()
            ]
        );
        assert!(matches!(s.poll(100).await.unwrap(), Poll::Exhausted));
    }

    #[tokio::test]
    async fn resumes_at_the_stored_line_across_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.jsonl"), "{\"n\":1}\n{\"n\":2}\n").unwrap();
        std::fs::write(dir.path().join("2.csv"), "n,name\n3,c\n4,d\n").unwrap();
        let conn = FileConnection { path: dir.path().to_owned() };
        let mut s = FileSource::new(&conn, ".", FileSourceOptions::default()).unwrap();
        s.open(None).await.unwrap();
        let Poll::Items(items) = s.poll(3).await.unwrap() else { panic!() };
        assert_eq!(items.len(), 3);
        let SourceItem::Record { position, .. } = &items[2] else { panic!() };
        let mut r = FileSource::new(&conn, ".", FileSourceOptions::default()).unwrap();
        r.open(Some(position.clone())).await.unwrap();
        let Poll::Items(rest) = r.poll(10).await.unwrap() else { panic!() };
        assert_eq!(rest.len(), 1);
        let SourceItem::Record { record, .. } = &rest[0] else { panic!() };
        assert_eq!(record.after.as_ref().unwrap()["n"], json!("4"));
    }
}
