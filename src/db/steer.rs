//! The operator's statements: cancel, retry, pause and resume, each one SQL
//! statement that a program can run in its own transaction, and that the
//! CLI and the dashboard run (or print, with `--sql`). Names are validated
//! queue and kind names and ids are integers, so the statements carry their
//! values as literals and print as they run.

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
/// attempts.
pub fn retry_sql(ids: &[u64]) -> String {
    format!(
        "UPDATE jobs SET status = NULL, run_at = NULL WHERE id IN ({}) \
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
/// and kind) is new again. Reads the final rows' index.
pub fn retry_failed_sql(filter: &FailedFilter) -> String {
    let mut sql = String::from(
        "UPDATE jobs SET status = NULL, run_at = NULL WHERE final_at IS NOT NULL \
         AND status = 'FAILED!'",
    );
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

/// The status of each of `ids` that exists (`None` for a new job); with
/// `lock`, locking the rows until the transaction ends.
pub fn job_statuses(
    conn: &mut Connection,
    ids: &[u64],
    lock: bool,
) -> DbResult<Vec<(u64, Option<String>)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    conn.query_rows(
        format!(
            "SELECT id, status FROM jobs WHERE id IN ({}) ORDER BY id{}",
            id_list(ids.iter().copied()),
            if lock { " FOR UPDATE" } else { "" }
        ),
        |mut row| Ok((col(&mut row, "id")?, col(&mut row, "status")?)),
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
        "SELECT queue, COUNT(*) AS n FROM jobs WHERE is_running = 1 GROUP BY queue",
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
