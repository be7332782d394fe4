//! Leadership and wake-ups on the control session (spec §3.1 step 5): a
//! session-level advisory lock per prefix, plus `LISTEN etcd_changes`.

use std::time::Duration;

use futures_util::StreamExt;
use pgtandem_core::conninfo::ConnInfo;
use pgtandem_pg::ConnParams;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::error::{SyncError, SyncResult};

/// NOTIFY channel written by `notify_etcd_change()`.
pub const CHANNEL: &str = "etcd_changes";
/// How often a waiting instance says so.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(30);

/// The advisory lock key text for a prefix (`hashtextextended(this, 0)`).
pub fn lock_name(prefix: &str) -> String {
    format!("pg_etcd:{prefix}")
}

/// A PostgreSQL session whose notifications arrive on a channel. The channel
/// closes when the session ends, which is how a lost lock is noticed.
pub struct ControlSession {
    pub client: Client,
    pub notifications: mpsc::UnboundedReceiver<String>,
}

impl ControlSession {
    /// Connects, forwarding every NOTIFY payload.
    pub async fn connect(info: &ConnInfo) -> SyncResult<Self> {
        let params = ConnParams::from_conninfo(info)?;
        let (client, mut connection) = params.pg_config().connect(NoTls).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "control session ended");
                        break;
                    }
                }
            }
        });
        Ok(ControlSession {
            client,
            notifications: rx,
        })
    }

    /// One `pg_try_advisory_lock` attempt.
    pub async fn try_lock(&self, prefix: &str) -> SyncResult<bool> {
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&lock_name(prefix)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Retries the lock every `interval` until held, logging every 30 s.
    pub async fn acquire(&self, prefix: &str, interval: Duration) -> SyncResult<()> {
        let mut last_log: Option<tokio::time::Instant> = None;
        loop {
            if self.try_lock(prefix).await? {
                tracing::info!(prefix, "acquired leader lock");
                return Ok(());
            }
            if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                tracing::info!(prefix, "waiting for leader lock");
                last_log = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// `LISTEN etcd_changes`.
    pub async fn listen(&self) -> SyncResult<()> {
        self.client
            .batch_execute(&format!(
                "LISTEN {}",
                pgtandem_core::quoting::quote_ident_always(CHANNEL)
            ))
            .await?;
        Ok(())
    }

    /// Releases the lock (validate --fix).
    pub async fn unlock(&self, prefix: &str) -> SyncResult<()> {
        self.client
            .execute(
                "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                &[&lock_name(prefix)],
            )
            .await
            .map_err(SyncError::from)?;
        Ok(())
    }
}
