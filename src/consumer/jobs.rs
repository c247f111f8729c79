//! The jobs consumers: run claimed jobs, one at a time per thread.
//!
//! For each job taken from the channel a consumer:
//!
//! 1. checks the row's input; bad input (a negative `sleep`) becomes
//!    `FAILED!` with the reason, without ever starting;
//! 2. takes a token from the replica's bucket (`RATE_LIMIT`);
//! 3. commits `STARTED!` and `started_at` before the task begins, on
//!    condition that its claim (lease) still holds: a job starts at most
//!    once, even across crashes;
//! 4. runs the task with a [`Cancellation`](crate::cancel::Cancellation) the
//!    canceller, the watcher or the shutdown deadline can trigger; a panic
//!    in the task becomes `FAILED!` with the panic message and the thread
//!    carries on;
//! 5. writes the final status (`DONE!`, `FAILED!`, or `CANCELLED!` after a
//!    shutdown interrupt), again conditional on its lease, retrying through
//!    database outages until it lands or the claim is found lost.
//!
//! On shutdown (`stop_taking` closes) a consumer takes no new job; a job it
//! had taken but not started stays `QUEUED!` and the shutdown release puts
//! it back. Writes in flight give up only when `hard_stop` closes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, select};

use crate::cancel::Interrupt;
use crate::consumer::{closed, write_until};
use crate::db::jobs::{
    Job, job_cancel, job_fail, job_finish, job_start, job_status_under_lease, status,
};
use crate::db::{DbError, PooledConn};
use crate::metrics::Metrics;
use crate::service::Shared;
use crate::task::{Outcome, run_sleep, validate_sleep};

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
        let job = select! {
            recv(ch.stop_taking) -> _ => return,
            recv(ch.jobs) -> msg => match msg {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let _ = ch.room_freed.try_send(());
        if handle(&shared, job, &ch) == Handled::NotStarted {
            return;
        }
    }
}

/// Runs one job through the steps above.
pub fn handle(shared: &Shared, job: Job, ch: &Channels) -> Handled {
    let m = &shared.metrics;
    if let Err(reason) = validate_sleep(job.sleep) {
        log::warn!("job {} failed: {reason}", job.id);
        return match transition(
            shared,
            "failing a job",
            &ch.hard_stop,
            &job,
            status::FAILED,
            |c| job_fail(c, job.id, job.lease, status::QUEUED, &reason),
        ) {
            Some(true) => {
                Metrics::add(&m.failed, 1);
                Handled::Rejected
            }
            Some(false) => lost(shared, &job, "failing"),
            None => Handled::NotStarted,
        };
    }
    if !shared.bucket.take(&ch.stop_taking) || closed(&ch.stop_taking) {
        return Handled::NotStarted;
    }
    match transition(
        shared,
        "starting a job",
        &ch.stop_taking,
        &job,
        status::STARTED,
        |c| job_start(c, job.id, job.lease),
    ) {
        Some(true) => Metrics::add(&m.started, 1),
        Some(false) => return lost(shared, &job, "starting"),
        None => return Handled::NotStarted,
    }

    let cancel = shared.registry.start(job.id, job.lease);
    let outcome =
        catch_unwind(AssertUnwindSafe(|| run_sleep(job.sleep, &cancel))).unwrap_or_else(|panic| {
            Outcome::Failed(format!("task panicked: {}", panic_message(&*panic)))
        });
    shared.registry.finish(job.id);

    let written = match &outcome {
        Outcome::Done => transition(
            shared,
            "finishing a job",
            &ch.hard_stop,
            &job,
            status::DONE,
            |c| job_finish(c, job.id, job.lease),
        )
        .map(|ok| (ok, &m.done)),
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
        Ok(job_status_under_lease(c, job.id, job.lease)?.as_deref() == Some(target))
    })
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
