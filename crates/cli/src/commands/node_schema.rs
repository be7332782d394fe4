//! `pgtandem node install-schema`: the plain-SQL install of the `steep_repl`
//! schema for managed PostgreSQL (node-daemon.md §3.2).

use clap::Args;

#[derive(Debug, Args)]
pub struct InstallSchemaArgs {
    /// Print the SQL instead of running it
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the schema instead
    #[arg(long)]
    pub uninstall: bool,
    /// Confirm --uninstall without a prompt
    #[arg(long, requires = "uninstall")]
    pub yes: bool,
}

pub fn run(args: &InstallSchemaArgs) -> u8 {
    tracing::debug!(?args, "node install-schema arguments");
    super::engine_not_built("node install-schema")
}
