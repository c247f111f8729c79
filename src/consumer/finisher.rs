//! The one finish path: every final or retry write of a run goes through
//! here.
//!
//! A run ends with an [`Outcome`]: `DONE!`, back to new for a retry,
//! `FAILED!` (from `STARTED!` for a task error, or from `QUEUED!` for input
//! found bad before it started) or `CANCELLED!`. [`write`] writes any mix of
//! them, each conditional on the run's lease and expected status: the
//! `DONE!`s of a batch in one statement, the rare others one by one. Two
//! callers use it:
//!
//! - the [`Finisher`] thread, which collects what the consumers send and
//!   writes it every [`FLUSH_INTERVAL`] or [`MAX_BATCH`] runs, whichever
//!   comes first; consumers do not wait for it. Database failures are
//!   retried until the write lands or the hard stop; a write whose reply
//!   was lost is checked against the rows before anything is counted as
//!   refused;
//! - the canceller consumers, which write one cancellation and wait for it
//!   ([`write_one`]).

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::db::HeldConn;
use crate::db::error::{DbError, DbResult};
use crate::db::jobs::{Failure, job_cancel, job_fail, job_finish_many, job_retry, jobs_in_status};
use crate::db::pool::Connection;
use crate::db::retry::{GaveUp, Retry};
use crate::job::{Run, status};
use crate::metrics::Counter;

/// Largest batch written at once.
pub const MAX_BATCH: usize = 500;

/// How long a finished run may wait for others to share its write.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// How a run ended, as it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The task succeeded: `DONE!`.
    Done,
    /// A retryable error with attempts left: back to new after `delay`.
    Retry {
        /// The attempt's error, as written.
        reason: String,
        /// How long before it may be claimed again.
        delay: Duration,
    },
    /// The task failed: `FAILED!` with the reason.
    Failed(String),
    /// Its input is bad, found before it started: `FAILED!` from `QUEUED!`.
    Rejected(String),
    /// It was interrupted (timeout, shutdown deadline): `CANCELLED!`.
    Cancelled(String),
}

impl Outcome {
    /// The status the row has once this outcome is written (NULL for a
    /// retry).
    fn target(&self) -> Option<&'static str> {
        match self {
            Outcome::Done => Some(status::DONE),
            Outcome::Retry { .. } => None,
            Outcome::Failed(_) | Outcome::Rejected(_) => Some(status::FAILED),
            Outcome::Cancelled(_) => Some(status::CANCELLED),
        }
    }

    /// The counter a landed write adds to.
    fn counter(&self) -> Counter {
        match self {
            Outcome::Done => Counter::Done,
            Outcome::Retry { .. } => Counter::Retried,
            Outcome::Failed(_) | Outcome::Rejected(_) => Counter::Failed,
            Outcome::Cancelled(_) => Counter::Cancelled,
        }
    }
}

/// One run's outcome, to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The run.
    pub run: Run,
    /// How it ended.
    pub outcome: Outcome,
}

/// Writes one outcome; whether it changed the row (`false`: the run no
/// longer holds it, or it already ended).
fn write_single(conn: &mut Connection, f: &Finish) -> DbResult<bool> {
    match &f.outcome {
        Outcome::Done => Ok(job_finish_many(conn, &[f.run])? == 1),
        Outcome::Retry { reason, delay } => job_retry(conn, f.run, reason, *delay),
        Outcome::Failed(reason) => job_fail(
            conn,
            f.run,
            &Failure {
                expected: status::STARTED,
                reason,
            },
        ),
        Outcome::Rejected(reason) => job_fail(
            conn,
            f.run,
            &Failure {
                expected: status::QUEUED,
                reason,
            },
        ),
        Outcome::Cancelled(reason) => job_cancel(conn, f.run, reason),
    }
}

/// Writes `finishes` (the `DONE!`s in one statement, the others one by
/// one); returns the runs whose write changed their row. With `retried`,
/// an earlier try may have landed before its reply was lost: runs that
/// changed nothing are read back, and those already in their outcome's
/// status count as written.
pub fn write(conn: &mut Connection, finishes: &[Finish], retried: bool) -> DbResult<Vec<Run>> {
    let done: Vec<Run> = finishes
        .iter()
        .filter(|f| f.outcome == Outcome::Done)
        .map(|f| f.run)
        .collect();
    let mut written = Vec::with_capacity(finishes.len());
    if !done.is_empty() {
        let changed = job_finish_many(conn, &done)?;
        if changed as usize == done.len() && !retried {
            written.extend(&done);
        } else {
            written.extend(jobs_in_status(conn, &done, status::DONE)?);
        }
    }
    for f in finishes.iter().filter(|f| f.outcome != Outcome::Done) {
        if write_single(conn, f)? || (retried && already_written(conn, f)?) {
            written.push(f.run);
        }
    }
    Ok(written)
}

/// Whether the row already holds `f`'s outcome under its lease (a retry
/// meeting its own earlier try, committed just before the reply was lost).
fn already_written(conn: &mut Connection, f: &Finish) -> DbResult<bool> {
    match f.outcome.target() {
        Some(target) => Ok(!jobs_in_status(conn, &[f.run], target)?.is_empty()),
        // Back to new: the lease no longer tells (the next claim moves it).
        None => Ok(false),
    }
}

/// Writes one outcome through `held`, retrying through outages until it
/// lands or `stop` closes. `Ok(false)`: the run no longer holds the row.
pub fn write_one(held: &mut HeldConn, f: &Finish, stop: &Receiver<()>) -> Result<bool, GaveUp> {
    let mut tries = 0;
    let db = held.db().clone();
    Retry::write("writing a job's outcome", db.health())
        .until_stopped(stop)
        .run(|| {
            tries += 1;
            held.run(|c| write(c, std::slice::from_ref(f), tries > 1))
                .map(|w| !w.is_empty())
        })
}

/// The consumers' handle on the finisher thread.
#[derive(Clone)]
pub struct FinisherHandle {
    tx: Sender<Finish>,
}

impl FinisherHandle {
    /// Queues `run`'s outcome to be written with the next batch.
    pub fn finish(&self, run: Run, outcome: Outcome) {
        // The finisher outlives the consumers (it stops when the last
        // handle is dropped), so this cannot fail while a consumer runs.
        let _ = self.tx.send(Finish { run, outcome });
    }
}

/// The finisher thread.
pub struct Finisher {
    held: HeldConn,
    rx: Receiver<Finish>,
}

impl Finisher {
    /// A finisher writing through `held`, and the handle consumers send to.
    pub fn new(held: HeldConn) -> (Finisher, FinisherHandle) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Finisher { held, rx }, FinisherHandle { tx })
    }

    /// Writes what arrives until every [`FinisherHandle`] is gone and all
    /// it received is written (or `hard_stop` closes).
    pub fn run(mut self, hard_stop: Receiver<()>) {
        while let Ok(first) = self.rx.recv() {
            // Let the batch gather for the flush interval without waking for
            // each run that joins it (a wake-up per run costs more CPU than
            // the write), unless a full batch is already waiting.
            if self.rx.len() < MAX_BATCH - 1 {
                std::thread::sleep(FLUSH_INTERVAL);
            }
            let mut batch = vec![first];
            batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
            self.flush(&batch, &hard_stop, false);
        }
    }

    /// Writes one batch; if the server refuses it, each run is tried alone,
    /// so one bad row does not hold up the rest. `retried`: part of it may
    /// have landed already.
    fn flush(&mut self, batch: &[Finish], stop: &Receiver<()>, retried: bool) {
        let mut tries = 0;
        let db = self.held.db().clone();
        let written = Retry::write("finishing jobs", db.health())
            .until_stopped(stop)
            .run(|| {
                tries += 1;
                self.held.run(|c| write(c, batch, retried || tries > 1))
            });
        match written {
            Ok(written) => self.count(batch, &written),
            Err(GaveUp::Refused(_)) if batch.len() > 1 => {
                for f in batch {
                    self.flush(std::slice::from_ref(f), stop, true);
                }
            }
            Err(GaveUp::Refused(e)) => self.refused(&batch[0], &e),
            Err(GaveUp::Stopped | GaveUp::TimedOut(_)) => log::warn!(
                "gave up writing the outcome of {} jobs at shutdown; the canceller will cancel them",
                batch.len()
            ),
        }
    }

    fn count(&self, batch: &[Finish], written: &[Run]) {
        let metrics = self.held.db().metrics();
        for f in batch.iter().filter(|f| written.contains(&f.run)) {
            metrics.add(f.outcome.counter(), 1);
        }
        let refused = batch.len() - written.len();
        if refused > 0 {
            metrics.add(Counter::Lost, refused as u64);
            log::info!(
                "{refused} finished jobs were no longer held by this replica (cancelled or \
                 rescued meanwhile): their outcome was refused"
            );
        }
    }

    fn refused(&self, f: &Finish, e: &DbError) {
        self.held.db().metrics().add(Counter::Lost, 1);
        log::warn!(
            "{}: the database refused its outcome ({e}); the canceller will cancel it",
            f.run
        );
    }
}
