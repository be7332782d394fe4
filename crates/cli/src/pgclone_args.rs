//! pgclone's hand-rolled command-line grammar (clone.md §2.1–2.3), shared by
//! `pgclone ARGS` and `pgtandem clone ARGS`.
//!
//! Not clap: pgclone scripts depend on its exact quirks (`FATAL: Unknown option
//! --X`, `-v` meaning version and beating `--help`, ignored positionals,
//! booleans that swallow `=value`, env fallbacks for required flags).

use std::num::NonZeroUsize;
use std::path::PathBuf;

/// What one pgclone command line asks for.
#[derive(Debug)]
pub enum PgcloneRequest {
    /// No arguments, `-h` or `--help`: print [`usage`] and exit 0.
    Usage,
    /// `-v` or `--version` (wins over help): print the version and exit 0.
    Version,
    /// A clone with validated arguments.
    Clone(Box<CloneArgs>),
}

/// A parsed command line plus the warnings pgclone prints but does not stop on.
#[derive(Debug)]
pub struct ParsedPgclone {
    pub request: PgcloneRequest,
    pub warnings: Vec<String>,
}

/// Why a pgclone command line was refused; every variant exits 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgcloneArgsError {
    /// Printed as `[ts] FATAL: <msg>`.
    Fatal(String),
    /// Printed as `<argv0>: <VAR>: --<flag> required` (bash `${VAR:?}` style).
    MissingRequired {
        var: &'static str,
        flag: &'static str,
    },
}

impl PgcloneArgsError {
    /// The stderr line for this error (without trailing newline).
    pub fn render(&self, argv0: &str, timestamp: &str) -> String {
        match self {
            PgcloneArgsError::Fatal(msg) => format!("[{timestamp}] FATAL: {msg}"),
            PgcloneArgsError::MissingRequired { var, flag } => {
                format!("{argv0}: {var}: --{flag} required")
            }
        }
    }
}

/// `--progress`: anything unknown means `none`, as in pgclone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Bar,
    Plain,
    None,
}

/// `--transport`: how PGDATA files travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Throw-away rsync daemon on the primary, reached over SSH (pgclone's way).
    Rsync,
    /// Same-host copy; needs no SSH user.
    Local,
}

/// `--wal-method`: who captures WAL during the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalMethod {
    Native,
    PgReceivewal,
}

/// One `--tablespace-mapping OLD=NEW`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceMapping {
    pub old: PathBuf,
    pub new: PathBuf,
}

/// Everything `pgtandem clone` / `pgclone` needs, after defaults and env
/// fallbacks were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneArgs {
    pub pghost: String,
    pub pgport: u16,
    pub pguser: String,
    pub primary_pgdata: PathBuf,
    /// Defaults to the primary's path.
    pub replica_pgdata: PathBuf,
    /// `None` = `<replica>/pg_wal`.
    pub replica_waldir: Option<PathBuf>,
    /// `None` = auto-detect `~/.ssh/id_*`, else the agent.
    pub ssh_key: Option<PathBuf>,
    /// Required for the rsync transport.
    pub ssh_user: Option<String>,
    pub temp_waldir: Option<PathBuf>,
    /// `None` = online CPUs.
    pub parallel: Option<NonZeroUsize>,
    pub paranoid: bool,
    pub drop_existing: bool,
    pub debug: bool,
    pub verbose: bool,
    pub keep_run_tmp: bool,
    pub slot: bool,
    pub bypass_rep_traffic: bool,
    pub insecure_ssh: bool,
    pub progress: ProgressMode,
    pub progress_interval_secs: u64,
    /// Aggregate bytes/s over all workers.
    pub limit_net_bw: Option<u64>,
    // pgtandem extensions (§2.3)
    pub ssh_port: Option<u16>,
    pub ssh_options: Vec<String>,
    pub transport: Transport,
    pub wal_method: WalMethod,
    pub no_slot: bool,
    /// `-R`; implied by `--standby-slot` and `--start`.
    pub write_standby_config: bool,
    pub standby_slot: Option<String>,
    pub start: bool,
    pub standby_port: Option<u16>,
    pub pg_bindir: Option<PathBuf>,
    pub tablespace_mappings: Vec<TablespaceMapping>,
    pub json: bool,
    pub resume: bool,
    pub no_sync: bool,
}

/// Usage text: pgclone's flags in §2.2 order, then pgtandem's extensions.
pub fn usage() -> &'static str {
    USAGE
}

const USAGE: &str = "\
Usage: pgclone [OPTIONS]

  --pghost              Primary host (required)
  --pgport              Primary port (default 5432)
  --pguser              Primary user (required)
  --primary-pgdata      Primary PGDATA path (required)
  --replica-pgdata      Replica PGDATA path (optional, default: same as --primary-pgdata)
  --replica-waldir      Replica pg_wal path (optional, default: <replica-pgdata>/pg_wal)
  --ssh-key             SSH private key file (optional, auto-detected if omitted)
  --ssh-user            SSH user (login on primary host) (required)
  --temp-waldir         Temporary WAL directory (optional, default: auto)
  --parallel            Number of parallel rsync jobs (optional, default: CPU)
  --paranoid            Compare file content, not size+mtime (VERY SLOW) (optional, default: disabled)
  --drop-existing       Remove existing replica pgdata and pg_wal after all checks (optional, default: disabled)
  --debug               Trace output, secrets masked (optional, default: disabled)
  --verbose             Verbose output (optional, default: disabled)
  --keep-run-tmp        Preserve temporary run directory after completion (optional, default: disabled)
  --slot                Use a temporary physical replication slot pgclone_<pid> (optional, default: disabled)
  --bypass-rep-traffic  Forward PostgreSQL port via SSH and connect locally (optional, default: disabled)
  --insecure-ssh        Disable known_hosts verification (StrictHostKeyChecking=no) - NOT recommended (optional, default: disabled)
  --progress            Progress display mode: auto|bar|plain|none (optional, default: auto)
  --progress-interval   Seconds between plain progress updates (optional, default: 30)
  --limit-net-bw        Aggregate network bandwidth limit, bytes/s with K/M/G/T/P suffix (optional, minimum 10K)
  -v, --version         Print version and exit
  -h, --help            Show this help and exit

pgtandem extensions:
  --ssh-port            SSH port of the primary (default: ssh's own)
  --ssh-option          Extra ssh -o option, repeatable (also PGTANDEM_SSH_OPTIONS)
  --transport           rsync|local (default: rsync)
  --wal-method          native|pg_receivewal (default: native)
  --no-slot             Native WAL capture without any replication slot
  -R, --write-standby-config
                        Write standby.signal and primary_conninfo
  --standby-slot        Create (if absent) and keep a slot; write primary_slot_name (implies -R)
  --start               Start the standby and wait for streaming (implies -R)
  --standby-port        port = N in postgresql.auto.conf
  --pg-bindir           Directory with pg_ctl/pg_receivewal (default: PATH)
  --tablespace-mapping  OLD=NEW, repeatable; \\= escapes =; NEW must be absolute
  --json                JSON Lines on stdout instead of progress and summary
  --resume              Resume an interrupted clone (not with --drop-existing)
  --no-sync             Skip the final fsync (tests only)
";

/// Long options that take a value.
const VALUE_OPTIONS: &[&str] = &[
    "pghost",
    "pgport",
    "pguser",
    "primary-pgdata",
    "replica-pgdata",
    "replica-waldir",
    "ssh-key",
    "ssh-user",
    "temp-waldir",
    "parallel",
    "progress",
    "progress-interval",
    "limit-net-bw",
    "ssh-port",
    "ssh-option",
    "transport",
    "wal-method",
    "standby-slot",
    "standby-port",
    "pg-bindir",
    "tablespace-mapping",
];

/// Long options that are switches; a `=value` on them is ignored.
const SWITCH_OPTIONS: &[&str] = &[
    "help",
    "version",
    "verbose",
    "paranoid",
    "drop-existing",
    "debug",
    "keep-run-tmp",
    "slot",
    "insecure-ssh",
    "bypass-rep-traffic",
    "no-slot",
    "write-standby-config",
    "start",
    "json",
    "resume",
    "no-sync",
];

/// Raw values as seen on the command line (last one wins, except repeatables).
#[derive(Default)]
struct RawArgs {
    values: Vec<(&'static str, String)>,
    switches: Vec<&'static str>,
}

impl RawArgs {
    fn last(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.values
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }
}

/// Parses pgclone arguments (without argv0). `env` looks up the fallback
/// variables `PGHOST`, `PGUSER`, `PRIMARY_PGDATA`, `REPLICA_PGDATA`,
/// `SSH_USER`, `SSH_KEY`; an empty value counts as unset.
pub fn parse(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<ParsedPgclone, PgcloneArgsError> {
    let mut warnings = Vec::new();
    if args.is_empty() {
        return Ok(ParsedPgclone {
            request: PgcloneRequest::Usage,
            warnings,
        });
    }
    let raw = scan(args, &mut warnings)?;
    let request = if raw.has("version") {
        PgcloneRequest::Version
    } else if raw.has("help") {
        PgcloneRequest::Usage
    } else {
        PgcloneRequest::Clone(Box::new(build(&raw, &env)?))
    };
    Ok(ParsedPgclone { request, warnings })
}

/// The left-to-right scan: the first unknown option or missing value is fatal.
fn scan(args: &[String], warnings: &mut Vec<String>) -> Result<RawArgs, PgcloneArgsError> {
    let mut raw = RawArgs::default();
    let mut i = 0;
    let mut options_ended = false;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if options_ended || arg == "-" || !arg.starts_with('-') {
            warnings.push(format!("Ignoring positional argument: {arg}"));
            continue;
        }
        if arg == "--" {
            options_ended = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if let Some(&name) = SWITCH_OPTIONS.iter().find(|&&s| s == name) {
                raw.switches.push(name);
            } else if let Some(&name) = VALUE_OPTIONS.iter().find(|&&s| s == name) {
                let value = match inline {
                    Some(v) => v.to_owned(),
                    None => {
                        let next = args.get(i).filter(|v| !v.is_empty() && !v.starts_with('-'));
                        let Some(v) = next else {
                            return Err(fatal(format!("Option --{name} requires a value")));
                        };
                        i += 1;
                        v.clone()
                    }
                };
                raw.values.push((name, value));
            } else {
                return Err(fatal(format!("Unknown option --{name}")));
            }
            continue;
        }
        // Short option cluster, getopts-style: only -h, -v and -R exist.
        for c in arg.chars().skip(1) {
            match c {
                'h' => raw.switches.push("help"),
                'v' => raw.switches.push("version"),
                'R' => raw.switches.push("write-standby-config"),
                other => return Err(fatal(format!("Unknown option -{other}"))),
            }
        }
    }
    Ok(raw)
}

fn build(
    raw: &RawArgs,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<CloneArgs, PgcloneArgsError> {
    let lookup = |flag: &str, var: &str| -> Option<String> {
        raw.last(flag)
            .map(str::to_owned)
            .or_else(|| env(var).filter(|v| !v.is_empty()))
            .filter(|v| !v.is_empty())
    };
    let required = |flag: &'static str, var: &'static str| {
        lookup(flag, var).ok_or(PgcloneArgsError::MissingRequired { var, flag })
    };

    let transport = match raw.last("transport") {
        None | Some("rsync") => Transport::Rsync,
        Some("local") => Transport::Local,
        Some(other) => return Err(fatal(format!("Invalid --transport value: {other}"))),
    };

    // Required values in pgclone's order.
    let pghost = required("pghost", "PGHOST")?;
    let pguser = required("pguser", "PGUSER")?;
    let primary_pgdata = PathBuf::from(required("primary-pgdata", "PRIMARY_PGDATA")?);
    let replica_pgdata = lookup("replica-pgdata", "REPLICA_PGDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| primary_pgdata.clone());
    let ssh_key = lookup("ssh-key", "SSH_KEY").map(PathBuf::from);
    let ssh_user = match transport {
        Transport::Rsync => Some(required("ssh-user", "SSH_USER")?),
        Transport::Local => lookup("ssh-user", "SSH_USER"),
    };

    let pgport = match raw.last("pgport") {
        None => 5432,
        Some(v) => parse_port(v).ok_or_else(|| fatal("Invalid port".to_owned()))?,
    };
    let parallel = raw
        .last("parallel")
        .map(|v| {
            digits(v)
                .and_then(|n| usize::try_from(n).ok())
                .and_then(NonZeroUsize::new)
                .ok_or_else(|| fatal(format!("Invalid --parallel value: {v}")))
        })
        .transpose()?;
    let progress = match raw.last("progress") {
        None | Some("auto") => ProgressMode::Auto,
        Some("bar") => ProgressMode::Bar,
        Some("plain") => ProgressMode::Plain,
        Some(_) => ProgressMode::None,
    };
    let progress_interval_secs = match raw.last("progress-interval") {
        None => 30,
        Some(v) => digits(v)
            .filter(|n| *n >= 1)
            .ok_or_else(|| fatal(format!("Invalid --progress-interval value: {v}")))?,
    };
    let limit_net_bw = raw.last("limit-net-bw").map(parse_bandwidth).transpose()?;
    let ssh_port = raw
        .last("ssh-port")
        .map(|v| parse_port(v).ok_or_else(|| fatal(format!("Invalid --ssh-port value: {v}"))))
        .transpose()?;
    let standby_port = raw
        .last("standby-port")
        .map(|v| parse_port(v).ok_or_else(|| fatal(format!("Invalid --standby-port value: {v}"))))
        .transpose()?;
    let wal_method = match raw.last("wal-method") {
        None | Some("native") => WalMethod::Native,
        Some("pg_receivewal") => WalMethod::PgReceivewal,
        Some(other) => return Err(fatal(format!("Invalid --wal-method value: {other}"))),
    };
    let tablespace_mappings = raw
        .all("tablespace-mapping")
        .map(parse_tablespace_mapping)
        .collect::<Result<Vec<_>, _>>()?;

    let standby_slot = raw.last("standby-slot").map(str::to_owned);
    let start = raw.has("start");
    let bypass_rep_traffic = raw.has("bypass-rep-traffic");
    let drop_existing = raw.has("drop-existing");
    let resume = raw.has("resume");
    if resume && drop_existing {
        return Err(fatal(
            "--resume cannot be combined with --drop-existing".to_owned(),
        ));
    }
    if transport == Transport::Local && bypass_rep_traffic {
        return Err(fatal(
            "--bypass-rep-traffic cannot be used with --transport local".to_owned(),
        ));
    }

    Ok(CloneArgs {
        pghost,
        pgport,
        pguser,
        primary_pgdata,
        replica_pgdata,
        replica_waldir: raw.last("replica-waldir").map(PathBuf::from),
        ssh_key,
        ssh_user,
        temp_waldir: raw.last("temp-waldir").map(PathBuf::from),
        parallel,
        paranoid: raw.has("paranoid"),
        drop_existing,
        debug: raw.has("debug"),
        verbose: raw.has("verbose"),
        keep_run_tmp: raw.has("keep-run-tmp"),
        slot: raw.has("slot"),
        bypass_rep_traffic,
        insecure_ssh: raw.has("insecure-ssh"),
        progress,
        progress_interval_secs,
        limit_net_bw,
        ssh_port,
        ssh_options: raw.all("ssh-option").map(str::to_owned).collect(),
        transport,
        wal_method,
        no_slot: raw.has("no-slot"),
        write_standby_config: raw.has("write-standby-config") || standby_slot.is_some() || start,
        standby_slot,
        start,
        standby_port,
        pg_bindir: raw.last("pg-bindir").map(PathBuf::from),
        tablespace_mappings,
        json: raw.has("json"),
        resume,
        no_sync: raw.has("no-sync"),
    })
}

fn fatal(msg: String) -> PgcloneArgsError {
    PgcloneArgsError::Fatal(msg)
}

/// ASCII digits only (pgclone's `^[0-9]+$`), as a number.
fn digits(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_port(v: &str) -> Option<u16> {
    digits(v)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|p| *p != 0)
}

/// `--limit-net-bw`: digits with an optional `K M G T P` suffix (×1024ⁿ).
fn parse_bandwidth(v: &str) -> Result<u64, PgcloneArgsError> {
    let invalid = || fatal("Invalid --limit-net-bw value".to_owned());
    let (number, exponent) = match v.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let exp = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                'P' => 5,
                _ => return Err(invalid()),
            };
            (&v[..v.len() - 1], exp)
        }
        _ => (v, 0),
    };
    let bytes = digits(number)
        .and_then(|n| n.checked_mul(1024u64.pow(exponent)))
        .ok_or_else(invalid)?;
    if bytes < 10_000 {
        return Err(fatal(
            "--limit-net-bw must be >= 10K (10000 bytes/s)".to_owned(),
        ));
    }
    Ok(bytes)
}

/// `OLD=NEW` where `\=` stands for a literal `=`; NEW must be absolute.
fn parse_tablespace_mapping(v: &str) -> Result<TablespaceMapping, PgcloneArgsError> {
    let invalid = || fatal(format!("Invalid --tablespace-mapping value: {v}"));
    let mut old = String::new();
    let mut new = String::new();
    let mut seen_separator = false;
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        let target = if seen_separator { &mut new } else { &mut old };
        match c {
            '\\' if chars.peek() == Some(&'=') => {
                target.push('=');
                chars.next();
            }
            '=' if !seen_separator => seen_separator = true,
            '=' => return Err(invalid()),
            other => target.push(other),
        }
    }
    if !seen_separator || old.is_empty() || !new.starts_with('/') {
        return Err(invalid());
    }
    Ok(TablespaceMapping {
        old: PathBuf::from(old),
        new: PathBuf::from(new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn clone_args(list: &[&str]) -> CloneArgs {
        match parse(&args(list), no_env).unwrap().request {
            PgcloneRequest::Clone(a) => *a,
            other => panic!("expected a clone request, got {other:?}"),
        }
    }

    const BASE: &[&str] = &[
        "--pghost",
        "db1",
        "--pguser",
        "rep",
        "--primary-pgdata",
        "/data/pg",
        "--ssh-user",
        "postgres",
    ];

    #[test]
    fn no_arguments_and_help_mean_usage() {
        assert!(matches!(
            parse(&[], no_env).unwrap().request,
            PgcloneRequest::Usage
        ));
        for h in ["-h", "--help", "--help=yes"] {
            assert!(matches!(
                parse(&args(&[h]), no_env).unwrap().request,
                PgcloneRequest::Usage
            ));
        }
    }

    #[test]
    fn version_wins_over_help_in_any_order() {
        for list in [&["-v", "--help"][..], &["--help", "--version"], &["-hv"]] {
            assert!(matches!(
                parse(&args(list), no_env).unwrap().request,
                PgcloneRequest::Version
            ));
        }
    }

    #[test]
    fn unknown_options_are_fatal_with_pgclone_wording() {
        assert_eq!(
            parse(&args(&["--bogus"]), no_env).unwrap_err(),
            PgcloneArgsError::Fatal("Unknown option --bogus".into())
        );
        assert_eq!(
            parse(&args(&["--bogus=1", "-v"]), no_env).unwrap_err(),
            PgcloneArgsError::Fatal("Unknown option --bogus".into())
        );
        assert_eq!(
            parse(&args(&["-x"]), no_env).unwrap_err(),
            PgcloneArgsError::Fatal("Unknown option -x".into())
        );
    }

    #[test]
    fn separate_values_must_be_present_and_not_look_like_options() {
        for list in [
            &["--pghost"][..],
            &["--pghost", "--pguser", "x"],
            &["--pghost", ""],
        ] {
            assert_eq!(
                parse(&args(list), no_env).unwrap_err(),
                PgcloneArgsError::Fatal("Option --pghost requires a value".into())
            );
        }
        // The `=` form takes anything, including a leading dash.
        let a = clone_args(&[BASE, &["--replica-pgdata=-odd"]].concat());
        assert_eq!(a.replica_pgdata, PathBuf::from("-odd"));
    }

    #[test]
    fn defaults_and_booleans_ignoring_values() {
        let a = clone_args(&[BASE, &["--paranoid=no", "--slot"]].concat());
        assert_eq!(a.pgport, 5432);
        assert_eq!(a.replica_pgdata, PathBuf::from("/data/pg"));
        assert!(a.paranoid && a.slot);
        assert_eq!(a.progress, ProgressMode::Auto);
        assert_eq!(a.progress_interval_secs, 30);
        assert_eq!(a.transport, Transport::Rsync);
        assert_eq!(a.wal_method, WalMethod::Native);
        assert!(!a.write_standby_config);
    }

    #[test]
    fn required_values_are_checked_in_pgclone_order_with_env_fallback() {
        let err = parse(&args(&["--pguser", "x"]), no_env).unwrap_err();
        assert_eq!(
            err.render("pgclone", "ts"),
            "pgclone: PGHOST: --pghost required"
        );
        let env = |k: &str| match k {
            "PGHOST" => Some("envhost".to_owned()),
            "PGUSER" => Some(String::new()), // empty = unset
            _ => None,
        };
        let err = parse(&args(&["--primary-pgdata", "/d"]), env).unwrap_err();
        assert_eq!(
            err,
            PgcloneArgsError::MissingRequired {
                var: "PGUSER",
                flag: "pguser"
            }
        );
        // SSH_USER only matters for rsync.
        let a = match parse(
            &args(&[
                "--pguser",
                "u",
                "--primary-pgdata",
                "/d",
                "--transport",
                "local",
            ]),
            env,
        )
        .unwrap()
        .request
        {
            PgcloneRequest::Clone(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.pghost, "envhost");
        assert_eq!(a.ssh_user, None);
        let err = parse(&args(&["--pguser", "u", "--primary-pgdata", "/d"]), env).unwrap_err();
        assert_eq!(err.render("x", "ts"), "x: SSH_USER: --ssh-user required");
    }

    #[test]
    fn flag_beats_environment() {
        let env = |k: &str| (k == "PGHOST").then(|| "envhost".to_owned());
        let a = match parse(&args(BASE), env).unwrap().request {
            PgcloneRequest::Clone(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.pghost, "db1");
    }

    #[test]
    fn numeric_validation_messages() {
        let fatal_of = |extra: &[&str]| match parse(&args(&[BASE, extra].concat()), no_env) {
            Err(PgcloneArgsError::Fatal(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(fatal_of(&["--pgport", "54x"]), "Invalid port");
        assert_eq!(
            fatal_of(&["--parallel", "0"]),
            "Invalid --parallel value: 0"
        );
        assert_eq!(
            fatal_of(&["--parallel=abc"]),
            "Invalid --parallel value: abc"
        );
        assert_eq!(
            fatal_of(&["--limit-net-bw", "9000"]),
            "--limit-net-bw must be >= 10K (10000 bytes/s)"
        );
        assert_eq!(
            fatal_of(&["--limit-net-bw", "10Q"]),
            "Invalid --limit-net-bw value"
        );
    }

    #[test]
    fn bandwidth_suffixes_are_binary() {
        assert_eq!(parse_bandwidth("10K").unwrap(), 10_240);
        assert_eq!(parse_bandwidth("2m").unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_bandwidth("10000").unwrap(), 10_000);
    }

    #[test]
    fn unknown_progress_mode_means_none() {
        let a = clone_args(&[BASE, &["--progress", "fancy"]].concat());
        assert_eq!(a.progress, ProgressMode::None);
    }

    #[test]
    fn positionals_are_ignored_with_a_warning() {
        let parsed = parse(&args(&[BASE, &["stray"]].concat()), no_env).unwrap();
        assert!(matches!(parsed.request, PgcloneRequest::Clone(_)));
        assert_eq!(parsed.warnings.len(), 1);
        assert!(parsed.warnings[0].contains("stray"));
    }

    #[test]
    fn standby_options_imply_write_standby_config() {
        assert!(clone_args(&[BASE, &["-R"]].concat()).write_standby_config);
        assert!(clone_args(&[BASE, &["--start"]].concat()).write_standby_config);
        let a = clone_args(&[BASE, &["--standby-slot", "s1"]].concat());
        assert!(a.write_standby_config);
        assert_eq!(a.standby_slot.as_deref(), Some("s1"));
    }

    #[test]
    fn tablespace_mapping_escapes_equals() {
        let a = clone_args(
            &[
                BASE,
                &[
                    "--tablespace-mapping",
                    "/old\\=x=/new",
                    "--tablespace-mapping=/a=/b",
                ],
            ]
            .concat(),
        );
        assert_eq!(
            a.tablespace_mappings,
            vec![
                TablespaceMapping {
                    old: "/old=x".into(),
                    new: "/new".into()
                },
                TablespaceMapping {
                    old: "/a".into(),
                    new: "/b".into()
                },
            ]
        );
        assert!(
            parse(
                &args(&[BASE, &["--tablespace-mapping", "/a=rel"]].concat()),
                no_env
            )
            .is_err()
        );
    }

    #[test]
    fn resume_excludes_drop_existing_and_local_excludes_bypass() {
        assert!(
            parse(
                &args(&[BASE, &["--resume", "--drop-existing"]].concat()),
                no_env
            )
            .is_err()
        );
        assert!(
            parse(
                &args(&[BASE, &["--transport", "local", "--bypass-rep-traffic"]].concat()),
                no_env
            )
            .is_err()
        );
    }

    #[test]
    fn usage_lists_flags_in_reference_order_then_extensions() {
        let order = [
            "--pghost",
            "--pgport",
            "--pguser",
            "--primary-pgdata",
            "--replica-pgdata",
            "--replica-waldir",
            "--ssh-key",
            "--ssh-user",
            "--temp-waldir",
            "--parallel",
            "--paranoid",
            "--drop-existing",
            "--debug",
            "--verbose",
            "--keep-run-tmp",
            "--slot",
            "--bypass-rep-traffic",
            "--insecure-ssh",
            "--progress",
            "--progress-interval",
            "--limit-net-bw",
            "pgtandem extensions:",
            "--ssh-port",
            "--transport",
            "--tablespace-mapping",
            "--no-sync",
        ];
        let mut from = 0;
        for flag in order {
            let at = usage()[from..]
                .find(&format!("  {flag} "))
                .or_else(|| usage()[from..].find(flag))
                .unwrap_or_else(|| panic!("{flag} missing or out of order"));
            from += at + flag.len();
        }
        for flag in VALUE_OPTIONS.iter().chain(SWITCH_OPTIONS) {
            assert!(
                usage().contains(&format!("--{flag}")),
                "usage lacks --{flag}"
            );
        }
    }
}
