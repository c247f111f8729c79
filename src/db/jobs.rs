//! Statements on one run of a job: its start, its end, and reads of runs.
//!
//! The lease column is the fencing token: every claim increments it, and
//! every write here names the [`Run`] (id and lease) it expects, so a write
//! from a replica that lost the claim (the job was released, rescued or
//! cancelled while it was paused or cut off) changes nothing and reports 0
//! rows. Batches stay one statement of any size: ids are integers, inlined.
//!
//! Every write comes in two forms ([`Locks`]): the plain one, which waits
//! for a row another session holds locked (the batch writers' sessions give
//! up at once), and one that skips such rows, which costs the server more
//! and so runs only after a plain one met a lock. A client that keeps one
//! job's row locked then delays that job's write alone, never a whole
//! batch. A write that changed fewer rows than asked is read back
//! ([`job_runs_state`]) to tell runs lost to another replica from runs whose
//! row was locked (and is tried again later).

use std::time::Duration;

use mysql::{Row, params};

use super::conn::Connection;
use super::error::{DbError, DbResult};
use super::pool::id_list;
use super::row::col;
use crate::job::{Run, status};

/// A run to cancel: past its deadline, or with a cancel requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    /// The run to cancel.
    pub run: Run,
    /// The job's own timeout in milliseconds, if it had one (else the
    /// service's `JOB_TIMEOUT` applied).
    pub timeout_ms: Option<u64>,
    /// A cancel was requested (rather than a deadline passed): the row's
    /// status then (NULL, `QUEUED!` or `STARTED!`).
    pub requested: Option<Option<String>>,
}

/// The canceller's query: running jobs past their deadline (set when they
/// started, from the job's `timeout` or the service's `JOB_TIMEOUT`); rows
/// started before deadlines were recorded that have run longer than
/// `timeout`; and rows an older service left `STARTED!` without even a
/// `started_at`, once `timeout` has passed since they were queued (or
/// created). All three parts read the held jobs from the `held_by` index
/// (a few per consumer and channel slot of each replica) and take the dead
/// ones among them, in no particular order: what one pass leaves, the next
/// takes.
pub fn dead_select_sql(timeout: Duration, limit: usize, worker: &str) -> String {
    use super::claim::RUNNING_JOBS;
    let ago = format!("NOW(6) - INTERVAL {} MICROSECOND", timeout.as_micros());
    let cols = "id, lease, timeout, status, 0 AS requested";
    format!(
        "(SELECT {cols} FROM {RUNNING_JOBS} AND deadline_at < NOW(6) LIMIT {limit}) \
         UNION ALL \
         (SELECT {cols} FROM {RUNNING_JOBS} AND deadline_at IS NULL \
         AND started_at < {ago} LIMIT {limit}) \
         UNION ALL \
         (SELECT {cols} FROM {RUNNING_JOBS} AND deadline_at IS NULL \
         AND started_at IS NULL AND COALESCE(queued_at, created_at) < {ago} LIMIT {limit}) \
         UNION ALL \
         (SELECT id, lease, timeout, status, 1 AS requested FROM jobs \
         WHERE cancel_pending = 1 AND NOT (status <=> 'STARTED!' AND NOT (owner <=> '{worker}')) \
         ORDER BY cancel_requested_at LIMIT {limit})"
    )
}

/// Up to `limit` jobs still `STARTED!` more than `timeout` after they
/// started, and up to `limit` whose cancel was requested (oldest request
/// first; running ones only of `worker`, a validated worker name: another
/// live replica's are its own watcher's to interrupt, a dead one's the
/// rescuer's).
pub fn job_find_dead(
    conn: &mut Connection,
    timeout: Duration,
    limit: usize,
    worker: &str,
) -> DbResult<Vec<Dead>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    if !crate::config::is_worker_name(worker) {
        return Err(DbError::Schema(format!("invalid worker name {worker:?}")));
    }
    conn.query_rows(dead_select_sql(timeout, limit, worker), |mut row| {
        let status: Option<String> = col(&mut row, "status")?;
        Ok(Dead {
            run: run_of(&mut row)?,
            timeout_ms: col(&mut row, "timeout")?,
            requested: (col::<i64>(&mut row, "requested")? == 1).then_some(status),
        })
    })
}

fn run_of(row: &mut Row) -> DbResult<Run> {
    Ok(Run {
        id: col(row, "id")?,
        lease: col(row, "lease")?,
    })
}

/// What a write does about a row another session holds locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locks {
    /// Waits for it, up to the session's lock wait timeout: the plain
    /// statement, the cheapest.
    Wait,
    /// Skips it: that row is left as it is (and reads back as still
    /// waiting).
    Skip,
}

impl Locks {
    /// `UPDATE jobs SET {set} WHERE {rows} AND {cond}`, or, skipping locked
    /// rows, an `UPDATE` of the rows `{rows}` finds that no other session
    /// holds locked. The derived table comes first and the rows are read by
    /// primary key (`STRAIGHT_JOIN`, `FORCE INDEX`), so the statement
    /// touches, and locks, only the rows it found free, whatever the
    /// optimizer would make of a small table. `{cond}` must write `jobs.id`.
    pub fn update(self, rows: &str, set: &str, cond: &str) -> String {
        match self {
            Locks::Wait => format!("UPDATE jobs SET {set} WHERE {rows} AND {cond}"),
            Locks::Skip => format!(
                "UPDATE (SELECT id FROM jobs WHERE {rows} FOR UPDATE SKIP LOCKED) AS free \
                 STRAIGHT_JOIN jobs FORCE INDEX (PRIMARY) ON jobs.id = free.id \
                 SET {set} WHERE {cond}"
            ),
        }
    }

    /// Whether a write that failed with `e` met a locked row, and is worth
    /// doing again skipping locked rows.
    pub fn met_a_lock(e: &DbError) -> bool {
        e.code() == Some(1205)
    }
}

/// The longest timeout a run gets, in milliseconds: 100 years. A longer one
/// (a row's `timeout` can hold any BIGINT) would put its deadline past the
/// range of a `DATETIME`; this far out, it is no timeout.
pub const MAX_TIMEOUT_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// `lease = CASE id WHEN 1 THEN 7 ... END`: each row's own lease in one
/// condition, so a batch stays one statement that reads rows by primary key.
fn lease_matches(runs: &[Run]) -> String {
    let mut s = String::from("lease = CASE jobs.id");
    for run in runs {
        s.push_str(&format!(" WHEN {} THEN {}", run.id, run.lease));
    }
    s.push_str(" END");
    s
}

/// The start statement for `size` jobs: the default timeout in
/// milliseconds, then `size` ids, then `size` (id, lease) pairs.
pub fn start_many_sql(size: usize) -> String {
    start_sql(size, Locks::Wait)
}

/// [`start_many_sql`] skipping locked rows: `size` ids come first, then the
/// default timeout, then the pairs.
pub fn start_many_skip_locked_sql(size: usize) -> String {
    start_sql(size, Locks::Skip)
}

/// A cancel was requested since the row's last run ended (a request older
/// than that run's end belongs to it, and a re-run ignores it).
pub const CANCEL_REQUESTED: &str = "(cancel_requested_at IS NOT NULL AND (finished_at IS NULL OR cancel_requested_at > finished_at))";

fn start_sql(size: usize, locks: Locks) -> String {
    // A re-run (status set back to NULL by hand) starts clean: the previous
    // run's end, error and cancel request go; `errors` keeps the history.
    locks.update(
        &format!("id IN ({})", vec!["?"; size].join(", ")),
        &format!(
            "status = 'STARTED!', started_at = NOW(6), attempts = attempts + 1, \
             deadline_at = NOW(6) + INTERVAL LEAST(COALESCE(timeout, ?), {MAX_TIMEOUT_MS}) \
             * 1000 MICROSECOND, finished_at = NULL, cancelled_at = NULL, error = NULL, \
             cancel_requested_at = NULL"
        ),
        &format!(
            "status = 'QUEUED!' AND lease = CASE jobs.id{} END AND NOT {CANCEL_REQUESTED}",
            " WHEN ? THEN ?".repeat(size)
        ),
    )
}

/// Marks claimed jobs `STARTED!` with `started_at`, counts the attempt and
/// sets each one's deadline (`timeout` from now, the job's own `timeout`
/// column winning), for the runs whose claim still holds. Committed before
/// the tasks begin, so an attempt starts at most once. Returns how many rows
/// changed.
pub fn job_start_many(
    conn: &mut Connection,
    runs: &[Run],
    timeout: Duration,
    locks: Locks,
) -> DbResult<u64> {
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
    // The placeholders in the order they stand in the statement's text.
    match locks {
        Locks::Wait => {
            params.push(default_ms.into());
            params.extend(padded().map(|r| r.id.into()));
        }
        Locks::Skip => {
            params.extend(padded().map(|r| r.id.into()));
            params.push(default_ms.into());
        }
    }
    for run in padded() {
        params.push(run.id.into());
        params.push(run.lease.into());
    }
    conn.exec_drop(start_sql(size, locks), params)?;
    Ok(conn.affected_rows())
}

/// Sets `started_at` to now, and the deadline from now, of runs still
/// `STARTED!` under their lease: for starts that landed on an earlier try
/// whose answer was lost (an outage can hide it for long), so `started_at`
/// stays the moment the task began and the deadline runs from then.
pub fn job_restamp_started(
    conn: &mut Connection,
    runs: &[Run],
    timeout: Duration,
) -> DbResult<u64> {
    if runs.is_empty() {
        return Ok(0);
    }
    let default_ms = timeout.as_millis().min(u128::from(MAX_TIMEOUT_MS)) as u64;
    conn.query_drop(format!(
        "UPDATE jobs SET started_at = NOW(6), deadline_at = NOW(6) + INTERVAL \
         LEAST(COALESCE(timeout, {default_ms}), {MAX_TIMEOUT_MS}) * 1000 MICROSECOND \
         WHERE id IN ({}) AND status = 'STARTED!' AND {}",
        id_list(runs.iter().map(|r| r.id)),
        lease_matches(runs)
    ))?;
    Ok(conn.affected_rows())
}

/// [`job_start_many`] for one run: whether it started.
pub fn job_start(conn: &mut Connection, run: Run, timeout: Duration) -> DbResult<bool> {
    Ok(job_start_many(conn, &[run], timeout, Locks::Wait)? == 1)
}

/// Marks running jobs `DONE!` with `finished_at`, for the runs that still
/// hold them. Returns how many rows changed.
pub fn job_finish_many(conn: &mut Connection, runs: &[Run], locks: Locks) -> DbResult<u64> {
    if runs.is_empty() {
        return Ok(0);
    }
    conn.query_drop(locks.update(
        &format!("id IN ({})", id_list(runs.iter().map(|r| r.id))),
        "status = 'DONE!', finished_at = NOW(6), error = NULL",
        &format!("status = 'STARTED!' AND {}", lease_matches(runs)),
    ))?;
    Ok(conn.affected_rows())
}

/// [`job_finish_many`] for one run: whether it finished.
pub fn job_finish(conn: &mut Connection, run: Run) -> DbResult<bool> {
    Ok(job_finish_many(conn, &[run], Locks::Wait)? == 1)
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
pub fn job_fail(
    conn: &mut Connection,
    run: Run,
    failure: &Failure,
    locks: Locks,
) -> DbResult<bool> {
    let Failure { expected, reason } = *failure;
    conn.exec_drop(
        locks.update(
            "id = :id",
            "status = 'FAILED!', finished_at = NOW(6), error = :reason, \
             errors = CONCAT(COALESCE(errors, ''), :reason, CHAR(10))",
            "lease = :lease AND status = :expected",
        ),
        params! { "id" => run.id, "lease" => run.lease, expected, reason },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// A retry to record.
#[derive(Debug, Clone, Copy)]
pub struct Retry<'a> {
    /// The attempt's error.
    pub reason: &'a str,
    /// Not to be claimed again before this long from now.
    pub delay: Duration,
}

/// Puts a running job whose attempt failed with a retryable error back to
/// new, not to be claimed before the retry's delay from now, keeping the
/// error in `error` and as one more line in `errors`.
pub fn job_retry(conn: &mut Connection, run: Run, retry: &Retry, locks: Locks) -> DbResult<bool> {
    let reason = retry.reason;
    let delay_us = retry.delay.as_micros().min(u64::MAX as u128) as u64;
    conn.exec_drop(
        locks.update(
            "id = :id",
            "status = NULL, owner = NULL, queued_at = NULL, started_at = NULL, \
             deadline_at = NULL, run_at = NOW(6) + INTERVAL :delay_us MICROSECOND, \
             error = :reason, errors = CONCAT(COALESCE(errors, ''), :reason, CHAR(10))",
            "lease = :lease AND status = 'STARTED!'",
        ),
        params! { "id" => run.id, "lease" => run.lease, reason, delay_us },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Whose writes a cancellation defers to: a run of another replica that is
/// alive is that replica's to end (it may have finished the task and be
/// about to write `DONE!`, delayed by an outage or a lock).
#[derive(Debug, Clone, Copy)]
pub struct Canceller<'a> {
    /// The cancelling replica's name: its own runs it cancels itself.
    pub worker: &'a str,
    /// Whether it may take a stale heartbeat for a dead replica (only while
    /// its own heartbeat is steady: after an outage everyone's heartbeat is
    /// stale, and no one is dead for that). Without it, only a replica with
    /// no row in `workers` at all counts as dead.
    pub others: bool,
    /// A replica whose heartbeat is older than this is dead
    /// (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
}

/// Cancels a running job: `CANCELLED!`, with `cancelled_at` and
/// `finished_at` equal and the reason in `error`, if that run is still
/// `STARTED!` and its owner is this replica, or a dead one (see
/// [`Canceller::others`]).
pub fn job_cancel(
    conn: &mut Connection,
    run: Run,
    reason: &str,
    by: &Canceller,
    locks: Locks,
) -> DbResult<bool> {
    let worker = by.worker;
    conn.exec_drop(
        locks.update(
            "id = :id",
            "status = 'CANCELLED!', cancelled_at = NOW(6), finished_at = NOW(6), error = :reason",
            &match by.others {
                true => format!(
                    "lease = :lease AND status = 'STARTED!' AND (owner <=> :worker OR NOT EXISTS \
                     (SELECT 1 FROM workers WHERE workers.name = jobs.owner \
                     AND workers.heartbeat_at >= NOW(6) - INTERVAL {} MICROSECOND))",
                    by.dead_after.as_micros()
                ),
                false => "lease = :lease AND status = 'STARTED!' AND (owner <=> :worker OR NOT \
                          EXISTS (SELECT 1 FROM workers WHERE workers.name = jobs.owner))"
                    .into(),
            },
        ),
        params! { "id" => run.id, "lease" => run.lease, reason, worker },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Forgets a cancel requested after the job became final (it changes
/// nothing: not even a later re-run). Returns whether it did.
pub fn job_forget_late_cancel(conn: &mut Connection, id: u64) -> DbResult<bool> {
    conn.exec_drop(
        "UPDATE jobs SET cancel_requested_at = NULL WHERE id = :id \
         AND status IN ('DONE!', 'CANCELLED!', 'FAILED!') AND cancel_requested_at > finished_at",
        params! { id },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Cancels a job that never started (new or `QUEUED!`, under the lease the
/// canceller saw) and whose cancel was requested: `CANCELLED!`, "cancelled
/// on request". Any replica may: nothing runs it.
pub fn job_cancel_unstarted(conn: &mut Connection, run: Run, reason: &str) -> DbResult<bool> {
    conn.exec_drop(
        format!(
            "UPDATE jobs SET status = 'CANCELLED!', cancelled_at = NOW(6), finished_at = NOW(6), \
             error = :reason WHERE id = :id AND lease = :lease \
             AND (status IS NULL OR status = 'QUEUED!') AND {CANCEL_REQUESTED}"
        ),
        params! { "id" => run.id, "lease" => run.lease, reason },
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Where each of the given runs stands, read back after a write that
/// changed fewer rows than asked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunsState {
    /// In the status the write sets, under the run's lease: written.
    pub written: Vec<Run>,
    /// Still in the status the write expected, under the run's lease: the
    /// row was locked by another session; try again later.
    pub waiting: Vec<Run>,
    /// Still in the status the write expected, but a cancel is requested:
    /// not to be written (a start) or waited for.
    pub cancel_requested: Vec<Run>,
}

/// Sorts `runs` by where their rows stand: in `target` (written), still in
/// `expected` (waiting), or neither (the run no longer holds the row; left
/// out of both). A `target` of `None` is a row back to new (a retry).
pub fn job_runs_state(
    conn: &mut Connection,
    runs: &[Run],
    expected: &str,
    target: Option<&str>,
) -> DbResult<RunsState> {
    if runs.is_empty() {
        return Ok(RunsState::default());
    }
    type Read = (Run, Option<String>, bool);
    let rows: Vec<Read> = conn.query_rows(
        format!(
            "SELECT id, lease, status, {CANCEL_REQUESTED} AS requested FROM jobs WHERE id IN ({})",
            id_list(runs.iter().map(|r| r.id))
        ),
        |mut row| {
            let requested = col::<Option<i64>>(&mut row, "requested")?.unwrap_or(0) == 1;
            Ok((run_of(&mut row)?, col(&mut row, "status")?, requested))
        },
    )?;
    let mut state = RunsState::default();
    for run in runs {
        let Some((_, status, requested)) = rows.iter().find(|(r, _, _)| r == run) else {
            continue;
        };
        match status.as_deref() {
            // Only a start is not to be written under a cancel request: an
            // outcome of a run is (its task ran).
            s if s == Some(expected) && *requested && expected == status::QUEUED => {
                state.cancel_requested.push(*run)
            }
            s if s == Some(expected) => state.waiting.push(*run),
            s if s == target => state.written.push(*run),
            _ => {}
        }
    }
    Ok(state)
}

/// What a start under a queue's `max_running` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LimitedStart {
    /// Where the runs it tried stand (see [`job_runs_state`]).
    pub state: RunsState,
    /// Runs not started because the queue already runs `max_running` jobs.
    pub over_limit: Vec<Run>,
}

/// Starts runs of `queue`, a queue with a `max_running`, no more than it
/// allows: under the queue's row lock (held to the commit, so the starts of
/// every replica for this queue take turns), it counts the queue's running
/// jobs and starts at most the difference, in the order given. A queue
/// whose limit was lifted meanwhile starts them all.
///
/// `retried`: an earlier try may have landed before its reply was lost, so
/// runs already `STARTED!` under their lease count as started, not against
/// the limit.
pub fn job_start_limited(
    conn: &mut Connection,
    queue: &str,
    runs: &[Run],
    timeout: Duration,
    retried: bool,
) -> DbResult<LimitedStart> {
    conn.transaction(|c| {
        // Other replicas' starts of this queue hold its row only for a
        // statement or two: wait for them (the batch writers' sessions
        // otherwise give up on a lock at once).
        c.query_drop("SET SESSION innodb_lock_wait_timeout = 2")?;
        let result = start_limited_locked(c, queue, runs, timeout, retried);
        c.query_drop("SET SESSION innodb_lock_wait_timeout = 0")?;
        result
    })
}

fn start_limited_locked(
    c: &mut Connection,
    queue: &str,
    runs: &[Run],
    timeout: Duration,
    retried: bool,
) -> DbResult<LimitedStart> {
    let max: Vec<Option<u64>> = c.exec_rows(
        "SELECT max_running FROM queues WHERE name = :queue FOR UPDATE",
        params! { queue },
        super::row::first,
    )?;
    let started_before = if retried {
        job_runs_state(c, runs, status::QUEUED, Some(status::STARTED))?.written
    } else {
        Vec::new()
    };
    let left: Vec<Run> = runs
        .iter()
        .copied()
        .filter(|r| !started_before.contains(r))
        .collect();
    let runs = &left[..];
    let allowed = match max.into_iter().next().flatten() {
        Some(max) => {
            let running = super::claim::job_running_in(c, queue)?;
            max.saturating_sub(running).min(runs.len() as u64) as usize
        }
        None => runs.len(),
    };
    let (now, later) = runs.split_at(allowed);
    if !now.is_empty() {
        job_start_many(c, now, timeout, Locks::Skip)?;
    }
    let mut state = job_runs_state(c, now, status::QUEUED, Some(status::STARTED))?;
    state.written.extend(started_before);
    Ok(LimitedStart {
        state,
        over_limit: later.to_vec(),
    })
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

/// Which of the given runs are still `STARTED!`, and whether a cancel is
/// requested for each (primary key lookups).
pub fn find_lost_sql(runs: &[Run]) -> String {
    format!(
        "SELECT id, lease, {CANCEL_REQUESTED} AS requested FROM jobs WHERE id IN ({}) \
         AND status = 'STARTED!'",
        id_list(runs.iter().map(|r| r.id))
    )
}

/// What the watcher found of the runs it asked about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lost {
    /// No longer `STARTED!` under their lease: cancelled or rescued
    /// elsewhere.
    pub gone: Vec<Run>,
    /// Still `STARTED!`, with a cancel requested.
    pub requested: Vec<Run>,
}

/// Of the given runs, those this replica should interrupt: gone (cancelled
/// or rescued elsewhere), or with a cancel requested.
pub fn job_find_lost(conn: &mut Connection, runs: &[Run]) -> DbResult<Lost> {
    if runs.is_empty() {
        return Ok(Lost::default());
    }
    let live: Vec<(Run, bool)> = conn.query_rows(find_lost_sql(runs), |mut row| {
        let requested = col::<Option<i64>>(&mut row, "requested")?.unwrap_or(0) == 1;
        Ok((run_of(&mut row)?, requested))
    })?;
    Ok(Lost {
        gone: runs
            .iter()
            .copied()
            .filter(|r| !live.iter().any(|(l, _)| l == r))
            .collect(),
        requested: live
            .into_iter()
            .filter(|(_, q)| *q)
            .map(|(r, _)| r)
            .collect(),
    })
}

/// Deletes up to `limit` final rows that finished before `age` ago. Uses the
/// `final_at` index.
pub fn prune_sql(age: Duration, limit: usize) -> String {
    format!(
        "DELETE FROM jobs WHERE final_at < NOW(6) - INTERVAL {} MICROSECOND LIMIT {limit}",
        age.as_micros()
    )
}

/// How many final rows finished before `age` ago, counting at most `cap`
/// (read from the `final_at` index): what the pruner is about to delete.
pub fn job_count_prunable(conn: &mut Connection, age: Duration, cap: u64) -> DbResult<u64> {
    let n: Vec<u64> = conn.query_rows(
        format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE final_at < NOW(6) - INTERVAL {} \
             MICROSECOND LIMIT {cap}) AS old",
            age.as_micros()
        ),
        super::row::first,
    )?;
    Ok(n.into_iter().next().unwrap_or(0))
}

/// Deletes up to `limit` final rows older than `age`; returns how many.
pub fn job_prune(conn: &mut Connection, age: Duration, limit: usize) -> DbResult<u64> {
    conn.query_drop(prune_sql(age, limit))?;
    Ok(conn.affected_rows())
}
