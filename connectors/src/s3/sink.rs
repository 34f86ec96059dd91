//! The `s3` sink.
//!
//! Each write is one object holding the rows of one partition's batch (the sink asks the runtime
//! for per-partition writes), in JSON lines, CSV or Parquet (written straight from the Arrow
//! batches) or Avro object container files, optionally gzip- or zstd-compressed. Object keys come
//! from a template whose default,
//! `{flow}/{topic}/{partition}/{first_offset}.{ext}`, is a function of where the rows were read:
//! after a crash the batch read again from the committed offset gets the same key, so a retried
//! upload replaces the object instead of adding a duplicate. Large objects go up in multipart
//! uploads (aborted if a part fails).
//!
//! Template parts:
//!
//! - `{flow}`, `{topic}`, `{partition}`, `{first_offset}`, `{last_offset}` (zero-padded), `{ext}`;
//! - `{date}` (`YYYY-MM-DD`) and `{hour}` (`HH`, UTC) of each row's `_ts` when the query selects
//!   it, otherwise of the processing time (which a retry after a crash may not reproduce);
//! - `{field:NAME}`: each row's value of output column NAME (`/` written as `%2F`, null as
//!   `null`), as Kafka Connect's field partitioner does: `country={field:country}/…`;
//! - `{run_id}`: the run's id (a batch read again after a crash is written in a new run, so keys
//!   with it are not deterministic: a retried batch then adds an object rather than replacing one);
//! - `{schema_version}`: the Avro fingerprint (Rabin, hex) of the output schema, which changes
//!   when the flow's output columns or their types change.
//!
//! Rows of one write whose per-row parts differ go to different objects; each object's key still
//! names the batch's first offset, so the whole set is deterministic.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde::Deserialize;
use sluice_engine::connector::{Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;
use sluice_engine::names::column;

use super::template::{Origin, Part, civil, parse_template};
use super::{S3Connection, classify, client};
use crate::encode;

/// Object formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
    /// Apache Parquet, written from the Arrow batches.
    Parquet,
    /// Avro object container file (schema from the output columns; compression inside the
    /// container: `gzip` is Avro's `deflate` codec, `zstd` its `zstandard`).
    Avro,
}

/// Compression of the object (for Parquet: of its pages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None (Parquet: snappy, its usual default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

/// Per-flow options of an `s3` sink; the flow's `object` is the bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SinkOptions {
    /// `jsonl` (default), `csv`, `parquet` or `avro`.
    #[serde(default)]
    pub format: ObjectFormat,
    /// `none` (default), `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// The object key template (see the module docs).
    #[serde(default = "default_path")]
    pub path: String,
    /// Objects larger than this many bytes go up in parts of this size (at least 5 MiB).
    #[serde(default = "default_part_size")]
    pub part_size_bytes: usize,
}

impl Default for S3SinkOptions {
    fn default() -> Self {
        S3SinkOptions {
            format: ObjectFormat::default(),
            compression: Compression::default(),
            path: default_path(),
            part_size_bytes: default_part_size(),
        }
    }
}

fn default_path() -> String {
    "{flow}/{topic}/{partition}/{first_offset}.{ext}".into()
}

fn default_part_size() -> usize {
    8 << 20
}

/// Writes batches as objects.
pub struct S3Sink {
    pub(super) client: aws_sdk_s3::Client,
    connection: String,
    bucket: String,
    flow: String,
    options: S3SinkOptions,
    template: Vec<Part>,
    /// Whether the bucket was found and the credentials accepted.
    checked: bool,
    /// The Avro view of the last output schema seen (for Avro objects and `{schema_version}`).
    avro: Option<(SchemaRef, Arc<sluice_engine::avro::AvroRows>)>,
}

/// Rows of one input batch: its index and the row indices.
type BatchRows = (usize, Vec<u32>);

impl S3Sink {
    /// A sink writing to bucket `object` through connection `name`, for flow `flow`.
    pub fn new(
        name: &str,
        conn: &S3Connection,
        object: &str,
        options: S3SinkOptions,
        flow: &str,
    ) -> Result<S3Sink, ConnectorError> {
        let wrong = |what: String| ConnectorError::User(format!("s3 connection `{name}`: {what}"));
        if object.trim().len() < 3 {
            return Err(wrong("the flow's destination `object` must name a bucket (3 characters or more)".into()));
        }
        let template = parse_template(&options.path).map_err(&wrong)?;
        if options.part_size_bytes < 5 << 20 {
            return Err(wrong("`part_size_bytes` must be at least 5 MiB (5242880), S3's smallest part".into()));
        }
        Ok(S3Sink {
            client: client(name, conn)?,
            connection: name.to_owned(),
            bucket: object.trim().to_owned(),
            flow: flow.to_owned(),
            options,
            template,
            checked: false,
            avro: None,
        })
    }

    fn ext(&self) -> String {
        let base = match self.options.format {
            ObjectFormat::Jsonl => "jsonl",
            ObjectFormat::Csv => "csv",
            ObjectFormat::Parquet => "parquet",
            ObjectFormat::Avro => "avro",
        };
        match (self.options.format, self.options.compression) {
            (ObjectFormat::Parquet | ObjectFormat::Avro, _) | (_, Compression::None) => base.to_owned(),
            (_, Compression::Gzip) => format!("{base}.gz"),
            (_, Compression::Zstd) => format!("{base}.zst"),
        }
    }

    /// The Avro view of `schema` (cached while the output schema stays the same).
    fn avro_rows(&mut self, schema: &SchemaRef) -> Result<Arc<sluice_engine::avro::AvroRows>, ConnectorError> {
        if let Some((cached, rows)) = &self.avro
            && (Arc::ptr_eq(cached, schema) || cached == schema)
        {
            return Ok(rows.clone());
        }
        let rows = Arc::new(sluice_engine::avro::AvroRows::new(schema, &self.flow).map_err(|e| {
            ConnectorError::User(format!("s3 connection `{}`: flow `{}`: {e}", self.connection, self.flow))
        })?);
        self.avro = Some((schema.clone(), rows.clone()));
        Ok(rows)
    }

    /// The objects of one write: each key with its rows. Rows go to different objects only when
    /// the template has per-row parts (`{date}`/`{hour}` from `_ts`, `{field:…}`) that differ.
    fn objects(
        &mut self,
        batches: &[RecordBatch],
        ctx: WriteContext<'_>,
    ) -> Result<Vec<(String, Vec<RecordBatch>)>, ConnectorError> {
        let origin = Origin::of(ctx.batch_id)?;
        let schema_version = if self.template.contains(&Part::SchemaVersion) {
            match batches.first() {
                Some(b) => self.avro_rows(&b.schema())?.fingerprint(),
                None => String::new(),
            }
        } else {
            String::new()
        };
        let now = civil(sluice_engine::record::now_ms());
        let ext = self.ext();
        // The key text of every part that is the same for the whole write; per-row parts
        // stay `None` and are filled for each row.
        let fixed: Vec<Option<String>> = self
            .template
            .iter()
            .map(|p| match p {
                Part::Text(t) => Some(t.clone()),
                Part::Flow => Some(self.flow.clone()),
                Part::Topic => Some(origin.topic.to_owned()),
                Part::Partition => Some(origin.partition.to_owned()),
                Part::FirstOffset => Some(format!("{:020}", origin.first)),
                Part::LastOffset => Some(format!("{:020}", origin.last)),
                Part::Ext => Some(ext.clone()),
                Part::RunId => Some(ctx.run_id.to_owned()),
                Part::SchemaVersion => Some(schema_version.clone()),
                Part::Date | Part::Hour | Part::Field(_) => None,
            })
            .collect();
        let has_ts = batches
            .iter()
            .any(|b| b.column_by_name(column::TS).is_some_and(|c| c.as_any().is::<TimestampMillisecondArray>()));
        let per_row = self
            .template
            .iter()
            .any(|p| matches!(p, Part::Field(_)) || (matches!(p, Part::Date | Part::Hour) && has_ts));
        if !per_row {
            // Every row gets the same key (the usual case): build it once, copy nothing.
            let key: String = self
                .template
                .iter()
                .zip(&fixed)
                .map(|(part, text)| match (part, text) {
                    (_, Some(t)) => t.as_str(),
                    (Part::Date, None) => now.0.as_str(),
                    (Part::Hour, None) => now.1.as_str(),
                    _ => "",
                })
                .collect();
            return Ok(vec![(key, batches.to_vec())]);
        }
        // Each object's key and, per input batch, the rows of it that go there.
        let mut groups: Vec<(String, Vec<BatchRows>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (bi, batch) in batches.iter().enumerate() {
            let ts =
                batch.column_by_name(column::TS).and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>());
            let mut fields = HashMap::new();
            for p in &self.template {
                if let Part::Field(name) = p
                    && !fields.contains_key(name.as_str())
                {
                    let Some(col) = batch.column_by_name(name) else {
                        let have: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
                        return Err(ConnectorError::User(format!(
                            "s3 connection `{}`: `path` uses {{field:{name}}} but the flow's output has no column `{name}` (it has: {})",
                            self.connection,
                            have.join(", ")
                        )));
                    };
                    let text = arrow_cast::cast(col, &arrow_schema::DataType::Utf8).map_err(|e| {
                        ConnectorError::internal(format!("rendering column `{name}` for an s3 key"), e.to_string())
                    })?;
                    fields.insert(name.as_str(), text);
                }
            }
            for row in 0..batch.num_rows() {
                let at = ts.and_then(|t| t.is_valid(row).then(|| civil(t.value(row))));
                let (date, hour) = at.as_ref().unwrap_or(&now);
                let mut key = String::new();
                for (part, text) in self.template.iter().zip(&fixed) {
                    match (part, text) {
                        (_, Some(t)) => key.push_str(t),
                        (Part::Date, None) => key.push_str(date),
                        (Part::Hour, None) => key.push_str(hour),
                        (Part::Field(name), None) => {
                            let col = fields
                                .get(name.as_str())
                                .map(|c| c.as_any().downcast_ref::<arrow_array::StringArray>());
                            match col.flatten() {
                                Some(c) if c.is_valid(row) => key.push_str(&c.value(row).replace('/', "%2F")),
                                _ => key.push_str("null"),
                            }
                        }
                        _ => {}
                    }
                }
                let g = match index.get(&key) {
                    Some(&g) => g,
                    None => {
                        index.insert(key.clone(), groups.len());
                        groups.push((key, Vec::new()));
                        groups.len() - 1
                    }
                };
                let rows = &mut groups[g].1;
                match rows.last_mut() {
                    Some((b, idx)) if *b == bi => idx.push(row as u32),
                    _ => rows.push((bi, vec![row as u32])),
                }
            }
        }
        if let [(key, _)] = groups.as_slice() {
            // Per-row parts that came out the same for every row: no copying.
            return Ok(vec![(key.clone(), batches.to_vec())]);
        }
        groups
            .into_iter()
            .map(|(key, rows)| {
                let parts = rows
                    .into_iter()
                    .map(|(bi, idx)| {
                        arrow_select::take::take_record_batch(&batches[bi], &UInt32Array::from(idx)).map_err(|e| {
                            ConnectorError::internal(format!("splitting rows for s3 key {key}"), e.to_string())
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((key, parts))
            })
            .collect()
    }

    fn encode(&mut self, batches: &[RecordBatch]) -> Result<Vec<u8>, ConnectorError> {
        let context = format!("encoding an object for s3 connection `{}`", self.connection);
        let err = |e: String| ConnectorError::internal(context.clone(), e);
        let raw = match self.options.format {
            ObjectFormat::Jsonl => {
                let mut buf = Vec::new();
                encode::json_lines(batches, &mut buf)?;
                buf
            }
            ObjectFormat::Csv => {
                let mut buf = Vec::new();
                encode::csv(batches, &mut buf)?;
                buf
            }
            ObjectFormat::Parquet => {
                use parquet::basic::{Compression as Pc, GzipLevel, ZstdLevel};
                let codec = match self.options.compression {
                    Compression::None => Pc::SNAPPY,
                    Compression::Gzip => Pc::GZIP(GzipLevel::default()),
                    Compression::Zstd => Pc::ZSTD(ZstdLevel::default()),
                };
                let props = parquet::file::properties::WriterProperties::builder().set_compression(codec).build();
                let Some(first) = batches.first() else { return Ok(Vec::new()) };
                let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), first.schema(), Some(props))
                    .map_err(|e| err(e.to_string()))?;
                for b in batches {
                    w.write(b).map_err(|e| err(e.to_string()))?;
                }
                return w.into_inner().map_err(|e| err(e.to_string()));
            }
            ObjectFormat::Avro => {
                let Some(first) = batches.first() else { return Ok(Vec::new()) };
                let rows = self.avro_rows(&first.schema())?;
                let codec = match self.options.compression {
                    Compression::None => apache_avro::Codec::Null,
                    Compression::Gzip => apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default()),
                    Compression::Zstd => apache_avro::Codec::Zstandard(apache_avro::ZstandardSettings::default()),
                };
                let mut w = apache_avro::Writer::with_codec(rows.schema(), Vec::new(), codec);
                for b in batches {
                    for v in rows.values(b).map_err(|e| err(e.to_string()))? {
                        w.append(v).map_err(|e| err(e.to_string()))?;
                    }
                }
                return w.into_inner().map_err(|e| err(e.to_string()));
            }
        };
        match self.options.compression {
            Compression::None => Ok(raw),
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(&raw).and_then(|()| enc.finish()).map_err(|e| err(e.to_string()))
            }
            Compression::Zstd => zstd::encode_all(raw.as_slice(), 3).map_err(|e| err(e.to_string())),
        }
    }

    async fn upload(&self, key: &str, body: Vec<u8>) -> Result<(), ConnectorError> {
        let doing = format!("writing s3://{}/{key} (s3 connection `{}`)", self.bucket, self.connection);
        if body.len() <= self.options.part_size_bytes {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| classify(&doing, e))?;
            return Ok(());
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(&doing, e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(ConnectorError::retriable(doing, "no upload id in the answer"));
        };
        let mut parts = Vec::new();
        let result = async {
            for (i, chunk) in body.chunks(self.options.part_size_bytes).enumerate() {
                let n = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(n)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| classify(&doing, e))?;
                parts.push(CompletedPart::builder().part_number(n).set_e_tag(part.e_tag().map(str::to_owned)).build());
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| classify(&doing, e))
        }
        .await;
        if result.is_err() {
            // Leave no orphaned parts behind (they are billed); the retry starts over.
            let _ =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(upload_id).send().await;
        }
        result.map(drop)
    }
}

#[async_trait]
impl Sink for S3Sink {
    async fn write(&mut self, batches: &[RecordBatch], ctx: WriteContext<'_>) -> Result<Written, ConnectorError> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(Written::all());
        }
        if !self.checked {
            // Before the first object: a missing bucket or refused credentials is a clear error
            // now (some S3-protocol servers would create the bucket on a put).
            let doing = format!("checking bucket {} (s3 connection `{}`)", self.bucket, self.connection);
            self.client
                .list_objects_v2()
                .bucket(&self.bucket)
                .max_keys(1)
                .send()
                .await
                .map_err(|e| classify(&doing, e))?;
            self.checked = true;
        }
        for (key, rows) in self.objects(batches, ctx)? {
            let body = self.encode(&rows)?;
            self.upload(&key, body).await?;
        }
        Ok(Written::all())
    }

    fn describe(&self) -> String {
        format!("s3://{}/ (connection `{}`)", self.bucket, self.connection)
    }

    fn per_partition(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_engine::secret::Secret;

    #[test]
    fn keys_follow_the_template_and_the_batch() {
        let conn = S3Connection {
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            path_style: true,
            access_key_id: Secret::new("a"),
            secret_access_key: Secret::new("s3cr3t"),
            session_token: None,
            allow_private_addresses: true,
        };
        let opts = S3SinkOptions { compression: Compression::Gzip, ..S3SinkOptions::default() };
        let sink = S3Sink::new("lake", &conn, "bucket", opts, "orders").unwrap();
        let mut sink = sink;
        let ctx = WriteContext { batch_id: "sluice.orders.changes/2:100-199", run_id: "r1" };
        let one = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(arrow_array::Int64Array::from(vec![1])) as arrow_array::ArrayRef,
        )])
        .unwrap();
        let objects = sink.objects(std::slice::from_ref(&one), ctx).unwrap();
        assert_eq!(objects[0].0, "orders/sluice.orders.changes/2/00000000000000000100.jsonl.gz");
        assert!(!format!("{conn:?}").contains("s3cr3t"));
        let e = S3Sink::new("lake", &conn, "b", S3SinkOptions::default(), "f").err().unwrap().to_string();
        assert!(e.contains("lake") && e.contains("bucket"), "{e}");
        let bad = S3SinkOptions { path: "{flow}/{nope}.{ext}".into(), ..S3SinkOptions::default() };
        let e = S3Sink::new("lake", &conn, "bucket", bad, "f").err().unwrap().to_string();
        assert!(e.contains("{nope}") && e.contains("{field:COLUMN}"), "{e}");
    }

    #[test]
    fn per_row_parts_split_a_write_into_objects() {
        let conn = S3Connection {
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            path_style: true,
            access_key_id: Secret::new("a"),
            secret_access_key: Secret::new("s"),
            session_token: None,
            allow_private_addresses: true,
        };
        let opts = S3SinkOptions {
            format: ObjectFormat::Avro,
            path: "{field:country}/{date}-{hour}/{run_id}/{schema_version}/{first_offset}.{ext}".into(),
            ..S3SinkOptions::default()
        };
        let mut sink = S3Sink::new("lake", &conn, "bucket", opts, "orders").unwrap();
        let hour = 3_600_000;
        let batch = RecordBatch::try_from_iter(vec![
            (
                "country",
                Arc::new(arrow_array::StringArray::from(vec![Some("fr"), Some("a/b"), None, Some("fr")]))
                    as arrow_array::ArrayRef,
            ),
            (
                "_ts",
                Arc::new(TimestampMillisecondArray::from(vec![0, 0, 0, hour]).with_timezone("UTC"))
                    as arrow_array::ArrayRef,
            ),
        ])
        .unwrap();
        let ctx = WriteContext { batch_id: "t/0:7-10", run_id: "run9" };
        let objects = sink.objects(std::slice::from_ref(&batch), ctx).unwrap();
        let keys: Vec<(&str, usize)> =
            objects.iter().map(|(k, b)| (k.as_str(), b.iter().map(|b| b.num_rows()).sum())).collect();
        let v = sink.avro_rows(&batch.schema()).unwrap().fingerprint();
        let pad = "00000000000000000007";
        assert_eq!(
            keys,
            [
                (format!("fr/1970-01-01-00/run9/{v}/{pad}.avro").as_str(), 1),
                (format!("a%2Fb/1970-01-01-00/run9/{v}/{pad}.avro").as_str(), 1),
                (format!("null/1970-01-01-00/run9/{v}/{pad}.avro").as_str(), 1),
                (format!("fr/1970-01-01-01/run9/{v}/{pad}.avro").as_str(), 1),
            ]
        );
        let body = sink.encode(&objects[0].1).unwrap();
        let back: Vec<_> = apache_avro::Reader::new(body.as_slice()).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(back.len(), 1);
        let missing = S3SinkOptions { path: "{field:nope}/{first_offset}".into(), ..S3SinkOptions::default() };
        let mut sink = S3Sink::new("lake", &conn, "bucket", missing, "orders").unwrap();
        let e = sink.objects(&[batch], ctx).unwrap_err().to_string();
        assert!(e.contains("no column `nope`") && e.contains("country, _ts"), "{e}");
    }
}
