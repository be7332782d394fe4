#![allow(clippy::unwrap_used)]
//! sshd: key logins work for root and for `postgres` (run as `postgres`), with
//! strict host key checking; users outside AllowUsers are refused.

use pgtandem_testkit::{OsUser, Sshd};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn root_logs_in_with_the_client_key() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let out = sshd.ssh_command("root").arg("true").output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sshd.ssh_command("root").arg("id -un").output()?;
    assert_eq!(stdout(&out), "root");
    let known = std::fs::read_to_string(sshd.known_hosts())?;
    assert!(known.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port())));
    Ok(())
}

#[test]
fn postgres_logs_in_as_postgres_with_its_own_key_copy() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let postgres = OsUser::lookup("postgres")?;

    let key = sshd.client_key_for(&postgres)?;
    let meta = std::fs::metadata(&key)?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.uid(), postgres.uid().as_raw());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let out = sshd
        .ssh_command_as(&postgres, "postgres")?
        .arg("true")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sshd
        .ssh_command_as(&postgres, "postgres")?
        .arg("id -un")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "postgres");
    Ok(())
}

#[test]
fn users_outside_allow_users_are_refused() -> anyhow::Result<()> {
    let sshd = Sshd::builder().allow_users(["postgres"]).start()?;
    let out = sshd.ssh_command("root").arg("true").output()?;
    assert!(!out.status.success());
    let out = sshd.ssh_command("postgres").arg("id -un").output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "postgres");
    Ok(())
}

#[test]
fn a_wrong_host_key_is_rejected() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let other = Sshd::start()?;
    // `other`'s known_hosts names a different host key for a different port;
    // rewrite it to claim this port, and strict checking must refuse.
    let forged = std::fs::read_to_string(other.known_hosts())?.replace(
        &format!("]:{} ", other.port()),
        &format!("]:{} ", sshd.port()),
    );
    std::fs::write(sshd.known_hosts(), forged)?;
    let out = sshd.ssh_command("root").arg("true").output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
