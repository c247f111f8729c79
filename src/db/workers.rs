//! Statements on the `workers` table: the registry of live replicas.
//!
//! Liveness is judged by the database's own clock (`NOW(6)`), so replicas
//! whose clocks disagree still agree on who is dead.

use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, params};

use super::DbResult;

/// Registers (or re-registers) this replica with a fresh heartbeat.
pub fn worker_register(
    conn: &mut Conn,
    name: &str,
    host: &str,
    pid: u32,
    version: &str,
) -> DbResult<()> {
    conn.exec_drop(
        "INSERT INTO workers (name, host, pid, version, started_at, heartbeat_at) \
         VALUES (:name, :host, :pid, :version, NOW(6), NOW(6)) \
         ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), \
         version = VALUES(version), heartbeat_at = NOW(6)",
        params! { name, host, pid, version },
    )?;
    Ok(())
}

/// Refreshes this replica's heartbeat. `false` means its row is gone: other
/// replicas declared it dead and rescued its jobs.
pub fn worker_heartbeat(conn: &mut Conn, name: &str) -> DbResult<bool> {
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
    let found: Option<u8> =
        conn.exec_first("SELECT 1 FROM workers WHERE name = :name", params! { name })?;
    Ok(found.is_some())
}

/// Removes this replica's row on a clean shutdown.
pub fn worker_remove(conn: &mut Conn, name: &str) -> DbResult<()> {
    conn.exec_drop("DELETE FROM workers WHERE name = :name", params! { name })?;
    Ok(())
}

/// Removes the row of a replica found dead, if it is still stale (it may
/// have come back since).
pub fn worker_remove_dead(conn: &mut Conn, name: &str, dead_after: Duration) -> DbResult<bool> {
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

/// Every registered replica, and whether its heartbeat is fresher than
/// `dead_after`: one read for the rescuer.
pub fn worker_list(conn: &mut Conn, dead_after: Duration) -> DbResult<Vec<(String, bool)>> {
    Ok(conn.query(format!(
        "SELECT name, heartbeat_at >= NOW(6) - INTERVAL {} MICROSECOND FROM workers",
        dead_after.as_micros()
    ))?)
}

/// How long ago `name` last beat, if it has a row.
pub fn worker_heartbeat_age(conn: &mut Conn, name: &str) -> DbResult<Option<Duration>> {
    let us: Option<Option<i64>> = conn.exec_first(
        "SELECT TIMESTAMPDIFF(MICROSECOND, heartbeat_at, NOW(6)) FROM workers WHERE name = :name",
        params! { name },
    )?;
    Ok(us.map(|us| Duration::from_micros(us.unwrap_or(0).max(0) as u64)))
}
