//! Statements on one run of a job: its start, its end, and reads of runs.
//!
//! The lease column is the fencing token: every claim increments it, and
//! every write here names the [`Run`] (id and lease) it expects, so a write
//! from a replica that lost the claim (the job was released, rescued or
//! cancelled while it was paused or cut off) changes nothing and reports 0
//! rows. Batches stay one statement of any size: ids are integers, inlined.

use std::time::Duration;

use mysql::{Row, params};

use super::error::DbResult;
use super::pool::{Connection, id_list};
use super::row::col;
use crate::job::Run;

/// A run past its deadline, for the canceller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dead {
    /// The run to cancel.
    pub run: Run,
    /// The job's own timeout in milliseconds, if it had one (else the
    /// service's `JOB_TIMEOUT` applied).
    pub timeout_ms: Option<u64>,
}

/// The canceller's query: running jobs past their deadline (set when they
/// started, from the job's `timeout` or the service's `JOB_TIMEOUT`), and
/// rows started before deadlines were recorded that have run longer than
/// `timeout`. Both parts use the `(is_running, deadline_at, started_at)`
/// index.
pub fn dead_select_sql(timeout: Duration, limit: usize) -> String {
    format!(
        "(SELECT id, lease, timeout FROM jobs WHERE is_running = 1 AND deadline_at < NOW(6) \
         ORDER BY deadline_at LIMIT {limit}) \
         UNION ALL \
         (SELECT id, lease, timeout FROM jobs WHERE is_running = 1 AND deadline_at IS NULL \
         AND started_at < NOW(6) - INTERVAL {} MICROSECOND ORDER BY started_at LIMIT {limit})",
        timeout.as_micros()
    )
}

/// Up to `limit` jobs still `STARTED!` more than `timeout` after they
/// started.
pub fn job_find_dead(
    conn: &mut Connection,
    timeout: Duration,
    limit: usize,
) -> DbResult<Vec<Dead>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    conn.query_rows(dead_select_sql(timeout, limit), |mut row| {
        Ok(Dead {
            run: run_of(&mut row)?,
            timeout_ms: col(&mut row, "timeout")?,
        })
    })
}

fn run_of(row: &mut Row) -> DbResult<Run> {
    Ok(Run {
        id: col(row, "id")?,
        lease: col(row, "lease")?,
    })
}

/// `lease = CASE id WHEN 1 THEN 7 ... END`: each row's own lease in one
/// condition, so a batch stays one statement that reads rows by primary key.
fn lease_matches(runs: &[Run]) -> String {
    let mut s = String::from("lease = CASE id");
    for run in runs {
        s.push_str(&format!(" WHEN {} THEN {}", run.id, run.lease));
    }
    s.push_str(" END");
    s
}

/// The start statement for `size` jobs: the default timeout in
/// milliseconds, then `size` ids, then `size` (id, lease) pairs.
pub fn start_many_sql(size: usize) -> String {
    format!(
        "UPDATE jobs SET status = 'STARTED!', started_at = NOW(6), attempts = attempts + 1, \
         deadline_at = NOW(6) + INTERVAL COALESCE(timeout, ?) * 1000 MICROSECOND \
         WHERE id IN ({}) AND status = 'QUEUED!' AND lease = CASE id{} END",
        vec!["?"; size].join(", "),
        " WHEN ? THEN ?".repeat(size)
    )
}

/// Marks claimed jobs `STARTED!` with `started_at`, counts the attempt and
/// sets each one's deadline (`timeout` from now, the job's own `timeout`
/// column winning), for the runs whose claim still holds. Committed before
/// the tasks begin, so an attempt starts at most once. Returns how many rows
/// changed.
pub fn job_start_many(conn: &mut Connection, runs: &[Run], timeout: Duration) -> DbResult<u64> {
    let Some(&last) = runs.last() else {
        return Ok(0);
    };
    let default_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
    // A prepared statement: this is the one write every job waits on, and
    // the server skips parsing it (measured: 5% more jobs per second). The
    // batch is padded to a power of two by repeating its last run (the same
    // row and lease again changes nothing), so a connection prepares a
    // handful of statements, not one per batch size.
    let size = runs.len().next_power_of_two();
    let padded = || {
        runs.iter()
            .copied()
            .chain(std::iter::repeat(last))
            .take(size)
    };
    let mut params: Vec<mysql::Value> = Vec::with_capacity(1 + 3 * size);
    params.push(default_ms.into());
    params.extend(padded().map(|r| r.id.into()));
    for run in padded() {
        params.push(run.id.into());
        params.push(run.lease.into());
    }
    conn.exec_drop(start_many_sql(size), params)?;
    Ok(conn.affected_rows())
}

/// [`job_start_many`] for one run: whether it started.
pub fn job_start(conn: &mut Connection, run: Run, timeout: Duration) -> DbResult<bool> {
    Ok(job_start_many(conn, &[run], timeout)? == 1)
}

/// Marks running jobs `DONE!` with `finished_at`, for the runs that still
/// hold them. Returns how many rows changed.
pub fn job_finish_many(conn: &mut Connection, runs: &[Run]) -> DbResult<u64> {
    if runs.is_empty() {
        return Ok(0);
    }
    conn.query_drop(format!(
        "UPDATE jobs SET status = 'DONE!', finished_at = NOW(6), error = NULL \
         WHERE id IN ({}) AND status = 'STARTED!' AND {}",
        id_list(runs.iter().map(|r| r.id)),
        lease_matches(runs)
    ))?;
    Ok(conn.affected_rows())
}

/// [`job_finish_many`] for one run: whether it finished.
pub fn job_finish(conn: &mut Connection, run: Run) -> DbResult<bool> {
    Ok(job_finish_many(conn, &[run])? == 1)
}

/// A failure to record.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The status the run must still be in: `QUEUED!` for bad input found
    /// before it starts, `STARTED!` for a task error.
    pub expected: &'a str,
    /// Why, in words.
    pub reason: &'a str,
}

/// Marks a run `FAILED!` with the reason, if it is still in the expected
/// status under its lease. The reason also goes, as one more line, into
/// `errors`, which keeps every failed attempt's error.
pub fn job_fail(conn: &mut Connection, run: Run, failure: &Failure) -> DbResult<bool> {
    let Failure { expected, reason } = *failure;
    conn.exec_drop(
        "UPDATE jobs SET status = 'FAILED!', finished_at = NOW(6), error = :reason, \
         errors = CONCAT(COALESCE(errors, ''), :reason, CHAR(10)) \
         WHERE id = :id AND lease = :lease AND status = :expected",
        params! { "id" => run.id, "lease" => run.lease, expected, reason },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Puts a running job whose attempt failed with a retryable error back to
/// new, not to be claimed before `delay` from now, keeping the error in
/// `error` and as one more line in `errors`.
pub fn job_retry(conn: &mut Connection, run: Run, reason: &str, delay: Duration) -> DbResult<bool> {
    let delay_us = delay.as_micros().min(u64::MAX as u128) as u64;
    conn.exec_drop(
        "UPDATE jobs SET status = NULL, owner = NULL, queued_at = NULL, started_at = NULL, \
         deadline_at = NULL, run_at = NOW(6) + INTERVAL :delay_us MICROSECOND, error = :reason, \
         errors = CONCAT(COALESCE(errors, ''), :reason, CHAR(10)) \
         WHERE id = :id AND lease = :lease AND status = 'STARTED!'",
        params! { "id" => run.id, "lease" => run.lease, reason, delay_us },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Cancels a running job: `CANCELLED!`, with `cancelled_at` and
/// `finished_at` equal and the reason in `error`, if that run is still
/// `STARTED!`.
pub fn job_cancel(conn: &mut Connection, run: Run, reason: &str) -> DbResult<bool> {
    conn.exec_drop(
        "UPDATE jobs SET status = 'CANCELLED!', cancelled_at = NOW(6), finished_at = NOW(6), \
         error = :reason WHERE id = :id AND lease = :lease AND status = 'STARTED!'",
        params! { "id" => run.id, "lease" => run.lease, reason },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Of the given runs, those whose row is in `status` under that lease.
pub fn jobs_in_status(conn: &mut Connection, runs: &[Run], status: &str) -> DbResult<Vec<Run>> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    // `status` is one of the service's constants, never input: inlined, so
    // the statement is not prepared for every batch size.
    let rows: Vec<Run> = conn.query_rows(
        format!(
            "SELECT id, lease FROM jobs WHERE id IN ({}) AND status = '{status}'",
            id_list(runs.iter().map(|r| r.id))
        ),
        |mut row| run_of(&mut row),
    )?;
    Ok(runs.iter().copied().filter(|r| rows.contains(r)).collect())
}

/// Which of the given runs are still `STARTED!` (primary key lookups).
pub fn find_lost_sql(runs: &[Run]) -> String {
    format!(
        "SELECT id, lease FROM jobs WHERE id IN ({}) AND status = 'STARTED!'",
        id_list(runs.iter().map(|r| r.id))
    )
}

/// Of the given runs, those no longer `STARTED!` under their lease: cancelled
/// or rescued elsewhere, so this replica should interrupt them.
pub fn job_find_lost(conn: &mut Connection, runs: &[Run]) -> DbResult<Vec<Run>> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let live: Vec<Run> = conn.query_rows(find_lost_sql(runs), |mut row| run_of(&mut row))?;
    Ok(runs.iter().copied().filter(|r| !live.contains(r)).collect())
}

/// Deletes up to `limit` final rows that finished before `age` ago. Uses the
/// `final_at` index.
pub fn prune_sql(age: Duration, limit: usize) -> String {
    format!(
        "DELETE FROM jobs WHERE final_at < NOW(6) - INTERVAL {} MICROSECOND LIMIT {limit}",
        age.as_micros()
    )
}

/// Deletes up to `limit` final rows older than `age`; returns how many.
pub fn job_prune(conn: &mut Connection, age: Duration, limit: usize) -> DbResult<u64> {
    conn.query_drop(prune_sql(age, limit))?;
    Ok(conn.affected_rows())
}
