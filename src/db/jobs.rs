//! Statements on the `jobs` table.
//!
//! The lease column is the fencing token: every claim increments it, and
//! every later write names the lease it expects, so a write from a replica
//! that lost the claim (the job was released, rescued or cancelled while it
//! was paused or cut off) changes nothing and reports 0 rows.

use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, TxOpts, params};

use super::{DbResult, id_list};

/// Status values, spelled as the original service spelled them.
pub mod status {
    /// Claimed by a replica, waiting in its channel.
    pub const QUEUED: &str = "QUEUED!";
    /// Its task is running.
    pub const STARTED: &str = "STARTED!";
    /// Task finished (final).
    pub const DONE: &str = "DONE!";
    /// Dead and cancelled (final).
    pub const CANCELLED: &str = "CANCELLED!";
    /// Cannot run: bad input or task error (final).
    pub const FAILED: &str = "FAILED!";
    /// Every status the service knows; `stats` counts any other separately.
    pub const KNOWN: [&str; 5] = [QUEUED, STARTED, DONE, CANCELLED, FAILED];
}

/// A job claimed by this replica.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    /// Primary key.
    pub id: u64,
    /// What the job works on (opaque to the service).
    pub object_id: Option<i64>,
    /// Task duration in nanoseconds; `None` never finishes by itself.
    pub sleep: Option<i64>,
    /// The fencing token this claim holds.
    pub lease: u64,
    /// Which registered task runs it.
    pub kind: String,
    /// The task's input (JSON text), if any.
    pub payload: Option<String>,
    /// Attempts started before this claim.
    pub attempts: u32,
    /// Attempts allowed; `None`: the service's `MAX_ATTEMPTS`.
    pub max_attempts: Option<u32>,
    /// Milliseconds a run may take; `None`: the service's `JOB_TIMEOUT`.
    pub timeout_ms: Option<u64>,
    /// Its priority (claims take higher first).
    pub priority: i32,
}

type ClaimRow = (
    u64,
    Option<i64>,
    Option<i64>,
    u64,
    String,
    Option<String>,
    u32,
    Option<u32>,
    Option<u64>,
    i32,
);

/// A job past its deadline, for the canceller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dead {
    /// Primary key.
    pub id: u64,
    /// The lease of the run to cancel.
    pub lease: u64,
    /// The job's own timeout in milliseconds, if it had one (else the
    /// service's `JOB_TIMEOUT` applied).
    pub timeout_ms: Option<u64>,
}

/// A `STARTED!` job run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Primary key.
    pub id: u64,
    /// The lease of the run to cancel.
    pub lease: u64,
}

const CLAIM_COLUMNS: &str =
    "id, object_id, sleep, lease, kind, payload, attempts, max_attempts, timeout, priority";

/// The claim's first query: new rows due now (`run_at` NULL), highest
/// priority first, then oldest, skipping rows another replica is claiming
/// right now. An equality prefix of the `(is_new, run_at, priority DESC,
/// id)` index, read in order: rows scheduled for later are never read.
pub fn claim_select_sql(limit: usize, after: Option<(i32, u64)>) -> String {
    // Continuing after the last claim's (priority, id) skips the index
    // entries of rows claimed moments ago, which purge has not removed yet:
    // without it every claim rereads them, and gets slower as work flows.
    // The index is named because, given the OR, the optimizer prefers to
    // read the whole (is_new, run_at) prefix and filter it (measured 10x
    // slower on 20,000 new rows) over seeking to where the claim left off.
    let after = match after {
        Some((p, id)) => format!(" AND (priority < {p} OR (priority = {p} AND id > {id}))"),
        None => String::new(),
    };
    format!(
        "SELECT {CLAIM_COLUMNS} FROM jobs FORCE INDEX (jobs_new) \
         WHERE is_new = 1 AND run_at IS NULL{after} \
         ORDER BY priority DESC, id LIMIT {limit} FOR UPDATE SKIP LOCKED"
    )
}

/// The claim's second query: scheduled rows (and retries) that have fallen
/// due, in the order they fell due. A range of the same index that ends at
/// now: rows scheduled for later are never read.
pub fn claim_scheduled_sql(limit: usize) -> String {
    format!(
        "SELECT {CLAIM_COLUMNS} FROM jobs WHERE is_new = 1 AND run_at <= NOW(6) \
         ORDER BY run_at, priority DESC, id LIMIT {limit} FOR UPDATE SKIP LOCKED"
    )
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

/// Deletes up to `limit` final rows that finished before `age` ago. Uses the
/// `final_at` index.
pub fn prune_sql(age: Duration, limit: usize) -> String {
    format!(
        "DELETE FROM jobs WHERE final_at < NOW(6) - INTERVAL {} MICROSECOND LIMIT {limit}",
        age.as_micros()
    )
}

/// Puts an owner's `QUEUED!` jobs back to new. Uses the `held_by` index
/// (an owner holds at most its channel and its consumers' jobs).
pub const RELEASE_QUEUED_SQL: &str = "UPDATE jobs SET status = NULL, queued_at = NULL, owner = NULL \
     WHERE held_by = :owner AND status = 'QUEUED!'";

/// Cancels an owner's `STARTED!` jobs. Uses the `held_by` index.
pub const CANCEL_OWNED_SQL: &str = "UPDATE jobs SET status = 'CANCELLED!', cancelled_at = NOW(6), \
     finished_at = NOW(6), error = :reason WHERE held_by = :owner AND status = 'STARTED!'";

/// Owners of `QUEUED!` and `STARTED!` jobs (`''` for held rows without
/// one), read from the `held_by` index.
pub const OWNERS_ACTIVE_SQL: &str = "SELECT DISTINCT held_by FROM jobs WHERE held_by IS NOT NULL";

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

/// Puts a dead owner's `QUEUED!` jobs back to new, unless it beat again.
pub fn job_rescue_queued(conn: &mut Conn, owner: &str, dead_after: Duration) -> DbResult<u64> {
    conn.exec_drop(rescue_queued_sql(dead_after), params! { owner })?;
    Ok(conn.affected_rows())
}

/// Cancels a dead owner's `STARTED!` jobs with `reason`, unless it beat
/// again.
pub fn job_rescue_started(
    conn: &mut Conn,
    owner: &str,
    reason: &str,
    dead_after: Duration,
) -> DbResult<u64> {
    conn.exec_drop(
        format!("{CANCEL_OWNED_SQL} AND {}", still_dead_sql(dead_after)),
        params! { owner, reason },
    )?;
    Ok(conn.affected_rows())
}

/// Puts ownerless `QUEUED!` rows back. Uses the `held_by` index (`''` is a
/// held row without an owner).
pub const RELEASE_UNOWNED_SQL: &str =
    "UPDATE jobs SET status = NULL, queued_at = NULL WHERE held_by = '' AND status = 'QUEUED!'";

/// Which of the given runs are still `STARTED!` (primary key lookups).
pub fn find_lost_sql(runs: &[Running]) -> String {
    format!(
        "SELECT id, lease FROM jobs WHERE id IN ({}) AND status = 'STARTED!'",
        id_list(runs.iter().map(|r| r.id))
    )
}

/// Claims up to `limit` new jobs for `owner` in one transaction: selects
/// them with `FOR UPDATE SKIP LOCKED`, marks them `QUEUED!` with `queued_at`,
/// the owner and a new lease, and commits. Returns the claimed jobs, oldest
/// first.
///
/// If the commit fails, the claim may or may not have landed: the jobs are
/// left in `in_doubt` for [`job_release_claims`] to settle once the database
/// answers again; otherwise `in_doubt` is left empty. With `after`, only rows
/// ordered after that (priority, id) are considered, and scheduled rows only
/// if those run short.
pub fn job_claim_many(
    conn: &mut Conn,
    owner: &str,
    limit: usize,
    after: Option<(i32, u64)>,
    in_doubt: &mut Vec<Job>,
) -> DbResult<Vec<Job>> {
    in_doubt.clear();
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut tx = conn.start_transaction(TxOpts::default())?;
    let mut raw: Vec<mysql::Row> = tx.query(claim_select_sql(limit, after))?;
    // Scheduled rows that fell due are looked for on every claim from the
    // top (each tick) and whenever the due-now rows run short; a claim that
    // continues a full one skips them, so the hot path costs one read.
    if after.is_none() || raw.len() < limit {
        raw.extend(tx.query::<mysql::Row, _>(claim_scheduled_sql(limit))?);
    }
    // A row whose columns cannot be read as the service's types (a legacy
    // table's unsigned object_id past i64, say) fails, in this same
    // transaction, instead of stopping the claims.
    let mut rows: Vec<ClaimRow> = Vec::with_capacity(raw.len());
    let mut unreadable: Vec<u64> = Vec::new();
    for row in raw {
        let id: Option<u64> = row.get_opt(0).and_then(Result::ok);
        match mysql::from_row_opt::<ClaimRow>(row) {
            Ok(r) => rows.push(r),
            Err(_) => unreadable.extend(id),
        }
    }
    if !unreadable.is_empty() {
        tx.query_drop(format!(
            "UPDATE jobs SET status = 'FAILED!', finished_at = NOW(6), \
             error = 'cannot read this row: a column holds a value of the wrong type or range' \
             WHERE id IN ({}) AND status IS NULL",
            id_list(unreadable.iter().copied())
        ))?;
        log::warn!(
            "failed {} unreadable rows: {unreadable:?}",
            unreadable.len()
        );
    }
    if rows.is_empty() {
        tx.commit()?;
        return Ok(Vec::new());
    }
    // The two queries' candidates, in claim order: highest priority first,
    // then oldest. The ones left over stay new (their locks go at commit).
    rows.sort_by(|a, b| b.9.cmp(&a.9).then(a.0.cmp(&b.0)));
    rows.truncate(limit);
    // Text protocol: a prepared statement would be prepared anew for every
    // batch size. The owner is a validated worker name (no quoting needed);
    // refuse anything else rather than build SQL from it.
    if !crate::config::is_worker_name(owner) {
        return Err(super::DbError::Schema(format!(
            "invalid worker name {owner:?}"
        )));
    }
    tx.query_drop(format!(
        "UPDATE jobs SET status = 'QUEUED!', queued_at = NOW(6), owner = '{owner}', \
         lease = {NEXT_LEASE_SQL} WHERE id IN ({}) AND status IS NULL",
        id_list(rows.iter().map(|r| r.0))
    ))?;
    let jobs: Vec<Job> = rows
        .into_iter()
        .map(
            |(
                id,
                object_id,
                sleep,
                lease,
                kind,
                payload,
                attempts,
                max_attempts,
                timeout_ms,
                priority,
            )| {
                Job {
                    id,
                    object_id,
                    sleep,
                    lease: next_lease(lease),
                    kind,
                    payload,
                    attempts,
                    max_attempts,
                    timeout_ms,
                    priority,
                }
            },
        )
        .collect();
    in_doubt.clone_from(&jobs);
    tx.commit()?;
    in_doubt.clear();
    Ok(jobs)
}

/// Whether any new row is due, by a plain read (no transaction, no
/// locks): an idle replica asks this instead of opening a claim
/// transaction on every tick. Uses the claim index.
pub const CLAIMABLE_SQL: &str = "(SELECT 1 FROM jobs WHERE is_new = 1 AND run_at IS NULL LIMIT 1) \
     UNION ALL (SELECT 1 FROM jobs WHERE is_new = 1 AND run_at <= NOW(6) LIMIT 1) LIMIT 1";

/// See [`CLAIMABLE_SQL`].
pub fn job_any_claimable(conn: &mut Conn) -> DbResult<bool> {
    let found: Option<u8> = conn.query_first(CLAIMABLE_SQL)?;
    Ok(found.is_some())
}

/// The next lease after `lease`, as the claim computes it: wraps to 1
/// before the column's range ends, so a row claimed that often still claims.
pub fn next_lease(lease: u64) -> u64 {
    if lease < i64::MAX as u64 {
        lease + 1
    } else {
        1
    }
}

/// [`next_lease`] in SQL.
const NEXT_LEASE_SQL: &str = "IF(lease < 9223372036854775807, lease + 1, 1)";

/// Puts claims back to new if they are still `QUEUED!` under their lease:
/// settles a claim whose commit failed. Returns how many went back.
pub fn job_release_claims(conn: &mut Conn, claims: &[Job]) -> DbResult<u64> {
    let mut released = 0;
    for job in claims {
        conn.exec_drop(
            "UPDATE jobs SET status = NULL, queued_at = NULL, owner = NULL \
             WHERE id = :id AND lease = :lease AND status = 'QUEUED!'",
            params! { "id" => job.id, "lease" => job.lease },
        )?;
        released += conn.affected_rows();
    }
    Ok(released)
}

/// Marks a claimed job `STARTED!` with `started_at`, counts the attempt and
/// sets its deadline (`timeout` milliseconds from now, the job's own
/// `timeout` column winning), if this claim still holds it. Committed before
/// the task begins, so an attempt starts at most once.
pub fn job_start(conn: &mut Conn, id: u64, lease: u64, timeout: Duration) -> DbResult<bool> {
    Ok(job_start_many(conn, &[(id, lease)], timeout)? == 1)
}

/// Marks a running job `DONE!` with `finished_at`, if this run still holds it.
pub fn job_finish(conn: &mut Conn, id: u64, lease: u64) -> DbResult<bool> {
    Ok(job_finish_many(conn, &[(id, lease)])? == 1)
}

/// Marks a job `FAILED!` with the reason, if it is still in `expected`
/// status (`QUEUED!` for bad input found before it starts, `STARTED!` for a
/// task error) under this lease.
///
/// The reason also goes, as one more line, into `errors`, which keeps every
/// failed attempt's error.
pub fn job_fail(
    conn: &mut Conn,
    id: u64,
    lease: u64,
    expected: &str,
    reason: &str,
) -> DbResult<bool> {
    conn.exec_drop(
        "UPDATE jobs SET status = 'FAILED!', finished_at = NOW(6), error = :reason, \
         errors = CONCAT(COALESCE(errors, ''), :reason, CHAR(10)) \
         WHERE id = :id AND lease = :lease AND status = :expected",
        params! { id, lease, expected, reason },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Puts a running job whose attempt failed with a retryable error back to
/// new, not to be claimed before `delay` from now, keeping the error in
/// `error` and as one more line in `errors`.
pub fn job_retry(
    conn: &mut Conn,
    id: u64,
    lease: u64,
    reason: &str,
    delay: Duration,
) -> DbResult<bool> {
    let delay_us = delay.as_micros().min(u64::MAX as u128) as u64;
    conn.exec_drop(
        "UPDATE jobs SET status = NULL, owner = NULL, queued_at = NULL, started_at = NULL, \
         deadline_at = NULL, run_at = NOW(6) + INTERVAL :delay_us MICROSECOND, error = :reason, \
         errors = CONCAT(COALESCE(errors, ''), :reason, CHAR(10)) \
         WHERE id = :id AND lease = :lease AND status = 'STARTED!'",
        params! { id, lease, reason, delay_us },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Deletes up to `limit` final rows older than `age`; returns how many.
pub fn job_prune(conn: &mut Conn, age: Duration, limit: usize) -> DbResult<u64> {
    conn.query_drop(prune_sql(age, limit))?;
    Ok(conn.affected_rows())
}

/// Cancels a running job: `CANCELLED!`, with `cancelled_at` and
/// `finished_at` equal and the reason in `error`, if that run is still
/// `STARTED!`.
pub fn job_cancel(conn: &mut Conn, id: u64, lease: u64, reason: &str) -> DbResult<bool> {
    conn.exec_drop(
        "UPDATE jobs SET status = 'CANCELLED!', cancelled_at = NOW(6), finished_at = NOW(6), \
         error = :reason WHERE id = :id AND lease = :lease AND status = 'STARTED!'",
        params! { id, lease, reason },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Up to `limit` jobs still `STARTED!` more than `timeout` after they
/// started.
pub fn job_find_dead(conn: &mut Conn, timeout: Duration, limit: usize) -> DbResult<Vec<Dead>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<(u64, u64, Option<u64>)> = conn.query(dead_select_sql(timeout, limit))?;
    Ok(rows
        .into_iter()
        .map(|(id, lease, timeout_ms)| Dead {
            id,
            lease,
            timeout_ms,
        })
        .collect())
}

/// Puts every job `owner` holds `QUEUED!` back to new (status NULL), so any
/// replica can claim it at once. Returns how many went back.
pub fn job_release_queued(conn: &mut Conn, owner: &str) -> DbResult<u64> {
    conn.exec_drop(RELEASE_QUEUED_SQL, params! { owner })?;
    Ok(conn.affected_rows())
}

/// Cancels every job `owner` holds `STARTED!`, with `reason`: used when the
/// owner is known dead, so its tasks can never report.
pub fn job_cancel_owned(conn: &mut Conn, owner: &str, reason: &str) -> DbResult<u64> {
    conn.exec_drop(CANCEL_OWNED_SQL, params! { owner, reason })?;
    Ok(conn.affected_rows())
}

/// Owners of `QUEUED!` or `STARTED!` jobs (`None`: rows left without an
/// owner by the original service): the rescuer compares them with the live
/// workers; `None` for held rows without an owner.
pub fn job_owners_active(conn: &mut Conn) -> DbResult<Vec<Option<String>>> {
    let held_by: Vec<String> = conn.query(OWNERS_ACTIVE_SQL)?;
    let mut owners: Vec<Option<String>> = held_by
        .into_iter()
        .map(|h| if h.is_empty() { None } else { Some(h) })
        .collect();
    owners.sort();
    owners.dedup();
    Ok(owners)
}

/// Of the given runs, those no longer `STARTED!` under their lease: cancelled
/// or rescued elsewhere, so this replica should interrupt them.
pub fn job_find_lost(conn: &mut Conn, runs: &[Running]) -> DbResult<Vec<u64>> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let live: Vec<(u64, u64)> = conn.query(find_lost_sql(runs))?;
    Ok(runs
        .iter()
        .filter(|r| !live.contains(&(r.id, r.lease)))
        .map(|r| r.id)
        .collect())
}

/// Puts `QUEUED!` rows with no owner (left by the original service, which
/// recorded none) back to new.
pub fn job_release_unowned(conn: &mut Conn) -> DbResult<u64> {
    conn.query_drop(RELEASE_UNOWNED_SQL)?;
    Ok(conn.affected_rows())
}

/// `lease = CASE id WHEN 1 THEN 7 ... END`: each row's own lease in one
/// condition, so a batch stays one statement that reads rows by primary key.
fn lease_matches(jobs: &[(u64, u64)]) -> String {
    let mut s = String::from("lease = CASE id");
    for (id, lease) in jobs {
        s.push_str(&format!(" WHEN {id} THEN {lease}"));
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

/// Marks a batch of claimed jobs `STARTED!` in one statement (see
/// [`job_start`]). Returns how many rows changed.
pub fn job_start_many(conn: &mut Conn, jobs: &[(u64, u64)], timeout: Duration) -> DbResult<u64> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let default_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
    // A prepared statement: this is the one write every job waits on, and
    // the server skips parsing it (measured: 5% more jobs per second). The
    // batch is padded to a power of two by repeating its last job (the same
    // row and lease again changes nothing), so a connection prepares a
    // handful of statements, not one per batch size.
    let size = jobs.len().next_power_of_two();
    let last = jobs[jobs.len() - 1];
    let padded = || {
        jobs.iter()
            .copied()
            .chain(std::iter::repeat(last))
            .take(size)
    };
    let mut params: Vec<mysql::Value> = Vec::with_capacity(1 + 3 * size);
    params.push(default_ms.into());
    params.extend(padded().map(|(id, _)| id.into()));
    for (id, lease) in padded() {
        params.push(id.into());
        params.push(lease.into());
    }
    conn.exec_drop(start_many_sql(size), params)?;
    Ok(conn.affected_rows())
}

/// Marks a batch of running jobs `DONE!` in one statement (see
/// [`job_finish`]). Returns how many rows changed.
pub fn job_finish_many(conn: &mut Conn, jobs: &[(u64, u64)]) -> DbResult<u64> {
    if jobs.is_empty() {
        return Ok(0);
    }
    conn.query_drop(format!(
        "UPDATE jobs SET status = 'DONE!', finished_at = NOW(6), error = NULL \
         WHERE id IN ({}) AND status = 'STARTED!' AND {}",
        id_list(jobs.iter().map(|j| j.0)),
        lease_matches(jobs)
    ))?;
    Ok(conn.affected_rows())
}

/// Of the given (id, lease) pairs, the ids whose row is in `status` under
/// that lease.
pub fn jobs_in_status(conn: &mut Conn, jobs: &[(u64, u64)], status: &str) -> DbResult<Vec<u64>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    // `status` is one of this module's constants, never input: inlined, so
    // the statement is not prepared for every batch size.
    let rows: Vec<(u64, u64)> = conn.query(format!(
        "SELECT id, lease FROM jobs WHERE id IN ({}) AND status = '{status}'",
        id_list(jobs.iter().map(|j| j.0))
    ))?;
    Ok(jobs
        .iter()
        .filter(|j| rows.contains(j))
        .map(|j| j.0)
        .collect())
}
