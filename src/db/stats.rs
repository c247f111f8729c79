//! Read-only queries behind the `stats` command.

use mysql::Conn;
use mysql::prelude::Queryable;

use super::DbResult;

/// What `stats` reports, read from the database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Row counts by status; `None` is a new row. Statuses the service does
    /// not know (a client's own markers) appear as they are.
    pub by_status: Vec<(Option<String>, u64)>,
    /// Id and age in seconds of the oldest job waiting to be claimed.
    pub oldest_waiting: Option<(u64, f64)>,
    /// Jobs that reached each final status in the last minute.
    pub last_minute: Vec<(String, u64)>,
    /// Live replicas and the age of their heartbeat in seconds.
    pub workers: Vec<(String, f64)>,
}

/// Reads a [`Snapshot`].
pub fn stats_snapshot(conn: &mut Conn) -> DbResult<Snapshot> {
    let by_status: Vec<(Option<String>, u64)> =
        conn.query("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")?;
    let oldest_waiting: Option<(u64, i64)> = conn.query_first(
        "SELECT id, TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) FROM jobs \
         WHERE is_new = 1 ORDER BY id LIMIT 1",
    )?;
    let last_minute: Vec<(String, u64)> = conn.query(
        "SELECT status, COUNT(*) FROM jobs WHERE final_at >= NOW(6) - INTERVAL 1 MINUTE \
         GROUP BY status ORDER BY status",
    )?;
    let workers: Vec<(String, i64)> = conn.query(
        "SELECT name, TIMESTAMPDIFF(MICROSECOND, heartbeat_at, NOW(6)) FROM workers ORDER BY name",
    )?;
    Ok(Snapshot {
        by_status,
        oldest_waiting: oldest_waiting.map(|(id, us)| (id, us as f64 / 1e6)),
        last_minute,
        workers: workers
            .into_iter()
            .map(|(n, us)| (n, us as f64 / 1e6))
            .collect(),
    })
}
