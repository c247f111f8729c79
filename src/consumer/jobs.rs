//! The jobs consumers: run claimed jobs, one at a time per thread.
//!
//! For each job taken from the channel a consumer:
//!
//! 1. finds the task registered for the row's `kind` and lets it check the
//!    input; an unknown kind or bad input (a negative `sleep`) becomes
//!    `FAILED!` with the reason, without ever starting;
//! 2. takes a token from the replica's bucket (`RATE_LIMIT`, default 50/s);
//! 3. has the [`starter`](super::starter) commit `STARTED!` and
//!    `started_at`, on condition that its claim (lease) still holds, and
//!    waits for that before the task begins: a job starts at most once, even
//!    across crashes;
//! 4. runs the task with a [`Cancellation`](crate::cancel::Cancellation) the
//!    canceller, the watcher or the shutdown deadline can trigger; a panic
//!    in the task becomes `FAILED!` with the panic message and the thread
//!    carries on;
//! 5. hands the [`Outcome`] to the [`finisher`](super::finisher) and takes
//!    the next job at once.
//!
//! On shutdown (`stop_taking` closes) a consumer takes no new job; a job it
//! had taken but not started stays `QUEUED!` and the shutdown release puts
//! it back.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, select};

use super::finisher::{FinisherHandle, Outcome};
use super::outcome::{Ended, judge, panic_message};
use super::starter::{StartHandle, Started};
use crate::bucket::Bucket;
use crate::cancel::Registry;
use crate::config::Config;
use crate::db::Db;
use crate::db::jobs::MAX_TIMEOUT_MS;
use crate::db::retry::Backoff;
use crate::job::Job;
use crate::metrics::Counter;
use crate::runtime::channel::wants_refill;
use crate::task::{JobContext, Task, Tasks};

/// What a jobs consumer reads of the configuration.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Attempts a job gets when its `max_attempts` is NULL (`MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// The first retry's delay (`RETRY_BACKOFF`).
    pub retry_backoff: Duration,
    /// Named in the reason of a run cancelled at the shutdown deadline
    /// (`SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,
}

impl From<&Config> for ConsumerConfig {
    fn from(c: &Config) -> Self {
        ConsumerConfig {
            max_attempts: c.max_attempts,
            retry_backoff: c.retry_backoff,
            shutdown_timeout: c.shutdown_timeout,
        }
    }
}

/// The channels and handles a jobs consumer works with.
pub struct Channels {
    /// Claimed jobs.
    pub jobs: Receiver<Job>,
    /// Signalled after taking a job, so the publisher can claim early.
    pub room_freed: Sender<()>,
    /// Closes when the service stops taking jobs.
    pub stop_taking: Receiver<()>,
    /// Writes `STARTED!` for the waiting consumers together.
    pub starter: StartHandle,
    /// Writes every run's outcome.
    pub finisher: FinisherHandle,
}

/// What a consumer shares with the rest of the replica.
#[derive(Clone)]
pub struct Shared {
    /// The registered task kinds.
    pub tasks: Tasks,
    /// The replica's token bucket.
    pub bucket: Arc<Bucket>,
    /// The tasks running in this process.
    pub registry: Arc<Registry>,
    /// The pool, handed to tasks (and counted into).
    pub db: Db,
}

/// What happened to one job in this consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// It ran (its outcome is on its way to the finisher).
    Ran,
    /// Bad input: `FAILED!` without starting.
    Rejected,
    /// Its claim was lost before it could start (released or rescued).
    Lost,
    /// Shutdown came first: not started, left for the release.
    NotStarted,
    /// Not started, put back for later (its queue at its `max_running`), or
    /// cancelled on request while it waited.
    Skipped,
}

/// One jobs consumer.
pub struct Consumer {
    cfg: ConsumerConfig,
    shared: Shared,
    ch: Channels,
}

impl Consumer {
    /// A consumer taking jobs from `ch.jobs`.
    pub fn new(cfg: ConsumerConfig, shared: Shared, ch: Channels) -> Consumer {
        Consumer { cfg, shared, ch }
    }

    /// Takes and runs jobs until the service stops taking them.
    pub fn run(self) {
        while let Some(job) = self.take() {
            if wants_refill(&self.ch.jobs) {
                let _ = self.ch.room_freed.try_send(());
            }
            if self.handle(job) == Handled::NotStarted {
                return;
            }
        }
    }

    /// The next job, or `None` once the service stops taking jobs.
    fn take(&self) -> Option<Job> {
        if matches!(
            self.ch.stop_taking.try_recv(),
            Err(TryRecvError::Disconnected)
        ) {
            return None;
        }
        if self.ch.jobs.is_empty() {
            self.ch.starter.before_wait();
        }
        select! {
            recv(self.ch.stop_taking) -> _ => None,
            recv(self.ch.jobs) -> msg => msg.ok(),
        }
    }

    /// Runs one job through the steps in the module docs.
    fn handle(&self, job: Job) -> Handled {
        let ctx = self.context(&job);
        let task = match self.check(&job, &ctx) {
            Ok(task) => task,
            Err(reason) => return self.reject(&job, reason),
        };
        if !self.token() {
            return Handled::NotStarted;
        }
        // Until its start is settled the canceller leaves the run alone: a
        // start that landed before an outage hid the answer is this
        // consumer's to run, not a dead run of this replica's.
        self.shared.registry.starting(job.run());
        let started = self.start(&job);
        if started != Started::Yes {
            self.shared.registry.start_settled(job.run());
        }
        match started {
            Started::Yes => {}
            Started::Lost => return self.lost(&job, "starting"),
            Started::Failed(_) => return Handled::Rejected,
            Started::Limited => {
                self.ch.finisher.finish(job.run(), Outcome::Released);
                return Handled::Skipped;
            }
            Started::Cancelled => return Handled::Skipped,
            Started::Busy | Started::Stopped => return Handled::NotStarted,
        }
        let ended = self.execute(&job, task.as_ref(), &ctx);
        match judge(
            &ctx,
            ended,
            self.cfg.retry_backoff,
            self.cfg.shutdown_timeout,
        ) {
            Some(outcome) => {
                self.report(&job, &outcome);
                self.ch.finisher.finish(job.run(), outcome);
            }
            // Cancelled elsewhere: the row says so already.
            None => self.shared.registry.forget(job.run()),
        }
        Handled::Ran
    }

    /// Has the starter start `job`, asking again (after a growing delay)
    /// while another session holds its row locked: only this job waits.
    fn start(&self, job: &Job) -> Started {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut said = false;
        loop {
            let answer = self.ch.starter.start(job);
            if answer != Started::Busy {
                return answer;
            }
            if !said {
                log::info!(
                    "job {}: its row is locked by another session; waiting to start it",
                    job.id
                );
                said = true;
            }
            self.ch.starter.before_wait();
            select! {
                recv(self.ch.stop_taking) -> _ => return Started::Stopped,
                default(backoff.next_delay()) => {}
            }
        }
    }

    fn context(&self, job: &Job) -> JobContext {
        JobContext {
            id: job.id,
            object_id: job.object_id,
            sleep: job.sleep,
            kind: job.kind.clone(),
            payload: job.payload.clone(),
            attempt: job.attempts.saturating_add(1),
            max_attempts: job.max_attempts.unwrap_or(self.cfg.max_attempts).max(1),
            db: self.shared.db.clone(),
        }
    }

    /// The task for the job's kind, once it accepted the job's input.
    fn check(&self, job: &Job, ctx: &JobContext) -> Result<Arc<dyn Task>, String> {
        if let Some(ms) = job.timeout_ms.filter(|ms| *ms > MAX_TIMEOUT_MS) {
            return Err(format!(
                "cannot start: its timeout of {ms} ms is more than 100 years \
                 ({MAX_TIMEOUT_MS} ms, the longest a timeout can be)"
            ));
        }
        let tasks = &self.shared.tasks;
        let Some(task) = tasks.get(&job.kind) else {
            // Claims take only the kinds this replica runs: not reached.
            return Err(format!(
                "unknown task kind {:?}: this service runs {}",
                job.kind,
                tasks.kinds().join(", ")
            ));
        };
        catch_unwind(AssertUnwindSafe(|| task.validate(ctx)))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "task validation panicked: {}",
                    panic_message(&*panic)
                ))
            })
            .map(|()| Arc::clone(task))
    }

    /// Takes a token, waiting if needed; `false` if the service stopped
    /// taking jobs meanwhile.
    fn token(&self) -> bool {
        let bucket = &self.shared.bucket;
        let taken = bucket.try_take().is_ok() || {
            self.ch.starter.before_wait();
            bucket.take(&self.ch.stop_taking)
        };
        taken
            && !matches!(
                self.ch.stop_taking.try_recv(),
                Err(TryRecvError::Disconnected)
            )
    }

    /// Runs the task under the registry's watch.
    fn execute(&self, job: &Job, task: &dyn Task, ctx: &JobContext) -> Ended {
        let registry = &self.shared.registry;
        let cancel = registry.start(job.run());
        registry.start_settled(job.run());
        let result = catch_unwind(AssertUnwindSafe(|| task.run(ctx, &cancel)));
        // Whichever came first, the task's return or an interrupt, decides.
        let (ran, interrupted) = registry.returned(job.run());
        self.shared.db.metrics().observe_run(ran);
        match interrupted {
            Some(why) => Ended::Interrupted(why),
            None => Ended::Returned(result),
        }
    }

    /// Says what happened, where it is worth a line.
    fn report(&self, job: &Job, outcome: &Outcome) {
        match outcome {
            Outcome::Retry { reason, delay } => log::info!(
                "job {} will be retried in {}: {reason}",
                job.id,
                crate::config::show_rounded(*delay)
            ),
            Outcome::Failed(reason) => log::warn!("job {} failed: {reason}", job.id),
            _ => {}
        }
    }

    /// Fails a job that cannot start (unknown kind, bad input) without ever
    /// starting it.
    fn reject(&self, job: &Job, reason: String) -> Handled {
        log::warn!("job {} failed: {reason}", job.id);
        self.ch
            .finisher
            .finish(job.run(), Outcome::Rejected(reason));
        Handled::Rejected
    }

    fn lost(&self, job: &Job, doing: &str) -> Handled {
        self.shared.db.metrics().add(Counter::Lost, 1);
        log::info!(
            "job {}: {doing} refused, this replica no longer holds it (lease {}): it was released, rescued or cancelled",
            job.id,
            job.lease
        );
        Handled::Lost
    }
}
