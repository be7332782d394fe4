//! Keeps one etcd key prefix and one PostgreSQL history table in sync in both
//! directions (pgtandem etcd-sync, the successor of pg_etcd / etcd_fdw).
//!
//! The engine never exits the process: [`service::run`], [`status::run`],
//! [`validate::run`] and [`schema::run_migrate`] return an [`ExitCode`].

pub mod applier;
pub mod checkpoint;
pub mod config;
pub mod dsn;
pub mod duration;
pub mod error;
pub mod etcd_session;
pub mod etcd_tls;
pub mod event;
pub mod leader;
pub mod log_layout;
pub mod resync;
pub mod retention;
pub mod schema;
pub mod service;
pub mod status;
pub mod validate;
pub mod watch;

pub use config::{RawSettings, SchemaMode, Settings};
pub use error::{SyncError, SyncResult};

/// Process exit codes of etcd-sync (spec §2.3); 3 is never used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Signal, help, healthy status, consistent validate.
    Success,
    /// Configuration, schema-mode or DDL problem.
    Config,
    /// A peer was unreachable (or refused our credentials) within the budget.
    Connection,
    /// Outage budget exceeded, schema dropped, unhealthy status, differences.
    Runtime,
}

impl ExitCode {
    /// The numeric process exit status.
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Config => 1,
            ExitCode::Connection => 2,
            ExitCode::Runtime => 4,
        }
    }
}
