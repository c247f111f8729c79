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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, never, select};

use crate::cancel::Registry;
use crate::config::Config;
use crate::db::Connection;
use crate::db::HeldConn;
use crate::db::claim::job_release_claims;
use crate::db::error::{DbError, DbResult};
use crate::db::jobs::{
    self, Canceller, Failure, Locks, job_cancel, job_cancel_unstarted, job_fail, job_finish_many,
    job_retry, job_runs_state,
};
use crate::db::retry::{Backoff, GaveUp, Retry};
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
    /// It was interrupted (timeout, shutdown deadline, a cancel request):
    /// `CANCELLED!`.
    Cancelled(String),
    /// Never started, put back to new for any replica to claim (its queue
    /// was at its `max_running`).
    Released,
    /// Never started (new or `QUEUED!`), and a cancel was requested:
    /// `CANCELLED!` with the reason.
    CancelledUnstarted(String),
}

impl Outcome {
    /// The status the run's row must be in for this outcome to be written.
    fn expected(&self) -> &'static str {
        match self {
            Outcome::Rejected(_) | Outcome::Released | Outcome::CancelledUnstarted(_) => {
                status::QUEUED
            }
            _ => status::STARTED,
        }
    }

    /// The status the row has once this outcome is written (NULL for a
    /// retry).
    fn target(&self) -> Option<&'static str> {
        match self {
            Outcome::Done => Some(status::DONE),
            Outcome::Retry { .. } | Outcome::Released => None,
            Outcome::Failed(_) | Outcome::Rejected(_) => Some(status::FAILED),
            Outcome::Cancelled(_) | Outcome::CancelledUnstarted(_) => Some(status::CANCELLED),
        }
    }

    /// The counter a landed write adds to.
    fn counter(&self) -> Counter {
        match self {
            Outcome::Done => Counter::Done,
            Outcome::Retry { .. } => Counter::Retried,
            Outcome::Failed(_) | Outcome::Rejected(_) => Counter::Failed,
            Outcome::Cancelled(_) | Outcome::CancelledUnstarted(_) => Counter::Cancelled,
            Outcome::Released => Counter::Released,
        }
    }
}

/// Who writes: this replica's name and when others count as dead, for a
/// cancellation's condition (see [`crate::db::jobs::job_cancel`]).
#[derive(Debug, Clone)]
pub struct Scope {
    /// This replica's name (`WORKER_NAME`).
    pub worker: String,
    /// Whether a stale heartbeat counts as a dead replica, whose runs a
    /// cancellation may end (the canceller, while its own heartbeat is
    /// steady); otherwise only a replica without a `workers` row is dead.
    pub others: bool,
    /// A replica silent this long is dead (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
}

impl From<&Config> for Scope {
    /// The finisher's scope: it cancels only its own runs (at shutdown).
    fn from(c: &Config) -> Self {
        Scope {
            worker: c.worker_name.clone(),
            others: false,
            dead_after: c.worker_dead_after,
        }
    }
}

impl Scope {
    fn canceller(&self) -> Canceller<'_> {
        Canceller {
            worker: &self.worker,
            others: self.others,
            dead_after: self.dead_after,
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
/// longer holds it, it already ended, or, skipping locks, its row is
/// locked).
fn write_single(conn: &mut Connection, scope: &Scope, f: &Finish, locks: Locks) -> DbResult<bool> {
    let failure = |expected| Failure {
        expected,
        reason: match &f.outcome {
            Outcome::Failed(r) | Outcome::Rejected(r) => r,
            _ => "",
        },
    };
    match &f.outcome {
        Outcome::Done => Ok(job_finish_many(conn, &[f.run], locks)? == 1),
        Outcome::Retry { reason, delay } => {
            let retry = jobs::Retry {
                reason,
                delay: *delay,
            };
            job_retry(conn, f.run, &retry, locks)
        }
        Outcome::Failed(_) => job_fail(conn, f.run, &failure(status::STARTED), locks),
        Outcome::Rejected(_) => job_fail(conn, f.run, &failure(status::QUEUED), locks),
        Outcome::Cancelled(reason) => job_cancel(conn, f.run, reason, &scope.canceller(), locks),
        // Rare: no locks skipped.
        Outcome::Released => Ok(job_release_claims(conn, &scope.worker, &[f.run])? == 1),
        Outcome::CancelledUnstarted(reason) => job_cancel_unstarted(conn, f.run, reason),
    }
}

/// Runs a write, plainly first; if that met a row another session holds
/// locked, again skipping locked rows. Returns what the write returned and
/// whether locked rows were skipped.
fn plain_then_skipping<T>(mut write: impl FnMut(Locks) -> DbResult<T>) -> DbResult<(T, bool)> {
    match write(Locks::Wait) {
        Err(e) if Locks::met_a_lock(&e) => Ok((write(Locks::Skip)?, true)),
        other => Ok((other?, false)),
    }
}

/// What a write did to each run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// The row now holds the run's outcome.
    pub landed: Vec<Run>,
    /// The row was locked by another session: not written, try again later.
    pub waiting: Vec<Run>,
}

/// Writes `finishes` (the `DONE!`s in one statement, the others one by
/// one); runs that are neither landed nor waiting no longer hold their row.
/// A write that changed fewer rows than asked is read back: the rows may be
/// locked by another session (waiting), or, with `retried`, an earlier try
/// may have landed before its reply was lost.
pub fn write(
    conn: &mut Connection,
    scope: &Scope,
    finishes: &[Finish],
    retried: bool,
) -> DbResult<Written> {
    let done: Vec<Run> = finishes
        .iter()
        .filter(|f| f.outcome == Outcome::Done)
        .map(|f| f.run)
        .collect();
    let mut written = Written::default();
    if !done.is_empty() {
        let (changed, skipped) = plain_then_skipping(|locks| job_finish_many(conn, &done, locks))?;
        if changed as usize == done.len() && !retried && !skipped {
            written.landed.extend(&done);
        } else {
            let state = job_runs_state(conn, &done, status::STARTED, Some(status::DONE))?;
            written.landed.extend(state.written);
            written.waiting.extend(state.waiting);
        }
    }
    for f in finishes.iter().filter(|f| f.outcome != Outcome::Done) {
        if plain_then_skipping(|locks| write_single(conn, scope, f, locks))?.0 {
            written.landed.push(f.run);
            continue;
        }
        let state = job_runs_state(conn, &[f.run], f.outcome.expected(), f.outcome.target())?;
        if retried {
            written.landed.extend(state.written);
        }
        written.waiting.extend(state.waiting);
    }
    Ok(written)
}

/// Writes one outcome through `held`, retrying through outages and while
/// its row is locked, until it lands or `stop` closes. `Ok(false)`: the run
/// no longer holds the row.
pub fn write_one(
    held: &mut HeldConn,
    scope: &Scope,
    f: &Finish,
    stop: &Receiver<()>,
) -> Result<bool, GaveUp> {
    let mut tries = 0;
    let mut locked = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let db = held.db().clone();
    loop {
        let written = Retry::write("writing a job's outcome", db.health())
            .until_stopped(stop)
            .run(|| {
                tries += 1;
                held.run(|c| write(c, scope, std::slice::from_ref(f), tries > 1))
            })?;
        if written.waiting.is_empty() {
            return Ok(!written.landed.is_empty());
        }
        select! {
            recv(stop) -> _ => return Err(GaveUp::Stopped),
            default(locked.next_delay()) => {}
        }
    }
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
    scope: Scope,
    held: HeldConn,
    registry: Arc<Registry>,
    rx: Receiver<Finish>,
    /// Outcomes whose row was locked by another session: tried again when
    /// their time comes.
    waiting: Vec<Waiting>,
    /// Each locked run's growing delay, until its outcome lands.
    locked: HashMap<Run, Backoff>,
}

/// An outcome waiting for its row to be free.
struct Waiting {
    finish: Finish,
    next_try: Instant,
}

impl Finisher {
    /// A finisher writing through `held` (forgetting each run in
    /// `registry` once its outcome is settled), and the handle consumers
    /// send to.
    pub fn new(
        scope: Scope,
        held: HeldConn,
        registry: Arc<Registry>,
    ) -> (Finisher, FinisherHandle) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let finisher = Finisher {
            scope,
            held,
            registry,
            rx,
            waiting: Vec::new(),
            locked: HashMap::new(),
        };
        (finisher, FinisherHandle { tx })
    }

    /// Writes what arrives until every [`FinisherHandle`] is gone and all
    /// it received is written, or `hard_stop` closes (then what is left is
    /// tried once more and given up).
    pub fn run(mut self, hard_stop: Receiver<()>) {
        let closed = never();
        let mut open = true;
        loop {
            if !open && self.waiting.is_empty() {
                return;
            }
            let due = self.waiting.iter().map(|w| w.next_try).min();
            let timer = due.map(at).unwrap_or_else(never);
            let rx = if open { &self.rx } else { &closed };
            select! {
                recv(rx) -> msg => match msg {
                    Ok(first) => {
                        let batch = self.gather(first);
                        self.flush(batch, &hard_stop, false);
                    }
                    Err(_) => open = false,
                },
                recv(timer) -> _ => {
                    let batch = self.take_due(Instant::now());
                    self.flush(batch, &hard_stop, true);
                }
                recv(hard_stop) -> _ => return self.last_flush(&hard_stop),
            }
        }
    }

    /// At the hard stop: what is queued and what waits is tried once more,
    /// without retries.
    fn last_flush(&mut self, stop: &Receiver<()>) {
        let mut batch: Vec<Finish> = self.rx.try_iter().collect();
        batch.extend(self.waiting.drain(..).map(|w| w.finish));
        self.flush(batch, stop, true);
        if !self.waiting.is_empty() {
            log::warn!(
                "gave up writing the outcome of {} jobs whose rows another session keeps \
                 locked; the canceller will cancel them",
                self.waiting.len()
            );
        }
    }

    /// `first` and what joins it within the flush interval (without waking
    /// for each run that joins: a wake-up per run costs more CPU than the
    /// write), and the waiting outcomes whose time has come.
    fn gather(&mut self, first: Finish) -> Vec<Finish> {
        if self.rx.len() < MAX_BATCH - 1 {
            std::thread::sleep(FLUSH_INTERVAL);
        }
        let mut batch = vec![first];
        batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
        batch.extend(self.take_due(Instant::now()));
        batch
    }

    fn take_due(&mut self, now: Instant) -> Vec<Finish> {
        let (due, later): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.next_try <= now);
        self.waiting = later;
        due.into_iter().map(|w| w.finish).collect()
    }

    /// Writes one batch; if the server refuses it, each run is tried alone,
    /// so one bad row does not hold up the rest. `retried`: part of it may
    /// have landed already.
    fn flush(&mut self, batch: Vec<Finish>, stop: &Receiver<()>, retried: bool) {
        if batch.is_empty() {
            return;
        }
        let mut tries = 0;
        let db = self.held.db().clone();
        let written = Retry::write("finishing jobs", db.health())
            .until_stopped(stop)
            .run(|| {
                tries += 1;
                let scope = &self.scope;
                self.held
                    .run(|c| write(c, scope, &batch, retried || tries > 1))
            });
        match written {
            Ok(written) => self.settle(batch, &written),
            Err(GaveUp::Refused(_)) if batch.len() > 1 => {
                for f in batch {
                    self.flush(vec![f], stop, true);
                }
            }
            Err(GaveUp::Refused(e)) => self.refused(&batch[0], &e),
            Err(GaveUp::Stopped | GaveUp::TimedOut(_)) => {
                for f in &batch {
                    self.registry.forget(f.run);
                }
                log::warn!(
                    "gave up writing the outcome of {} jobs at shutdown; the canceller will cancel them",
                    batch.len()
                )
            }
        }
    }

    /// Counts what landed, keeps what waits for a locked row, and reports
    /// what this replica no longer held.
    fn settle(&mut self, batch: Vec<Finish>, written: &Written) {
        let metrics = Arc::clone(self.held.db().metrics());
        let mut lost = 0;
        for f in batch {
            if written.waiting.contains(&f.run) {
                self.wait(f);
                continue;
            }
            self.locked.remove(&f.run);
            self.registry.forget(f.run);
            if written.landed.contains(&f.run) {
                metrics.add(f.outcome.counter(), 1);
            } else {
                lost += 1;
            }
        }
        if lost > 0 {
            metrics.add(Counter::Lost, lost);
            log::info!(
                "{lost} finished jobs were no longer held by this replica (cancelled or \
                 rescued meanwhile): their outcome was refused"
            );
        }
    }

    /// Puts `finish` aside until its row is free; says so the first time.
    fn wait(&mut self, finish: Finish) {
        let backoff = self.locked.entry(finish.run).or_insert_with(|| {
            log::info!(
                "{}: its row is locked by another session; its outcome waits for it",
                finish.run
            );
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
        });
        let next_try = Instant::now() + backoff.next_delay();
        self.waiting.push(Waiting { finish, next_try });
    }

    fn refused(&self, f: &Finish, e: &DbError) {
        self.registry.forget(f.run);
        self.held.db().metrics().add(Counter::Lost, 1);
        log::warn!(
            "{}: the database refused its outcome ({e}); the canceller will cancel it",
            f.run
        );
    }
}
