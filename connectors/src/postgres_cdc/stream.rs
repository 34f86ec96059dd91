//! The replication connection: `START_REPLICATION SLOT … LOGICAL` with pgoutput (protocol
//! version 1), through the `pgwire-replication` client, which answers the server's keepalives
//! on its own task and reports the position sluice names as flushed in standby status updates.
//!
//! ```text
//!   poll: open the stream at the acknowledged position (waiting a bounded time for a slot
//!         the previous owner still holds) ─▶ events until `max` records or a short linger
//!         Begin / XLogData (Relation, Insert, …) / Commit ─▶ records (see `decode`)
//!         KeepAlive, logical messages ─▶ how far the server has decoded: quiet up to there
//!   committed(position): update_applied_lsn(the position's LSN) — the only feedback sent
//! ```
//!
//! The flushed position reported is never past a transaction whose records Kafka has not
//! acknowledged: it moves in [`super::CdcSource::committed`] and, for stretches with nothing for
//! this flow, once everything handed out is acknowledged. A flow run on demand (not `follow`)
//! ends when the stream passes a logical message it wrote itself when it began reading
//! (`pg_logical_emit_message`, not transactional): every transaction committed before then has
//! been read.

use std::time::{Duration, Instant};

use futures::FutureExt as _;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use sluice_engine::connector::{Poll, SourceItem};
use sluice_engine::error::ConnectorError;

use super::CdcSource;
use super::pgoutput::parse_lsn;
use crate::postgres::{PostgresConnection, SslMode, classify};

/// The prefix of the logical message that marks how far a run on demand reads.
const MARKER: &str = "sluice.caught_up";
/// How long a poll waits for the first event, and then for more to fill its batch.
const FIRST_WAIT: Duration = Duration::from_millis(200);
const LINGER: Duration = Duration::from_millis(20);
/// How long a new owner waits for a slot the previous one (a dropped source, a killed process)
/// still holds before the attempt counts as failed and is retried.
const SLOT_WAIT: Duration = Duration::from_secs(15);

/// The replication session's settings for connection `conn`.
pub(super) fn replication_config(conn: &PostgresConnection, slot: &str, publication: &str) -> ReplicationConfig {
    let password = conn.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
    let mode = match conn.ssl_mode {
        SslMode::Disable => pgwire_replication::SslMode::Disable,
        SslMode::Prefer => pgwire_replication::SslMode::Prefer,
        // As in libpq, `require` with a root certificate checks the chain.
        SslMode::Require if conn.ssl_root_cert.is_some() => pgwire_replication::SslMode::VerifyCa,
        SslMode::Require => pgwire_replication::SslMode::Require,
        SslMode::VerifyCa => pgwire_replication::SslMode::VerifyCa,
        SslMode::VerifyFull => pgwire_replication::SslMode::VerifyFull,
    };
    let tls = TlsConfig {
        mode,
        ca_pem_path: conn.ssl_root_cert.clone(),
        sni_hostname: None,
        client_cert_pem_path: conn.ssl_cert.clone(),
        client_key_pem_path: conn.ssl_key.clone(),
    };
    ReplicationConfig::new(&conn.host, &conn.user, password, &conn.database, slot, publication)
        .with_port(conn.port)
        .with_tls(tls)
        // pgoutput prints values with the session's settings: the same as the snapshot's
        // session fixes, so a row reads the same either way.
        .with_options(
            "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex",
        )
        .with_application_name("sluice")
        // Acknowledged positions reach the server within a second.
        .with_status_interval(Duration::from_secs(1))
}

/// Whether the server refused because another session holds the slot (SQLSTATE 55006).
fn held_elsewhere(e: &PgWireError) -> bool {
    matches!(e, PgWireError::Server(m) if m.contains("55006"))
}

/// Whose fault a replication error is, and whether retrying can help.
fn stream_error(doing: &str, e: &PgWireError) -> ConnectorError {
    match e {
        PgWireError::Auth(_) | PgWireError::Tls(_) => ConnectorError::User(format!(
            "{doing}: opening the replication connection: {e} (the role needs the REPLICATION attribute, \
             and pg_hba.conf must let it in)"
        )),
        PgWireError::Server(m) if !held_elsewhere(e) && !m.contains("SQLSTATE 57P") && !m.contains("SQLSTATE 08") => {
            ConnectorError::User(format!("{doing}: the replication stream: {e}"))
        }
        PgWireError::Protocol(_) | PgWireError::MessageTooLarge { .. } => {
            ConnectorError::internal(doing.to_owned(), format!("the replication stream: {e}"))
        }
        // I/O, the session ending, the slot held by the previous owner, the server shutting down.
        _ => ConnectorError::Retriable {
            context: format!("{doing}: the replication stream"),
            message: e.to_string(),
            retry_after: None,
        },
    }
}

impl CdcSource {
    /// Opens the replication stream if it is not open, at the acknowledged position.
    async fn open_stream(&mut self) -> Result<(), ConnectorError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let doing = self.doing();
        let slot = self.slot.clone();
        // Never report less than the slot has confirmed (older servers would take it back).
        let confirmed: Option<String> = self
            .client()
            .await?
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(|e| classify(&doing, &e))?
            .and_then(|r| r.get(0));
        let Some(confirmed) = confirmed.as_deref().and_then(parse_lsn) else {
            return Err(ConnectorError::User(format!("{doing}: the replication slot is gone (dropped by hand?)")));
        };
        let from = Lsn(self.acked_lsn.max(confirmed));
        let config = self.replication.clone().with_start_lsn(from).with_ack_lsn(from);
        let started = Instant::now();
        loop {
            let mut client = ReplicationClient::connect(config.clone()).await.map_err(|e| stream_error(&doing, &e))?;
            let wait = self.connect_timeout + Duration::from_secs(5);
            match tokio::time::timeout(wait, client.wait_started()).await {
                Ok(Ok(())) => {
                    self.stream = Some(client);
                    self.slot_at = self.slot_at.max(from.0);
                    tracing::debug!(slot = %slot, from = %from, "replication stream started");
                    return Ok(());
                }
                Ok(Err(e)) if held_elsewhere(&e) && started.elapsed() < SLOT_WAIT => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Err(e)) => return Err(stream_error(&doing, &e)),
                Err(_) => {
                    return Err(ConnectorError::Retriable {
                        context: format!("{doing}: opening the replication stream"),
                        message: format!("no answer within {} s", wait.as_secs()),
                        retry_after: None,
                    });
                }
            }
        }
    }

    /// Writes the marker a run on demand reads up to, and notes where it is.
    async fn write_marker(&mut self) -> Result<(), ConnectorError> {
        let doing = self.doing();
        let slot = self.slot.clone();
        let lsn: String = self
            .client()
            .await?
            .query_one("SELECT pg_logical_emit_message(false, $1, $2)::text", &[&MARKER, &slot])
            .await
            .map_err(|e| classify(&format!("{doing}: marking the end of this run in the WAL"), &e))?
            .get(0);
        self.marker = parse_lsn(&lsn);
        Ok(())
    }

    /// Reads the stream: up to `max` records (fewer rather than split a key change's two).
    pub(super) async fn stream_poll(&mut self, max: usize) -> Result<Poll, ConnectorError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.open_stream().await?;
        if !self.follow && self.marker.is_none() {
            self.write_marker().await?;
        }
        let doing = self.doing();
        let limit = max.max(2) - 1;
        let mut items = Vec::new();
        let mut linger_until: Option<tokio::time::Instant> = None;
        while items.len() + self.pending.len() < limit && !self.caught_up {
            let Some(stream) = self.stream.as_mut() else { break };
            // Events waiting are taken without a timer; then a short linger fills the batch.
            let event = match stream.recv().now_or_never() {
                Some(event) => event,
                None => {
                    let until = *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + FIRST_WAIT);
                    match tokio::time::timeout_at(until, stream.recv()).await {
                        Ok(event) => event,
                        Err(_) => break,
                    }
                }
            };
            match event {
                Ok(Some(event)) => {
                    if let Err(e) = self.event(event, &mut items) {
                        self.failed = Some(e);
                        break;
                    }
                    // After the first event, wait only briefly for more.
                    if linger_until.is_none_or(|u| u > tokio::time::Instant::now() + LINGER) {
                        linger_until = Some(tokio::time::Instant::now() + LINGER);
                    }
                }
                Ok(None) | Err(_) if !items.is_empty() || !self.pending.is_empty() => {
                    // Hand out what was read; the next poll reopens the stream.
                    self.lose_stream();
                    break;
                }
                Ok(None) => {
                    self.lose_stream();
                    return Err(ConnectorError::Retriable {
                        context: format!("{doing}: the replication stream"),
                        message: "the server ended the stream".into(),
                        retry_after: None,
                    });
                }
                Err(e) => {
                    self.lose_stream();
                    return Err(stream_error(&doing, &e));
                }
            }
        }
        self.flush_partial(&mut items);
        if self.stream.is_none() {
            // Lost with records in hand: those go out; the transaction is read again.
            self.abandon_txn();
        }
        if !items.is_empty() {
            return Ok(Poll::Items(items));
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.heartbeat_tick().await?;
        if self.caught_up && self.txn.is_none() && self.snapshot_todo.is_empty() {
            return Ok(Poll::Exhausted);
        }
        Ok(Poll::Idle)
    }

    /// One event of the stream.
    fn event(&mut self, event: ReplicationEvent, items: &mut Vec<SourceItem>) -> Result<(), ConnectorError> {
        match event {
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                self.begin(xid, final_lsn.0, commit_time_micros);
            }
            ReplicationEvent::XLogData { wal_end, data, .. } => {
                self.wal_head = self.wal_head.max(wal_end.0);
                self.message(&data)?;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.wal_head = self.wal_head.max(end_lsn.0);
                self.commit(end_lsn.0, items);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => self.decoded_to(wal_end.0),
            ReplicationEvent::Message { transactional: false, lsn, prefix, content } => {
                if prefix == MARKER
                    && content.as_ref() == self.slot.as_bytes()
                    && self.marker.is_some_and(|m| lsn.0 >= m)
                {
                    self.caught_up = true;
                }
                self.decoded_to(lsn.0);
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// The server has decoded the WAL up to `lsn`: outside a transaction, everything before it
    /// that was for this flow has arrived, so the rest may be passed once acknowledged.
    fn decoded_to(&mut self, lsn: u64) {
        self.wal_head = self.wal_head.max(lsn);
        if self.txn.is_none() {
            self.quiet_to = Some(self.quiet_to.unwrap_or(0).max(lsn));
        }
    }

    /// Drops the stream after an error; the next poll opens it again.
    pub(super) fn lose_stream(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            stream.abort();
        }
    }

    /// Reports the flushed position for the stream (no-op without one).
    pub(super) fn report_flushed(&self, lsn: u64) -> bool {
        match &self.stream {
            Some(stream) => {
                stream.update_applied_lsn(Lsn(lsn));
                true
            }
            None => false,
        }
    }

    /// Every `heartbeat_secs` while idle: how far the server's WAL is ahead (for the lag
    /// metric), and the slot moved past stretches with nothing for this flow once everything
    /// handed out is acknowledged.
    async fn heartbeat_tick(&mut self) -> Result<(), ConnectorError> {
        if self.last_heartbeat.elapsed() < self.heartbeat {
            return Ok(());
        }
        self.last_heartbeat = Instant::now();
        let doing = self.doing();
        let head: String = self
            .client()
            .await?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| classify(&doing, &e))?
            .get(0);
        self.wal_head = self.wal_head.max(parse_lsn(&head).unwrap_or(0));
        if self.acked_lsn >= self.handed_lsn
            && self.txn.is_none()
            && let Some(lsn) = self.quiet_to.take()
        {
            self.advance_to(lsn).await?;
        }
        Ok(())
    }
}
