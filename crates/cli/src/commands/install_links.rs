//! `pgtandem install-links DIR`: the drop-in symlinks (`pgclone`, `steep-repl`,
//! …) that make pgtandem answer to the names existing scripts call.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::drop_in::DropIn;

#[derive(Debug, Args)]
pub struct InstallLinksArgs {
    /// Directory for the links (created if missing)
    pub dir: PathBuf,
    /// Replace existing symlinks that point elsewhere (never regular files)
    #[arg(long)]
    pub force: bool,
}

/// What happened to one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    Created,
    Replaced { previous: PathBuf },
    AlreadyPresent,
}

/// What must be done for one name, decided before anything is touched.
enum Plan {
    Create,
    Replace(PathBuf),
    Keep,
}

pub fn run(args: &InstallLinksArgs) -> u8 {
    match run_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pgtandem: install-links: {e:#}");
            1
        }
    }
}

fn run_inner(args: &InstallLinksArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let target = fs::canonicalize(&exe)
        .with_context(|| format!("cannot resolve the executable path {}", exe.display()))?;
    for (link, outcome) in install_links(&args.dir, &target, args.force)? {
        match outcome {
            LinkOutcome::Created => println!("{} -> {}", link.display(), target.display()),
            LinkOutcome::Replaced { previous } => println!(
                "{} -> {} (replaced link to {})",
                link.display(),
                target.display(),
                previous.display()
            ),
            LinkOutcome::AlreadyPresent => println!(
                "{} -> {} (already present)",
                link.display(),
                target.display()
            ),
        }
    }
    Ok(())
}

/// Creates one symlink per drop-in name in `dir`, pointing at `target`.
/// Every name is checked first, so a refusal leaves `dir` untouched.
pub fn install_links(
    dir: &Path,
    target: &Path,
    force: bool,
) -> anyhow::Result<Vec<(PathBuf, LinkOutcome)>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut plans = Vec::with_capacity(DropIn::ALL.len());
    for drop_in in DropIn::ALL {
        let link = dir.join(drop_in.name());
        let plan = plan_link(&link, target, force)?;
        plans.push((link, plan));
    }
    let mut done = Vec::with_capacity(plans.len());
    for (link, plan) in plans {
        let outcome = match plan {
            Plan::Keep => LinkOutcome::AlreadyPresent,
            Plan::Create => {
                symlink(target, &link)?;
                LinkOutcome::Created
            }
            Plan::Replace(previous) => {
                fs::remove_file(&link)
                    .with_context(|| format!("cannot remove {}", link.display()))?;
                symlink(target, &link)?;
                LinkOutcome::Replaced { previous }
            }
        };
        done.push((link, outcome));
    }
    Ok(done)
}

fn plan_link(link: &Path, target: &Path, force: bool) -> anyhow::Result<Plan> {
    let meta = match fs::symlink_metadata(link) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Plan::Create),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", link.display())),
    };
    if !meta.file_type().is_symlink() {
        bail!(
            "refusing to overwrite {}: it exists and is not a symlink",
            link.display()
        );
    }
    let current =
        fs::read_link(link).with_context(|| format!("cannot read link {}", link.display()))?;
    let resolved = fs::canonicalize(link).ok();
    if current == target || resolved.as_deref() == Some(target) {
        return Ok(Plan::Keep);
    }
    if !force {
        bail!(
            "{} already points to {}; use --force to replace it",
            link.display(),
            current.display()
        );
    }
    Ok(Plan::Replace(current))
}

fn symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::symlink(target, link).with_context(|| {
        format!(
            "cannot create symlink {} -> {}",
            link.display(),
            target.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_all_links_then_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pgtandem");
        fs::write(&target, b"bin").unwrap();
        let bin = dir.path().join("bin");
        let first = install_links(&bin, &target, false).unwrap();
        assert_eq!(first.len(), DropIn::ALL.len());
        assert!(first.iter().all(|(_, o)| *o == LinkOutcome::Created));
        for d in DropIn::ALL {
            assert_eq!(fs::read_link(bin.join(d.name())).unwrap(), target);
        }
        let second = install_links(&bin, &target, false).unwrap();
        assert!(
            second
                .iter()
                .all(|(_, o)| *o == LinkOutcome::AlreadyPresent)
        );
    }

    #[test]
    fn foreign_symlink_needs_force_and_nothing_is_half_done() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pgtandem");
        fs::write(&target, b"bin").unwrap();
        std::os::unix::fs::symlink("/usr/bin/true", dir.path().join("pg_etcd")).unwrap();
        let err = install_links(dir.path(), &target, false).unwrap_err();
        assert!(format!("{err}").contains("--force"));
        assert!(
            !dir.path().join("pgclone").exists(),
            "refusal must not create earlier links"
        );
        let done = install_links(dir.path(), &target, true).unwrap();
        assert!(done.iter().any(|(l, o)| l.ends_with("pg_etcd")
            && *o
                == LinkOutcome::Replaced {
                    previous: "/usr/bin/true".into()
                }));
        assert_eq!(fs::read_link(dir.path().join("pg_etcd")).unwrap(), target);
    }

    #[test]
    fn regular_file_is_never_replaced_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pgtandem");
        fs::write(&target, b"bin").unwrap();
        fs::write(dir.path().join("steep-repl"), b"real tool").unwrap();
        let err = install_links(dir.path(), &target, true).unwrap_err();
        assert!(format!("{err}").contains("not a symlink"));
        assert_eq!(
            fs::read(dir.path().join("steep-repl")).unwrap(),
            b"real tool"
        );
    }
}
