//! A client of a Confluent-compatible Schema Registry (Confluent, Redpanda, Apicurio's ccompat
//! API, Karapace): writer schemas by id for Avro input, and subjects registered for Avro output.
//!
//! Endpoints used (the registry's documented REST API):
//! `GET /schemas/ids/{id}` → `{"schema": "…"}`, and
//! `POST /subjects/{subject}/versions` with `{"schema": "…"}` → `{"id": n}` (the existing id when
//! the schema is already registered). Both answers are cached for the life of the process:
//! an id never changes its schema.
//!
//! A lookup that fails for a network reason or a 5xx is retried a few times with backoff
//! (bounded: ≈ 3 s); a 404 is an unknown id (the record goes to the DLQ); other 4xx are refused
//! (bad credentials, an incompatible schema) and named in the error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable as _;
use serde::Deserialize;
use sluice_engine::avro::{RegistryError, SchemaRegistry};
use sluice_engine::error::Invalid;
use sluice_engine::secret::Secret;

/// Where a connection's registry is, as written in config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry's base URL (`http://registry:8081`).
    pub url: String,
    /// A basic-auth user name (Confluent Cloud: the API key).
    pub username: Option<String>,
    /// The basic-auth password (a secret reference such as `${env:REGISTRY_SECRET}`).
    pub password: Option<Secret>,
    /// Seconds a request may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: std::num::NonZeroU64,
    /// Allow a registry on a loopback, private, link-local or other non-public address (see
    /// `crate::guard`). Off by default, as for every outbound HTTP client: a registry inside the
    /// network is a deliberate setting, not something a URL may reach by accident.
    #[serde(default)]
    pub allow_private_addresses: bool,
}

fn default_timeout() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(10).unwrap_or(std::num::NonZeroU64::MIN)
}

/// A registry client with its caches.
#[derive(Debug)]
pub struct RegistryClient {
    connection: String,
    base: String,
    username: Option<String>,
    password: Option<Secret>,
    http: reqwest::Client,
    by_id: Mutex<HashMap<u32, Arc<apache_avro::Schema>>>,
    by_subject: Mutex<HashMap<(String, String), u32>>,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

impl RegistryClient {
    /// A client for the registry of connection `name`.
    pub fn new(name: &str, config: &RegistryConfig) -> Result<RegistryClient, Invalid> {
        let base = config.url.trim_end_matches('/').to_owned();
        crate::guard::checked_url(&base, config.allow_private_addresses)
            .map_err(|e| format!("`schema_registry.url`: {e}"))?;
        let http = crate::guard::client_builder(config.allow_private_addresses, 5)
            .timeout(Duration::from_secs(config.timeout_secs.get()))
            .build()
            .map_err(|e| format!("building the schema registry client: {e}"))?;
        Ok(RegistryClient {
            connection: name.to_owned(),
            base,
            username: config.username.clone(),
            password: config.password.clone(),
            http,
            by_id: Mutex::new(HashMap::new()),
            by_subject: Mutex::new(HashMap::new()),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Accept", "application/vnd.schemaregistry.v1+json, application/json");
        if let Some(user) = &self.username {
            r = r.basic_auth(user, self.password.as_ref().map(Secret::expose));
        }
        r
    }

    /// Sends a request, retrying network errors and 5xx a few times; the answer's body on 2xx,
    /// `None` on 404 (what is missing is the caller's to say).
    async fn send(
        &self,
        doing: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Option<String>, RegistryError> {
        let context = |m: String| format!("{doing} (schema registry of connection `{}`): {m}", self.connection);
        let attempt = || async {
            let answer = make().send().await.map_err(|e| RegistryError::Unavailable(context(e.to_string())))?;
            let status = answer.status();
            let body = answer.text().await.map_err(|e| RegistryError::Unavailable(context(e.to_string())))?;
            match status.as_u16() {
                200..=299 => Ok(Some(body)),
                404 => Ok(None),
                s if s >= 500 || s == 429 => Err(RegistryError::Unavailable(context(format!("{status} {body}")))),
                _ => Err(RegistryError::Refused(context(format!("{status} {body}")))),
            }
        };
        attempt
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_times(4)
                    .with_jitter(),
            )
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, RegistryError::Unavailable(_)))
            .await
    }
}

impl RegistryClient {
    /// The latest schema registered under `subject`; `None` when the subject has none.
    pub async fn latest(&self, subject: &str) -> Result<Option<apache_avro::Schema>, RegistryError> {
        let doing = format!("reading the latest schema of subject {subject}");
        let Some(body) = self
            .send(&doing, || self.request(reqwest::Method::GET, &format!("/subjects/{subject}/versions/latest")))
            .await?
        else {
            return Ok(None);
        };
        let answer: SchemaAnswer = serde_json::from_str(&body)
            .map_err(|e| RegistryError::Refused(format!("{doing}: unexpected answer {body:.200}: {e}")))?;
        apache_avro::Schema::parse_str(&answer.schema)
            .map(Some)
            .map_err(|e| RegistryError::Refused(format!("{doing}: the registry's schema does not parse: {e}")))
    }
}

#[async_trait]
impl SchemaRegistry for RegistryClient {
    async fn schema(&self, id: u32) -> Result<Arc<apache_avro::Schema>, RegistryError> {
        if let Some(s) = self.by_id.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(s);
        }
        let doing = format!("reading schema id {id}");
        let body = self
            .send(&doing, || self.request(reqwest::Method::GET, &format!("/schemas/ids/{id}")))
            .await?
            .ok_or(RegistryError::UnknownId(id))?;
        let answer: SchemaAnswer = serde_json::from_str(&body)
            .map_err(|e| RegistryError::Refused(format!("{doing}: unexpected answer {body:.200}: {e}")))?;
        let schema = Arc::new(
            apache_avro::Schema::parse_str(&answer.schema)
                .map_err(|e| RegistryError::Refused(format!("{doing}: the registry's schema does not parse: {e}")))?,
        );
        if let Ok(mut m) = self.by_id.lock() {
            m.insert(id, schema.clone());
        }
        Ok(schema)
    }

    async fn register(&self, subject: &str, schema: &apache_avro::Schema) -> Result<u32, RegistryError> {
        let text = serde_json::to_string(schema)
            .map_err(|e| RegistryError::Refused(format!("writing the Avro schema for subject {subject}: {e}")))?;
        let cache_key = (subject.to_owned(), text.clone());
        if let Some(id) = self.by_subject.lock().ok().and_then(|m| m.get(&cache_key).copied()) {
            return Ok(id);
        }
        let body = serde_json::json!({ "schema": text }).to_string();
        let doing = format!("registering the output schema under subject {subject}");
        let answer = self
            .send(&doing, || {
                self.request(reqwest::Method::POST, &format!("/subjects/{subject}/versions"))
                    .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                    .body(body.clone())
            })
            .await?
            .ok_or_else(|| {
                RegistryError::Refused(format!(
                    "{doing} (schema registry of connection `{}`): 404 Not Found",
                    self.connection
                ))
            })?;
        let id = serde_json::from_str::<IdAnswer>(&answer)
            .map_err(|e| RegistryError::Refused(format!("{doing}: unexpected answer {answer:.200}: {e}")))?
            .id;
        if let Ok(mut m) = self.by_subject.lock() {
            m.insert(cache_key, id);
        }
        Ok(id)
    }
}
