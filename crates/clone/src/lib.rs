//! Physical standby clone engine (`pgtandem clone` / `pgclone`, clone.md):
//! builds a PostgreSQL ≥ 15 standby data directory from a running primary
//! with `pg_backup_start/stop`, a parallel file copy behind a [`Transport`]
//! and native WAL capture straight into the replica's `pg_wal`.

pub mod child;
pub mod durability;
pub mod engine;
pub mod error;
pub mod fileset;
pub mod journal;
pub mod limiter;
pub mod options;
pub mod preflight;
pub mod primary;
pub mod queue;
pub mod receivewal;
pub mod report;
pub mod standby;
pub mod transport;
pub mod tunnel;
pub mod wal;

pub use engine::{Outcome, run};
pub use error::{CloneError, Result};
pub use options::{CloneOptions, ProgressStyle, TablespaceMapping, TransportKind, WalMethod};
pub use report::Summary;
pub use transport::{LocalTransport, Transport};
