//! Statements on the `queues` table and on what waits in each queue.

use std::collections::HashMap;
use std::time::Duration;

use mysql::params;

use super::conn::Connection;
use super::error::DbResult;
use super::row::{col, first};
use crate::queues::{Backlog, Limits};

/// Every queue with a row that steers it (paused, or with a limit), with
/// how many live replicas (heartbeat fresher than `dead_after`) serve it,
/// and how many of those sort before `worker` (a validated worker name):
/// each `rate_limit` is shared among them (see [`rate_share`]). One
/// statement.
pub fn queue_limits(
    conn: &mut Connection,
    dead_after: Duration,
    worker: &str,
) -> DbResult<HashMap<String, Limits>> {
    if !crate::config::is_worker_name(worker) {
        return Err(super::error::DbError::Schema(format!(
            "invalid worker name {worker:?}"
        )));
    }
    let live = format!(
        "FIND_IN_SET(q.name, w.queues) > 0 AND w.heartbeat_at >= NOW(6) - INTERVAL {} MICROSECOND",
        dead_after.as_micros()
    );
    let rows = conn.query_rows(
        format!(
            "SELECT q.name, q.paused, q.rate_limit, q.max_running, \
             (SELECT COUNT(*) FROM workers w WHERE {live}) AS serving, \
             (SELECT COUNT(*) FROM workers w WHERE {live} AND w.name < '{worker}') AS ahead \
             FROM queues q WHERE q.paused <> 0 OR q.rate_limit IS NOT NULL \
             OR q.max_running IS NOT NULL"
        ),
        |mut row| {
            let name: String = col(&mut row, "name")?;
            let rate_limit: Option<f64> = col(&mut row, "rate_limit")?;
            let serving: u64 = col(&mut row, "serving")?;
            let ahead: u64 = col(&mut row, "ahead")?;
            let limits = Limits {
                paused: col::<i64>(&mut row, "paused")? != 0,
                rate_limit,
                share: rate_limit.map(|r| rate_share(r, serving, ahead)),
                max_running: col::<Option<u32>>(&mut row, "max_running")?,
            };
            Ok((name, limits))
        },
    )?;
    Ok(rows.into_iter().collect())
}

/// This replica's share of a queue's `rate` (tokens a second) when
/// `serving` live replicas serve it and `ahead` of them sort before it by
/// name: `rate / serving` each, or, when that would be less than one a
/// second, `rate / ceil(rate)` for the first `ceil(rate)` replicas and
/// nothing for the rest, so the replicas' buckets (each holding at least a
/// token) together never hold more than about a second's worth.
pub fn rate_share(rate: f64, serving: u64, ahead: u64) -> f64 {
    let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    // This replica serves the queue even if its own row is not seen yet.
    let serving = serving.max(ahead + 1) as f64;
    if rate >= serving {
        return rate / serving;
    }
    let takers = rate.ceil().max(1.0);
    if (ahead as f64) < takers {
        rate / takers
    } else {
        0.0
    }
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

#[cfg(test)]
mod tests {
    use super::rate_share;

    #[test]
    fn shares_add_up_to_the_rate_and_small_rates_go_to_few_replicas() {
        // 60 a second over 3 replicas: 20 each.
        assert_eq!(rate_share(60.0, 3, 1), 20.0);
        // 1 a second over 10: the first replica by name takes it all.
        assert_eq!(rate_share(1.0, 10, 0), 1.0);
        assert_eq!(rate_share(1.0, 10, 1), 0.0);
        // 2.5 over 10: three replicas, 2.5 / 3 each.
        let total: f64 = (0..10).map(|ahead| rate_share(2.5, 10, ahead)).sum();
        assert!((total - 2.5).abs() < 1e-9, "{total}");
        // A replica not yet counted still serves; nonsense rates give nothing.
        assert_eq!(rate_share(10.0, 0, 0), 10.0);
        assert_eq!(rate_share(-5.0, 2, 0), 0.0);
        assert_eq!(rate_share(f64::NAN, 2, 0), 0.0);
        assert_eq!(rate_share(f64::INFINITY, 2, 0), 0.0);
    }
}
