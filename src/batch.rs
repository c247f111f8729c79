//! Batched writes: the two per-job writes of the hot path, grouped.
//!
//! Every job needs `STARTED!` before its task begins and `DONE!` after. Sent
//! one by one they cost two statements and two commits per job, which caps
//! the service far below what the database can do. Instead:
//!
//! - the [`Starter`] thread takes the start requests of all consumers that
//!   are waiting, writes them in one `UPDATE` (one commit), and answers each
//!   consumer: a consumer still waits for its own start to be durable before
//!   its task begins, so a job starts at most once. Before writing, it waits
//!   briefly for consumers it started moments ago: a short task ends soon
//!   and its consumer asks again, and without the wait the consumers split
//!   into cohorts that alternate, each writing half-full batches (measured:
//!   4 jobs per batch instead of 8, 15% fewer jobs per second). A consumer
//!   that goes to wait for a rate-limit token or for a job says so, and is
//!   not waited for: under `RATE_LIMIT` the wait would only delay starts;
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

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

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

/// The longest the starter waits for consumers it started moments ago.
pub const MAX_GATHER: Duration = Duration::from_millis(1);

/// What a consumer tells the starter.
pub enum ToStarter {
    /// Start this job.
    Start(StartRequest),
    /// This consumer, started moments ago, now waits for a rate-limit token
    /// or for a job: not worth waiting for.
    Away(usize),
}

/// A consumer's request to start a job, with where to send the answer.
pub struct StartRequest {
    job: (u64, u64),
    consumer: usize,
    reply: Reply,
}

/// Where the starter puts its answer to one request. The consumer waits on
/// it with a condition variable, which parks the thread at once: a channel
/// receive spins and yields first, and with every consumer waiting on every
/// start that costs CPU the database next to it needs. Dropped unanswered
/// (the starter is gone), it answers `None`.
struct Reply(Arc<(Mutex<Option<Option<Started>>>, Condvar)>);

impl Reply {
    fn new() -> Reply {
        Reply(Arc::new((Mutex::new(None), Condvar::new())))
    }

    fn send(&self, answer: Option<Started>) {
        let (slot, ready) = &*self.0;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(answer);
            ready.notify_one();
        }
    }

    fn wait(&self) -> Option<Started> {
        let (slot, ready) = &*self.0;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(answer) = slot.take() {
                return answer;
            }
            slot = ready.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn handle(&self) -> Reply {
        Reply(Arc::clone(&self.0))
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        // The starter's handle going unanswered; the consumer's own handle
        // is dropped after it took its answer, when this changes nothing.
        if Arc::strong_count(&self.0) > 1 {
            self.send(None);
        }
    }
}

/// A consumer's handle on the starter thread.
#[derive(Clone)]
pub struct Starter {
    tx: Sender<ToStarter>,
    consumer: usize,
    /// Its last start was answered `Yes` and it has not asked again or said
    /// it is away since: the starter may be waiting for it.
    expected: Cell<bool>,
}

impl Starter {
    /// A starter handle (for consumer 0) and the receiving end for
    /// [`run_starter`].
    pub fn new() -> (Starter, Receiver<ToStarter>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Starter {
                tx,
                consumer: 0,
                expected: Cell::new(false),
            },
            rx,
        )
    }

    /// The handle for consumer number `consumer` (each consumer has its
    /// own, so the starter can tell who is back).
    pub fn for_consumer(&self, consumer: usize) -> Starter {
        Starter {
            tx: self.tx.clone(),
            consumer,
            expected: Cell::new(false),
        }
    }

    /// Starts `job` (marks it `STARTED!`, committed) and waits for the
    /// answer; `None`: the service stopped taking jobs first.
    pub fn start(&self, job: &Job) -> Option<Started> {
        self.expected.set(false);
        let answer = Reply::new();
        self.tx
            .send(ToStarter::Start(StartRequest {
                job: (job.id, job.lease),
                consumer: self.consumer,
                reply: answer.handle(),
            }))
            .ok()?;
        let answer = answer.wait();
        self.expected.set(answer == Some(Started::Yes));
        answer
    }

    /// Tells the starter this consumer is about to wait for a token or a
    /// job, if the starter may be waiting for it (once per start, so the
    /// hot path sends nothing).
    pub fn away(&self) {
        if self.expected.replace(false) {
            let _ = self.tx.send(ToStarter::Away(self.consumer));
        }
    }
}

/// The consumers the starter answered `Yes` moments ago and has not heard
/// from since: the ones worth waiting for before writing a batch.
#[derive(Default)]
struct Recent {
    /// By consumer number: when its last start was answered, until it asks
    /// again.
    answered: Vec<Option<Instant>>,
    /// How long after its answer a consumer is still waited for: the last
    /// batch's write time (a task that outlasts one write will likely
    /// outlast the next), at most [`MAX_GATHER`].
    window: Duration,
}

impl Recent {
    fn answered(&mut self, consumer: usize, at: Instant) {
        if self.answered.len() <= consumer {
            self.answered.resize(consumer + 1, None);
        }
        self.answered[consumer] = Some(at);
    }

    fn asked(&mut self, consumer: usize) {
        if let Some(slot) = self.answered.get_mut(consumer) {
            *slot = None;
        }
    }

    /// Until when to wait for more requests: the latest moment a recently
    /// started consumer is still expected back; `None` when none is.
    fn expect_until(&self, now: Instant) -> Option<Instant> {
        self.answered
            .iter()
            .flatten()
            .map(|&at| at + self.window)
            .filter(|&until| until > now)
            .max()
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
pub fn run_starter(shared: &Shared, rx: Receiver<ToStarter>, stop_taking: Receiver<()>) {
    let mut held = None;
    let mut recent = Recent::default();
    while let Ok(message) = rx.recv() {
        let first = match message {
            ToStarter::Start(first) => first,
            ToStarter::Away(consumer) => {
                recent.asked(consumer);
                continue;
            }
        };
        let batch = gather(&rx, &mut recent, first);
        if closed(&stop_taking) {
            for r in batch {
                r.reply.send(None);
            }
            continue;
        }
        let began = Instant::now();
        let answered = start_batch(shared, &mut held, &stop_taking, batch);
        let now = Instant::now();
        recent.window = (now - began).min(MAX_GATHER);
        for consumer in answered {
            recent.answered(consumer, now);
        }
    }
}

/// The requests for one batch: `first`, those already waiting, and those of
/// consumers started moments ago that come back within their window (or
/// until they say they are away).
fn gather(rx: &Receiver<ToStarter>, recent: &mut Recent, first: StartRequest) -> Vec<StartRequest> {
    recent.asked(first.consumer);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let next = match rx.try_recv() {
            Ok(message) => message,
            Err(_) => match recent.expect_until(Instant::now()) {
                None => break,
                Some(until) => match rx.recv_deadline(until) {
                    Ok(message) => message,
                    Err(_) => break,
                },
            },
        };
        match next {
            ToStarter::Start(r) => {
                recent.asked(r.consumer);
                batch.push(r);
            }
            ToStarter::Away(consumer) => recent.asked(consumer),
        }
    }
    batch
}

/// Starts one batch and answers its requests; returns the consumers
/// answered `Yes`. If the server refuses the statement, each job is tried
/// alone, so one bad row fails by itself instead of holding up every start.
fn start_batch(
    shared: &Shared,
    held: &mut Option<PooledConn>,
    stop: &Receiver<()>,
    batch: Vec<StartRequest>,
) -> Vec<usize> {
    let mut yes = Vec::with_capacity(batch.len());
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
                    yes.push(r.consumer);
                    Started::Yes
                } else {
                    Started::Lost
                };
                r.reply.send(Some(answer));
            }
        }
        Batch::Stopped => {
            for r in batch {
                r.reply.send(None);
            }
        }
        Batch::Refused(_) if batch.len() > 1 => {
            for r in batch {
                yes.extend(start_batch(shared, held, stop, vec![r]));
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
                r.reply.send(answer.clone());
            }
        }
    }
    yes
}

/// The completer thread: until every [`Completer`] handle is gone and all
/// it received is written (or `hard_stop` closes).
pub fn run_completer(shared: &Shared, rx: Receiver<(u64, u64)>, hard_stop: Receiver<()>) {
    let mut held = None;
    while let Ok(first) = rx.recv() {
        // Let the batch gather for the flush interval without waking for
        // each job that joins it (a wake-up per job costs more CPU than the
        // write), unless a full batch is already waiting.
        if rx.len() < MAX_BATCH - 1 {
            std::thread::sleep(FLUSH_INTERVAL);
        }
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter().take(MAX_BATCH - 1));
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
        // Lock wait timeout, deadlock, and the server's limit on prepared
        // statements (1461: other clients hold them all; the start batch is
        // prepared), which says nothing about the rows.
        DbError::Mysql(mysql::Error::MySqlError(m)) => matches!(m.code, 1205 | 1213 | 1461),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(consumer: usize) -> (StartRequest, Reply) {
        let answer = Reply::new();
        let job = (consumer as u64 + 1, 1);
        (
            StartRequest {
                job,
                consumer,
                reply: answer.handle(),
            },
            answer,
        )
    }

    #[test]
    fn a_reply_carries_the_answer_or_none_when_dropped_unanswered() {
        let (r, answer) = request(0);
        let starter = std::thread::spawn(move || r.reply.send(Some(Started::Yes)));
        assert_eq!(answer.wait(), Some(Started::Yes));
        starter.join().unwrap();

        let (r, answer) = request(1);
        let starter = std::thread::spawn(move || drop(r));
        assert_eq!(answer.wait(), None);
        starter.join().unwrap();
    }

    #[test]
    fn recently_answered_consumers_are_expected_until_their_window_ends() {
        let now = Instant::now();
        let mut recent = Recent {
            window: Duration::from_millis(1),
            ..Recent::default()
        };
        assert_eq!(recent.expect_until(now), None);
        recent.answered(3, now);
        assert_eq!(recent.expect_until(now), Some(now + recent.window));
        assert_eq!(recent.expect_until(now + recent.window), None);
        recent.asked(3);
        assert_eq!(recent.expect_until(now), None);
    }

    /// Consumer 1 answered just now, with a window so generous that a test
    /// ends only by consumer 1 coming back or saying it is away.
    fn expecting_consumer_1() -> Recent {
        let mut recent = Recent {
            window: Duration::from_secs(60),
            ..Recent::default()
        };
        recent.answered(1, Instant::now());
        recent
    }

    #[test]
    fn a_batch_waits_for_a_consumer_started_moments_ago() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut recent = expecting_consumer_1();
        let (first, _a0) = request(0);
        let back = std::thread::spawn(move || {
            let (r, answer) = request(1);
            tx.send(ToStarter::Start(r)).unwrap();
            answer
        });
        let batch = gather(&rx, &mut recent, first);
        let consumers: Vec<usize> = batch.iter().map(|r| r.consumer).collect();
        assert_eq!(consumers, [0, 1]);
        assert_eq!(recent.expect_until(Instant::now()), None);
        drop(back.join());
    }

    #[test]
    fn a_batch_stops_waiting_for_a_consumer_that_is_away() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut recent = expecting_consumer_1();
        let (first, _a0) = request(0);
        let away = std::thread::spawn(move || tx.send(ToStarter::Away(1)).unwrap());
        let batch = gather(&rx, &mut recent, first);
        assert_eq!(batch.len(), 1);
        assert_eq!(recent.expect_until(Instant::now()), None);
        away.join().unwrap();
    }

    #[test]
    fn a_consumer_says_it_is_away_once_per_start() {
        let (starter, rx) = Starter::new();
        let starter = starter.for_consumer(4);
        starter.away();
        assert!(rx.try_recv().is_err(), "not started: nothing to say");
        starter.expected.set(true);
        starter.away();
        starter.away();
        assert!(matches!(rx.try_recv(), Ok(ToStarter::Away(4))));
        assert!(rx.try_recv().is_err(), "once");
    }

    #[test]
    fn a_batch_does_not_wait_when_no_consumer_is_expected() {
        let (tx, rx) = crossbeam_channel::unbounded();
        // Consumer 2's window has passed: it is not waited for.
        let mut recent = Recent {
            window: Duration::ZERO,
            ..Recent::default()
        };
        recent.answered(2, Instant::now());
        let (waiting, _a1) = request(1);
        tx.send(ToStarter::Start(waiting)).unwrap();
        let (first, _a0) = request(0);
        let batch = gather(&rx, &mut recent, first);
        assert_eq!(batch.len(), 2, "the first and the one already waiting");
    }
}
