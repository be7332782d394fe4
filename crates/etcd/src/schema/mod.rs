//! Schema migrations 001–004 (spec §2.4–2.7, §3.1 step 3): applied under a
//! transaction-scoped advisory lock, each committed with its record in
//! `pg_etcd_migrations`; hand-made reference schemas are adopted.

use tokio_postgres::{Client, GenericClient};

use crate::config::SchemaMode;
use crate::error::{SyncError, SyncResult};

/// One migration: its number (the `id` column) and reference name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub id: i64,
    pub name: &'static str,
    sql: &'static str,
}

const NOTIFY_FUNCTION: &str = include_str!("notify_function.sql");

pub const CREATE_TABLES: Migration = Migration {
    id: 1,
    name: "001_create_tables",
    sql: include_str!("001_create_tables.sql"),
};
pub const SYNC_STATE: Migration = Migration {
    id: 2,
    name: "002_sync_state",
    sql: include_str!("002_sync_state.sql"),
};
pub const SINGLE_TABLE: Migration = Migration {
    id: 3,
    name: "003_single_table_notify",
    sql: include_str!("003_single_table_notify.sql"),
};
pub const TWO_TABLE: Migration = Migration {
    id: 4,
    name: "004_two_table",
    sql: include_str!("004_two_table.sql"),
};

/// Serialises concurrent migrators (spec §3.1 step 3).
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('pg_etcd:migrate', 0))";

/// The §2.4 columns a hand-made `etcd` table must have.
const ETCD_COLUMNS: [(&str, &str); 5] = [
    ("ts", "timestamp with time zone"),
    ("key", "text"),
    ("value", "text"),
    ("revision", "bigint"),
    ("tombstone", "boolean"),
];

/// What the database holds before migrating.
#[derive(Debug, Clone, Default)]
pub struct SchemaState {
    /// `pg_class.relkind` of `etcd`, if it exists.
    pub etcd_relkind: Option<String>,
    /// `(column, type)` of `etcd`.
    pub etcd_columns: Vec<(String, String)>,
    pub has_wal: bool,
    /// Recorded migration names (pg_etcd_migrations and the legacy etcd_fdw_migrations).
    pub applied: Vec<String>,
}

impl SchemaState {
    /// Reads the catalog (search_path-visible relations).
    pub async fn inspect<C: GenericClient>(client: &C) -> SyncResult<Self> {
        let relkind = client
            .query_opt(
                "SELECT c.relkind::text FROM pg_catalog.pg_class c \
                 WHERE c.oid = to_regclass('etcd')",
                &[],
            )
            .await?
            .map(|r| r.get::<_, String>(0));
        let etcd_columns = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = to_regclass('etcd') AND a.attnum > 0 AND NOT a.attisdropped",
                &[],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let has_wal: bool = client
            .query_one("SELECT to_regclass('etcd_wal') IS NOT NULL", &[])
            .await?
            .get(0);
        let mut applied = Vec::new();
        for table in ["pg_etcd_migrations", "etcd_fdw_migrations"] {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await?
                .get(0);
            if exists {
                let sql = format!(
                    "SELECT \"version\"::text FROM {} ORDER BY \"id\"",
                    pgtandem_core::quoting::quote_ident_always(table)
                );
                for row in client.query(&sql, &[]).await? {
                    applied.push(row.get::<_, String>(0));
                }
            }
        }
        Ok(SchemaState {
            etcd_relkind: relkind,
            etcd_columns,
            has_wal,
            applied,
        })
    }

    pub fn is_applied(&self, m: &Migration) -> bool {
        self.applied.iter().any(|a| a == m.name)
    }

    /// The mode the database is in, if it already chose one.
    pub fn existing_mode(&self) -> Option<SchemaMode> {
        if self.has_wal || self.is_applied(&TWO_TABLE) {
            Some(SchemaMode::TwoTable)
        } else if self.is_applied(&SINGLE_TABLE)
            || (self.etcd_relkind.is_some() && !self.is_applied(&CREATE_TABLES))
        {
            Some(SchemaMode::SingleTable)
        } else {
            None
        }
    }

    /// The newest recorded migration, for `status`.
    pub fn version(&self) -> Option<&str> {
        [TWO_TABLE, SINGLE_TABLE, SYNC_STATE, CREATE_TABLES]
            .iter()
            .find(|m| self.is_applied(m))
            .map(|m| m.name)
    }

    /// Refuses an `etcd` relation we cannot use (view, foreign table, wrong types).
    fn check_etcd_table(&self) -> SyncResult<()> {
        let Some(kind) = &self.etcd_relkind else {
            return Ok(());
        };
        if kind != "r" && kind != "p" {
            return Err(SyncError::Config(format!(
                "relation \"etcd\" exists but is not a table (relkind {kind}); refusing to use it"
            )));
        }
        for (name, ty) in ETCD_COLUMNS {
            match self.etcd_columns.iter().find(|(n, _)| n == name) {
                Some((_, actual)) if actual == ty => {}
                Some((_, actual)) => {
                    return Err(SyncError::Config(format!(
                        "table \"etcd\" column \"{name}\" has type {actual}, expected {ty}"
                    )));
                }
                None => {
                    return Err(SyncError::Config(format!(
                        "table \"etcd\" lacks column \"{name}\""
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Chooses the mode (spec §3.1 step 3) and the migrations it needs.
pub fn plan(
    state: &SchemaState,
    requested: Option<SchemaMode>,
) -> SyncResult<(SchemaMode, Vec<Migration>)> {
    let mode = match (state.existing_mode(), requested) {
        (Some(SchemaMode::TwoTable), Some(SchemaMode::SingleTable)) => {
            return Err(SyncError::Config(
                "--schema-mode single-table conflicts with the existing two-table schema \
                 (etcd_wal exists)"
                    .into(),
            ));
        }
        (Some(SchemaMode::TwoTable), _) => SchemaMode::TwoTable,
        (Some(SchemaMode::SingleTable), None) => {
            tracing::warn!(
                "existing single-table schema found; staying in single-table mode \
                 (use --schema-mode two-table to convert)"
            );
            SchemaMode::SingleTable
        }
        (Some(SchemaMode::SingleTable), Some(m)) => m,
        (None, m) => m.unwrap_or(SchemaMode::TwoTable),
    };
    let mode_migration = match mode {
        SchemaMode::TwoTable => TWO_TABLE,
        SchemaMode::SingleTable => SINGLE_TABLE,
    };
    let needed = [CREATE_TABLES, SYNC_STATE, mode_migration]
        .into_iter()
        .filter(|m| !state.is_applied(m))
        .collect();
    Ok((mode, needed))
}

/// Brings the schema up to date (or only checks it with `skip_migrations`)
/// and returns the mode to run in.
pub async fn migrate(
    client: &mut Client,
    requested: Option<SchemaMode>,
    skip_migrations: bool,
) -> SyncResult<SchemaMode> {
    let state = SchemaState::inspect(client).await?;
    state.check_etcd_table()?;
    let (mode, needed) = plan(&state, requested)?;
    if skip_migrations {
        let missing: Vec<&str> = needed
            .iter()
            .filter(|m| !(m.id == CREATE_TABLES.id && state.etcd_relkind.is_some()))
            .map(|m| m.name)
            .collect();
        if missing.is_empty() {
            return Ok(mode);
        }
        return Err(SyncError::Config(format!(
            "schema is not up to date and --skip-migrations is set; missing: {}",
            missing.join(", ")
        )));
    }
    for migration in needed {
        apply(client, &migration).await?;
    }
    Ok(mode)
}

/// Applies one migration in its own transaction, unless a concurrent
/// migrator recorded it first.
async fn apply(client: &mut Client, migration: &Migration) -> SyncResult<()> {
    let tx = client.transaction().await?;
    tx.batch_execute(MIGRATION_LOCK).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS \"pg_etcd_migrations\" (\
         \"id\" int8 PRIMARY KEY, \"version\" text NOT NULL)",
    )
    .await?;
    let state = SchemaState::inspect(&tx).await?;
    if state.is_applied(migration) {
        return Ok(tx.commit().await?);
    }
    let adopt = migration.id == CREATE_TABLES.id && state.etcd_relkind.is_some();
    if adopt {
        state.check_etcd_table()?;
        tracing::info!("adopting existing etcd table as {}", migration.name);
    } else {
        tracing::info!(migration = migration.name, "applying migration");
        if migration.id >= SINGLE_TABLE.id {
            tx.batch_execute(NOTIFY_FUNCTION).await.map_err(ddl_error)?;
        }
        tx.batch_execute(migration.sql).await.map_err(ddl_error)?;
    }
    tx.execute(
        "INSERT INTO \"pg_etcd_migrations\" (\"id\", \"version\") VALUES ($1, $2) \
         ON CONFLICT (\"id\") DO NOTHING",
        &[&migration.id, &migration.name],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// DDL the server refuses (privileges, conflicting objects) is a
/// configuration problem (exit 1) unless the connection was lost.
fn ddl_error(e: tokio_postgres::Error) -> SyncError {
    let err = SyncError::from(e);
    if err.is_retryable() {
        err
    } else {
        SyncError::Config(format!("migration failed: {err}"))
    }
}

/// The mode of an already-migrated database (for status/validate).
pub async fn current_mode(client: &Client) -> SyncResult<(SchemaMode, Option<String>)> {
    let state = SchemaState::inspect(client).await?;
    let mode = state.existing_mode().unwrap_or(SchemaMode::TwoTable);
    Ok((mode, state.version().map(str::to_owned)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(applied: &[&str], etcd: bool, wal: bool) -> SchemaState {
        SchemaState {
            etcd_relkind: etcd.then(|| "r".to_owned()),
            etcd_columns: ETCD_COLUMNS
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
            has_wal: wal,
            applied: applied.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn names(v: &[Migration]) -> Vec<&str> {
        v.iter().map(|m| m.name).collect()
    }

    #[test]
    fn fresh_database_gets_the_requested_mode() {
        let (mode, needed) = plan(&state(&[], false, false), None).unwrap();
        assert_eq!(mode, SchemaMode::TwoTable);
        assert_eq!(
            names(&needed),
            ["001_create_tables", "002_sync_state", "004_two_table"]
        );
        let (mode, needed) =
            plan(&state(&[], false, false), Some(SchemaMode::SingleTable)).unwrap();
        assert_eq!(mode, SchemaMode::SingleTable);
        assert_eq!(names(&needed)[2], "003_single_table_notify");
    }

    #[test]
    fn hand_made_single_table_stays_unless_two_table_is_explicit() {
        let s = state(&[], true, false);
        assert_eq!(plan(&s, None).unwrap().0, SchemaMode::SingleTable);
        let (mode, needed) = plan(&s, Some(SchemaMode::TwoTable)).unwrap();
        assert_eq!(mode, SchemaMode::TwoTable);
        assert_eq!(names(&needed).last(), Some(&"004_two_table"));
    }

    #[test]
    fn two_table_database_refuses_single_table() {
        let s = state(
            &["001_create_tables", "002_sync_state", "004_two_table"],
            true,
            true,
        );
        assert!(matches!(
            plan(&s, Some(SchemaMode::SingleTable)),
            Err(SyncError::Config(_))
        ));
        let (mode, needed) = plan(&s, None).unwrap();
        assert_eq!(mode, SchemaMode::TwoTable);
        assert!(needed.is_empty());
    }

    #[test]
    fn mismatched_columns_are_refused() {
        let mut s = state(&[], true, false);
        s.etcd_columns[3].1 = "integer".into();
        assert!(s.check_etcd_table().is_err());
        s.etcd_relkind = Some("f".into());
        assert!(s.check_etcd_table().is_err());
    }
}
