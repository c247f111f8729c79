//! Statements on all the jobs one replica holds at once, by owner: putting a
//! replica's waiting jobs back (shutdown, a restart under the same name),
//! and rescuing the jobs of a replica that died. All read the `held_by`
//! index: an owner holds at most its channel and its consumers' jobs.
//!
//! These go by owner and status, not by lease: they act on everything the
//! owner holds. The rescue's writes also require that the owner is still
//! silent when they run, so a replica that came back keeps what it holds.

use std::time::Duration;

use mysql::params;

use super::conn::Connection;
use super::error::DbResult;
use super::row::first;

/// Puts an owner's `QUEUED!` jobs back to new.
pub const RELEASE_QUEUED_SQL: &str = "UPDATE jobs SET status = NULL, queued_at = NULL, owner = NULL \
     WHERE held_by = :owner AND status = 'QUEUED!'";

/// Cancels an owner's `STARTED!` jobs.
pub const CANCEL_OWNED_SQL: &str = "UPDATE jobs SET status = 'CANCELLED!', cancelled_at = NOW(6), \
     finished_at = NOW(6), error = :reason WHERE held_by = :owner AND status = 'STARTED!'";

/// Owners of `QUEUED!` and `STARTED!` jobs (`''` for held rows without
/// one).
pub const OWNERS_ACTIVE_SQL: &str = "SELECT DISTINCT held_by FROM jobs WHERE held_by IS NOT NULL";

/// Puts ownerless `QUEUED!` rows back (`''` is a held row without an owner).
pub const RELEASE_UNOWNED_SQL: &str =
    "UPDATE jobs SET status = NULL, queued_at = NULL WHERE held_by = '' AND status = 'QUEUED!'";

/// The rescuer's condition that `owner` is still dead when the write runs:
/// a replica that came back between the rescuer's reads and its writes keeps
/// what it holds.
fn still_dead_sql(dead_after: Duration) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM workers WHERE name = :owner \
         AND heartbeat_at >= NOW(6) - INTERVAL {} MICROSECOND)",
        dead_after.as_micros()
    )
}

/// The rescuer's release of a dead owner's `QUEUED!` jobs (`:owner`).
pub fn rescue_queued_sql(dead_after: Duration) -> String {
    format!("{RELEASE_QUEUED_SQL} AND {}", still_dead_sql(dead_after))
}

/// Puts every job `owner` holds `QUEUED!` back to new (status NULL), so any
/// replica can claim it at once. Returns how many went back.
pub fn job_release_queued(conn: &mut Connection, owner: &str) -> DbResult<u64> {
    conn.exec_drop(RELEASE_QUEUED_SQL, params! { owner })?;
    Ok(conn.affected_rows())
}

/// Whose jobs to cancel, and why.
#[derive(Debug, Clone, Copy)]
pub struct OwnedCancel<'a> {
    /// The owner (worker name).
    pub owner: &'a str,
    /// The reason written to `error`.
    pub reason: &'a str,
}

/// Cancels every job the owner holds `STARTED!`: used when the owner is
/// known dead, so its tasks can never report.
pub fn job_cancel_owned(conn: &mut Connection, cancel: &OwnedCancel) -> DbResult<u64> {
    let OwnedCancel { owner, reason } = *cancel;
    conn.exec_drop(CANCEL_OWNED_SQL, params! { owner, reason })?;
    Ok(conn.affected_rows())
}

/// Puts a dead owner's `QUEUED!` jobs back to new, unless it beat again
/// within `dead_after`.
pub fn job_rescue_queued(
    conn: &mut Connection,
    owner: &str,
    dead_after: Duration,
) -> DbResult<u64> {
    conn.exec_drop(rescue_queued_sql(dead_after), params! { owner })?;
    Ok(conn.affected_rows())
}

/// Cancels a dead owner's `STARTED!` jobs, unless it beat again within
/// `dead_after`.
pub fn job_rescue_started(
    conn: &mut Connection,
    cancel: &OwnedCancel,
    dead_after: Duration,
) -> DbResult<u64> {
    let OwnedCancel { owner, reason } = *cancel;
    conn.exec_drop(
        format!("{CANCEL_OWNED_SQL} AND {}", still_dead_sql(dead_after)),
        params! { owner, reason },
    )?;
    Ok(conn.affected_rows())
}

/// Owners of `QUEUED!` or `STARTED!` jobs, sorted; `None` for held rows
/// without an owner (left by the original service). The rescuer compares
/// them with the live workers.
pub fn job_owners_active(conn: &mut Connection) -> DbResult<Vec<Option<String>>> {
    let held_by: Vec<String> = conn.query_rows(OWNERS_ACTIVE_SQL, first)?;
    let mut owners: Vec<Option<String>> = held_by
        .into_iter()
        .map(|h| if h.is_empty() { None } else { Some(h) })
        .collect();
    owners.sort();
    owners.dedup();
    Ok(owners)
}

/// Puts `QUEUED!` rows with no owner (left by the original service, which
/// recorded none) back to new.
pub fn job_release_unowned(conn: &mut Connection) -> DbResult<u64> {
    conn.query_drop(RELEASE_UNOWNED_SQL)?;
    Ok(conn.affected_rows())
}
