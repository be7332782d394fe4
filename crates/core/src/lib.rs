//! Pure logic shared by every pgtandem engine: LSNs, server versions, SQL quoting,
//! libpq connection strings and `.pgpass`, the error type, progress events and
//! config layering. Nothing here touches the network.

pub mod config;
pub mod conninfo;
pub mod error;
pub mod lsn;
pub mod pgpass;
pub mod progress;
pub mod quoting;
pub mod version;

pub use conninfo::{ConnInfo, Host, HostSpec};
pub use error::{Error, ErrorKind, Result, ResultExt};
pub use lsn::Lsn;
pub use quoting::{QualifiedName, quote_ident, quote_ident_always, quote_literal};
pub use version::PgVersion;
