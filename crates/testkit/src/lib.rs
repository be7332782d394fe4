//! Real servers for pgtandem tests: PostgreSQL 15/18, etcd, Redis and sshd, each
//! on a free 127.0.0.1 port in its own temp dir, gone when dropped.
//!
//! The kit is synchronous (`std::process`), so sync and async tests both use it
//! (from async code, start servers before entering the runtime or inside
//! `spawn_blocking`; starting takes a second or two).
//!
//! Lifetime guarantees, in order of strength:
//! - `Drop` stops each server (also while a test panics; a panicking test also
//!   gets the server log on stderr) and removes its temp dir.
//! - Servers are direct children spawned with `PR_SET_PDEATHSIG(SIGKILL)` from a
//!   process-lifetime thread, so the kernel kills them if the test process dies
//!   without unwinding. PostgreSQL is therefore started as `postgres`, never via
//!   `pg_ctl` (which daemonizes). Temp dirs of a killed test process stay behind
//!   under `/tmp` (`pgt*`).
//! - A server kept in a `static` lives until the process exits (its temp dir is
//!   then left behind, since statics are not dropped).
//!
//! Every start picks a fresh port and retries on another if the server reports
//! "address already in use" (see [`with_port_retry`]).
//!
//! When the tests run as root, PostgreSQL runs as the `postgres` OS user
//! ([`OsUser::postgres_server`]); its directories are chowned accordingly.

mod error;
mod etcd;
mod os_user;
mod pg;
mod ports;
mod process;
mod redis;
mod scratch;
mod sshd;

pub use error::{Error, Result};
pub use etcd::Etcd;
pub use os_user::OsUser;
pub use pg::{Pg, PgCluster, PgClusterBuilder, SUPERUSER, quote_ident, workspace_root};
pub use ports::{PORT_ATTEMPTS, free_port, free_ports, with_port_retry, with_ports_retry};
pub use process::process_alive;
pub use redis::{Redis, RedisBuilder};
pub use sshd::{Sshd, SshdBuilder};
