//! Statements on the `workers` table: the registry of live replicas.
//!
//! Liveness is judged by the database's own clock (`NOW(6)`), so replicas
//! whose clocks disagree still agree on who is dead.

use std::time::Duration;

use mysql::params;

use super::conn::Connection;
use super::error::DbResult;
use super::row::{col, first};

/// A replica as it registers.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    /// Its `WORKER_NAME`.
    pub name: &'a str,
    /// The host (or pod) it runs on.
    pub host: &'a str,
    /// Its process id.
    pub pid: u32,
    /// The service version it runs.
    pub version: &'a str,
    /// The queues it serves, comma-separated.
    pub queues: &'a str,
    /// The kinds it runs, comma-separated.
    pub kinds: &'a str,
}

/// Registers (or re-registers) a replica with a fresh heartbeat.
pub fn worker_register(conn: &mut Connection, r: &Registration) -> DbResult<()> {
    let Registration {
        name,
        host,
        pid,
        version,
        queues,
        kinds,
    } = *r;
    conn.exec_drop(
        "INSERT INTO workers (name, host, pid, version, started_at, heartbeat_at, queues, kinds) \
         VALUES (:name, :host, :pid, :version, NOW(6), NOW(6), :queues, :kinds) \
         ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), \
         version = VALUES(version), heartbeat_at = NOW(6), queues = VALUES(queues), \
         kinds = VALUES(kinds)",
        params! { name, host, pid, version, queues, kinds },
    )
}

/// Refreshes a replica's heartbeat. `false` means its row is gone: other
/// replicas declared it dead and rescued its jobs.
pub fn worker_heartbeat(conn: &mut Connection, name: &str) -> DbResult<bool> {
    conn.exec_drop(
        "UPDATE workers SET heartbeat_at = NOW(6) WHERE name = :name",
        params! { name },
    )?;
    // A heartbeat within the same microsecond changes nothing but still
    // matched; MySQL reports matched rows only with CLIENT_FOUND_ROWS, so
    // check existence when nothing changed.
    if conn.affected_rows() == 1 {
        return Ok(true);
    }
    let found: Vec<u8> = conn.exec_rows(
        "SELECT 1 FROM workers WHERE name = :name",
        params! { name },
        first,
    )?;
    Ok(!found.is_empty())
}

/// Removes a replica's row on a clean shutdown.
pub fn worker_remove(conn: &mut Connection, name: &str) -> DbResult<()> {
    conn.exec_drop("DELETE FROM workers WHERE name = :name", params! { name })
}

/// Removes the row of a replica found dead, if it is still stale (it may
/// have come back since).
pub fn worker_remove_dead(
    conn: &mut Connection,
    name: &str,
    dead_after: Duration,
) -> DbResult<bool> {
    conn.exec_drop(
        format!(
            "DELETE FROM workers WHERE name = :name \
             AND heartbeat_at < NOW(6) - INTERVAL {} MICROSECOND",
            dead_after.as_micros()
        ),
        params! { name },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// A registered replica, as the rescuer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Its name.
    pub name: String,
    /// Its heartbeat is fresher than `WORKER_DEAD_AFTER`.
    pub fresh: bool,
}

/// Every registered replica, and whether its heartbeat is fresher than
/// `dead_after`: one read for the rescuer.
pub fn worker_list(conn: &mut Connection, dead_after: Duration) -> DbResult<Vec<Registered>> {
    conn.query_rows(
        format!(
            "SELECT name, heartbeat_at >= NOW(6) - INTERVAL {} MICROSECOND AS fresh FROM workers",
            dead_after.as_micros()
        ),
        |mut row| {
            Ok(Registered {
                name: col(&mut row, "name")?,
                fresh: col::<i64>(&mut row, "fresh")? == 1,
            })
        },
    )
}

/// How long ago `name` last beat, if it has a row.
pub fn worker_heartbeat_age(conn: &mut Connection, name: &str) -> DbResult<Option<Duration>> {
    let ages: Vec<Option<i64>> = conn.exec_rows(
        "SELECT TIMESTAMPDIFF(MICROSECOND, heartbeat_at, NOW(6)) FROM workers WHERE name = :name",
        params! { name },
        first,
    )?;
    Ok(ages
        .into_iter()
        .next()
        .map(|us| Duration::from_micros(us.unwrap_or(0).max(0) as u64)))
}
