//! pgtandem's command-line front end: the `pgtandem` command tree and the
//! drop-in names (`pgclone`, `steep-repl`, `pg-bootstrap-sync`, `pg_etcd`,
//! `etcd_fdw`) it answers to when started through a symlink.

pub mod cli;
pub mod commands;
mod dispatch;
pub mod drop_in;
mod logging;
pub mod pgclone_args;
pub mod secret;
pub mod version;

pub use dispatch::run;
