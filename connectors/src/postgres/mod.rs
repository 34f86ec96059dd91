//! `postgres`: the connection (a server, a database, a login, TLS with libpq's modes), shared by
//! the sink ([`sink`]), the pulls (`crate::postgres_query`) and change data capture
//! (`crate::postgres_cdc`).

mod connector;
pub mod discover;
mod plan;
pub mod sink;

pub use connector::PostgresConnector;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sluice_engine::error::ConnectorError;
use sluice_engine::secret::Secret;
use tokio_postgres::error::SqlState;

pub use sink::{PostgresSink, PostgresSinkOptions, TruncatePolicy, WriteMode};

/// The `postgres` connection: a server, a database and a login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnection {
    /// The server's host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// The server's port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The database.
    pub database: String,
    /// The login role.
    pub user: String,
    /// The role's password (a secret reference such as `${env:PGPASSWORD}`), if it needs one.
    pub password: Option<Secret>,
    /// Seconds to wait for a connection before the attempt counts as failed (and is retried).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: std::num::NonZeroU64,
    /// TLS, with libpq's `sslmode` words: `disable`, `prefer` (the default: TLS when the server
    /// offers it, unverified), `require` (TLS or fail; the certificate is checked only when
    /// `ssl_root_cert` is given, as in libpq), `verify-ca` (the certificate must chain to a
    /// trusted authority) or `verify-full` (and name the host).
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// A PEM file of the authorities to trust instead of the system's (a private CA), as libpq's
    /// `sslrootcert`.
    pub ssl_root_cert: Option<PathBuf>,
    /// A PEM client certificate, for servers that authenticate clients by certificate.
    pub ssl_cert: Option<PathBuf>,
    /// The PEM private key of `ssl_cert`.
    pub ssl_key: Option<PathBuf>,
}

/// How a connection uses TLS (libpq's `sslmode`, without `allow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never.
    Disable,
    /// When the server offers it; the certificate is not checked.
    #[default]
    Prefer,
    /// Always; the certificate is checked only against a given `ssl_root_cert`.
    Require,
    /// Always, with a certificate from a trusted authority.
    VerifyCa,
    /// Always, with a trusted certificate naming the host.
    VerifyFull,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    5432
}

fn default_connect_timeout() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(10).unwrap_or(std::num::NonZeroU64::MIN)
}

/// What it takes to open a connection: client settings and the TLS connector.
#[derive(Clone)]
pub(crate) struct PgTarget {
    config: tokio_postgres::Config,
    tls: postgres_openssl::MakeTlsConnector,
}

/// Client settings and TLS for connection `name`.
pub(crate) fn client_config(name: &str, conn: &PostgresConnection) -> Result<PgTarget, ConnectorError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&conn.host)
        .port(conn.port)
        .dbname(&conn.database)
        .user(&conn.user)
        .application_name("sluice")
        .connect_timeout(Duration::from_secs(conn.connect_timeout_secs.get()))
        .ssl_mode(match conn.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = &conn.password {
        config.password(p.expose());
    }
    Ok(PgTarget { config, tls: tls_connector(name, conn)? })
}

/// An OpenSSL connector checking the server's certificate as `ssl_mode` says.
fn tls_connector(name: &str, conn: &PostgresConnection) -> Result<postgres_openssl::MakeTlsConnector, ConnectorError> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
    let file_err = |field: &str, path: &std::path::Path, e: openssl::error::ErrorStack| {
        ConnectorError::User(format!("postgres connection `{name}`: `{field}` ({}): {e}", path.display()))
    };
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| {
        ConnectorError::internal(format!("setting up TLS for postgres connection `{name}`"), e.to_string())
    })?;
    if let Some(ca) = &conn.ssl_root_cert {
        // As in libpq, a root certificate file is the whole trust: the system's authorities
        // are not consulted, so a private CA's file pins the server to that CA.
        let pem = std::fs::read(ca).map_err(|e| {
            ConnectorError::User(format!("postgres connection `{name}`: `ssl_root_cert` ({}): {e}", ca.display()))
        })?;
        let mut store = openssl::x509::store::X509StoreBuilder::new().map_err(|e| file_err("ssl_root_cert", ca, e))?;
        for cert in openssl::x509::X509::stack_from_pem(&pem).map_err(|e| file_err("ssl_root_cert", ca, e))? {
            store.add_cert(cert).map_err(|e| file_err("ssl_root_cert", ca, e))?;
        }
        builder.set_verify_cert_store(store.build()).map_err(|e| file_err("ssl_root_cert", ca, e))?;
    }
    if let Some(cert) = &conn.ssl_cert {
        builder.set_certificate_chain_file(cert).map_err(|e| file_err("ssl_cert", cert, e))?;
    }
    if let Some(key) = &conn.ssl_key {
        builder.set_private_key_file(key, SslFiletype::PEM).map_err(|e| file_err("ssl_key", key, e))?;
    }
    let verify = match conn.ssl_mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => conn.ssl_root_cert.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    builder.set_verify(if verify { SslVerifyMode::PEER } else { SslVerifyMode::NONE });
    let mut tls = postgres_openssl::MakeTlsConnector::new(builder.build());
    if conn.ssl_mode != SslMode::VerifyFull {
        // Only verify-full checks that the certificate names the host.
        tls.set_callback(|c, _| {
            c.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(tls)
}

/// Opens a connection for connection `name`.
pub(crate) async fn connect(name: &str, target: &PgTarget) -> Result<tokio_postgres::Client, ConnectorError> {
    let context = format!("connecting to postgres connection `{name}`");
    let (client, connection) = target.config.connect(target.tls.clone()).await.map_err(|e| {
        // A certificate that does not verify, or a server without TLS when it is required,
        // will not change by retrying.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            // OpenSSL repeats its error stack at each level; keep what is new.
            let c_text = c.to_string();
            let new: Vec<&str> = c_text.split(": ").filter(|part| !text.contains(part)).collect();
            if !new.is_empty() {
                text.push_str(": ");
                text.push_str(&new.join(": "));
            }
            cause = c.source();
        }
        if text.starts_with("error performing TLS handshake") {
            ConnectorError::User(format!("{context}: {text}"))
        } else {
            classify(&context, &e)
        }
    })?;
    // The connection object drives the socket; it ends when the client is dropped.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Logs in and asks the server who and what it is.
pub async fn test_connection(name: &str, conn: &PostgresConnection) -> Result<String, ConnectorError> {
    let client = connect(name, &client_config(name, conn)?).await?;
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, current_setting('server_version'), \
             (SELECT CASE WHEN ssl THEN 'over TLS (' || version || ')' ELSE 'without TLS' END \
              FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        )
        .await
        .map_err(|e| classify(&format!("postgres connection `{name}`"), &e))?;
    let (user, db, version, tls): (String, String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(format!(
        "logged in to database {db} as {user} (PostgreSQL {version}) at {}:{} {}",
        conn.host,
        conn.port,
        tls.unwrap_or_else(|| "without TLS".into())
    ))
}

/// Quotes an identifier for SQL.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The server's own words for an error, with its detail when it gave one.
fn server_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({}): {d}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    }
}

/// Whether an error may pass (the connection, the server's state) or needs the user.
pub(crate) fn classify(context: &str, e: &tokio_postgres::Error) -> ConnectorError {
    let message = server_message(e);
    let retriable = match e.code().map(SqlState::code) {
        // Connection problems, serialization failures and deadlocks, resource shortages,
        // the server shutting down or starting up; and an object in use (55006: a replication
        // slot still held by the process a new source owner replaced, until it lets go).
        Some(code) => ["08", "40", "53", "57P", "58", "55006"].iter().any(|p| code.starts_with(p)),
        // No SQLSTATE: I/O, a closed connection, a timeout.
        None => true,
    };
    if retriable {
        let message = match std::error::Error::source(e) {
            Some(cause) if !message.contains(&cause.to_string()) => format!("{message}: {cause}"),
            _ => message,
        };
        ConnectorError::Retriable { context: context.to_owned(), message, retry_after: None }
    } else {
        ConnectorError::User(format!("{context}: {message}"))
    }
}
