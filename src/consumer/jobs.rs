//! The jobs consumers: run claimed jobs, one at a time per thread.
//!
//! For each job taken from the channel a consumer:
//!
//! 1. finds the task registered for the row's `kind` and lets it check the
//!    input; an unknown kind or bad input (a negative `sleep`) becomes
//!    `FAILED!` with the reason, without ever starting;
//! 2. takes a token from the replica's bucket (`RATE_LIMIT`);
//! 3. commits `STARTED!` and `started_at` before the task begins, on
//!    condition that its claim (lease) still holds: a job starts at most
//!    once, even across crashes (the [`Starter`] writes the starts of all
//!    consumers waiting at that moment in one statement);
//! 4. runs the task with a [`Cancellation`](crate::cancel::Cancellation) the
//!    canceller, the watcher or the shutdown deadline can trigger; a panic
//!    in the task becomes `FAILED!` with the panic message and the thread
//!    carries on;
//! 5. writes the outcome (`DONE!` through the [`Completer`], in batches; back to new with `run_at` pushed out
//!    for a retryable error with attempts left; `FAILED!`; or `CANCELLED!`
//!    after a shutdown interrupt), again conditional on its lease, retrying
//!    through database outages until it lands or the claim is found lost.
//!
//! On shutdown (`stop_taking` closes) a consumer takes no new job; a job it
//! had taken but not started stays `QUEUED!` and the shutdown release puts
//! it back. Writes in flight give up only when `hard_stop` closes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select};

use crate::batch::{Completer, Started, Starter};
use crate::cancel::Interrupt;
use crate::consumer::{closed, write_until};
use crate::db::jobs::{Job, job_cancel, job_fail, job_retry, jobs_in_status, status};
use crate::db::{DbError, PooledConn};
use crate::metrics::Metrics;
use crate::publisher::jobs::wake_publisher;
use crate::service::Shared;
use crate::task::{JobContext, TaskError};

/// The channels a jobs consumer works with.
pub struct Channels {
    /// Claimed jobs.
    pub jobs: Receiver<Job>,
    /// Signalled after taking a job, so the publisher can claim early.
    pub room_freed: Sender<()>,
    /// Closes when the service stops taking jobs.
    pub stop_taking: Receiver<()>,
    /// Closes when in-flight writes must give up.
    pub hard_stop: Receiver<()>,
    /// Writes `STARTED!` for the waiting consumers together.
    pub starter: Starter,
    /// Writes `DONE!` for finished jobs in batches.
    pub completer: Completer,
}

/// What happened to one job in this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Ran and ended with this outcome (written, or found lost).
    Ran(Outcome),
    /// Bad input: `FAILED!` without starting.
    Rejected,
    /// Its claim was lost before it could start (released or rescued).
    Lost,
    /// Shutdown came first: not started, left for the release.
    NotStarted,
}

/// One consumer's loop.
pub fn run(shared: Arc<Shared>, ch: Channels) {
    loop {
        if closed(&ch.stop_taking) {
            return;
        }
        if ch.jobs.is_empty() {
            ch.starter.away();
        }
        let job = select! {
            recv(ch.stop_taking) -> _ => return,
            recv(ch.jobs) -> msg => match msg {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        if wake_publisher(&ch.jobs) {
            let _ = ch.room_freed.try_send(());
        }
        if handle(&shared, job, &ch) == Handled::NotStarted {
            return;
        }
    }
}

/// How a run ended, as the consumer writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The task succeeded: `DONE!`.
    Done,
    /// The task was interrupted: by a cancellation (the row already says
    /// so) or by shutdown (`CANCELLED!` with the reason).
    Interrupted(Interrupt),
    /// A retryable error with attempts left: back to new after `delay`.
    Retry {
        /// The attempt's error, as written.
        reason: String,
        /// How long before it may be claimed again.
        delay: Duration,
    },
    /// `FAILED!` with the reason.
    Failed(String),
}

/// Runs one job through the steps above.
pub fn handle(shared: &Shared, job: Job, ch: &Channels) -> Handled {
    let m = &shared.metrics;
    let ctx = JobContext {
        id: job.id,
        object_id: job.object_id,
        sleep: job.sleep,
        kind: job.kind.clone(),
        payload: job.payload.clone(),
        attempt: job.attempts.saturating_add(1),
        max_attempts: job
            .max_attempts
            .unwrap_or(shared.config.max_attempts)
            .max(1),
        db: shared.db.clone(),
    };
    let checked = match shared.tasks.get(&job.kind) {
        None => Err(format!(
            "unknown task kind {:?}: this service runs {}",
            job.kind,
            shared.tasks.kinds().join(", ")
        )),
        Some(task) => catch_unwind(AssertUnwindSafe(|| task.validate(&ctx)))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "task validation panicked: {}",
                    panic_message(&*panic)
                ))
            })
            .map(|()| task),
    };
    let task = match checked {
        Ok(task) => task,
        Err(reason) => return reject(shared, &job, ch, &reason),
    };
    let token = shared.bucket.try_take().is_ok() || {
        ch.starter.away();
        shared.bucket.take(&ch.stop_taking)
    };
    if !token || closed(&ch.stop_taking) {
        return Handled::NotStarted;
    }
    // Wait until this job's STARTED! is committed (with whatever other
    // consumers are starting at the same moment).
    match ch.starter.start(&job) {
        Some(Started::Yes) => {}
        Some(Started::Lost) => return lost(shared, &job, "starting"),
        Some(Started::Failed(_)) => return Handled::Rejected,
        None => return Handled::NotStarted,
    }

    let cancel = shared.registry.start(job.id, job.lease);
    let result = catch_unwind(AssertUnwindSafe(|| task.run(&ctx, &cancel)));
    shared.metrics.observe_run(shared.registry.finish(job.id));
    let outcome = judge(shared, &ctx, result, cancel.interrupted());

    let written = match &outcome {
        Outcome::Done => {
            // Written with the next batch; counted there.
            ch.completer.done(&job);
            return Handled::Ran(outcome);
        }
        Outcome::Retry { reason, delay } => {
            log::info!(
                "job {} will be retried in {}: {reason}",
                job.id,
                humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
            );
            write_until(
                shared,
                "putting a job back for a retry",
                &ch.hard_stop,
                |c| job_retry(c, job.id, job.lease, reason, *delay),
            )
            .map(|ok| (ok, &m.retried))
        }
        Outcome::Failed(reason) => {
            log::warn!("job {} failed: {reason}", job.id);
            transition(
                shared,
                "failing a job",
                &ch.hard_stop,
                &job,
                status::FAILED,
                |c| job_fail(c, job.id, job.lease, status::STARTED, reason),
            )
            .map(|ok| (ok, &m.failed))
        }
        // The canceller (here or elsewhere) already wrote the row.
        Outcome::Interrupted(Interrupt::Cancelled) => return Handled::Ran(outcome),
        Outcome::Interrupted(Interrupt::Shutdown) => {
            let reason = format!(
                "cancelled: interrupted by shutdown, still running SHUTDOWN_TIMEOUT ({}) after the stop signal",
                humantime::format_duration(shared.config.shutdown_timeout)
            );
            transition(
                shared,
                "cancelling a job at shutdown",
                &ch.hard_stop,
                &job,
                status::CANCELLED,
                |c| job_cancel(c, job.id, job.lease, &reason),
            )
            .map(|ok| (ok, &m.cancelled))
        }
    };
    match written {
        Some((true, counter)) => Metrics::add(counter, 1),
        Some((false, _)) => {
            lost(shared, &job, "finishing");
        }
        None => log::warn!(
            "job {}: gave up writing its outcome ({outcome:?}) at shutdown; the canceller will cancel it",
            job.id
        ),
    }
    Handled::Ran(outcome)
}

/// Turns what the task returned (or its panic) into the outcome to write.
/// An interrupt wins over whatever the task returned: the run was ended
/// from outside.
pub fn judge(
    shared: &Shared,
    ctx: &JobContext,
    result: std::thread::Result<Result<(), TaskError>>,
    interrupted: Option<Interrupt>,
) -> Outcome {
    if let Some(why) = interrupted {
        return Outcome::Interrupted(why);
    }
    let attempt = format!("attempt {}/{}", ctx.attempt, ctx.max_attempts);
    match result {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(TaskError::Retryable(msg))) if ctx.attempt < ctx.max_attempts => Outcome::Retry {
            reason: format!("{attempt}: {msg}"),
            delay: retry_delay(shared.config.retry_backoff, ctx.attempt),
        },
        Ok(Err(TaskError::Retryable(msg) | TaskError::Permanent(msg))) => {
            Outcome::Failed(format!("{attempt}: {msg}"))
        }
        Ok(Err(TaskError::Interrupted)) => Outcome::Failed(format!(
            "{attempt}: the task reported an interrupt, but nothing interrupted it"
        )),
        Err(panic) => Outcome::Failed(format!(
            "{attempt}: task panicked: {}",
            panic_message(&*panic)
        )),
    }
}

/// Delay before retrying after failed attempt number `attempt` (from 1):
/// `base` doubled for each attempt before, capped at [`RETRY_BACKOFF_CAP`],
/// with "equal" jitter: until the cap, a later delay is never shorter than
/// an earlier one.
pub fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(RETRY_BACKOFF_CAP);
    crate::outage::equal_jitter(exp)
}

/// The longest delay between two attempts.
pub const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// Writes one transition of `job` until it lands (see [`write_until`]).
/// When a retry finds nothing to change, it may be meeting its own earlier
/// attempt, committed just before the connection broke: if the row already
/// holds `target` under this lease, that attempt counts as landed.
fn transition(
    shared: &Shared,
    what: &str,
    stop: &Receiver<()>,
    job: &Job,
    target: &str,
    mut write: impl FnMut(&mut PooledConn) -> Result<bool, DbError>,
) -> Option<bool> {
    let mut tries = 0;
    write_until(shared, what, stop, |c| {
        tries += 1;
        if write(c)? {
            return Ok(true);
        }
        if tries == 1 {
            return Ok(false);
        }
        Ok(!jobs_in_status(c, &[(job.id, job.lease)], target)?.is_empty())
    })
}

/// Fails a job that cannot start (unknown kind, bad input) without ever
/// starting it.
fn reject(shared: &Shared, job: &Job, ch: &Channels, reason: &str) -> Handled {
    log::warn!("job {} failed: {reason}", job.id);
    match transition(
        shared,
        "failing a job",
        &ch.hard_stop,
        job,
        status::FAILED,
        |c| job_fail(c, job.id, job.lease, status::QUEUED, reason),
    ) {
        Some(true) => {
            Metrics::add(&shared.metrics.failed, 1);
            Handled::Rejected
        }
        Some(false) => lost(shared, job, "failing"),
        None => Handled::NotStarted,
    }
}

fn lost(shared: &Shared, job: &Job, doing: &str) -> Handled {
    Metrics::add(&shared.metrics.lost, 1);
    log::info!(
        "job {}: {doing} refused, this replica no longer holds it (lease {}): it was released, rescued or cancelled",
        job.id,
        job.lease
    );
    Handled::Lost
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
