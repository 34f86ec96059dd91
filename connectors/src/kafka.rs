//! `kafka`: an existing topic as a flow's input, or a topic as its destination.
//!
//! As a source, the topic is consumed directly by the flow's sink worker — no copy into a
//! second topic — so its records keep their offsets and the worker commits on that cluster.
//! As a sink, each output row becomes one JSON message, or one Avro message in Confluent's wire
//! format with `format: avro` (the output schema registered under `<topic>-value` in the
//! connection's schema registry); a `_key` column, if the SQL selects one, becomes the message
//! key (as text) instead of a field. Avro input (`format: avro`) is decoded by the SQL stage with
//! the writer schemas from the same registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use async_trait::async_trait;
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use sluice_engine::avro::{AvroRows, RegistryError, SchemaRegistry, frame_wire};
use sluice_engine::connector::{PayloadFormat, RejectedRow, Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;
use sluice_engine::kafka::{KafkaSecurity, KafkaSettings};
use sluice_engine::producer::Producer;

use crate::schema_registry::{RegistryClient, RegistryConfig};

use crate::encode;

use crate::connector::{BuiltSink, Connector, Context, Input, ObjectColumns};
use sluice_engine::names::column;
use sluice_engine::schema::RowSchema;

/// The `kafka` connection: a cluster, or sluice's own when `bootstrap_servers` is unset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnection {
    /// `host:port[,host:port…]`; unset means the cluster in the `kafka:` section.
    pub bootstrap_servers: Option<String>,
    /// TLS and SASL settings.
    pub security: Option<KafkaSecurity>,
    /// Extra librdkafka properties, from an allow-list.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The Schema Registry of this cluster, for Avro payloads.
    pub schema_registry: Option<RegistryConfig>,
}

impl KafkaConnection {
    /// Client settings for this connection; `own` is sluice's cluster.
    pub fn settings(&self, own: &KafkaSettings) -> Result<KafkaSettings, ConnectorError> {
        match &self.bootstrap_servers {
            None => Ok(own.clone()),
            Some(servers) => {
                let mut s = KafkaSettings::from_parts(servers, self.security.as_ref(), &self.options)
                    .map_err(|e| ConnectorError::User(e.join("; ")))?;
                s.connect_timeout = own.connect_timeout;
                Ok(s)
            }
        }
    }
}

/// Per-flow options of a `kafka` source.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceOptions {
    /// `json` (each message is a row), `debezium` (each message is a change envelope) or `avro`
    /// (Confluent-framed Avro, a row or an envelope; needs the connection's `schema_registry`).
    #[serde(default = "default_format")]
    pub format: PayloadFormat,
    /// The Schema Registry subject whose latest schema gives the flow's columns when it
    /// declares no `schema:` (needs the connection's `schema_registry`). Default with
    /// `format: avro`: `<topic>-value`.
    pub subject: Option<String>,
}

fn default_format() -> PayloadFormat {
    PayloadFormat::Json
}

/// How a `kafka` sink writes rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// One JSON object per message.
    #[default]
    Json,
    /// Confluent-framed Avro; the schema is registered under `<topic>-value`.
    Avro,
}

/// Per-flow options of a `kafka` sink.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkOptions {
    /// `json` (default) or `avro`.
    #[serde(default)]
    pub format: SinkFormat,
}

/// Produces each row as a JSON or Avro message.
pub struct KafkaSink {
    producer: Producer,
    topic: String,
    /// For Avro output: the registry, and the last output schema with its Avro form and id.
    avro: Option<AvroOut>,
    /// The JSON encoding buffer, kept between batches so its pages stay faulted in.
    json: Vec<u8>,
}

struct AvroOut {
    registry: Arc<dyn SchemaRegistry>,
    current: Option<(arrow_schema::SchemaRef, Arc<AvroRows>, u32)>,
}

impl KafkaSink {
    /// A sink producing to `topic`, which is created if missing; `registry` for Avro output.
    pub async fn new(
        settings: &KafkaSettings,
        topic: &str,
        flow: &str,
        registry: Option<Arc<dyn SchemaRegistry>>,
    ) -> Result<Self, ConnectorError> {
        settings
            .ensure_topics(&[topic])
            .await
            .map_err(|e| ConnectorError::retriable(format!("preparing topic `{topic}`"), e.to_string()))?;
        // librdkafka refuses a producer only for its settings: the connection's to fix.
        let producer = settings
            .producer(&format!("sluice.{flow}.sink"))
            .map_err(|e| ConnectorError::User(format!("creating Kafka sink producer: {e}")))?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_owned(),
            avro: registry.map(|registry| AvroOut { registry, current: None }),
            json: Vec::new(),
        })
    }

    /// The Avro form and registry id of `schema`, registering it on first use.
    async fn avro_schema(
        &mut self,
        schema: &arrow_schema::SchemaRef,
    ) -> Result<Option<(Arc<AvroRows>, u32)>, ConnectorError> {
        let Some(out) = self.avro.as_mut() else { return Ok(None) };
        if let Some((s, rows, id)) = &out.current
            && s == schema
        {
            return Ok(Some((rows.clone(), *id)));
        }
        let rows = Arc::new(
            AvroRows::new(schema, &self.topic)
                .map_err(|e| ConnectorError::User(format!("writing Avro to `{}`: {e}", self.topic)))?,
        );
        let subject = format!("{}-value", self.topic);
        let id = out
            .registry
            .register(&subject, rows.schema())
            .await
            .map_err(|e| registry_error(format!("registering subject {subject}"), e))?;
        out.current = Some((schema.clone(), rows.clone(), id));
        Ok(Some((rows, id)))
    }
}

/// The registry client of a `kafka` connection, if it names one.
pub fn registry(name: &str, conn: &KafkaConnection) -> Result<Option<Arc<dyn SchemaRegistry>>, ConnectorError> {
    Ok(registry_client(name, conn)?.map(|r| Arc::new(r) as Arc<dyn SchemaRegistry>))
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batches: &[RecordBatch], _: WriteContext<'_>) -> Result<Written, ConnectorError> {
        let mut futures = Vec::new();
        let mut rejected = Vec::new();
        let mut index = 0;
        let mut json = std::mem::take(&mut self.json);
        for batch in batches {
            let schema = batch.schema();
            let key_idx = schema.index_of(column::KEY).ok();
            let keys = match key_idx {
                Some(i) => Some(
                    arrow_cast_to_strings(batch.column(i))
                        .map_err(|m| ConnectorError::User(format!("reading `_key` column: {m}")))?,
                ),
                None => None,
            };
            let body = match key_idx {
                Some(i) => {
                    let keep: Vec<usize> = (0..batch.num_columns()).filter(|c| *c != i).collect();
                    batch
                        .project(&keep)
                        .map_err(|e| ConnectorError::internal("dropping `_key` from the payload", e.to_string()))?
                }
                None => batch.clone(),
            };
            // JSON rows are encoded into one buffer and sent as slices of it: no allocation per
            // row on the usual path.
            json.clear();
            let payloads: Vec<std::borrow::Cow<'_, [u8]>> = match self.avro_schema(&body.schema()).await? {
                Some((rows, id)) => {
                    let values = rows
                        .values(&body)
                        .map_err(|e| ConnectorError::User(format!("writing Avro to `{}`: {e}", self.topic)))?;
                    values
                        .into_iter()
                        .map(|v| {
                            let datum = apache_avro::to_avro_datum(rows.schema(), v).map_err(|e| {
                                ConnectorError::internal(format!("encoding Avro for `{}`", self.topic), e.to_string())
                            })?;
                            let mut framed = Vec::with_capacity(datum.len() + 5);
                            frame_wire(id, &datum, &mut framed);
                            Ok(std::borrow::Cow::Owned(framed))
                        })
                        .collect::<Result<_, ConnectorError>>()?
                }
                None => {
                    encode::json_lines(std::slice::from_ref(&body), &mut json)?;
                    json.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(std::borrow::Cow::Borrowed).collect()
                }
            };
            for (row, line) in payloads.iter().map(AsRef::as_ref).enumerate() {
                let mut rec = FutureRecord::<str, [u8]>::to(&self.topic).payload(line);
                if let Some(Some(k)) = keys.as_ref().map(|k| k[row].as_deref()) {
                    rec = rec.key(k);
                }
                let this = index + row;
                let f = loop {
                    match self.producer.send_result(rec) {
                        Ok(f) => break Some(f),
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            back,
                        )) => {
                            rec = back;
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        Err((e, _)) if refuses_record(&e) => {
                            let reason = format!("producing to `{}`: {e}", self.topic);
                            rejected.push(RejectedRow { index: this, reason });
                            break None;
                        }
                        Err((e, _)) => return Err(ConnectorError::kafka(format!("producing to `{}`", self.topic), e)),
                    }
                };
                futures.extend(f.map(|f| (this, f)));
            }
            index += batch.num_rows();
        }
        self.json = json;
        for (index, f) in futures {
            match f.await {
                Ok(Ok(_)) => {}
                // A record the cluster will never take is that record's problem, not the flow's.
                Ok(Err(e)) if refuses_record(&e) => {
                    rejected.push(RejectedRow { index, reason: format!("delivering to `{}`: {e}", self.topic) });
                }
                Ok(Err(e)) => return Err(ConnectorError::kafka(format!("delivering to `{}`", self.topic), e)),
                Err(_) => {
                    return Err(ConnectorError::kafka(
                        format!("delivering to `{}`", self.topic),
                        rdkafka::error::KafkaError::Canceled,
                    ));
                }
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(Written { rejected })
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.topic)
    }
}

/// The values of a string-like column, one per row.
fn arrow_cast_to_strings(col: &dyn Array) -> Result<Vec<Option<String>>, String> {
    let arr = col
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .ok_or_else(|| format!("expected a string column, found {}", col.data_type()))?;
    Ok((0..arr.len()).map(|i| (!arr.is_null(i)).then(|| arr.value(i).to_owned())).collect())
}

/// Whether a produce error is about the record itself (it can never be written), rather than
/// the cluster (which may recover).
fn refuses_record(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(e.rdkafka_error_code(), Some(C::MessageSizeTooLarge | C::InvalidRecord | C::InvalidMessage))
}

/// The `kafka` connector: an existing topic as a flow's input, or a topic as its destination.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaConnector;

#[async_trait]
impl Connector for KafkaConnector {
    const NAME: &'static str = "kafka";
    type Connection = KafkaConnection;
    type SourceOptions = KafkaSourceOptions;
    type SinkOptions = KafkaSinkOptions;

    async fn healthcheck(&self, ctx: Context<'_>, conn: &KafkaConnection) -> Result<String, ConnectorError> {
        reach(ctx.connection, conn.settings(ctx.own)?).await
    }

    fn payload_format(&self, options: &KafkaSourceOptions) -> PayloadFormat {
        options.format
    }

    fn discovers_schema(&self, options: &KafkaSourceOptions) -> bool {
        options.format == PayloadFormat::Avro || options.subject.is_some()
    }

    async fn discover_schema(
        &self,
        ctx: Context<'_>,
        conn: &KafkaConnection,
        object: &str,
        options: &KafkaSourceOptions,
    ) -> Result<Option<RowSchema>, ConnectorError> {
        let subject = options.subject.clone().unwrap_or_else(|| format!("{object}-value"));
        let client = registry_client(ctx.connection, conn)?.ok_or_else(|| {
            ConnectorError::User(format!(
                "kafka connection `{}`: reading the columns from subject {subject} needs the connection's \
                 `schema_registry`",
                ctx.connection
            ))
        })?;
        match client.latest(&subject).await.map_err(|e| registry_error(format!("reading subject {subject}"), e))? {
            Some(schema) => RowSchema::from_avro(&schema)
                .map(Some)
                .map_err(|e| ConnectorError::User(format!("the latest schema of subject {subject}: {e}"))),
            None => Err(ConnectorError::User(format!("the schema registry has no subject {subject}"))),
        }
    }

    async fn describe(
        &self,
        ctx: Context<'_>,
        conn: &KafkaConnection,
        object: Option<&str>,
    ) -> Result<Option<Vec<ObjectColumns>>, ConnectorError> {
        let settings = conn.settings(ctx.own)?;
        let mut topics = settings
            .check_reachable()
            .await
            .map_err(|e| ConnectorError::retriable(format!("kafka connection `{}`", ctx.connection), e.to_string()))?;
        // Kafka's own topics (`__consumer_offsets`, …) are nobody's data.
        topics.retain(|t| !t.starts_with("__") && object.is_none_or(|o| o == t));
        topics.sort();
        if let (Some(o), true) = (object, topics.is_empty()) {
            return Err(ConnectorError::User(format!("kafka connection `{}`: no topic `{o}`", ctx.connection)));
        }
        let client = registry_client(ctx.connection, conn)?;
        let mut out = Vec::with_capacity(topics.len());
        for topic in topics {
            // The columns of the subject a `format: avro` flow would read, when there is one.
            let subject = format!("{topic}-value");
            let columns = match &client {
                Some(c) => c
                    .latest(&subject)
                    .await
                    .map_err(|e| registry_error(format!("reading subject {subject}"), e))?
                    .and_then(|s| RowSchema::from_avro(&s).ok()),
                None => None,
            };
            out.push(ObjectColumns { name: topic, columns });
        }
        Ok(Some(out))
    }

    fn build_source(
        &self,
        ctx: Context<'_>,
        conn: &KafkaConnection,
        object: &str,
        options: &KafkaSourceOptions,
        _follow: bool,
    ) -> Result<Input, ConnectorError> {
        let registry = match options.format {
            PayloadFormat::Avro => Some(avro_registry(ctx.connection, conn)?),
            PayloadFormat::Json | PayloadFormat::Debezium => None,
        };
        Ok(Input::Topic { kafka: conn.settings(ctx.own)?, topic: object.to_owned(), format: options.format, registry })
    }

    fn check_sink(
        &self,
        ctx: Context<'_>,
        conn: &KafkaConnection,
        _: &str,
        options: &KafkaSinkOptions,
    ) -> Result<(), ConnectorError> {
        conn.settings(ctx.own)?;
        if options.format == SinkFormat::Avro {
            avro_registry(ctx.connection, conn)?;
        }
        Ok(())
    }

    async fn build_sink(
        &self,
        ctx: Context<'_>,
        conn: &KafkaConnection,
        object: &str,
        options: &KafkaSinkOptions,
    ) -> Result<BuiltSink, ConnectorError> {
        let registry = match options.format {
            SinkFormat::Json => None,
            SinkFormat::Avro => Some(avro_registry(ctx.connection, conn)?),
        };
        let settings = conn.settings(ctx.own)?;
        let sink = Box::new(KafkaSink::new(&settings, object, ctx.flow, registry).await?);
        let name = ctx.connection.to_owned();
        Ok(BuiltSink { sink, healthcheck: Box::pin(async move { reach(&name, settings).await }) })
    }
}

/// The registry client of a connection, for reading subjects.
fn registry_client(name: &str, conn: &KafkaConnection) -> Result<Option<RegistryClient>, ConnectorError> {
    conn.schema_registry
        .as_ref()
        .map(|c| {
            RegistryClient::new(name, c).map_err(|e| ConnectorError::User(format!("kafka connection `{name}`: {e}")))
        })
        .transpose()
}

/// A registry's error while `context`: an unavailable registry may answer later.
fn registry_error(context: String, e: RegistryError) -> ConnectorError {
    match e {
        RegistryError::Unavailable(m) => ConnectorError::Retriable { context, message: m, retry_after: None },
        other => ConnectorError::User(other.to_string()),
    }
}

/// The registry `format: avro` needs, or the error naming the missing setting.
fn avro_registry(name: &str, conn: &KafkaConnection) -> Result<Arc<dyn SchemaRegistry>, ConnectorError> {
    registry(name, conn)?.ok_or_else(|| {
        ConnectorError::User(format!(
            "kafka connection `{name}`: `format: avro` needs the connection's `schema_registry`"
        ))
    })
}

/// Asks the cluster for its topics: it answers, and accepts the credentials.
async fn reach(name: &str, settings: KafkaSettings) -> Result<String, ConnectorError> {
    let topics = settings
        .check_reachable()
        .await
        .map_err(|e| ConnectorError::retriable(format!("kafka connection `{name}`"), e.to_string()))?;
    Ok(format!("cluster {} answered; {} topic(s) visible", settings.bootstrap_servers, topics.len()))
}
