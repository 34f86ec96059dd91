//! `s3`: output rows written as objects to Amazon S3 or any S3-protocol server (MinIO, Ceph, …).
//!
//! Each write is one object holding the rows of one partition's batch (the sink asks the runtime
//! for per-partition writes), in JSON lines, CSV or Parquet (written straight from the Arrow
//! batches), optionally gzip- or zstd-compressed. Object keys come from a template whose default,
//! `{flow}/{topic}/{partition}/{first_offset}.{ext}`, is a function of where the rows were read:
//! after a crash the batch read again from the committed offset gets the same key, so a retried
//! upload replaces the object instead of adding a duplicate. Large objects go up in multipart
//! uploads (aborted if a part fails).
//!
//! Template parts: `{flow}`, `{topic}`, `{partition}`, `{first_offset}`, `{last_offset}`,
//! `{date}` (`YYYY-MM-DD`) and `{hour}` (`HH`) of the first row's `_ts` when the query selects
//! it (processing time otherwise — which a retry after a crash may not reproduce), `{ext}`.
//!
//! Wrong credentials and a missing bucket fail the flow naming the connection; timeouts, 5xx
//! and throttling are retried.

use std::io::Write as _;

use arrow_array::{Array, RecordBatch, TimestampMillisecondArray};
use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde::Deserialize;
use sluice_engine::connector::{Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;
use sluice_engine::secret::Secret;

use crate::file::encode_json_lines;

/// The `s3` connection: where the service is and how to sign requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Connection {
    /// The region (`us-east-1` by default; S3-protocol servers mostly accept any).
    #[serde(default = "default_region")]
    pub region: String,
    /// The service's URL, for S3-protocol servers other than AWS (`http://minio:9000`).
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket/key` rather than `bucket.endpoint/key` (what most
    /// S3-protocol servers need).
    #[serde(default)]
    pub path_style: bool,
    /// The access key id.
    pub access_key_id: Secret,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// A session token, for temporary credentials.
    pub session_token: Option<Secret>,
}

fn default_region() -> String {
    "us-east-1".into()
}

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
    /// `jsonl` (default), `csv` or `parquet`.
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
    client: aws_sdk_s3::Client,
    connection: String,
    bucket: String,
    flow: String,
    options: S3SinkOptions,
    /// Whether the bucket was found and the credentials accepted.
    checked: bool,
}

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
        if options.part_size_bytes < 5 << 20 {
            return Err(wrong("`part_size_bytes` must be at least 5 MiB (5242880), S3's smallest part".into()));
        }
        let credentials = aws_sdk_s3::config::Credentials::new(
            conn.access_key_id.expose(),
            conn.secret_access_key.expose(),
            conn.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "sluice-config",
        );
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(conn.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(conn.path_style)
            // The runtime retries with the flow's own policy; one layer of retries is enough.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled());
        if let Some(endpoint) = &conn.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(S3Sink {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            connection: name.to_owned(),
            bucket: object.trim().to_owned(),
            flow: flow.to_owned(),
            options,
            checked: false,
        })
    }

    fn ext(&self) -> String {
        let base = match self.options.format {
            ObjectFormat::Jsonl => "jsonl",
            ObjectFormat::Csv => "csv",
            ObjectFormat::Parquet => "parquet",
        };
        match (self.options.format, self.options.compression) {
            (ObjectFormat::Parquet, _) | (_, Compression::None) => base.to_owned(),
            (_, Compression::Gzip) => format!("{base}.gz"),
            (_, Compression::Zstd) => format!("{base}.zst"),
        }
    }

    /// The object's key for a batch.
    fn key(&self, batches: &[RecordBatch], batch_id: &str) -> String {
        // batch_id: "topic/partition:first-last" (one partition per write).
        let (topic, range) = batch_id.rsplit_once('/').unwrap_or((batch_id, ""));
        let (partition, offsets) = range.split_once(':').unwrap_or(("0", range));
        let (first, last) = offsets.split_once('-').unwrap_or((offsets, offsets));
        let ts_ms = batches
            .iter()
            .find_map(|b| {
                let col = b.column_by_name("_ts")?.as_any().downcast_ref::<TimestampMillisecondArray>()?;
                (!col.is_empty() && col.is_valid(0)).then(|| col.value(0))
            })
            .unwrap_or_else(sluice_engine::record::now_ms);
        let (date, hour) = civil(ts_ms);
        self.options
            .path
            .replace("{flow}", &self.flow)
            .replace("{topic}", topic)
            .replace("{partition}", partition)
            .replace("{first_offset}", &format!("{:020}", first.parse::<u64>().unwrap_or(0)))
            .replace("{last_offset}", &format!("{:020}", last.parse::<u64>().unwrap_or(0)))
            .replace("{date}", &date)
            .replace("{hour}", &hour)
            .replace("{ext}", &self.ext())
    }

    fn encode(&self, batches: &[RecordBatch]) -> Result<Vec<u8>, ConnectorError> {
        let err = |e: String| ConnectorError::Other {
            context: format!("encoding an object for s3 connection `{}`", self.connection),
            message: e,
        };
        let raw = match self.options.format {
            ObjectFormat::Jsonl => {
                let mut buf = Vec::new();
                encode_json_lines(batches, &mut buf)?;
                buf
            }
            ObjectFormat::Csv => {
                let mut w = arrow_csv::WriterBuilder::new().with_header(true).build(Vec::new());
                for b in batches {
                    w.write(b).map_err(|e| err(e.to_string()))?;
                }
                w.into_inner()
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
            return Err(ConnectorError::Other { context: doing, message: "no upload id in the answer".into() });
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
        let key = self.key(batches, ctx.batch_id);
        let body = self.encode(batches)?;
        self.upload(&key, body).await?;
        Ok(Written::all())
    }

    fn describe(&self) -> String {
        format!("s3://{}/ (connection `{}`)", self.bucket, self.connection)
    }

    fn per_partition(&self) -> bool {
        true
    }
}

/// Lists the bucket's first key, to check credentials and the bucket for `connections test`.
pub async fn test_connection(name: &str, conn: &S3Connection) -> Result<String, ConnectorError> {
    let sink = S3Sink::new(name, conn, "---", S3SinkOptions::default(), "-")?;
    let out = sink
        .client
        .list_buckets()
        .send()
        .await
        .map_err(|e| classify(&format!("listing buckets (s3 connection `{name}`)"), e))?;
    Ok(format!("signed in; {} bucket(s) visible", out.buckets().len()))
}

/// Sorts an SDK error: the user's to fix (credentials, a missing bucket), or worth a retry.
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    doing: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> ConnectorError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_owned);
    let message = match (&code, e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        _ => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    };
    let user = matches!(
        code.as_deref(),
        Some(
            "NoSuchBucket"
                | "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "InvalidBucketName"
                | "AllAccessDisabled"
                | "AuthorizationHeaderMalformed"
        )
    ) || status.is_some_and(|s| matches!(s, 400 | 401 | 403 | 404));
    if user {
        ConnectorError::User(format!("{doing}: {message}"))
    } else {
        ConnectorError::Retriable { context: doing.to_owned(), message, retry_after: None }
    }
}

/// UTC `YYYY-MM-DD` and `HH` of a time in milliseconds (the civil-from-days algorithm).
fn civil(ms: i64) -> (String, String) {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}-{m:02}-{d:02}"), format!("{:02}", rem / 3600))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), ("1970-01-01".into(), "00".into()));
        assert_eq!(civil(1_798_156_800_000 + 13 * 3_600_000), ("2026-12-25".into(), "13".into()));
        assert_eq!(civil(951_782_400_000), ("2000-02-29".into(), "00".into()));
    }

    #[test]
    fn keys_follow_the_template_and_the_batch() {
        let conn = S3Connection {
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            path_style: true,
            access_key_id: Secret::new("a"),
            secret_access_key: Secret::new("s3cr3t"),
            session_token: None,
        };
        let opts = S3SinkOptions { compression: Compression::Gzip, ..S3SinkOptions::default() };
        let sink = S3Sink::new("lake", &conn, "bucket", opts, "orders").unwrap();
        assert_eq!(
            sink.key(&[], "sluice.orders.changes/2:100-199"),
            "orders/sluice.orders.changes/2/00000000000000000100.jsonl.gz"
        );
        assert!(!format!("{conn:?}").contains("s3cr3t"));
        let e = S3Sink::new("lake", &conn, "b", S3SinkOptions::default(), "f").err().unwrap().to_string();
        assert!(e.contains("lake") && e.contains("bucket"), "{e}");
    }
}
