//! Read-only queries behind the `stats` command.

use super::conn::Connection;
use super::error::DbResult;
use super::row::col;

/// What `stats` reports, read from the database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Row counts by status; `None` is a new row. Statuses the service does
    /// not know (a client's own markers) appear as they are.
    pub by_status: Vec<(Option<String>, u64)>,
    /// Id and age in seconds (since it fell due) of the oldest new job that
    /// is due: scheduled ones wait by design.
    pub oldest_waiting: Option<(u64, f64)>,
    /// Jobs that reached each final status in the last minute.
    pub last_minute: Vec<(String, u64)>,
    /// Live replicas and the age of their heartbeat in seconds.
    pub workers: Vec<(String, f64)>,
}

/// `(status, count)` rows.
fn counts<S: mysql::prelude::FromValue>(
    conn: &mut Connection,
    sql: &str,
) -> DbResult<Vec<(S, u64)>> {
    conn.query_rows(sql, |mut row| {
        Ok((col(&mut row, "status")?, col(&mut row, "n")?))
    })
}

/// Reads a [`Snapshot`].
pub fn stats_snapshot(conn: &mut Connection) -> DbResult<Snapshot> {
    let by_status = counts(
        conn,
        "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status",
    )?;
    let oldest_waiting: Vec<(u64, f64)> = conn.query_rows(
        "SELECT id, TIMESTAMPDIFF(MICROSECOND, COALESCE(run_at, created_at), NOW(6)) AS age_us \
         FROM jobs WHERE is_new = 1 AND (run_at IS NULL OR run_at <= NOW(6)) ORDER BY id LIMIT 1",
        |mut row| {
            Ok((
                col(&mut row, "id")?,
                col::<i64>(&mut row, "age_us")? as f64 / 1e6,
            ))
        },
    )?;
    let last_minute = counts(
        conn,
        "SELECT status, COUNT(*) AS n FROM jobs WHERE final_at >= NOW(6) - INTERVAL 1 MINUTE \
         GROUP BY status ORDER BY status",
    )?;
    let workers = conn.query_rows(
        "SELECT name, TIMESTAMPDIFF(MICROSECOND, heartbeat_at, NOW(6)) AS age_us FROM workers \
         ORDER BY name",
        |mut row| {
            Ok((
                col(&mut row, "name")?,
                col::<i64>(&mut row, "age_us")? as f64 / 1e6,
            ))
        },
    )?;
    Ok(Snapshot {
        by_status,
        oldest_waiting: oldest_waiting.into_iter().next(),
        last_minute,
        workers,
    })
}
