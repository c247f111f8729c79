//! The operator's statements: cancel, retry, pause and resume, each one SQL
//! statement that a program can run in its own transaction, and that the
//! CLI and the dashboard run (or print, with `--sql`). Names are validated
//! queue and kind names and ids are integers, so the statements carry their
//! values as literals and print as they run.

use mysql::params;

use super::conn::Connection;
use super::error::DbResult;
use super::pool::id_list;
use super::row::col;

/// `cancel ID...`: a new or queued job so marked never starts; a running
/// one is interrupted within about a second; a final one is left alone.
pub fn cancel_sql(ids: &[u64]) -> String {
    format!(
        "UPDATE jobs SET cancel_requested_at = NOW(6) WHERE id IN ({}) \
         AND (status IS NULL OR status IN ('QUEUED!', 'STARTED!'))",
        id_list(ids.iter().copied())
    )
}

/// `retry ID...`: a final job is new again and runs once more, whatever its
/// attempts. `IGNORE`: a job whose `unique_key` another job that is not
/// final holds stays as it is (without it, the statement fails with 1062
/// and retries none).
pub fn retry_sql(ids: &[u64]) -> String {
    format!(
        "UPDATE IGNORE jobs SET status = NULL, run_at = NULL WHERE id IN ({}) \
         AND status IN ('FAILED!', 'CANCELLED!', 'DONE!')",
        id_list(ids.iter().copied())
    )
}

/// Which failed jobs `retry --failed` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedFilter {
    /// Only this queue's.
    pub queue: Option<String>,
    /// Only this kind's.
    pub kind: Option<String>,
}

/// `retry --failed [--queue Q] [--kind K]`: every failed job (of that queue
/// and kind) is new again, but those whose `unique_key` is held. Reads the
/// final rows' index.
pub fn retry_failed_sql(filter: &FailedFilter) -> String {
    retry_failed_where(
        filter,
        "UPDATE IGNORE jobs SET status = NULL, run_at = NULL",
    )
}

/// How many failed jobs `retry --failed` left failed because another job
/// that is not final holds their `unique_key`.
pub fn job_failed_with_held_keys(conn: &mut Connection, filter: &FailedFilter) -> DbResult<u64> {
    let sql = retry_failed_where(filter, "SELECT COUNT(*) FROM jobs")
        + " AND unique_key IS NOT NULL \
           AND EXISTS (SELECT 1 FROM jobs h WHERE h.unique_live = jobs.unique_key)";
    let n: Vec<u64> = conn.query_rows(sql, super::row::first)?;
    Ok(n.into_iter().next().unwrap_or(0))
}

/// The job that is not final and holds `key`, if any.
pub fn job_holding_key(conn: &mut Connection, key: &str) -> DbResult<Option<u64>> {
    let n: Vec<u64> = conn.exec_rows(
        "SELECT id FROM jobs WHERE unique_live = :key",
        params! { key },
        super::row::first,
    )?;
    Ok(n.into_iter().next())
}

/// `head` and the conditions of `retry --failed` with `filter`.
fn retry_failed_where(filter: &FailedFilter, head: &str) -> String {
    let mut sql = format!("{head} WHERE final_at IS NOT NULL AND status = 'FAILED!'");
    if let Some(q) = &filter.queue {
        sql.push_str(&format!(" AND queue = '{q}'"));
    }
    if let Some(k) = &filter.kind {
        sql.push_str(&format!(" AND kind = '{k}'"));
    }
    sql
}

/// `pause QUEUE`: no replica claims from it; running and queued jobs go on.
pub fn pause_sql(queue: &str) -> String {
    format!(
        "INSERT INTO queues (name, paused) VALUES ('{queue}', 1) \
         ON DUPLICATE KEY UPDATE paused = 1"
    )
}

/// `resume QUEUE`.
pub fn resume_sql(queue: &str) -> String {
    format!("UPDATE queues SET paused = 0 WHERE name = '{queue}' AND paused = 1")
}

/// Runs one of the statements above; returns the rows it changed (for
/// [`pause_sql`]: 1 a new row, 2 an existing one changed, 0 already paused).
pub fn steer(conn: &mut Connection, sql: &str) -> DbResult<u64> {
    conn.query_drop(sql)?;
    Ok(conn.affected_rows())
}

/// One job as a steering command reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// Its id.
    pub id: u64,
    /// Its status (`None`: new).
    pub status: Option<String>,
    /// Its `unique_key`.
    pub unique_key: Option<String>,
}

/// The status and key of each of `ids` that exists; with `lock`, locking
/// the rows until the transaction ends.
pub fn job_statuses(conn: &mut Connection, ids: &[u64], lock: bool) -> DbResult<Vec<JobState>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    conn.query_rows(
        format!(
            "SELECT id, status, unique_key FROM jobs WHERE id IN ({}) ORDER BY id{}",
            id_list(ids.iter().copied()),
            if lock { " FOR UPDATE" } else { "" }
        ),
        |mut row| {
            Ok(JobState {
                id: col(&mut row, "id")?,
                status: col(&mut row, "status")?,
                unique_key: col(&mut row, "unique_key")?,
            })
        },
    )
}

/// One queue, as `queues` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueRow {
    /// Its name.
    pub name: String,
    /// Paused.
    pub paused: bool,
    /// Its `rate_limit`.
    pub rate_limit: Option<f64>,
    /// Its `max_running`.
    pub max_running: Option<u32>,
    /// Jobs of it running now.
    pub running: u64,
}

/// Every queue that has a row, or running jobs: its steering and how many
/// of its jobs run now (the running rows, from their index).
pub fn queue_rows(conn: &mut Connection) -> DbResult<Vec<QueueRow>> {
    let mut rows: Vec<QueueRow> = conn.query_rows(
        "SELECT name, paused, rate_limit, max_running FROM queues ORDER BY name",
        |mut row| {
            Ok(QueueRow {
                name: col(&mut row, "name")?,
                paused: col::<i64>(&mut row, "paused")? != 0,
                rate_limit: col(&mut row, "rate_limit")?,
                max_running: col(&mut row, "max_running")?,
                running: 0,
            })
        },
    )?;
    let running: Vec<(String, u64)> = conn.query_rows(
        format!(
            "SELECT queue, COUNT(*) AS n FROM {} GROUP BY queue",
            super::claim::RUNNING_JOBS
        ),
        |mut row| Ok((col(&mut row, "queue")?, col(&mut row, "n")?)),
    )?;
    for (queue, n) in running {
        match rows.iter_mut().find(|r| r.name == queue) {
            Some(r) => r.running = n,
            None => rows.push(QueueRow {
                name: queue,
                running: n,
                ..QueueRow::default()
            }),
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}
