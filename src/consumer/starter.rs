//! The starter: the `STARTED!` of every waiting consumer, in one statement.
//!
//! Every job needs `STARTED!` committed before its task begins, so a job
//! starts at most once. Sent one by one that costs a statement and a commit
//! per job; instead the [`Starter`] thread takes the start requests of all
//! consumers waiting at that moment, writes them in one `UPDATE` (one
//! commit), and answers each consumer, which waits for its own answer
//! before its task begins. The start sets each run's deadline from the job's
//! `timeout`, else `JOB_TIMEOUT` (default 10s).
//!
//! Before writing, it waits briefly for consumers it started moments ago: a
//! short task ends soon and its consumer asks again, and without the wait
//! the consumers split into cohorts that alternate, each writing half-full
//! batches (measured: 4 jobs per batch instead of 8, 15% fewer jobs per
//! second). How long it waits is the last write's time, at most
//! [`MAX_GATHER`]. A consumer that goes to wait for a rate-limit token or
//! for a job says so ([`StartHandle::before_wait`]) and is not waited for:
//! under `RATE_LIMIT` the wait would only delay starts. The whole rule lives
//! here; consumers only call the handle.
//!
//! The write is conditional on each run's lease and `QUEUED!`, so a job
//! released, rescued or cancelled meanwhile is answered [`Started::Lost`].
//! A statement the server refuses is split, so one bad row fails alone (as
//! [`Outcome::Rejected`], through the finisher). Database failures are
//! retried until the write lands or the service stops taking jobs.

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::finisher::{FinisherHandle, Outcome};
use crate::config::Config;
use crate::db::HeldConn;
use crate::db::jobs::{
    Locks, RunsState, job_restamp_started, job_runs_state, job_start_limited, job_start_many,
};
use crate::db::retry::{GaveUp, Retry};
use crate::job::{Job, Run, status};
use crate::metrics::Counter;
use crate::queues::Queues;

/// Largest batch written by one statement.
pub const MAX_BATCH: usize = 500;

/// The longest the starter waits for consumers it started moments ago.
pub const MAX_GATHER: Duration = Duration::from_millis(1);

/// What the starter reads of the configuration.
#[derive(Debug, Clone)]
pub struct StarterConfig {
    /// The deadline of a run whose job has no `timeout` (`JOB_TIMEOUT`).
    pub job_timeout: Duration,
}

impl From<&Config> for StarterConfig {
    fn from(c: &Config) -> Self {
        StarterConfig {
            job_timeout: c.job_timeout,
        }
    }
}

/// What became of a start request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// `STARTED!` is committed: run the task.
    Yes,
    /// This replica no longer holds the job (released, rescued, cancelled).
    Lost,
    /// Another session holds the job's row locked: not started; ask again
    /// later.
    Busy,
    /// Its queue already runs its `max_running` jobs: not started; put it
    /// back for later.
    Limited,
    /// A cancel was requested while it waited: not started (the canceller
    /// writes it `CANCELLED!`).
    Cancelled,
    /// The server refused to start this row (a value out of range, say): it
    /// is being marked `FAILED!` with the reason.
    Failed(String),
    /// The service stopped taking jobs first: the job stays `QUEUED!` for
    /// the shutdown release.
    Stopped,
}

/// Where the starter puts its answer to one request. The consumer waits on
/// it with a condition variable, which parks the thread at once: a channel
/// receive spins and yields first, and with every consumer waiting on every
/// start that costs CPU the database next to it needs.
#[derive(Clone, Default)]
struct Reply(Arc<(Mutex<Option<Started>>, Condvar)>);

impl Reply {
    fn send(&self, answer: Started) {
        let (slot, ready) = &*self.0;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
        ready.notify_one();
    }

    fn wait(&self) -> Started {
        let (slot, ready) = &*self.0;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(answer) = slot.take() {
                return answer;
            }
            slot = ready.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A consumer's request to start a run, answered exactly once: by
/// [`StartRequest::answer`], or with [`Started::Stopped`] if it is dropped
/// unanswered (the starter is gone).
struct StartRequest {
    run: Run,
    queue: String,
    consumer: usize,
    reply: Option<Reply>,
}

impl StartRequest {
    fn answer(mut self, answer: Started) {
        if let Some(reply) = self.reply.take() {
            reply.send(answer);
        }
    }
}

impl Drop for StartRequest {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply.send(Started::Stopped);
        }
    }
}

/// What a consumer tells the starter.
enum ToStarter {
    /// Start this run.
    Start(StartRequest),
    /// This consumer, started moments ago, now waits for a rate-limit token
    /// or for a job: not worth waiting for.
    Away(usize),
}

/// A consumer's handle on the starter thread (each consumer has its own, so
/// the starter can tell who is back).
pub struct StartHandle {
    tx: Sender<ToStarter>,
    consumer: usize,
    /// Its last start was answered `Yes` and it has not asked again or said
    /// it is away since: the starter may be waiting for it.
    expected: Cell<bool>,
}

impl StartHandle {
    /// The handle for consumer number `consumer`.
    pub fn for_consumer(&self, consumer: usize) -> StartHandle {
        StartHandle {
            tx: self.tx.clone(),
            consumer,
            expected: Cell::new(false),
        }
    }

    /// Starts `job` (marks it `STARTED!`, committed) and waits for the
    /// answer.
    pub fn start(&self, job: &Job) -> Started {
        self.expected.set(false);
        let reply = Reply::default();
        let request = StartRequest {
            run: job.run(),
            queue: job.queue.clone(),
            consumer: self.consumer,
            reply: Some(reply.clone()),
        };
        if self.tx.send(ToStarter::Start(request)).is_err() {
            return Started::Stopped;
        }
        let answer = reply.wait();
        self.expected.set(answer == Started::Yes);
        answer
    }

    /// Tells the starter this consumer is about to wait for something else
    /// (a token, a job), if the starter may be waiting for it: once per
    /// start, so the hot path sends nothing.
    pub fn before_wait(&self) {
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

/// The starter thread.
pub struct Starter {
    cfg: StarterConfig,
    held: HeldConn,
    queues: Arc<Queues>,
    finisher: FinisherHandle,
    rx: Receiver<ToStarter>,
}

impl Starter {
    /// A starter writing through `held`, starting the jobs of a queue with a
    /// `max_running` (as `queues` knows them) under that queue's lock,
    /// handing refused rows to `finisher`; and the handle for consumer 0
    /// (see [`StartHandle::for_consumer`]).
    pub fn new(
        cfg: StarterConfig,
        held: HeldConn,
        queues: Arc<Queues>,
        finisher: FinisherHandle,
    ) -> (Starter, StartHandle) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = StartHandle {
            tx,
            consumer: 0,
            expected: Cell::new(false),
        };
        let starter = Starter {
            cfg,
            held,
            queues,
            finisher,
            rx,
        };
        (starter, handle)
    }

    /// Starts batches until every [`StartHandle`] is gone; once
    /// `stop_taking` closes, answers every request [`Started::Stopped`].
    pub fn run(mut self, stop_taking: Receiver<()>) {
        let mut recent = Recent::default();
        while let Ok(message) = self.rx.recv() {
            let first = match message {
                ToStarter::Start(first) => first,
                ToStarter::Away(consumer) => {
                    recent.asked(consumer);
                    continue;
                }
            };
            let batch = gather(&self.rx, &mut recent, first);
            if matches!(stop_taking.try_recv(), Err(TryRecvError::Disconnected)) {
                continue; // dropped unanswered: Stopped
            }
            let began = Instant::now();
            let answered = self.start_batch(&stop_taking, batch);
            let now = Instant::now();
            recent.window = (now - began).min(MAX_GATHER);
            for consumer in answered {
                recent.answered(consumer, now);
            }
        }
    }

    /// Starts one batch and answers its requests; returns the consumers
    /// answered `Yes`. If the server refuses the statement, each run is
    /// tried alone, so one bad row fails by itself.
    fn start_batch(&mut self, stop: &Receiver<()>, batch: Vec<StartRequest>) -> Vec<usize> {
        // The jobs of queues with a max_running start apart, queue by queue.
        let (limited, batch): (Vec<StartRequest>, Vec<StartRequest>) = batch
            .into_iter()
            .partition(|r| self.queues.max_running(&r.queue).is_some());
        let mut yes = self.start_limited(stop, limited);
        if batch.is_empty() {
            return yes;
        }
        let runs: Vec<Run> = batch.iter().map(|r| r.run).collect();
        match self.write(stop, &runs) {
            Ok(state) => {
                yes.extend(self.answer(batch, &state, &[]));
                yes
            }
            Err(e) => {
                yes.extend(self.not_written(stop, batch, e));
                yes
            }
        }
    }

    /// Answers each request of a batch written (`over_limit`: not started,
    /// its queue runs its `max_running` already); returns the consumers
    /// answered `Yes`.
    fn answer(
        &self,
        batch: Vec<StartRequest>,
        state: &RunsState,
        over_limit: &[Run],
    ) -> Vec<usize> {
        let metrics = self.held.db().metrics();
        metrics.add(Counter::Started, state.written.len() as u64);
        metrics.add(Counter::StartBatches, 1);
        let mut yes = Vec::with_capacity(batch.len());
        for r in batch {
            let answer = if state.written.contains(&r.run) {
                yes.push(r.consumer);
                Started::Yes
            } else if state.waiting.contains(&r.run) {
                Started::Busy
            } else if state.cancel_requested.contains(&r.run) {
                Started::Cancelled
            } else if over_limit.contains(&r.run) {
                Started::Limited
            } else {
                Started::Lost
            };
            r.answer(answer);
        }
        yes
    }

    /// A batch the database would not take: tried run by run if it refused
    /// the statement (one bad row fails alone), else left unanswered
    /// (`Stopped`).
    fn not_written(
        &mut self,
        stop: &Receiver<()>,
        batch: Vec<StartRequest>,
        e: GaveUp,
    ) -> Vec<usize> {
        match e {
            GaveUp::Refused(_) if batch.len() > 1 => batch
                .into_iter()
                .flat_map(|r| self.start_batch(stop, vec![r]))
                .collect(),
            GaveUp::Refused(e) => {
                let reason = format!("cannot start: the database refused it ({e})");
                for r in batch {
                    log::warn!("job {} failed: {reason}", r.run.id);
                    self.finisher
                        .finish(r.run, Outcome::Rejected(reason.clone()));
                    r.answer(Started::Failed(reason.clone()));
                }
                Vec::new()
            }
            // Dropped unanswered: Stopped.
            GaveUp::Stopped | GaveUp::TimedOut(_) => Vec::new(),
        }
    }

    /// Starts the requests of queues with a `max_running`, one transaction
    /// per queue under its row lock; returns the consumers answered `Yes`.
    fn start_limited(&mut self, stop: &Receiver<()>, limited: Vec<StartRequest>) -> Vec<usize> {
        let mut queues: Vec<String> = limited.iter().map(|r| r.queue.clone()).collect();
        queues.sort();
        queues.dedup();
        let mut rest = limited;
        let mut yes = Vec::new();
        for queue in queues {
            let (of_queue, others): (Vec<StartRequest>, Vec<StartRequest>) =
                rest.into_iter().partition(|r| r.queue == queue);
            rest = others;
            let runs: Vec<Run> = of_queue.iter().map(|r| r.run).collect();
            let timeout = self.cfg.job_timeout;
            let db = self.held.db().clone();
            let mut tries = 0;
            let started = Retry::write("starting jobs of a queue with max_running", db.health())
                .until_stopped(stop)
                .run(|| {
                    tries += 1;
                    self.held
                        .run(|c| job_start_limited(c, &queue, &runs, timeout, tries > 1))
                });
            match started {
                Ok(s) => yes.extend(self.answer(of_queue, &s.state, &s.over_limit)),
                Err(e) => yes.extend(self.not_written(stop, of_queue, e)),
            }
        }
        yes
    }

    /// Writes the starts until they land or `stop` closes; returns the runs
    /// now `STARTED!` and those whose row another session holds locked.
    /// When fewer rows changed than were asked, or after a retry (an earlier
    /// try may have landed before its reply was lost), the rows are read
    /// back.
    fn write(&mut self, stop: &Receiver<()>, runs: &[Run]) -> Result<RunsState, GaveUp> {
        let timeout = self.cfg.job_timeout;
        let mut tries = 0;
        let db = self.held.db().clone();
        Retry::write("starting jobs", db.health())
            .until_stopped(stop)
            .run(|| {
                tries += 1;
                self.held.run(|c| {
                    let changed = match job_start_many(c, runs, timeout, Locks::Wait) {
                        Err(e) if Locks::met_a_lock(&e) => {
                            // Start what is free; the locked runs wait.
                            job_start_many(c, runs, timeout, Locks::Skip)?;
                            return job_runs_state(c, runs, status::QUEUED, Some(status::STARTED));
                        }
                        other => other?,
                    };
                    if changed as usize == runs.len() && tries == 1 {
                        return Ok(RunsState {
                            written: runs.to_vec(),
                            ..RunsState::default()
                        });
                    }
                    let state = job_runs_state(c, runs, status::QUEUED, Some(status::STARTED))?;
                    if tries > 1 {
                        // An earlier try may have landed long before this
                        // answer: the tasks begin now.
                        job_restamp_started(c, &state.written, timeout)?;
                    }
                    Ok(state)
                })
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(consumer: usize) -> (StartRequest, Reply) {
        let reply = Reply::default();
        let run = Run {
            id: consumer as u64 + 1,
            lease: 1,
        };
        let request = StartRequest {
            run,
            queue: "default".into(),
            consumer,
            reply: Some(reply.clone()),
        };
        (request, reply)
    }

    #[test]
    fn a_request_is_answered_or_stopped_when_dropped_unanswered() {
        let (r, reply) = request(0);
        let starter = std::thread::spawn(move || r.answer(Started::Yes));
        assert_eq!(reply.wait(), Started::Yes);
        starter.join().unwrap();

        let (r, reply) = request(1);
        let starter = std::thread::spawn(move || drop(r));
        assert_eq!(reply.wait(), Started::Stopped);
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
            let (r, reply) = request(1);
            tx.send(ToStarter::Start(r)).unwrap();
            reply
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
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = StartHandle {
            tx,
            consumer: 4,
            expected: Cell::new(false),
        };
        handle.before_wait();
        assert!(rx.try_recv().is_err(), "not started: nothing to say");
        handle.expected.set(true);
        handle.before_wait();
        handle.before_wait();
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
