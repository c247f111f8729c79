//! `migrate`: applies the embedded `schema.sql`, and brings a `jobs` table
//! made by an earlier version (or by the original service) up to date by
//! adding the columns and indexes it lacks. Safe to run any number of times,
//! on MySQL 8 and MariaDB alike (neither `ADD COLUMN IF NOT EXISTS` nor
//! `CREATE INDEX IF NOT EXISTS` is portable, so the checks are made here).
//!
//! Indexes go in two steps, so a rolling update never leaves a running
//! replica without the indexes its queries use: `migrate` adds this
//! version's indexes and keeps the ones it replaced (the previous version's
//! replicas still claim through them); `migrate --drop-replaced`, once every
//! replica runs this version, drops them (each index costs every write).

use super::conn::Connection;
use super::error::{DbError, DbResult};
use super::pool::opts_from_url;
use super::row::first;

/// The schema, embedded in the binary.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Columns added after the original service, with their definitions.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    // (in the order they were added; `migrate` adds them in this order)
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
    ("queue", "VARCHAR(64) NOT NULL DEFAULT 'default'"),
    ("cancel_requested_at", "DATETIME(6) NULL"),
    (
        "cancel_pending",
        "TINYINT AS (IF(cancel_requested_at IS NOT NULL AND (finished_at IS NULL \
         OR cancel_requested_at > finished_at) AND (status IS NULL \
         OR status IN ('QUEUED!', 'STARTED!', 'DONE!', 'CANCELLED!', 'FAILED!')), 1, NULL)) \
         VIRTUAL",
    ),
    ("unique_key", "VARCHAR(255) NULL"),
    (
        "unique_live",
        "VARCHAR(255) AS (IF(status IN ('DONE!', 'CANCELLED!', 'FAILED!'), NULL, unique_key)) \
         VIRTUAL",
    ),
];

/// Columns of `workers` added after it was first made.
const ADDED_WORKER_COLUMNS: &[(&str, &str)] = &[
    ("queues", "VARCHAR(1024) NOT NULL DEFAULT ''"),
    ("kinds", "VARCHAR(1024) NOT NULL DEFAULT ''"),
];

/// Indexes the service's queries (and unique jobs) need: name, kind and
/// columns.
const INDEXES: &[(&str, &str, &str)] = &[
    (
        "jobs_new_routed",
        "INDEX",
        "is_new, queue, kind, run_at, priority DESC, id",
    ),
    ("jobs_held_by", "INDEX", "held_by"),
    ("jobs_final_at", "INDEX", "final_at"),
    (
        "jobs_cancel",
        "INDEX",
        "cancel_pending, cancel_requested_at",
    ),
    ("jobs_unique", "UNIQUE INDEX", "unique_live"),
];

/// The tables `run` needs.
const TABLES: &[&str] = &["jobs", "workers", "queues", "schedules"];

/// Indexes of versions before the previous one: no running replica can use
/// them (the previous version's `migrate` dropped them), so they go at once.
const OBSOLETE_INDEXES: &[&str] = &["jobs_status_id", "jobs_status_started_at", "jobs_claim"];

/// Earlier versions' indexes, which this version's replace: those that
/// began with `status` (every transition moved an entry in each of them),
/// the claim index of the versions before queues (`jobs_new`, which their
/// replicas name in every claim), and the running jobs' index (`jobs_running`;
/// `jobs_held_by` finds them among the held ones, and a start no longer
/// moves an index entry). Kept until `migrate --drop-replaced`, for
/// replicas of those versions during a rolling update.
pub const REPLACED_INDEXES: &[&str] = &[
    "jobs_claim_due",
    "jobs_deadline",
    "jobs_status_owner",
    "jobs_status_finished_at",
    "jobs_new",
    "jobs_running",
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
/// privilege to; skipped when it exists), then applies the schema; with
/// `drop_replaced`, also drops the indexes this version replaced.
pub fn migrate(url: &str, drop_replaced: bool) -> DbResult<MigrateReport> {
    let opts = opts_from_url(url)?;
    let db_name = opts
        .opts()
        .get_db_name()
        .ok_or_else(|| DbError::Schema("DATABASE_URL names no database".into()))?
        .to_string();
    let mut report = MigrateReport::default();
    let mut conn = match opts.open() {
        Ok(conn) => conn,
        Err(e) if e.is_unknown_database() => {
            // ER_BAD_DB_ERROR: connect without a database and create it.
            let mut server = opts.map(|o| o.db_name(None::<String>)).open()?;
            server.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                db_name.replace('`', "``")
            ))?;
            report.created_database = true;
            opts.open()?
        }
        Err(e) => return Err(e),
    };
    apply(&mut conn, &mut report, drop_replaced)?;
    Ok(report)
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.created_database {
            parts.push("created the database".to_string());
        }
        let list = |what: &str, names: &[String]| format!("{what} {}", names.join(", "));
        for (what, names) in [
            ("created tables", &self.created_tables),
            ("added columns", &self.added_columns),
            ("added indexes", &self.added_indexes),
            ("dropped indexes", &self.dropped_indexes),
        ] {
            if !names.is_empty() {
                parts.push(list(what, names));
            }
        }
        if self.exact_statuses {
            parts.push(format!("gave jobs.status the {STATUS_COLLATION} collation"));
        }
        if parts.is_empty() {
            parts.push("already up to date".into());
        }
        if !self.kept_replaced.is_empty() {
            parts.push(list("kept the replaced indexes", &self.kept_replaced));
        }
        f.write_str(&parts.join("; "))
    }
}

/// What `migrate` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The database did not exist and was created.
    pub created_database: bool,
    /// Tables that did not exist and were created.
    pub created_tables: Vec<String>,
    /// `jobs.status` compared case-insensitively and was given its binary
    /// collation.
    pub exact_statuses: bool,
    /// Columns added to an existing `jobs` table.
    pub added_columns: Vec<String>,
    /// Indexes added to an existing `jobs` table.
    pub added_indexes: Vec<String>,
    /// Indexes of earlier versions dropped.
    pub dropped_indexes: Vec<String>,
    /// Indexes this version replaced, still there (see [`REPLACED_INDEXES`]).
    pub kept_replaced: Vec<String>,
}

/// Applies the schema on an open connection; with `drop_replaced`, drops
/// the indexes this version replaced too. Only what is missing is created
/// or added, so on an up-to-date schema it sends no DDL at all (an account
/// that may only read and write the tables can run it).
pub fn apply(
    conn: &mut Connection,
    report: &mut MigrateReport,
    drop_replaced: bool,
) -> DbResult<()> {
    let tables = table_names(conn)?;
    for statement in schema_statements() {
        let table = created_table(&statement);
        if !tables.iter().any(|t| t.eq_ignore_ascii_case(table)) {
            conn.query_drop(&statement)?;
            report.created_tables.push(table.to_string());
        }
    }
    add_columns(conn, report)?;
    exact_statuses(conn, report)?;
    let indexes = index_names(conn)?;
    for (name, kind, cols) in INDEXES {
        if !indexes.iter().any(|i| i.eq_ignore_ascii_case(name)) {
            tolerate_race(
                conn.query_drop(format!("ALTER TABLE jobs ADD {kind} `{name}` ({cols})")),
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
    for name in REPLACED_INDEXES {
        if indexes.iter().any(|i| i.eq_ignore_ascii_case(name)) {
            if drop_replaced {
                tolerate_race(conn.query_drop(format!("ALTER TABLE jobs DROP INDEX `{name}`")))?;
                report.dropped_indexes.push(name.to_string());
            } else {
                report.kept_replaced.push(name.to_string());
            }
        }
    }
    Ok(())
}

/// The table a `CREATE TABLE IF NOT EXISTS name (...)` statement creates.
fn created_table(statement: &str) -> &str {
    statement
        .trim_start_matches("CREATE TABLE IF NOT EXISTS")
        .split_whitespace()
        .next()
        .unwrap_or_default()
}

/// The tables of this database.
fn table_names(conn: &mut Connection) -> DbResult<Vec<String>> {
    conn.query_rows(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
        first,
    )
}

/// The columns of `table`.
fn column_names(conn: &mut Connection, table: &str) -> DbResult<Vec<String>> {
    conn.query_rows(
        format!(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{table}'"
        ),
        first,
    )
}

/// Adds the columns added after the original service that `jobs` (and
/// `workers`) lack.
fn add_columns(conn: &mut Connection, report: &mut MigrateReport) -> DbResult<()> {
    for (table, added) in [("jobs", ADDED_COLUMNS), ("workers", ADDED_WORKER_COLUMNS)] {
        let columns = column_names(conn, table)?;
        for (name, definition) in added {
            if !columns.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                tolerate_race(conn.query_drop(format!(
                    "ALTER TABLE {table} ADD COLUMN `{name}` {definition}"
                )))?;
                let shown = match table {
                    "jobs" => name.to_string(),
                    _ => format!("{table}.{name}"),
                };
                report.added_columns.push(shown);
            }
        }
    }
    Ok(())
}

/// The collation `status` must have: binary, so `'queued!'` (a client's own
/// marker) is not `'QUEUED!'`, and statuses group exactly.
pub const STATUS_COLLATION: &str = "utf8mb4_bin";

/// The collation of `jobs.status`.
fn status_collation(conn: &mut Connection) -> DbResult<Option<String>> {
    let found: Vec<Option<String>> = conn.query_rows(
        "SELECT COLLATION_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs' AND COLUMN_NAME = 'status'",
        first,
    )?;
    Ok(found.into_iter().next().flatten())
}

/// Gives `status` its binary collation, if an earlier version's table
/// compares it case-insensitively. The derived columns are redefined in the
/// same statement, so their indexes are rebuilt with exact comparisons (a
/// collation change alone leaves them as they were). This rebuilds `jobs`
/// once.
fn exact_statuses(conn: &mut Connection, report: &mut MigrateReport) -> DbResult<()> {
    if status_collation(conn)?.as_deref() == Some(STATUS_COLLATION) {
        return Ok(());
    }
    let mut alter = format!(
        "ALTER TABLE jobs MODIFY status VARCHAR(32) CHARACTER SET utf8mb4 COLLATE \
         {STATUS_COLLATION} NULL"
    );
    for (name, definition) in ADDED_COLUMNS.iter().filter(|(_, d)| d.contains(" AS (")) {
        alter.push_str(&format!(", MODIFY `{name}` {definition}"));
    }
    conn.query_drop(alter)?;
    report.exact_statuses = true;
    Ok(())
}

/// The indexes of `jobs`.
fn index_names(conn: &mut Connection) -> DbResult<Vec<String>> {
    conn.query_rows(
        "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs'",
        first,
    )
}

/// The indexes this version replaced that are still on `jobs` (`run` warns
/// about them: they slow every write).
pub fn replaced_indexes_left(conn: &mut Connection) -> DbResult<Vec<String>> {
    let indexes = index_names(conn)?;
    Ok(REPLACED_INDEXES
        .iter()
        .filter(|r| indexes.iter().any(|i| i.eq_ignore_ascii_case(r)))
        .map(|r| r.to_string())
        .collect())
}

/// Several replicas may migrate at once (an init container per pod): if
/// another got there between our check and our ALTER, the column or index
/// is already as wanted.
fn tolerate_race(result: DbResult<()>) -> DbResult<()> {
    match result {
        Err(e) if e.is_schema_already_changed() => Ok(()),
        other => other,
    }
}

/// Fails with a clear message when the tables `run` needs are missing.
pub fn check(conn: &mut Connection) -> DbResult<()> {
    let tables = table_names(conn)?;
    let missing_table = TABLES
        .iter()
        .find(|t| !tables.iter().any(|x| x.eq_ignore_ascii_case(t)));
    if let Some(t) = missing_table {
        return Err(DbError::Schema(format!(
            "table `{t}` is missing: run `background-processing migrate` first"
        )));
    }
    for (table, added) in [("jobs", ADDED_COLUMNS), ("workers", ADDED_WORKER_COLUMNS)] {
        let columns = column_names(conn, table)?;
        let missing = added
            .iter()
            .map(|(c, _)| *c)
            .find(|c| !columns.iter().any(|x| x.eq_ignore_ascii_case(c)));
        if let Some(c) = missing {
            return Err(DbError::Schema(format!(
                "column {table}.{c} is missing: run `background-processing migrate` to upgrade the table"
            )));
        }
    }
    if status_collation(conn)?.as_deref() != Some(STATUS_COLLATION) {
        return Err(DbError::Schema(
            "column jobs.status compares statuses case-insensitively: run \
             `background-processing migrate` to upgrade the table"
                .into(),
        ));
    }
    // The claim names its index: without it every claim would fail.
    let indexes = index_names(conn)?;
    match INDEXES
        .iter()
        .map(|(i, _, _)| *i)
        .find(|i| !indexes.iter().any(|x| x.eq_ignore_ascii_case(i)))
    {
        Some(i) => Err(DbError::Schema(format!(
            "index jobs.{i} is missing: run `background-processing migrate` to upgrade the table"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_splits_into_create_statements() {
        let statements = schema_statements();
        assert_eq!(statements.len(), 4);
        let tables: Vec<&str> = statements.iter().map(|s| created_table(s)).collect();
        assert_eq!(tables, TABLES);
        assert!(
            statements
                .iter()
                .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS"))
        );
    }

    #[test]
    fn every_needed_index_is_in_the_schema() {
        for (name, _, _) in INDEXES {
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
