//! Batched writes: the two per-job writes of the hot path, grouped.
//!
//! Every job needs `STARTED!` before its task begins and `DONE!` after. Sent
//! one by one they cost two statements and two commits per job, which caps
//! the service far below what the database can do. Instead:
//!
//! - the [`Starter`] thread takes the start requests of all consumers that
//!   are waiting, writes them in one `UPDATE` (one commit), and answers each
//!   consumer: a consumer still waits for its own start to be durable before
//!   its task begins, so a job starts at most once;
//! - the [`Completer`] thread collects finished jobs and writes them `DONE!`
//!   in one `UPDATE` every [`FLUSH_INTERVAL`] or [`MAX_BATCH`] jobs, whichever
//!   comes first; consumers do not wait for it.
//!
//! Both writes stay conditional on each job's lease and expected status, so a
//! job that was cancelled or rescued meanwhile is left alone (and counted as
//! a refused write). Rare outcomes (failures, retries, cancellations at
//! shutdown) are still written one by one by the consumer.
//!
//! Database failures are retried with backoff until they land or, for
//! starts, until the service stops taking jobs, and for completions until
//! the hard stop. A write whose reply was lost is checked against the rows
//! before anything is counted as refused.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, select};

use crate::consumer::{closed, write_until};
use crate::db::jobs::{Job, job_fail, job_finish_many, job_start_many, jobs_in_status, status};
use crate::db::{DbError, PooledConn};
use crate::metrics::Metrics;
use crate::outage::Backoff;
use crate::service::Shared;

/// Largest batch written by one statement.
pub const MAX_BATCH: usize = 500;

/// How long a finished job may wait for others to share its `DONE!` write.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// What became of a start request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// `STARTED!` is committed: run the task.
    Yes,
    /// This replica no longer holds the job (released, rescued, cancelled).
    Lost,
    /// The server refused to start this row (a value out of range, say):
    /// it is now `FAILED!` with the reason.
    Failed(String),
}

/// A consumer's request to start a job, with where to send the answer.
pub struct StartRequest {
    job: (u64, u64),
    reply: Sender<Option<Started>>,
}

/// The consumers' handle on the starter thread.
#[derive(Clone)]
pub struct Starter {
    tx: Sender<StartRequest>,
}

impl Starter {
    /// A starter handle and the receiving end for [`run_starter`].
    pub fn new() -> (Starter, Receiver<StartRequest>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Starter { tx }, rx)
    }

    /// Starts `job` (marks it `STARTED!`, committed) and waits for the
    /// answer; `None`: the service stopped taking jobs first.
    pub fn start(&self, job: &Job) -> Option<Started> {
        let (reply, answer) = bounded(1);
        self.tx
            .send(StartRequest {
                job: (job.id, job.lease),
                reply,
            })
            .ok()?;
        answer.recv().ok().flatten()
    }
}

/// The consumers' handle on the completer thread.
#[derive(Clone)]
pub struct Completer {
    tx: Sender<(u64, u64)>,
}

impl Completer {
    /// A completer handle and the receiving end for [`run_completer`].
    pub fn new() -> (Completer, Receiver<(u64, u64)>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Completer { tx }, rx)
    }

    /// Queues `job` to be written `DONE!` with the next batch.
    pub fn done(&self, job: &Job) {
        // The completer outlives the consumers (it stops when the last
        // handle is dropped), so this cannot fail while a consumer runs.
        let _ = self.tx.send((job.id, job.lease));
    }
}

/// The connection a batch thread holds, checked out anew if it has none.
fn held_conn<'a>(
    shared: &Shared,
    held: &'a mut Option<PooledConn>,
) -> Result<&'a mut PooledConn, DbError> {
    if held.is_none() {
        *held = Some(shared.db.conn()?);
    }
    Ok(held.as_mut().expect("just set"))
}

/// The starter thread: until every [`Starter`] handle is gone.
pub fn run_starter(shared: &Shared, rx: Receiver<StartRequest>, stop_taking: Receiver<()>) {
    let mut held = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        if closed(&stop_taking) {
            for r in batch {
                let _ = r.reply.send(None);
            }
            continue;
        }
        start_batch(shared, &mut held, &stop_taking, batch);
    }
}

/// Starts one batch and answers its requests. If the server refuses the
/// statement, each job is tried alone, so one bad row fails by itself
/// instead of holding up every start.
fn start_batch(
    shared: &Shared,
    held: &mut Option<PooledConn>,
    stop: &Receiver<()>,
    batch: Vec<StartRequest>,
) {
    let jobs: Vec<(u64, u64)> = batch.iter().map(|r| r.job).collect();
    let timeout = shared.config.job_timeout;
    let written = write_batch(
        shared,
        held,
        "starting jobs",
        stop,
        &jobs,
        "STARTED!",
        |c| job_start_many(c, &jobs, timeout),
    );
    match written {
        Batch::Written(started) => {
            Metrics::add(&shared.metrics.started, started.len() as u64);
            Metrics::add(&shared.metrics.start_batches, 1);
            for r in batch {
                let answer = if started.contains(&r.job.0) {
                    Started::Yes
                } else {
                    Started::Lost
                };
                let _ = r.reply.send(Some(answer));
            }
        }
        Batch::Stopped => {
            for r in batch {
                let _ = r.reply.send(None);
            }
        }
        Batch::Refused(_) if batch.len() > 1 => {
            for r in batch {
                start_batch(shared, held, stop, vec![r]);
            }
        }
        Batch::Refused(e) => {
            let (id, lease) = jobs[0];
            let reason = format!("cannot start: the database refused it ({e})");
            log::warn!("job {id} failed: {reason}");
            let failed = write_until(shared, "failing a job", stop, |c| {
                job_fail(c, id, lease, status::QUEUED, &reason)
            });
            if failed == Some(true) {
                Metrics::add(&shared.metrics.failed, 1);
            }
            let answer = match failed {
                Some(true) => Some(Started::Failed(reason)),
                Some(false) => Some(Started::Lost),
                None => None,
            };
            for r in batch {
                let _ = r.reply.send(answer.clone());
            }
        }
    }
}

/// The completer thread: until every [`Completer`] handle is gone and all
/// it received is written (or `hard_stop` closes).
pub fn run_completer(shared: &Shared, rx: Receiver<(u64, u64)>, hard_stop: Receiver<()>) {
    let mut held = None;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let flush_at = Instant::now() + FLUSH_INTERVAL;
        while jobs.len() < MAX_BATCH {
            match rx.recv_deadline(flush_at) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        finish_batch(shared, &mut held, &hard_stop, &jobs);
    }
}

/// Writes one batch `DONE!`; if the server refuses the statement, each job
/// is tried alone.
fn finish_batch(
    shared: &Shared,
    held: &mut Option<PooledConn>,
    stop: &Receiver<()>,
    jobs: &[(u64, u64)],
) {
    let done = write_batch(shared, held, "finishing jobs", stop, jobs, "DONE!", |c| {
        job_finish_many(c, jobs)
    });
    match done {
        Batch::Refused(_) if jobs.len() > 1 => {
            for job in jobs {
                finish_batch(shared, held, stop, std::slice::from_ref(job));
            }
        }
        Batch::Refused(e) => {
            Metrics::add(&shared.metrics.lost, 1);
            log::warn!(
                "job {}: the database refused its DONE! ({e}); the canceller will cancel it",
                jobs[0].0
            );
        }
        Batch::Written(done) => {
            Metrics::add(&shared.metrics.done, done.len() as u64);
            let refused = jobs.len() - done.len();
            if refused > 0 {
                Metrics::add(&shared.metrics.lost, refused as u64);
                log::info!(
                    "{refused} finished jobs were no longer held by this replica (cancelled or rescued \
                         meanwhile): their DONE! was refused"
                );
            }
        }
        Batch::Stopped => log::warn!(
            "gave up writing DONE! for {} jobs at shutdown; the canceller will cancel them",
            jobs.len()
        ),
    }
}

/// How a batch write ended.
enum Batch {
    /// Landed: the ids now in the target status under their lease.
    Written(Vec<u64>),
    /// The server refused the statement itself (not a lost connection, a
    /// lock wait or a deadlock, which are retried).
    Refused(DbError),
    /// `stop` closed while the database was away.
    Stopped,
}

/// Errors the server answers with that a retry can cure.
fn transient(e: &DbError) -> bool {
    match e {
        // Lock wait timeout, deadlock.
        DbError::Mysql(mysql::Error::MySqlError(m)) => matches!(m.code, 1205 | 1213),
        other => !other.is_server_error(),
    }
}

/// Writes one batch until it lands, retrying through failures until `stop`
/// closes (`None`). Returns the ids now in `target` status under their
/// lease. When fewer rows changed than were asked, the rows are read back:
/// after a lost reply, the earlier try may have landed.
///
/// The thread keeps its connection in `held` between batches (a checkout
/// pings the server: one round trip per batch saved) and lets it go after a
/// failure, so the next try gets a fresh, checked one.
fn write_batch(
    shared: &Shared,
    held: &mut Option<PooledConn>,
    what: &str,
    stop: &Receiver<()>,
    jobs: &[(u64, u64)],
    target: &str,
    mut write: impl FnMut(&mut PooledConn) -> Result<u64, DbError>,
) -> Batch {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut tries = 0;
    loop {
        tries += 1;
        let result = held_conn(shared, held).and_then(|c| {
            let changed = write(c)?;
            if changed as usize == jobs.len() && tries == 1 {
                return Ok(jobs.iter().map(|j| j.0).collect());
            }
            jobs_in_status(c, jobs, target)
        });
        match result {
            Ok(ids) => {
                shared.db.health().ok();
                return Batch::Written(ids);
            }
            Err(e) if !transient(&e) => return Batch::Refused(e),
            Err(e) => {
                *held = None;
                shared.db.health().failed(what, &e);
                Metrics::add(&shared.metrics.db_retries, 1);
                select! {
                    recv(stop) -> _ => return Batch::Stopped,
                    default(backoff.next_delay()) => {}
                }
            }
        }
    }
}
