//! The claim: new rows taken by one replica, in one transaction.
//!
//! `SELECT ... FOR UPDATE SKIP LOCKED` finds rows that are new (status NULL)
//! and due, skipping rows another replica is claiming at that moment; one
//! `UPDATE` marks them `QUEUED!` with `queued_at`, this replica as owner and
//! a new lease (the fencing token every later write of the run names).

use mysql::{Row, params};

use super::conn::Connection;
use super::error::{DbError, DbResult};
use super::pool::id_list;
use super::row::{col, first};
use crate::job::{Job, Run};

const CLAIM_COLUMNS: &str = "id, object_id, sleep, lease, kind, queue, payload, attempts, \
     max_attempts, timeout, priority";

/// Where a claim continues from: the `(priority, id)` of the last row the
/// previous full claim took from a source.
pub type After = Option<(i32, u64)>;

/// One place a claim takes jobs from: a queue this replica serves and a kind
/// it runs, at most `limit` jobs, which is the queue's cap: a claim takes at
/// most that many from the queue's sources together. Names are validated (letters, digits and
/// `. _ - : @`), so they are written into the statement as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The queue.
    pub queue: String,
    /// The kind.
    pub kind: String,
    /// At most this many jobs from it.
    pub limit: usize,
    /// Continue after this `(priority, id)` instead of from the top.
    pub after: After,
}

impl Source {
    /// `limit` jobs of `kind` from `queue`, from the top.
    pub fn new(queue: &str, kind: &str, limit: usize) -> Source {
        Source {
            queue: queue.to_string(),
            kind: kind.to_string(),
            limit,
            after: None,
        }
    }

    /// The conditions every claim of this source has: new, of its queue and
    /// kind, no cancel requested (since the last run ended), the queue not
    /// paused. An equality prefix of the `(is_new, queue, kind, run_at,
    /// priority DESC, id)` index: rows of other queues and kinds are never
    /// read.
    fn conditions(&self) -> String {
        format!(
            "is_new = 1 AND queue = '{q}' AND kind = '{k}' \
             AND (cancel_requested_at IS NULL OR cancel_requested_at <= finished_at) \
             AND NOT EXISTS (SELECT 1 FROM queues WHERE queues.name = '{q}' AND queues.paused = 1)",
            q = self.queue,
            k = self.kind
        )
    }

    /// New rows due now (`run_at` NULL), highest priority first, then
    /// oldest, skipping rows another replica is claiming right now; rows
    /// scheduled for later are never read.
    fn due_now_sql(&self, i: usize) -> String {
        // Continuing after the last claim's (priority, id) skips the index
        // entries of rows claimed moments ago, which purge has not removed
        // yet: without it every claim rereads them, and gets slower as work
        // flows. The index is named because, given the OR, the optimizer
        // prefers to read the whole prefix and filter it (measured 10x
        // slower on 20,000 new rows) over seeking to where it left off.
        let after = match self.after {
            Some((p, id)) => format!(" AND (priority < {p} OR (priority = {p} AND id > {id}))"),
            None => String::new(),
        };
        format!(
            "(SELECT {CLAIM_COLUMNS}, {i} AS source FROM jobs FORCE INDEX (jobs_new_routed) \
             WHERE {} AND run_at IS NULL{after} \
             ORDER BY priority DESC, id LIMIT {} FOR UPDATE SKIP LOCKED)",
            self.conditions(),
            self.limit
        )
    }

    /// Scheduled rows (and retries) that have fallen due, in the order they
    /// fell due: a range of the same index that ends at now.
    fn scheduled_sql(&self, i: usize) -> String {
        format!(
            "(SELECT {CLAIM_COLUMNS}, {i} AS source FROM jobs FORCE INDEX (jobs_new_routed) \
             WHERE {} AND run_at <= NOW(6) \
             ORDER BY run_at, priority DESC, id LIMIT {} FOR UPDATE SKIP LOCKED)",
            self.conditions(),
            self.limit
        )
    }
}

/// The claim's first query: each source's rows due now (see
/// [`Source::due_now_sql`]), one `UNION ALL`.
pub fn claim_select_sql(sources: &[Source]) -> String {
    union(sources.iter().enumerate().map(|(i, s)| s.due_now_sql(i)))
}

/// The claim's second query: each source's scheduled rows that fell due.
pub fn claim_scheduled_sql(sources: &[Source]) -> String {
    union(sources.iter().enumerate().map(|(i, s)| s.scheduled_sql(i)))
}

fn union(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(" UNION ALL ")
}

/// Whether any new row of these sources is due, by a plain read (no
/// transaction, no locks): an idle replica asks this instead of opening a
/// claim transaction on every tick. Uses the claim index.
pub fn claimable_sql(sources: &[Source]) -> String {
    let parts = sources.iter().flat_map(|s| {
        let c = s.conditions();
        [
            format!("(SELECT 1 FROM jobs WHERE {c} AND run_at IS NULL LIMIT 1)"),
            format!("(SELECT 1 FROM jobs WHERE {c} AND run_at <= NOW(6) LIMIT 1)"),
        ]
    });
    format!("{} LIMIT 1", union(parts))
}

/// See [`claimable_sql`].
pub fn job_any_claimable(conn: &mut Connection, sources: &[Source]) -> DbResult<bool> {
    if sources.is_empty() {
        return Ok(false);
    }
    let found: Vec<u8> = conn.query_rows(claimable_sql(sources), first)?;
    Ok(!found.is_empty())
}

/// The running jobs, read from the `held_by` index: held, and `STARTED!`
/// (`FROM {RUNNING_JOBS} AND ...`). The queries name the index: held rows
/// are few in a real table, but the optimizer cannot know they stay so.
pub const RUNNING_JOBS: &str =
    "jobs FORCE INDEX (jobs_held_by) WHERE held_by IS NOT NULL AND status = 'STARTED!'";

/// How many jobs of `queue` are `STARTED!` now, on any replica (the
/// held jobs of every queue, from the `held_by` index).
pub fn job_running_in(conn: &mut Connection, queue: &str) -> DbResult<u64> {
    let n: Vec<u64> = conn.exec_rows(
        format!("SELECT COUNT(*) FROM {RUNNING_JOBS} AND queue = :queue"),
        params! { queue },
        first,
    )?;
    Ok(n.into_iter().next().unwrap_or(0))
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

/// What to claim.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// The claiming replica's name (a validated worker name).
    pub owner: &'a str,
    /// Where from, and at most how many from each.
    pub sources: &'a [Source],
    /// At most this many in all.
    pub limit: usize,
    /// Continuing a full claim: scheduled rows are looked for only if the
    /// due-now rows run short.
    pub continued: bool,
}

/// A claim that did not land.
#[derive(Debug)]
pub struct ClaimFailed {
    /// What failed.
    pub error: DbError,
    /// The jobs of a claim whose commit failed: it may have landed, so they
    /// must be put back ([`job_release_claims`]) before the next claim.
    pub in_doubt: Vec<Job>,
}

impl From<DbError> for ClaimFailed {
    fn from(error: DbError) -> ClaimFailed {
        ClaimFailed {
            error,
            in_doubt: Vec::new(),
        }
    }
}

/// Claims up to `claim.limit` new jobs for `claim.owner`: selects them with
/// `FOR UPDATE SKIP LOCKED`, marks them `QUEUED!` with `queued_at`, the
/// owner and a new lease, and commits. Returns the claimed jobs, in claim
/// order (highest priority first, then oldest).
pub fn job_claim_many(conn: &mut Connection, claim: &Claim) -> Result<Vec<Job>, ClaimFailed> {
    if claim.limit == 0 || claim.sources.iter().all(|s| s.limit == 0) {
        return Ok(Vec::new());
    }
    // Text protocol: a prepared statement would be prepared anew for every
    // batch size. The owner is a validated worker name (no quoting needed);
    // refuse anything else rather than build SQL from it.
    if !crate::config::is_worker_name(claim.owner) {
        return Err(DbError::Schema(format!("invalid worker name {:?}", claim.owner)).into());
    }
    conn.query_drop("START TRANSACTION")?;
    let jobs = match claim_in_transaction(conn, claim) {
        Ok(jobs) => jobs,
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK");
            return Err(e.into());
        }
    };
    match conn.query_drop("COMMIT") {
        Ok(()) => Ok(jobs),
        // Rolled back whole (on Galera: another node's claim of some of
        // these rows was certified first): nothing landed, nothing to
        // settle. Releasing these runs would even be wrong: the rows may
        // now be the other replica's claim, under the very lease this one
        // computed.
        Err(error) if error.is_conflict() => Err(error.into()),
        Err(error) => Err(ClaimFailed {
            error,
            in_doubt: jobs,
        }),
    }
}

/// The reads and the update of a claim, inside its transaction.
fn claim_in_transaction(conn: &mut Connection, claim: &Claim) -> DbResult<Vec<Job>> {
    let sources: Vec<Source> = claim
        .sources
        .iter()
        .filter(|s| s.limit > 0)
        .cloned()
        .collect();
    let mut raw: Vec<Row> = conn.query_rows(claim_select_sql(&sources), Ok)?;
    // Scheduled rows that fell due are looked for on every claim from the
    // top (each tick) and whenever the due-now rows run short; a claim that
    // continues a full one skips them, so the hot path costs one read.
    if !claim.continued || raw.len() < claim.limit {
        let unscheduled: Vec<Source> = sources
            .iter()
            .map(|s| Source {
                after: None,
                ..s.clone()
            })
            .collect();
        raw.extend(conn.query_rows(claim_scheduled_sql(&unscheduled), Ok)?);
    }
    let mut jobs = read_claimed(conn, raw, &sources)?;
    // The queries' candidates, in claim order, each queue's at most its
    // sources' limit (the queue's cap, shared by its kinds). The ones left
    // over stay new (their locks go at commit).
    jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    let mut taken: Vec<(&str, usize)> = Vec::new();
    jobs.retain(|j| {
        let Some(source) = sources.iter().find(|s| s.queue == j.queue) else {
            return false;
        };
        let i = match taken.iter().position(|(q, _)| *q == j.queue) {
            Some(i) => i,
            None => {
                taken.push((source.queue.as_str(), 0));
                taken.len() - 1
            }
        };
        if taken[i].1 < source.limit {
            taken[i].1 += 1;
            true
        } else {
            false
        }
    });
    jobs.truncate(claim.limit);
    if jobs.is_empty() {
        return Ok(jobs);
    }
    conn.query_drop(format!(
        "UPDATE jobs SET status = 'QUEUED!', queued_at = NOW(6), owner = '{}', \
         lease = {NEXT_LEASE_SQL} WHERE id IN ({}) AND status IS NULL",
        claim.owner,
        id_list(jobs.iter().map(|j| j.id))
    ))?;
    for job in &mut jobs {
        job.lease = next_lease(job.lease);
    }
    Ok(jobs)
}

/// The claimed rows as jobs, each with the queue and kind names of the
/// source that found it (the column's collation may have matched `Mail`
/// to `mail`: the job then runs as the registered kind, from the queue this
/// replica serves). A row whose columns cannot be read as the service's
/// types (a legacy table's unsigned `object_id` past `i64`, say) fails, in
/// the same transaction, instead of stopping the claims.
fn read_claimed(conn: &mut Connection, raw: Vec<Row>, sources: &[Source]) -> DbResult<Vec<Job>> {
    let mut jobs = Vec::with_capacity(raw.len());
    let mut unreadable: Vec<u64> = Vec::new();
    for mut row in raw {
        let id: Option<u64> = row.get_opt::<u64, _>("id").and_then(Result::ok);
        let source = col::<usize>(&mut row, "source")
            .ok()
            .and_then(|i| sources.get(i));
        if id.is_some_and(|id| jobs.iter().any(|j: &Job| j.id == id)) {
            // Found by two sources (kinds registered as `mail` and `Mail`,
            // equal in the column's collation): claimed once.
            continue;
        }
        match (claimed_job(&mut row), source) {
            (Ok(mut job), Some(source)) => {
                job.queue.clone_from(&source.queue);
                job.kind.clone_from(&source.kind);
                jobs.push(job);
            }
            _ => unreadable.extend(id),
        }
    }
    if !unreadable.is_empty() {
        conn.query_drop(format!(
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
    Ok(jobs)
}

fn claimed_job(row: &mut Row) -> DbResult<Job> {
    Ok(Job {
        id: col(row, "id")?,
        lease: col(row, "lease")?,
        object_id: col(row, "object_id")?,
        sleep: col(row, "sleep")?,
        kind: col(row, "kind")?,
        queue: col(row, "queue")?,
        payload: col(row, "payload")?,
        attempts: col(row, "attempts")?,
        max_attempts: col(row, "max_attempts")?,
        timeout_ms: col(row, "timeout")?,
        priority: col(row, "priority")?,
    })
}

/// Puts claims of `owner` back to new if they are still `QUEUED!` under
/// their lease and owner: settles a claim whose commit failed. The owner
/// matters there: a claim that did not land left the row's lease as it was,
/// so another replica's claim of the row since computed the same lease.
/// Returns how many went back.
pub fn job_release_claims(conn: &mut Connection, owner: &str, claims: &[Run]) -> DbResult<u64> {
    let mut released = 0;
    for run in claims {
        conn.exec_drop(
            "UPDATE jobs SET status = NULL, queued_at = NULL, owner = NULL \
             WHERE id = :id AND lease = :lease AND status = 'QUEUED!' AND owner = :owner",
            params! { "id" => run.id, "lease" => run.lease, owner },
        )?;
        released += conn.affected_rows();
    }
    Ok(released)
}
