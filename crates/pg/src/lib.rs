//! PostgreSQL I/O for pgtandem: SQL connections and pools, raw COPY byte
//! streams between servers, and replication (walsender) connections.
//!
//! Every failure is a [`Error`] whose [`Error::kind`] says whether retrying
//! can help; server messages are kept verbatim for the operator.

pub mod connect;
pub mod copy;
pub mod error;
pub mod pool;
pub mod replication;

pub use connect::{
    ConnParams, RetryPolicy, connect, connect_params, connect_with_retry, require_version,
    server_version,
};
pub use copy::{CopyFormat, CopyStats, copy_between, copy_in_sql, copy_out_sql};
pub use error::{Error, Result, ServerError};
pub use pool::{Pool, PoolOptions, PooledClient};
pub use replication::{
    CreatedSlot, PhysicalStream, QueryResult, ReceivedWal, ReplicationConnection, ReplicationMode,
    SlotOptions, SnapshotAction, SystemIdentity, TimelineHistory, WalReceiveError, WalReceiver,
    WalReceiverOptions,
};
pub use tokio_postgres::Client;
