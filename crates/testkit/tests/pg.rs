#![allow(clippy::unwrap_used)]
//! PostgreSQL clusters: both versions answer over TCP and psql; settings,
//! passwords, crashes, restarts and pgbench data behave.

use pgtandem_testkit::{OsUser, Pg, PgCluster};
use tokio_postgres::NoTls;

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn server_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn assert_answers_as(version: Pg) -> anyhow::Result<()> {
    let cluster = PgCluster::builder(version).start()?;
    let major = version.major();

    let client = connect(&cluster.conninfo("postgres")).await?;
    let row = client
        .query_one(
            "SELECT version(), current_setting('server_version_num')::int",
            &[],
        )
        .await?;
    let text: String = row.get(0);
    let num: i32 = row.get(1);
    assert!(text.starts_with(&format!("PostgreSQL {major}.")), "{text}");
    assert_eq!(num / 10000, major as i32);

    let client = connect(&cluster.uri("postgres")).await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);

    let via_psql = cluster.psql("postgres", "SHOW server_version_num")?;
    assert_eq!(via_psql.parse::<u32>()? / 10000, major);
    assert_eq!(
        cluster.psql("postgres", "SELECT current_user; SELECT 2")?,
        "postgres\n2"
    );

    let expected_owner = OsUser::postgres_server()?;
    let pid = cluster.server_pid().unwrap();
    assert_eq!(server_uid(pid), expected_owner.uid().as_raw());
    assert!(
        cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port()))
            .exists()
    );
    Ok(())
}

#[tokio::test]
async fn pg15_answers_over_tcp_and_psql() -> anyhow::Result<()> {
    assert_answers_as(Pg::V15).await
}

#[tokio::test]
async fn pg18_answers_over_tcp_and_psql() -> anyhow::Result<()> {
    assert_answers_as(Pg::V18).await
}

#[tokio::test]
async fn gucs_hba_and_password_are_applied() -> anyhow::Result<()> {
    let secret = "s3cr'et pw";
    let cluster = PgCluster::builder(Pg::V18)
        .guc("wal_level", "logical")
        .guc("max_replication_slots", "7")
        .guc("application_name", "it's quoted")
        .hba_line("host all nobody_here 127.0.0.1/32 reject")
        .password(secret)
        .start()?;
    assert_eq!(cluster.psql("postgres", "SHOW wal_level")?, "logical");
    assert_eq!(cluster.psql("postgres", "SHOW max_replication_slots")?, "7");
    assert_eq!(cluster.psql("postgres", "SHOW fsync")?, "on");
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_hba_file_rules WHERE 'nobody_here' = ANY(user_name)"
        )?,
        "1"
    );

    // TCP needs the password; the conninfo carries it.
    assert!(cluster.conninfo("postgres").contains("password="));
    connect(&cluster.conninfo("postgres")).await?;
    connect(&cluster.uri("postgres")).await?;
    let without = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port()
    );
    assert!(connect(&without).await.is_err());
    let wrong = format!("{without} password=wrong");
    let err = connect(&wrong).await.err().unwrap();
    assert_eq!(
        err.as_db_error().map(|e| e.code().clone()),
        Some(tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err:?}"
    );

    assert!(!format!("{cluster:?}").contains(secret));
    Ok(())
}

#[test]
fn fsync_off_is_an_opt_in() -> anyhow::Result<()> {
    let cluster = PgCluster::builder(Pg::V15).fsync(false).start()?;
    assert_eq!(cluster.psql("postgres", "SHOW fsync")?, "off");
    Ok(())
}

#[test]
fn kill9_then_restart_keeps_committed_data() -> anyhow::Result<()> {
    let mut cluster = PgCluster::builder(Pg::V15).start()?;
    let port = cluster.port();
    cluster.psql(
        "postgres",
        "CREATE TABLE survivors (id int); INSERT INTO survivors SELECT generate_series(1, 1000)",
    )?;
    let old_pid = cluster.server_pid().unwrap();
    cluster.kill9()?;
    assert!(!pgtandem_testkit::process_alive(old_pid));
    assert!(cluster.server_pid().is_none());
    assert!(cluster.psql("postgres", "SELECT 1").is_err());

    cluster.start()?;
    assert_eq!(cluster.port(), port);
    assert_ne!(cluster.server_pid().unwrap(), old_pid);
    assert_eq!(
        cluster.psql("postgres", "SELECT count(*) FROM survivors")?,
        "1000"
    );
    assert!(
        cluster
            .log_contents()?
            .contains("database system was interrupted")
    );

    cluster.restart()?;
    cluster.stop()?;
    assert!(cluster.psql("postgres", "SELECT 1").is_err());
    cluster.start()?;
    assert_eq!(
        cluster.psql("postgres", "SELECT sum(id) FROM survivors")?,
        "500500"
    );
    Ok(())
}

#[test]
fn pgbench_init_at_scale_1_loads_100000_accounts() -> anyhow::Result<()> {
    let cluster = PgCluster::builder(Pg::V18).start()?;
    cluster.create_database("bench db")?;
    cluster.pgbench_init("bench db", 1)?;
    assert_eq!(
        cluster.psql("bench db", "SELECT count(*) FROM pgbench_accounts")?,
        "100000"
    );
    Ok(())
}

#[test]
fn psql_errors_carry_the_server_message() -> anyhow::Result<()> {
    let cluster = PgCluster::builder(Pg::V15).start()?;
    let err = cluster
        .psql("postgres", "SELECT * FROM no_such_table")
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("psql"), "{text}");
    assert!(text.contains("no_such_table"), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    Ok(())
}
