//! Statements on the `queues` table and on what waits in each queue.

use std::collections::HashMap;
use std::time::Duration;

use mysql::params;

use super::conn::Connection;
use super::error::DbResult;
use super::row::{col, first};
use crate::queues::{Backlog, Limits};

/// Every queue with a row that steers it (paused, or with a limit), with
/// how many live replicas (heartbeat fresher than `dead_after`) serve it:
/// each limit's share is divided among them. One statement.
pub fn queue_limits(
    conn: &mut Connection,
    dead_after: Duration,
) -> DbResult<HashMap<String, Limits>> {
    let rows = conn.query_rows(
        format!(
            "SELECT q.name, q.paused, q.rate_limit, q.max_running, \
             (SELECT COUNT(*) FROM workers w WHERE FIND_IN_SET(q.name, w.queues) > 0 \
              AND w.heartbeat_at >= NOW(6) - INTERVAL {} MICROSECOND) AS serving \
             FROM queues q WHERE q.paused <> 0 OR q.rate_limit IS NOT NULL \
             OR q.max_running IS NOT NULL",
            dead_after.as_micros()
        ),
        |mut row| {
            let name: String = col(&mut row, "name")?;
            let rate_limit: Option<f64> = col(&mut row, "rate_limit")?;
            let serving: u64 = col(&mut row, "serving")?;
            let limits = Limits {
                paused: col::<i64>(&mut row, "paused")? != 0,
                rate_limit,
                // This replica serves it even if its own row is not yet seen.
                share: rate_limit.map(|r| r.max(0.0) / serving.max(1) as f64),
                max_running: col::<Option<u32>>(&mut row, "max_running")?,
            };
            Ok((name, limits))
        },
    )?;
    Ok(rows.into_iter().collect())
}

/// What waits in each queue for each kind: due now and scheduled for later,
/// and the id of the oldest due now. One pass over the new rows of the
/// claim index (covering: no row is read).
pub fn job_backlog(conn: &mut Connection) -> DbResult<Vec<(Backlog, Option<u64>)>> {
    conn.query_rows(
        "SELECT queue, kind, CAST(SUM(run_at IS NULL OR run_at <= NOW(6)) AS UNSIGNED) AS waiting, \
         CAST(SUM(run_at > NOW(6)) AS UNSIGNED) AS scheduled, \
         MIN(IF(run_at IS NULL OR run_at <= NOW(6), id, NULL)) AS oldest \
         FROM jobs FORCE INDEX (jobs_new_routed) WHERE is_new = 1 GROUP BY queue, kind",
        |mut row| {
            let backlog = Backlog {
                queue: col(&mut row, "queue")?,
                kind: col(&mut row, "kind")?,
                waiting: col::<Option<u64>>(&mut row, "waiting")?.unwrap_or(0),
                scheduled: col::<Option<u64>>(&mut row, "scheduled")?.unwrap_or(0),
                oldest: None,
                served: false,
            };
            Ok((backlog, col(&mut row, "oldest")?))
        },
    )
}

/// How long ago each of `ids` was created (primary key lookups).
pub fn job_ages(conn: &mut Connection, ids: &[u64]) -> DbResult<HashMap<u64, Duration>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = conn.query_rows(
        format!(
            "SELECT id, TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) AS age FROM jobs \
             WHERE id IN ({})",
            super::pool::id_list(ids.iter().copied())
        ),
        |mut row| {
            let age: i64 = col(&mut row, "age")?;
            Ok((
                col(&mut row, "id")?,
                Duration::from_micros(age.max(0) as u64),
            ))
        },
    )?;
    Ok(rows.into_iter().collect())
}

/// The queues and kinds of the live replicas (heartbeat fresher than
/// `dead_after`), each as the comma-separated lists they registered.
pub fn worker_served(
    conn: &mut Connection,
    dead_after: Duration,
) -> DbResult<Vec<(String, String)>> {
    conn.query_rows(
        format!(
            "SELECT queues, kinds FROM workers \
             WHERE heartbeat_at >= NOW(6) - INTERVAL {} MICROSECOND",
            dead_after.as_micros()
        ),
        |mut row| Ok((col(&mut row, "queues")?, col(&mut row, "kinds")?)),
    )
}

/// Whether `queue` has a row that pauses it.
pub fn queue_paused(conn: &mut Connection, queue: &str) -> DbResult<bool> {
    let paused: Vec<i64> = conn.exec_rows(
        "SELECT paused FROM queues WHERE name = :queue",
        params! { queue },
        first,
    )?;
    Ok(paused.into_iter().next().unwrap_or(0) != 0)
}
