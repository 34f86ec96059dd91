//! `s3`: output rows written as objects to Amazon S3 or any S3-protocol server (MinIO, Ceph, …).
//! This module holds the connection and its client; [`sink`] writes the objects, named by the
//! key templates of [`template`].
//!
//! Wrong credentials and a missing bucket fail the flow naming the connection; timeouts, 5xx
//! and throttling are retried.

pub mod sink;
mod template;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use serde::Deserialize;
use sluice_engine::error::ConnectorError;
use sluice_engine::secret::Secret;

use crate::connector::{BuiltSink, Connector, Context, Input, Unsupported};

pub use sink::{Compression, ObjectFormat, S3Sink, S3SinkOptions};

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
    /// Allow an endpoint on a loopback, private, link-local or other non-public address (a MinIO
    /// on the local network): off by default, as for every outbound client (see `crate::guard`).
    #[serde(default)]
    pub allow_private_addresses: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// The S3 client of connection `name`: its credentials, region and endpoint, names resolved
/// through the address guard, and no retries of its own (the runtime retries with the flow's
/// policy; one layer of retries is enough).
fn client(name: &str, conn: &S3Connection) -> Result<aws_sdk_s3::Client, ConnectorError> {
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
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled());
    if let Some(endpoint) = &conn.endpoint {
        crate::guard::checked_url(endpoint, conn.allow_private_addresses)
            .map_err(|e| ConnectorError::User(format!("s3 connection `{name}`: `endpoint`: {e}")))?;
        config = config.endpoint_url(endpoint);
    }
    // Names resolve through the guard, as for every outbound client.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .build_with_resolver(crate::guard::S3Resolver::new(conn.allow_private_addresses));
    config = config.http_client(http);
    Ok(aws_sdk_s3::Client::from_conf(config.build()))
}

/// Lists the bucket's first key, to check credentials and the bucket for `connections test`.
pub async fn test_connection(name: &str, conn: &S3Connection) -> Result<String, ConnectorError> {
    healthcheck(name, &client(name, conn)?).await
}

/// Lists the buckets with `client`: signed in, and how many buckets the credentials see.
async fn healthcheck(name: &str, client: &aws_sdk_s3::Client) -> Result<String, ConnectorError> {
    let out = client
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

/// The `s3` connector: objects in a bucket of any S3-protocol store, a destination only.
#[derive(Debug, Clone, Copy, Default)]
pub struct S3Connector;

#[async_trait]
impl Connector for S3Connector {
    const NAME: &'static str = "s3";
    type Connection = S3Connection;
    type SourceOptions = Unsupported;
    type SinkOptions = S3SinkOptions;

    async fn healthcheck(&self, ctx: Context<'_>, conn: &S3Connection) -> Result<String, ConnectorError> {
        test_connection(ctx.connection, conn).await
    }

    fn build_source(
        &self,
        _: Context<'_>,
        _: &S3Connection,
        _: &str,
        o: &Unsupported,
        _: bool,
    ) -> Result<Input, ConnectorError> {
        match *o {}
    }

    fn check_sink(
        &self,
        ctx: Context<'_>,
        conn: &S3Connection,
        object: &str,
        options: &S3SinkOptions,
    ) -> Result<(), ConnectorError> {
        S3Sink::new(ctx.connection, conn, object, options.clone(), ctx.flow).map(drop)
    }

    async fn build_sink(
        &self,
        ctx: Context<'_>,
        conn: &S3Connection,
        object: &str,
        options: &S3SinkOptions,
    ) -> Result<BuiltSink, ConnectorError> {
        let sink = S3Sink::new(ctx.connection, conn, object, options.clone(), ctx.flow)?;
        let (name, client) = (ctx.connection.to_owned(), sink.client.clone());
        Ok(BuiltSink { sink: Box::new(sink), healthcheck: Box::pin(async move { healthcheck(&name, &client).await }) })
    }
}
