//! Declarative REST connectors: a YAML file describes a SaaS API once — its base URL,
//! authentication, rate limit and the objects a flow can read (path, records pointer,
//! pagination, incremental cursor, schema) — and becomes a connection type of its own, as
//! AppFlow's custom connectors and Airbyte's low-code connectors do. The `http` source executes
//! it; nothing about the API is compiled in.
//!
//! ```yaml
//! name: ticketing                      # the connection type users write
//! parameters:                          # what a connection of this type sets
//!   url: {description: "The account's API root"}
//!   token: {secret: true}
//! base_url: "{url}"
//! auth: {type: bearer, token: "{token}"}
//! rate_limit: {requests_per_sec: 10}
//! objects:
//!   tickets:
//!     path: /incremental/tickets/cursor.json
//!     records: /tickets
//!     key: [id]
//!     pagination: {type: cursor, param: cursor, cursor_from: /after_cursor, end_from: /end_of_stream}
//!     incremental: {param: start_time, start: "0"}
//!     schema: {id: int64, subject: string}
//! ```
//!
//! `{name}` in `base_url`, `headers` and `auth` is replaced by the connection's value of
//! parameter `name`. A secret parameter may appear in `headers` and `auth` only, never in the
//! URL (which shows in messages).

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64};

use serde::Deserialize;
use sluice_engine::error::{ConnectorError, Invalid};
use sluice_engine::schema::RowSchema;
use sluice_engine::secret::Secret;

use super::{HttpAuth, HttpConnection};
use crate::http_source::{HttpSourceOptions, Incremental, Pagination};

/// One API, described once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSpec {
    /// The connection type users write (`type: ticketing`): letters, digits and `_`.
    pub name: String,
    /// What the API is, for people reading the spec.
    #[serde(default)]
    pub description: String,
    /// The settings a connection of this type has, by name.
    #[serde(default)]
    pub parameters: BTreeMap<String, Parameter>,
    /// The API's root URL, with `{parameter}` placeholders.
    pub base_url: String,
    /// How requests authenticate, with `{parameter}` placeholders in its values.
    pub auth: Option<SpecAuth>,
    /// Headers sent with every request, with `{parameter}` placeholders.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How often requests may be sent.
    pub rate_limit: Option<RateLimit>,
    /// What a flow can read, by name: a flow's `object` names one.
    pub objects: BTreeMap<String, SpecObject>,
}

/// A setting of a connection of this type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// A credential: kept as a secret (never printed, redacted from logs).
    #[serde(default)]
    pub secret: bool,
    /// The value when the connection does not set it; without one, the parameter is required.
    pub default: Option<String>,
}

/// Authentication, as the `http` connection's `auth:` with placeholders in its values (secret
/// values are text until a connection fills them in).
pub type SpecAuth = HttpAuth<String>;

/// A request rate limit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// At most this many requests per second.
    pub requests_per_sec: NonZeroU32,
}

/// One endpoint a flow can read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecObject {
    /// The path under `base_url`.
    pub path: String,
    /// JSON pointer to the array of records in an answer; empty: the answer is the array.
    #[serde(default)]
    pub records: String,
    /// The record fields identifying a record.
    #[serde(default)]
    pub key: Vec<String>,
    /// Query parameters sent with every request.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// How to reach the next page (as the `http` source's `pagination:`).
    #[serde(default)]
    pub pagination: Pagination,
    /// Resuming where the last run stopped (as the `http` source's `incremental:`).
    pub incremental: Option<Incremental>,
    /// The records' columns, so flows need not declare them.
    pub schema: Option<RowSchema>,
}

/// A flow's options when it reads a spec's object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecSourceOptions {
    /// Where the very first incremental run starts, instead of the spec's `incremental.start`.
    pub start: Option<String>,
    /// Seconds between pulls once a continuous flow has caught up (default 5).
    pub poll_interval_secs: Option<u64>,
}

/// A connection of a spec's type: its parameters' values.
#[derive(Debug, Clone)]
pub struct SpecConnection {
    /// The `http` connection the spec and the values make.
    pub http: HttpConnection,
}

/// Connection keys every spec's connections have besides the spec's parameters.
pub const RESERVED: [&str; 2] = ["allow_private_addresses", "timeout_secs"];

impl RestSpec {
    /// Checks the spec on its own: its name, its placeholders, where secrets may go.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`name: {}`: a connector name is letters, digits and `_`", self.name).into());
        }
        if let Some(r) = RESERVED.iter().find(|r| self.parameters.contains_key(**r)) {
            return Err(format!("parameter `{r}` is every connection's own setting; name it otherwise").into());
        }
        if self.objects.is_empty() {
            return Err("`objects` is empty: a spec describes at least one".into());
        }
        let known = |text: &str, field: &str, secrets_allowed: bool| -> Result<(), String> {
            for p in placeholders(text) {
                match self.parameters.get(p) {
                    None => return Err(format!("`{field}` uses `{{{p}}}`, which is not a parameter")),
                    Some(param) if param.secret && !secrets_allowed => {
                        return Err(format!(
                            "`{field}` uses secret parameter `{p}`: secrets go in `auth` or `headers`"
                        ));
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        };
        known(&self.base_url, "base_url", false)?;
        for (k, v) in &self.headers {
            known(v, &format!("headers.{k}"), true)?;
        }
        if let Some(a) = &self.auth {
            known(a.token_url.as_deref().unwrap_or_default(), "auth.token_url", false)?;
            for (field, v) in a.fields() {
                known(v, &format!("auth.{field}"), true)?;
            }
        }
        for (name, o) in &self.objects {
            if !placeholders(&o.path).is_empty() {
                return Err(format!("objects.{name}.path: placeholders belong in `base_url`").into());
            }
        }
        Ok(())
    }

    /// The `http` connection for these parameter values (`values` holds only known names;
    /// the caller reports unknown ones where they were written).
    pub fn connection(
        &self,
        name: &str,
        values: &BTreeMap<String, String>,
        timeout_secs: Option<NonZeroU64>,
        allow_private_addresses: bool,
    ) -> Result<SpecConnection, ConnectorError> {
        let mut resolved = BTreeMap::new();
        for (p, param) in &self.parameters {
            let value = values.get(p).or(param.default.as_ref()).ok_or_else(|| {
                ConnectorError::User(format!("{} connection `{name}`: missing parameter `{p}`", self.name))
            })?;
            if param.secret {
                // Registered with the log redactor, as every secret is.
                drop(Secret::new(value.clone()));
            }
            resolved.insert(p.as_str(), value.as_str());
        }
        let fill = |text: &str| fill(text, &resolved);
        let secret = |text: &Option<String>| text.as_deref().map(|t| Secret::new(fill(t)));
        let auth = self.auth.as_ref().map(|a| HttpAuth {
            kind: a.kind,
            token: secret(&a.token),
            username: a.username.as_deref().map(fill),
            password: secret(&a.password),
            header: a.header.as_deref().map(fill),
            key: secret(&a.key),
            token_url: a.token_url.as_deref().map(fill),
            client_id: a.client_id.as_deref().map(fill),
            client_secret: secret(&a.client_secret),
            scope: a.scope.as_deref().map(fill),
        });
        let http = HttpConnection {
            url: fill(&self.base_url),
            headers: self.headers.iter().map(|(k, v)| (k.clone(), Secret::new(fill(v)))).collect(),
            auth,
            timeout_secs: timeout_secs.unwrap_or(NonZeroU64::new(30).unwrap_or(NonZeroU64::MIN)),
            allow_private_addresses,
        };
        Ok(SpecConnection { http })
    }

    /// The object a flow's `object` names, or the error listing the spec's objects.
    pub fn object(&self, object: &str) -> Result<&SpecObject, ConnectorError> {
        self.objects.get(object).ok_or_else(|| {
            let names: Vec<String> = self.objects.keys().map(|k| format!("`{k}`")).collect();
            ConnectorError::User(format!(
                "`{}` has no object `{object}`; its objects are {}",
                self.name,
                names.join(", ")
            ))
        })
    }

    /// The `http` source options that read `object` for a flow.
    pub fn source_options(&self, object: &SpecObject, flow: &SpecSourceOptions) -> HttpSourceOptions {
        let mut incremental = object.incremental.clone();
        if let (Some(inc), Some(start)) = (incremental.as_mut(), &flow.start) {
            inc.start = Some(start.clone());
        }
        HttpSourceOptions {
            records: object.records.clone(),
            key: object.key.clone(),
            params: object.params.clone(),
            pagination: object.pagination.clone(),
            incremental,
            poll_interval_secs: flow.poll_interval_secs.unwrap_or(5),
            rate_limit_per_sec: self.rate_limit.map(|r| r.requests_per_sec),
        }
    }
}

impl SpecAuth {
    /// The fields that may hold secrets, with their names.
    fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("token", &self.token),
            ("username", &self.username),
            ("password", &self.password),
            ("header", &self.header),
            ("key", &self.key),
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
            ("scope", &self.scope),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_deref().map(|v| (n, v)))
        .collect()
    }
}

/// The `{name}` placeholders of `text`.
fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}

/// `text` with each `{name}` replaced by its value (names were checked against the parameters).
fn fill(text: &str, values: &BTreeMap<&str, &str>) -> String {
    let mut out = text.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::AuthKind;

    fn spec(base_url: &str, token: &str) -> RestSpec {
        let mut parameters = BTreeMap::new();
        parameters.insert("url".to_owned(), Parameter::default());
        parameters.insert("token".to_owned(), Parameter { secret: true, ..Parameter::default() });
        let mut objects = BTreeMap::new();
        objects.insert(
            "tickets".to_owned(),
            SpecObject {
                path: "/tickets".into(),
                records: "/tickets".into(),
                key: vec!["id".into()],
                params: BTreeMap::new(),
                pagination: Pagination::default(),
                incremental: None,
                schema: None,
            },
        );
        RestSpec {
            name: "ticketing".into(),
            description: String::new(),
            parameters,
            base_url: base_url.into(),
            auth: Some(SpecAuth {
                kind: AuthKind::Bearer,
                token: Some(token.into()),
                username: None,
                password: None,
                header: None,
                key: None,
                token_url: None,
                client_id: None,
                client_secret: None,
                scope: None,
            }),
            headers: BTreeMap::new(),
            rate_limit: None,
            objects,
        }
    }

    #[test]
    fn placeholders_are_parameters_and_secrets_stay_out_of_urls() {
        assert!(spec("{url}/api", "{token}").check().is_ok());
        assert!(spec("{nope}/api", "{token}").check().unwrap_err().0.contains("`{nope}`, which is not a parameter"));
        assert!(spec("{url}/{token}", "{token}").check().unwrap_err().0.contains("secret parameter `token`"));
    }

    #[test]
    fn a_connection_fills_the_placeholders_and_names_what_is_missing() {
        let s = spec("{url}/api/v2", "{token}");
        let values: BTreeMap<String, String> =
            [("url".to_owned(), "https://acme.example".to_owned()), ("token".to_owned(), "t0k".to_owned())].into();
        let c = s.connection("zd", &values, None, false).unwrap();
        assert_eq!(c.http.url, "https://acme.example/api/v2");
        assert_eq!(c.http.auth.unwrap().token.unwrap().expose(), "t0k");
        let e = s.connection("zd", &BTreeMap::new(), None, false).unwrap_err().to_string();
        assert!(e.contains("missing parameter `token`") || e.contains("missing parameter `url`"), "{e}");
        assert!(s.object("users").unwrap_err().to_string().contains("its objects are `tickets`"));
    }
}
