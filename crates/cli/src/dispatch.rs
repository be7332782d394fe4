//! Multicall dispatch: `argv[0]` picks the command tree, each tree parses with
//! its reference tool's error conventions, and the parsed command goes to its
//! capability module.

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{
    Command, EtcdSyncCli, NodeCommand, PgBootstrapSyncCli, PgtandemCli, SteepReplCli,
    SteepReplCommand, SteepReplNodeCommand,
};
use crate::commands::{
    bootstrap, clone, daemon, etcd_sync, install_links, node_init, node_schema, tls,
};
use crate::drop_in::{Capability, DropIn, etcd_style_version};
use crate::logging;

/// Runs one process invocation (`args[0]` is the program name) and returns
/// its exit code.
pub fn run(args: &[OsString]) -> u8 {
    let argv0 = args.first().cloned().unwrap_or_else(|| "pgtandem".into());
    let Some(drop_in) = DropIn::from_argv0(&argv0) else {
        return run_pgtandem(args);
    };
    match drop_in.capability() {
        Capability::Clone => clone::run(&argv0.to_string_lossy(), &args[1..], false),
        Capability::Node => run_steep_repl(args),
        Capability::Bootstrap => run_pg_bootstrap_sync(args),
        Capability::EtcdSync => run_pg_etcd(drop_in, args),
    }
}

/// How a drop-in reports a command-line error.
#[derive(Clone, Copy)]
enum ParseErrorStyle {
    /// clap's own message on stderr, with the given exit code.
    Clap(u8),
    /// pg_etcd: usage on stdout (of the named subcommand, if any), then
    /// `Error: <detail>` in pflag's wording, exit 1.
    UsageThenError(Option<&'static str>),
    /// Go/cobra tools: `Error: <detail>` on stderr, exit 1.
    GoError,
}

/// Parses `args` with `command`; `Err` carries the exit code after help,
/// version or an error was printed.
fn parse_with<T: FromArgMatches>(
    mut command: clap::Command,
    args: &[OsString],
    style: ParseErrorStyle,
) -> Result<T, u8> {
    let result = command
        .try_get_matches_from_mut(args)
        .and_then(|m| T::from_arg_matches(&m));
    let err = match result {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    let informational = matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    if informational {
        // Writing help to a closed pipe is not worth a failure exit.
        let _ = err.print();
        return Err(0);
    }
    Err(match style {
        ParseErrorStyle::Clap(code) => {
            let _ = err.print();
            code
        }
        ParseErrorStyle::UsageThenError(subcommand) => {
            let usage = match subcommand.and_then(|name| command.find_subcommand_mut(name)) {
                Some(sub) => sub.render_help(),
                None => command.render_help(),
            };
            println!("{usage}");
            let detail = etcd_sync::pflag_error_detail(&err).unwrap_or_else(|| error_detail(&err));
            println!("Error: {detail}");
            1
        }
        ParseErrorStyle::GoError => {
            eprintln!("Error: {}", error_detail(&err));
            eprintln!("Run '{} --help' for usage.", command.get_name());
            1
        }
    })
}

/// clap's description of a parse error on one line (its first paragraph,
/// which names e.g. the missing arguments), without the `error: ` prefix.
fn error_detail(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = paragraph.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

fn run_pgtandem(args: &[OsString]) -> u8 {
    let sub = subcommand_position(args);
    let word = sub.and_then(|i| args[i].to_str());
    if let (Some(i), Some("clone")) = (sub, word) {
        // The clone grammar is pgclone's, not clap's (clone.md §2.1).
        let debug = args[1..i].iter().any(|a| a == "--debug");
        let name = format!("{} clone", args[0].to_string_lossy());
        return clone::run(&name, &args[i + 1..], debug);
    }
    if let (Some(i), Some("etcd-sync")) = (sub, word)
        && etcd_sync::asks_for_version(&args[i + 1..])
    {
        println!("{}", etcd_style_version("pgtandem etcd-sync"));
        return 0;
    }
    // etcd-sync and bootstrap keep their reference tools' exit 1 for usage
    // errors; etcd-sync also pg_etcd's usage-then-`Error:` report.
    let style = match word {
        Some("etcd-sync") => ParseErrorStyle::UsageThenError(Some("etcd-sync")),
        Some("bootstrap") => ParseErrorStyle::Clap(DropIn::PgBootstrapSync.parse_error_exit_code()),
        _ => ParseErrorStyle::Clap(2),
    };
    let command = PgtandemCli::command().mut_subcommand("etcd-sync", etcd_sync::without_empty_env);
    let cli: PgtandemCli = match parse_with(command, args, style) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // etcd-sync installs its own reference log layout.
    if !matches!(cli.command, Command::EtcdSync(_)) {
        logging::init(cli.global.debug);
    }
    match &cli.command {
        Command::Clone(raw) => clone::run("pgtandem clone", &raw.args, cli.global.debug),
        Command::Daemon(cmd) => daemon::run(cmd),
        Command::Node(NodeCommand::InstallSchema(a)) => node_schema::run(a),
        Command::Tls(cmd) => tls::run(cmd),
        Command::Health(a) => daemon::run_health(a),
        Command::Init(cmd) => node_init::run_init(cmd),
        Command::Schema(cmd) => node_init::run_schema(cmd),
        Command::Snapshot(cmd) => node_init::run_snapshot(cmd),
        Command::Merge(a) => node_init::run_merge(a),
        Command::AnalyzeOverlap(a) => node_init::run_analyze_overlap(a),
        Command::Top(a) => node_init::run_top(a),
        Command::Bootstrap(cmd) => bootstrap::run(cmd),
        Command::EtcdSync(cmd) => etcd_sync::run(cmd),
        Command::InstallLinks(a) => install_links::run(a),
    }
}

/// Index of the subcommand word in a `pgtandem` command line, skipping the
/// global flags; `None` when a non-global flag comes first.
fn subcommand_position(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let text = arg.to_str()?;
        if text == "--debug" || text.starts_with("--config=") {
            i += 1;
        } else if text == "--config" {
            i += 2;
        } else if text.starts_with('-') {
            return None;
        } else {
            return Some(i);
        }
    }
    None
}

fn run_steep_repl(args: &[OsString]) -> u8 {
    let cli: SteepReplCli = match parse_with(
        SteepReplCli::command(),
        args,
        ParseErrorStyle::Clap(DropIn::SteepRepl.parse_error_exit_code()),
    ) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(cli.global.debug);
    match &cli.command {
        SteepReplCommand::Daemon(cmd) => daemon::run(cmd),
        SteepReplCommand::Tls(cmd) => tls::run(cmd),
        SteepReplCommand::Node(SteepReplNodeCommand::Init(cmd)) | SteepReplCommand::Init(cmd) => {
            node_init::run_init(cmd)
        }
        SteepReplCommand::Node(SteepReplNodeCommand::InstallSchema(a)) => node_schema::run(a),
        SteepReplCommand::Schema(cmd) => node_init::run_schema(cmd),
        SteepReplCommand::Snapshot(cmd) => node_init::run_snapshot(cmd),
        SteepReplCommand::Merge(a) => node_init::run_merge(a),
        SteepReplCommand::AnalyzeOverlap(a) => node_init::run_analyze_overlap(a),
        SteepReplCommand::Top(a) => node_init::run_top(a),
    }
}

fn run_pg_bootstrap_sync(args: &[OsString]) -> u8 {
    let cli: PgBootstrapSyncCli = match parse_with(
        PgBootstrapSyncCli::command(),
        args,
        ParseErrorStyle::GoError,
    ) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(cli.sync.verbose);
    bootstrap::run(&cli.into_command())
}

fn run_pg_etcd(drop_in: DropIn, args: &[OsString]) -> u8 {
    // The reference checks -v/--version before any other parsing.
    if etcd_sync::asks_for_version(&args[1..]) {
        println!("{}", drop_in.version_text());
        return 0;
    }
    let command = etcd_sync::without_empty_env(EtcdSyncCli::command().name(drop_in.name()));
    let cli: EtcdSyncCli = match parse_with(command, args, ParseErrorStyle::UsageThenError(None)) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    etcd_sync::run(&cli.command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn subcommand_word_is_found_after_global_flags() {
        assert_eq!(
            subcommand_position(&os(&["pgtandem", "clone", "-v"])),
            Some(1)
        );
        assert_eq!(
            subcommand_position(&os(&["pgtandem", "--debug", "--config", "f", "etcd-sync"])),
            Some(4)
        );
        assert_eq!(
            subcommand_position(&os(&["pgtandem", "--config=f", "bootstrap"])),
            Some(2)
        );
        assert_eq!(
            subcommand_position(&os(&["pgtandem", "--help", "clone"])),
            None
        );
        assert_eq!(subcommand_position(&os(&["pgtandem"])), None);
    }

    #[test]
    fn error_detail_drops_the_prefix() {
        let err = PgtandemCli::command()
            .try_get_matches_from(["pgtandem", "nosuch"])
            .unwrap_err();
        let detail = error_detail(&err);
        assert!(!detail.starts_with("error:"), "{detail}");
        assert!(detail.contains("nosuch"), "{detail}");
        let err = PgBootstrapSyncCli::command()
            .try_get_matches_from(["pg-bootstrap-sync", "-d", "x"])
            .unwrap_err();
        let detail = error_detail(&err);
        assert!(detail.contains("--kv-url"), "{detail}");
        assert!(!detail.contains('\n'), "{detail}");
    }
}
