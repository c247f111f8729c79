//! The canceller consumers: write `CANCELLED!` for dead runs and free the
//! threads running them.
//!
//! Each cancellation is conditional on the run the publisher saw (id and
//! lease, still `STARTED!`), and writes `cancelled_at` and `finished_at`
//! equal, with the reason (naming the job's `timeout` or `JOB_TIMEOUT`,
//! default 10s) in `error`. If the task runs in this process it is
//! interrupted at once; if it runs on another replica, that replica's
//! watcher interrupts it.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use super::finisher::{Finish, Outcome, Scope, write_one};
use super::outcome::CANCELLED_ON_REQUEST;
use crate::cancel::{Interrupt, Presence, Registry};
use crate::config::Config;
use crate::db::jobs::{Dead, job_forget_late_cancel};
use crate::db::{Db, HeldConn};
use crate::job::{Run, status};
use crate::metrics::Counter;
use crate::runtime::liveness::Liveness;

/// What a canceller consumer reads of the configuration.
#[derive(Debug, Clone)]
pub struct CancellerConfig {
    /// The timeout of a job without one of its own (`JOB_TIMEOUT`), for the
    /// reason it writes.
    pub job_timeout: Duration,
    /// This replica's name (`WORKER_NAME`).
    pub worker: String,
    /// A replica silent this long is dead (`WORKER_DEAD_AFTER`): the runs of
    /// a live one are its own to cancel.
    pub dead_after: Duration,
    /// How often this replica's heartbeat lands (`HEARTBEAT_INTERVAL`).
    pub heartbeat_interval: Duration,
}

impl From<&Config> for CancellerConfig {
    fn from(c: &Config) -> Self {
        CancellerConfig {
            job_timeout: c.job_timeout,
            worker: c.worker_name.clone(),
            dead_after: c.worker_dead_after,
            heartbeat_interval: c.heartbeat_interval,
        }
    }
}

/// A canceller consumer.
pub struct Canceller {
    cfg: CancellerConfig,
    db: Db,
    registry: Arc<Registry>,
    liveness: Arc<Liveness>,
}

impl Canceller {
    /// Who cancels, for the write's condition.
    fn scope(&self) -> Scope {
        let steady = self.liveness.steady_for(self.cfg.heartbeat_interval);
        Scope {
            worker: self.cfg.worker.clone(),
            others: steady >= self.cfg.dead_after,
            dead_after: self.cfg.dead_after,
        }
    }
}

impl Canceller {
    /// A canceller writing to `db` and interrupting tasks in `registry`,
    /// judging other replicas dead only while `liveness` (its own heartbeat)
    /// is steady.
    pub fn new(
        cfg: CancellerConfig,
        db: Db,
        registry: Arc<Registry>,
        liveness: Arc<Liveness>,
    ) -> Canceller {
        Canceller {
            cfg,
            db,
            registry,
            liveness,
        }
    }

    /// Cancels one dead run, or one whose cancel was requested. Returns
    /// `Some(true)` if this call cancelled it (or interrupted its task here,
    /// whose consumer writes it), `Some(false)` if it had already ended or
    /// moved on, or is not this replica's to cancel (its task here returned
    /// and its outcome is being written; or it is a live replica's), `None`
    /// if `stop` closed before the write landed.
    pub fn cancel_one(&self, dead: Dead, stop: &Receiver<()>) -> Option<bool> {
        if let Some(status) = &dead.requested {
            return self.cancel_requested(&dead, status.as_deref(), stop);
        }
        // Decided under the registry's lock: a task that returned first keeps
        // its outcome; one still running is interrupted and cancelled.
        let here = match self.registry.check_out(dead.run, Interrupt::Cancelled) {
            Presence::Finishing | Presence::Starting => return Some(false),
            Presence::Running => true,
            Presence::Absent => false,
        };
        let (limit, source) = match dead.timeout_ms {
            Some(ms) => (Duration::from_millis(ms), "its timeout"),
            None => (self.cfg.job_timeout, "JOB_TIMEOUT"),
        };
        let reason = format!(
            "cancelled: still running {} after it started ({source})",
            crate::config::show_duration(limit)
        );
        let cancelled = self.write(dead.run, Outcome::Cancelled(reason), stop)?;
        if cancelled {
            log::info!(
                "job {} cancelled: past {source}{}",
                dead.run.id,
                if here {
                    "; its task here was interrupted"
                } else {
                    ""
                }
            );
        }
        Some(cancelled)
    }

    /// A cancel requested for a job in `status`: one that never started is
    /// cancelled by any replica; a task running here is interrupted (its
    /// consumer writes the row); a run of a replica that is dead, or of
    /// this one without a task here, is written `CANCELLED!`.
    fn cancel_requested(
        &self,
        dead: &Dead,
        status: Option<&str>,
        stop: &Receiver<()>,
    ) -> Option<bool> {
        let reason = CANCELLED_ON_REQUEST.to_string();
        let outcome = match status {
            Some(status::DONE | status::CANCELLED | status::FAILED) => {
                // Requested once the job was final: it changes nothing, and
                // is forgotten so a later re-run is not cancelled by it.
                let mut held = HeldConn::new(self.db.clone());
                return match held.run(|c| job_forget_late_cancel(c, dead.run.id)) {
                    Ok(forgot) => Some(forgot),
                    Err(e) => {
                        log::warn!("job {}: forgetting a late cancel: {e}", dead.run.id);
                        None
                    }
                };
            }
            Some(status::STARTED) if self.registry.was_interrupted(dead.run) => {
                // Interrupted already: its consumer writes the row when the
                // task returns (or its deadline does).
                return Some(false);
            }
            Some(status::STARTED) => {
                match self.registry.check_out(dead.run, Interrupt::Requested) {
                    Presence::Running => {
                        log::info!(
                            "job {}: cancel requested; interrupting its task",
                            dead.run.id
                        );
                        return Some(true);
                    }
                    Presence::Finishing | Presence::Starting => return Some(false),
                    Presence::Absent => Outcome::Cancelled(reason),
                }
            }
            _ => Outcome::CancelledUnstarted(reason),
        };
        let cancelled = self.write(dead.run, outcome, stop)?;
        if cancelled {
            log::info!("job {} cancelled on request", dead.run.id);
        }
        Some(cancelled)
    }

    fn write(&self, run: Run, outcome: Outcome, stop: &Receiver<()>) -> Option<bool> {
        let finish = Finish { run, outcome };
        let mut held = HeldConn::new(self.db.clone());
        match write_one(&mut held, &self.scope(), &finish, stop) {
            Ok(cancelled) => {
                if cancelled {
                    self.db.metrics().add(Counter::Cancelled, 1);
                }
                Some(cancelled)
            }
            Err(e) => {
                log::warn!("{run}: cancelling it: {e}");
                None
            }
        }
    }

    /// One canceller consumer's loop: until the channel closes or `stop`
    /// does.
    pub fn run(self, rx: Receiver<Dead>, stop: Receiver<()>) {
        loop {
            let dead: Dead = select! {
                recv(stop) -> _ => return,
                recv(rx) -> msg => match msg {
                    Ok(dead) => dead,
                    Err(_) => return,
                },
            };
            if self.cancel_one(dead, &stop).is_none() {
                return;
            }
        }
    }
}
