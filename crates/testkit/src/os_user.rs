//! The OS identity a test process runs as, so root-run tests can run PostgreSQL
//! (which refuses root) and ssh clients as an ordinary user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};

/// A user of this machine, resolved once from the passwd database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    name: String,
    uid: Uid,
    gid: Gid,
    home: PathBuf,
}

impl OsUser {
    /// Looks a user up by name.
    pub fn lookup(name: &str) -> Result<Self> {
        let user = User::from_name(name)
            .map_err(|e| Error::sys(format!("looking up OS user `{name}`"), e))?
            .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
        Ok(Self::from_passwd(user))
    }

    /// The user this process runs as (by effective uid).
    pub fn current() -> Result<Self> {
        let uid = Uid::effective();
        let user = User::from_uid(uid)
            .map_err(|e| Error::sys(format!("looking up uid {uid}"), e))?
            .ok_or_else(|| Error::NoSuchUser(uid.to_string()))?;
        Ok(Self::from_passwd(user))
    }

    /// The identity PostgreSQL runs as: `postgres` when this process is root
    /// (PostgreSQL refuses to run as root), otherwise the current user.
    pub fn postgres_server() -> Result<Self> {
        if Uid::effective().is_root() {
            Self::lookup("postgres")
        } else {
            Self::current()
        }
    }

    fn from_passwd(user: User) -> Self {
        Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uid(&self) -> Uid {
        self.uid
    }

    pub fn gid(&self) -> Gid {
        self.gid
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// A command for `program` that will run as this user (switching uid/gid only
    /// when that differs from the current process), with `HOME`/`USER` set to match.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.apply_to(&mut cmd);
        cmd
    }

    /// Makes an existing command run as this user.
    pub fn apply_to(&self, cmd: &mut Command) {
        if self.uid != Uid::effective() {
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
        cmd.env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
    }

    /// Gives `path` to this user (no-op when it is the current user, who owns it already).
    pub fn take_ownership(&self, path: &Path) -> Result<()> {
        if self.uid == Uid::effective() {
            return Ok(());
        }
        nix::unistd::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::sys(format!("chown {} to {}", path.display(), self.name), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_user_matches_effective_uid() {
        let me = OsUser::current().unwrap();
        assert_eq!(me.uid(), Uid::effective());
        assert!(!me.name().is_empty());
    }

    #[test]
    fn unknown_user_is_reported_by_name() {
        let err = OsUser::lookup("pgtandem-no-such-user").unwrap_err();
        assert!(err.to_string().contains("pgtandem-no-such-user"), "{err}");
    }

    #[test]
    fn postgres_server_is_never_root() {
        let user = OsUser::postgres_server().unwrap();
        assert!(!user.uid().is_root());
    }
}
