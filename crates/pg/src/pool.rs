//! A bounded pool of SQL connections for parallel workers.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};
use pgtandem_core::conninfo::ConnInfo;
use tokio_postgres::NoTls;

use crate::connect::ConnParams;
use crate::error::{Error, Result};

/// A pooled connection; derefs to [`tokio_postgres::Client`] and returns to
/// the pool on drop.
pub type PooledClient = deadpool_postgres::Object;

/// Pool sizing and deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: usize,
    /// How long [`Pool::get`] waits for a free slot, a new connection and
    /// the recycle check together.
    pub timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 4,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Connection pool built from a conninfo.
///
/// Connections are checked with an empty simple query before reuse, which
/// costs one round trip but catches connections the server has closed.
#[derive(Clone)]
pub struct Pool {
    inner: deadpool_postgres::Pool,
    timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.inner.status();
        f.debug_struct("Pool")
            .field("max_size", &status.max_size)
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

impl Pool {
    /// Builds a pool; no connection is opened until the first [`Pool::get`].
    pub fn new(info: &ConnInfo, options: PoolOptions) -> Result<Self> {
        Self::from_params(&ConnParams::from_conninfo(info)?, options)
    }

    /// Builds a pool from resolved parameters.
    pub fn from_params(params: &ConnParams, options: PoolOptions) -> Result<Self> {
        let manager = Manager::from_config(
            params.pg_config(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let inner = deadpool_postgres::Pool::builder(manager)
            .max_size(options.max_size.max(1))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(options.timeout),
                create: Some(options.timeout),
                recycle: Some(options.timeout),
            })
            .build()
            .map_err(|e| Error::Pool(e.to_string()))?;
        Ok(Self {
            inner,
            timeout: options.timeout,
        })
    }

    /// Checks out a connection, opening one if needed.
    pub async fn get(&self) -> Result<PooledClient> {
        self.inner.get().await.map_err(|e| self.map_error(e))
    }

    /// Connections currently open (idle or checked out).
    pub fn size(&self) -> usize {
        self.inner.status().size
    }

    /// Closes the pool; idle connections are dropped, checked-out ones when
    /// they are returned.
    pub fn close(&self) {
        self.inner.close();
    }

    fn map_error(&self, e: deadpool_postgres::PoolError) -> Error {
        use deadpool_postgres::PoolError as P;
        match e {
            P::Backend(e) => Error::from(e),
            P::Timeout(what) => Error::Timeout(format!(
                "no PostgreSQL connection available from the pool within {:?} ({what:?})",
                self.timeout
            )),
            P::Closed => Error::Pool("pool is closed".into()),
            P::NoRuntimeSpecified => Error::Pool("no async runtime configured".into()),
            P::PostCreateHook(e) => Error::Pool(e.to_string()),
        }
    }
}
