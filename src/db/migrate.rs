//! `migrate`: applies the embedded `schema.sql`, and brings a `jobs` table
//! made by an earlier version (or by the original service) up to date by
//! adding the columns and indexes it lacks. Safe to run any number of times,
//! on MySQL 8 and MariaDB alike (neither `ADD COLUMN IF NOT EXISTS` nor
//! `CREATE INDEX IF NOT EXISTS` is portable, so the checks are made here).

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};

use super::{DbError, DbResult};

/// The schema, embedded in the binary.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Columns added after the original service, with their definitions.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("error", "TEXT NULL"),
    ("owner", "VARCHAR(255) NULL"),
    ("lease", "BIGINT UNSIGNED NOT NULL DEFAULT 0"),
    ("kind", "VARCHAR(64) NOT NULL DEFAULT 'sleep'"),
    ("payload", "JSON NULL"),
    ("priority", "INT NOT NULL DEFAULT 0"),
    ("run_at", "DATETIME(6) NULL"),
    ("attempts", "INT UNSIGNED NOT NULL DEFAULT 0"),
    ("max_attempts", "INT UNSIGNED NULL"),
    ("timeout", "BIGINT UNSIGNED NULL"),
    ("deadline_at", "DATETIME(6) NULL"),
    ("errors", "TEXT NULL"),
    ("is_new", "TINYINT AS (IF(status IS NULL, 1, NULL)) VIRTUAL"),
    (
        "is_running",
        "TINYINT AS (IF(status = 'STARTED!', 1, NULL)) VIRTUAL",
    ),
    (
        "held_by",
        "VARCHAR(255) AS (IF(status IN ('QUEUED!', 'STARTED!'), COALESCE(owner, ''), NULL)) VIRTUAL",
    ),
    (
        "final_at",
        "DATETIME(6) AS (IF(status IN ('DONE!', 'CANCELLED!', 'FAILED!'), finished_at, NULL)) VIRTUAL",
    ),
];

/// Indexes the service's queries need, with their columns.
const INDEXES: &[(&str, &str)] = &[
    ("jobs_new", "is_new, run_at, priority DESC, id"),
    ("jobs_running", "is_running, deadline_at, started_at"),
    ("jobs_held_by", "held_by"),
    ("jobs_final_at", "final_at"),
];

/// Indexes of earlier versions that newer ones replace: dropped, since every
/// index costs every write. The last four began with `status`, so every
/// transition moved an entry in each of them.
const OBSOLETE_INDEXES: &[&str] = &[
    "jobs_status_id",
    "jobs_status_started_at",
    "jobs_claim",
    "jobs_claim_due",
    "jobs_deadline",
    "jobs_status_owner",
    "jobs_status_finished_at",
];

/// The statements of `schema.sql`, without comments.
pub fn schema_statements() -> Vec<String> {
    let without_comments: String = SCHEMA_SQL
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Creates the database named in `url` if it does not exist yet (needs the
/// privilege to; skipped when it exists), then applies the schema.
pub fn migrate(url: &str) -> DbResult<MigrateReport> {
    let opts = super::opts_from_url(url)?;
    let target: Opts = opts.clone().into();
    let db_name = target
        .get_db_name()
        .ok_or_else(|| DbError::Schema("DATABASE_URL names no database".into()))?
        .to_string();
    let mut report = MigrateReport::default();
    let mut conn = match Conn::new(opts.clone()) {
        Ok(conn) => conn,
        Err(mysql::Error::MySqlError(e)) if e.code == 1049 => {
            // ER_BAD_DB_ERROR: connect without a database and create it.
            let mut server =
                Conn::new(OptsBuilder::from_opts(target.clone()).db_name(None::<String>))?;
            server.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                db_name.replace('`', "``")
            ))?;
            report.created_database = true;
            Conn::new(opts)?
        }
        Err(e) => return Err(e.into()),
    };
    apply(&mut conn, &mut report)?;
    Ok(report)
}

/// What `migrate` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The database did not exist and was created.
    pub created_database: bool,
    /// Columns added to an existing `jobs` table.
    pub added_columns: Vec<String>,
    /// Indexes added to an existing `jobs` table.
    pub added_indexes: Vec<String>,
    /// Indexes of earlier versions dropped.
    pub dropped_indexes: Vec<String>,
}

/// Applies the schema on an open connection.
pub fn apply(conn: &mut Conn, report: &mut MigrateReport) -> DbResult<()> {
    for statement in schema_statements() {
        conn.query_drop(statement)?;
    }
    let columns: Vec<String> = conn.query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs'",
    )?;
    for (name, definition) in ADDED_COLUMNS {
        if !columns.iter().any(|c| c.eq_ignore_ascii_case(name)) {
            tolerate_race(
                conn.query_drop(format!("ALTER TABLE jobs ADD COLUMN `{name}` {definition}")),
            )?;
            report.added_columns.push(name.to_string());
        }
    }
    let indexes: Vec<String> = conn.query(
        "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs'",
    )?;
    for (name, cols) in INDEXES {
        if !indexes.iter().any(|i| i.eq_ignore_ascii_case(name)) {
            tolerate_race(
                conn.query_drop(format!("ALTER TABLE jobs ADD INDEX `{name}` ({cols})")),
            )?;
            report.added_indexes.push(name.to_string());
        }
    }
    for name in OBSOLETE_INDEXES {
        if indexes.iter().any(|i| i.eq_ignore_ascii_case(name)) {
            tolerate_race(conn.query_drop(format!("ALTER TABLE jobs DROP INDEX `{name}`")))?;
            report.dropped_indexes.push(name.to_string());
        }
    }
    Ok(())
}

/// Several replicas may migrate at once (an init container per pod): if
/// another got there between our check and our ALTER, the column or index
/// is already as wanted (duplicate column 1060, duplicate key 1061, nothing
/// to drop 1091).
fn tolerate_race(result: Result<(), mysql::Error>) -> DbResult<()> {
    match result {
        Err(mysql::Error::MySqlError(e)) if matches!(e.code, 1060 | 1061 | 1091) => Ok(()),
        other => Ok(other?),
    }
}

/// Fails with a clear message when the tables `run` needs are missing.
pub fn check(conn: &mut Conn) -> DbResult<()> {
    let tables: Vec<String> = conn.query(
        "SELECT TABLE_NAME FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('jobs', 'workers')",
    )?;
    let columns: Vec<String> = conn.query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs'",
    )?;
    let missing_table = ["jobs", "workers"]
        .into_iter()
        .find(|t| !tables.iter().any(|x| x.eq_ignore_ascii_case(t)));
    let missing_column = ADDED_COLUMNS
        .iter()
        .map(|(c, _)| *c)
        .find(|c| !columns.iter().any(|x| x.eq_ignore_ascii_case(c)));
    match (missing_table, missing_column) {
        (Some(t), _) => Err(DbError::Schema(format!(
            "table `{t}` is missing: run `background-processing migrate` first"
        ))),
        (None, Some(c)) => Err(DbError::Schema(format!(
            "column jobs.{c} is missing: run `background-processing migrate` to upgrade the table"
        ))),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_splits_into_create_statements() {
        let statements = schema_statements();
        assert_eq!(statements.len(), 2);
        assert!(
            statements
                .iter()
                .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS"))
        );
    }

    #[test]
    fn every_needed_index_is_in_the_schema() {
        for (name, _) in INDEXES {
            assert!(SCHEMA_SQL.contains(name), "{name} not in schema.sql");
        }
        for (name, _) in ADDED_COLUMNS {
            assert!(
                SCHEMA_SQL.contains(&format!("    {name} ")),
                "{name} not in schema.sql"
            );
        }
    }
}
