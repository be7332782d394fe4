//! `pgtandem tls init|issue`: one cluster CA and per-node/admin certificates
//! (node-daemon.md §3.9).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create (or reuse) the CA and issue server and client certificates
    Init(TlsInitArgs),
    /// Sign a node or admin certificate with an existing CA
    Issue(TlsIssueArgs),
}

#[derive(Debug, Args)]
pub struct TlsInitArgs {
    /// Output directory
    #[arg(short = 'o', long, default_value = "~/.config/steep/certs")]
    pub output: PathBuf,
    /// Node name for the server certificate
    #[arg(short = 'n', long, default_value = "steep-repl")]
    pub name: String,
    /// Server certificate host names/IPs (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Leaf certificate validity in days
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// CA validity in days
    #[arg(long, default_value_t = 3650)]
    pub ca_days: u32,
    /// Replace existing leaf certificates
    #[arg(long)]
    pub force: bool,
    /// Existing CA certificate to sign with
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Existing CA private key to sign with
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("subject").required(true).args(["node", "admin"])))]
pub struct TlsIssueArgs {
    /// Directory holding ca.crt and ca.key
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// Issue a node certificate (server + client auth)
    #[arg(long, requires = "hosts")]
    pub node: Option<String>,
    /// Node host names/IPs (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Issue an admin client certificate
    #[arg(long)]
    pub admin: Option<String>,
    /// Output directory
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Validity in days
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// Runs one TLS command.
pub fn run(command: &TlsCommand) -> u8 {
    tracing::debug!(?command, "tls arguments");
    match command {
        TlsCommand::Init(_) => super::engine_not_built("tls init"),
        TlsCommand::Issue(_) => super::engine_not_built("tls issue"),
    }
}
