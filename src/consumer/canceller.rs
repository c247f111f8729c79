//! The canceller consumers: write `CANCELLED!` for dead jobs and free the
//! threads running them.
//!
//! Each cancellation is conditional on the run the publisher saw (id and
//! lease, still `STARTED!`), and writes `cancelled_at` and `finished_at`
//! equal, with the reason in `error`. If the task runs in this process it is
//! interrupted at once; if it runs on another replica, that replica's
//! watcher interrupts it.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use crate::cancel::Interrupt;
use crate::consumer::write_until;
use crate::db::jobs::{Dead, job_cancel};
use crate::metrics::Metrics;
use crate::service::Shared;

/// Cancels one dead job. Returns `Some(true)` if this call cancelled it,
/// `Some(false)` if it had already ended or moved on, `None` if `stop`
/// closed before the write landed.
pub fn cancel_one(shared: &Shared, job: Dead, stop: &Receiver<()>) -> Option<bool> {
    let (limit, source) = match job.timeout_ms {
        Some(ms) => (Duration::from_millis(ms), "its timeout"),
        None => (shared.config.job_timeout, "JOB_TIMEOUT"),
    };
    let reason = format!(
        "cancelled: still running {} after it started ({source})",
        humantime::format_duration(limit)
    );
    let cancelled = write_until(shared, "cancelling a job", stop, |conn| {
        job_cancel(conn, job.id, job.lease, &reason)
    })?;
    if cancelled {
        Metrics::add(&shared.metrics.cancelled, 1);
        let here = shared
            .registry
            .interrupt(job.id, Some(job.lease), Interrupt::Cancelled);
        log::info!(
            "job {} cancelled: past {source}{}",
            job.id,
            if here {
                "; its task here was interrupted"
            } else {
                ""
            }
        );
    }
    Some(cancelled)
}

/// One canceller consumer's loop: until the channel closes or `stop` does.
pub fn run(shared: Arc<Shared>, rx: Receiver<Dead>, stop: Receiver<()>) {
    loop {
        let job = select! {
            recv(stop) -> _ => return,
            recv(rx) -> msg => match msg {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        if cancel_one(&shared, job, &stop).is_none() {
            return;
        }
    }
}
