//! `pgtandem daemon …` / `steep-repl run|install|…|health`: the node daemon
//! and its service management (node-daemon.md §2.1, §2.5, §2.6).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Default unit name; `--service-name` allows several daemons per host.
pub const DEFAULT_SERVICE_NAME: &str = "steep-repl";

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Run the daemon in the foreground
    Run(DaemonRunArgs),
    /// Install as a systemd system or user service
    Install(InstallArgs),
    /// Remove the service
    Uninstall(ServiceArgs),
    /// Start the installed service
    Start(ServiceArgs),
    /// Stop the running service
    Stop(ServiceArgs),
    /// Restart the service
    Restart(ServiceArgs),
    /// Show service status
    Status(StatusArgs),
    /// Ask a remote daemon for its health
    Health(HealthArgs),
}

/// `run` flags; each overrides the config file, `PG*` and `STEEP_REPL_*`.
#[derive(Debug, Args)]
pub struct DaemonRunArgs {
    #[arg(long)]
    pub node_id: Option<String>,
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long)]
    pub pg_host: Option<String>,
    #[arg(long)]
    pub pg_port: Option<u16>,
    #[arg(long)]
    pub pg_database: Option<String>,
    #[arg(long)]
    pub pg_user: Option<String>,
    #[arg(long)]
    pub grpc_port: Option<u16>,
    #[arg(long)]
    pub http_port: Option<u16>,
    #[arg(long)]
    pub ipc_path: Option<PathBuf>,
}

/// Which service unit a service command acts on.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// User service (~/.config/systemd/user) instead of a system service
    #[arg(long)]
    pub user: bool,
    /// Unit name, to run several daemons on one host
    #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
    pub service_name: String,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// OS user the service runs as (User= in the unit)
    #[arg(long)]
    pub run_as: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// JSON output
    #[arg(long)]
    pub json: bool,
}

/// Client-side TLS for calls to a daemon.
#[derive(Debug, Args)]
pub struct ClientTlsArgs {
    /// CA certificate that signed the daemon's certificate
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate for mTLS
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client private key for mTLS
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Plaintext gRPC (not recommended)
    #[arg(long)]
    pub insecure: bool,
}

/// `--remote host:port` plus TLS, taken by every daemon-calling command.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Daemon gRPC address (host:port)
    #[arg(long, value_name = "HOST:PORT")]
    pub remote: Option<String>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Daemon gRPC address (host:port)
    #[arg(long, value_name = "HOST:PORT", required = true)]
    pub remote: Option<String>,
    /// Call timeout (Go duration)
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// JSON output
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// Runs one daemon command.
pub fn run(command: &DaemonCommand) -> u8 {
    tracing::debug!(?command, "daemon arguments");
    let name = match command {
        DaemonCommand::Health(args) => return run_health(args),
        DaemonCommand::Run(_) => "daemon run",
        DaemonCommand::Install(_) => "daemon install",
        DaemonCommand::Uninstall(_) => "daemon uninstall",
        DaemonCommand::Start(_) => "daemon start",
        DaemonCommand::Stop(_) => "daemon stop",
        DaemonCommand::Restart(_) => "daemon restart",
        DaemonCommand::Status(_) => "daemon status",
    };
    super::engine_not_built(name)
}

/// `daemon health` (also `pgtandem health`).
pub fn run_health(args: &HealthArgs) -> u8 {
    tracing::debug!(?args, "health arguments");
    super::engine_not_built("daemon health")
}
