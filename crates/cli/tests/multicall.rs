//! End-to-end checks of the real `pgtandem` binary under every drop-in name,
//! reached through symlinks made by `pgtandem install-links` itself.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;
use tempfile::TempDir;

use pgtandem::drop_in::DropIn;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn pgtandem_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("pgtandem")
}

/// A command with an empty environment, so fallbacks (PGHOST, KV_URL,
/// pg_etcd_*) on the test machine cannot change the outcome.
fn isolated(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    cmd
}

/// A temp dir holding the drop-in links, made by the binary under test.
struct Links {
    dir: TempDir,
}

impl Links {
    fn install() -> Links {
        let dir = tempfile::tempdir().unwrap();
        isolated(&pgtandem_bin())
            .arg("install-links")
            .arg(dir.path())
            .assert()
            .success();
        Links { dir }
    }

    fn cmd(&self, name: &str) -> Command {
        isolated(&self.dir.path().join(name))
    }
}

fn pgtandem() -> Command {
    isolated(&pgtandem_bin())
}

#[test]
fn pgtandem_version_names_the_crate_version() {
    pgtandem()
        .arg("--version")
        .assert()
        .success()
        .stdout(format!("pgtandem {VERSION}\n"));
}

#[test]
fn pgclone_version_keeps_the_reference_prefix() {
    let links = Links::install();
    for flag in ["--version", "-v"] {
        links
            .cmd("pgclone")
            .arg(flag)
            .assert()
            .success()
            .stdout(predicate::str::starts_with("pgclone version 1.5.0"))
            .stdout(contains(format!("(pgtandem {VERSION})")));
    }
}

#[test]
fn pgclone_version_wins_over_help() {
    let links = Links::install();
    for args in [["-v", "--help"], ["--help", "-v"]] {
        links
            .cmd("pgclone")
            .args(args)
            .assert()
            .success()
            .stdout(predicate::str::starts_with("pgclone version 1.5.0"))
            .stdout(contains("--pghost").not());
    }
}

#[test]
fn pgclone_help_and_no_arguments_print_usage_on_stdout() {
    let links = Links::install();
    for args in [&["--help"][..], &["-h"], &[]] {
        links
            .cmd("pgclone")
            .args(args)
            .assert()
            .success()
            .stdout(contains("--pghost"))
            .stdout(contains("--replica-pgdata"))
            .stderr("");
    }
}

#[test]
fn pgclone_unknown_option_is_a_timestamped_fatal() {
    let links = Links::install();
    links
        .cmd("pgclone")
        .arg("--bogus")
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            predicate::str::is_match(
                r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\] FATAL: Unknown option --bogus\n$",
            )
            .unwrap(),
        );
}

#[test]
fn pgclone_missing_required_value_names_the_variable() {
    let links = Links::install();
    links
        .cmd("pgclone")
        .args(["--pguser", "rep", "--primary-pgdata", "/data"])
        .assert()
        .code(1)
        .stderr(contains("PGHOST: --pghost required"));
}

#[test]
fn clone_is_the_same_grammar_under_pgtandem() {
    pgtandem()
        .args(["clone", "--bogus"])
        .assert()
        .code(1)
        .stderr(contains("FATAL: Unknown option --bogus"));
    pgtandem()
        .args(["clone", "-v"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("pgclone version 1.5.0"));
}

#[test]
fn unbuilt_engines_say_so_and_exit_2() {
    let clone_args = [
        "--pghost",
        "x",
        "--pguser",
        "u",
        "--primary-pgdata",
        "/data",
        "--ssh-user",
        "postgres",
    ];
    // The clone engine is built (crates/clone): as root it refuses at once,
    // under both names (its end-to-end tests are clone_*.rs).
    let refusal = if nix::unistd::Uid::effective().is_root() {
        "FATAL: This script must not be run as root"
    } else {
        "FATAL: "
    };
    pgtandem()
        .arg("clone")
        .args(clone_args)
        .assert()
        .code(1)
        .stdout("")
        .stderr(contains(refusal));
    let links = Links::install();
    links
        .cmd("pgclone")
        .args(clone_args)
        .assert()
        .code(1)
        .stderr(contains(refusal));
    // pg_etcd / etcd_fdw are built (crates/etcd); their CLI is covered by etcd_sync_*.rs.
    let cases: [(&str, &[&str]); 3] = [
        ("steep-repl", &["status"]),
        ("steep-repl", &["node", "install-schema", "--dry-run"]),
        ("pg-bootstrap-sync", &["-d", "dump.sql", "--dry-run"]),
    ];
    for (name, args) in cases {
        links
            .cmd(name)
            .args(args)
            .assert()
            .code(2)
            .stderr(contains("is not implemented yet"));
    }
    pgtandem()
        .args(["snapshot", "list", "--remote", "h:1", "--insecure"])
        .assert()
        .code(2)
        .stderr(contains("snapshot list is not implemented yet"));
}

#[test]
fn pg_bootstrap_sync_help_and_errors() {
    let links = Links::install();
    links
        .cmd("pg-bootstrap-sync")
        .arg("--help")
        .assert()
        .success()
        .stdout(contains("--dump-file"))
        .stdout(contains("--kv-url"));
    links
        .cmd("pg-bootstrap-sync")
        .arg("--version")
        .assert()
        .success()
        .stdout(format!("pg-bootstrap-sync version {VERSION}\n"));
    links
        .cmd("pg-bootstrap-sync")
        .args(["-d", "x", "--bogus"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("Error: "));
    // -k is required unless --dry-run.
    links
        .cmd("pg-bootstrap-sync")
        .args(["-d", "x"])
        .assert()
        .code(1)
        .stderr(contains("--kv-url"));
}

#[test]
fn pg_etcd_help_version_and_usage_errors() {
    let links = Links::install();
    links
        .cmd("pg_etcd")
        .arg("--help")
        .assert()
        .success()
        .stdout(contains("--postgres-dsn"))
        .stdout(contains("--etcd-dsn"));
    links
        .cmd("etcd_fdw")
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("etcd_fdw version "));
    // -v is checked before any other parsing.
    links
        .cmd("pg_etcd")
        .args(["--bogus", "-v"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with(format!(
            "pg_etcd version {VERSION}\n"
        )));
    links
        .cmd("pg_etcd")
        .arg("bogusword")
        .assert()
        .code(1)
        .stdout(contains("Usage: pg_etcd"))
        .stdout(contains("Error: "));
    links
        .cmd("pg_etcd")
        .args(["--log-level", "loud"])
        .assert()
        .code(1);
}

#[test]
fn pgtandem_parse_errors_use_each_capability_code() {
    pgtandem().args(["etcd-sync", "bogusword"]).assert().code(1);
    pgtandem().args(["bootstrap", "--bogus"]).assert().code(1);
    pgtandem()
        .args(["daemon", "run", "--bogus"])
        .assert()
        .code(2);
    pgtandem()
        .args(["etcd-sync", "--help"])
        .assert()
        .success()
        .stdout(contains("--postgres-dsn"));
}

#[test]
fn steep_repl_help_lists_its_commands() {
    let links = Links::install();
    let assert = links.cmd("steep-repl").arg("--help").assert().success();
    let out = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    for command in [
        "run",
        "install",
        "uninstall",
        "start",
        "stop",
        "restart",
        "status",
        "health",
        "tls",
        "node",
        "init",
        "schema",
        "snapshot",
        "merge",
        "analyze-overlap",
    ] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(command)),
            "steep-repl --help lacks {command}:\n{out}"
        );
    }
    links
        .cmd("steep-repl")
        .arg("--version")
        .assert()
        .success()
        .stdout(format!("steep-repl version {VERSION}\n"));
}

#[test]
fn install_links_refuses_to_clobber_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("pgclone"),
        b"#!/bin/sh\necho real pgclone\n",
    )
    .unwrap();
    for force in [false, true] {
        let mut cmd = pgtandem();
        cmd.arg("install-links").arg(dir.path());
        if force {
            cmd.arg("--force");
        }
        cmd.assert().code(1).stderr(contains("not a symlink"));
        assert_eq!(
            fs::read(dir.path().join("pgclone")).unwrap(),
            b"#!/bin/sh\necho real pgclone\n"
        );
        assert!(!dir.path().join("steep-repl").exists(), "nothing half-done");
    }
}

#[test]
fn install_links_replaces_a_foreign_symlink_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/bin/true", dir.path().join("pg_etcd")).unwrap();
    pgtandem()
        .arg("install-links")
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(contains("--force"));
    assert_eq!(
        fs::read_link(dir.path().join("pg_etcd")).unwrap(),
        PathBuf::from("/bin/true")
    );
    pgtandem()
        .arg("install-links")
        .arg(dir.path())
        .arg("--force")
        .assert()
        .success()
        .stdout(contains("replaced link to /bin/true"));
    let exe = fs::canonicalize(pgtandem_bin()).unwrap();
    assert_eq!(fs::read_link(dir.path().join("pg_etcd")).unwrap(), exe);
}

/// One row of `tests/golden/drop_ins.txt`.
struct GoldenRow {
    name: String,
    capability: String,
    version_lines: Vec<String>,
}

fn golden_rows() -> Vec<GoldenRow> {
    let text =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/drop_ins.txt"))
            .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 3, "bad golden row: {l}");
            GoldenRow {
                name: cols[0].to_owned(),
                capability: cols[1].to_owned(),
                version_lines: cols[2]
                    .split(" | ")
                    .map(|s| s.replace("{version}", VERSION))
                    .collect(),
            }
        })
        .collect()
}

/// `{any}` matches any non-empty text up to the end of the line.
fn line_matches(template: &str, line: &str) -> bool {
    match template.split_once("{any}") {
        None => template == line,
        Some((prefix, "")) => line.len() > prefix.len() && line.starts_with(prefix),
        Some(_) => panic!("{{any}} is only supported at the end of a line: {template}"),
    }
}

#[test]
fn golden_drop_in_names_and_version_strings() {
    let rows = golden_rows();
    // The names the library defines, in install order, are exactly the golden ones.
    let lib: Vec<(&str, &str)> = DropIn::ALL
        .iter()
        .map(|d| (d.name(), d.capability().as_str()))
        .collect();
    let golden: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.capability.as_str()))
        .collect();
    assert_eq!(lib, golden);

    // install-links makes exactly those links, one per printed line.
    let dir = tempfile::tempdir().unwrap();
    let assert = pgtandem()
        .arg("install-links")
        .arg(dir.path())
        .assert()
        .success();
    let printed = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let linked: Vec<String> = printed
        .lines()
        .map(|l| {
            let link = l.split(" -> ").next().unwrap();
            Path::new(link)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    assert_eq!(linked, names);

    // Each name's --version output is pinned.
    for row in &rows {
        let assert = isolated(&dir.path().join(&row.name))
            .arg("--version")
            .assert()
            .success();
        let out = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.len(),
            row.version_lines.len(),
            "{}: unexpected --version output:\n{out}",
            row.name
        );
        for (template, line) in row.version_lines.iter().zip(&lines) {
            assert!(
                line_matches(template, line),
                "{}: line {line:?} does not match {template:?}",
                row.name
            );
        }
    }
}
