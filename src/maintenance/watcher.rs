//! The watcher: interrupts tasks whose run this replica no longer holds.
//!
//! Another replica's canceller may cancel a job that runs here, the rescuer
//! may take it while this replica was paused or cut off, or a client may
//! request its cancel (`cancel_requested_at`). Every [`WATCH_INTERVAL`],
//! while tasks have been running here for a while, one query checks their
//! rows; a task whose row is no longer `STARTED!` under this run's lease is
//! interrupted, and so is one whose cancel was requested (its consumer then
//! writes it `CANCELLED!`, "cancelled on request"), so their threads take
//! the next job within about a second. An idle replica sends nothing.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::cancel::{Interrupt, Registry};
use crate::db::Db;
use crate::db::error::DbResult;
use crate::db::jobs::job_find_lost;
use crate::runtime::tick::TickLoop;

/// How often running tasks are checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The watcher.
pub struct Watcher {
    db: Db,
    registry: Arc<Registry>,
}

impl Watcher {
    /// A watcher over the tasks in `registry`.
    pub fn new(db: Db, registry: Arc<Registry>) -> Watcher {
        Watcher { db, registry }
    }

    /// One check; returns how many tasks were interrupted.
    pub fn run_once(&self) -> DbResult<usize> {
        // Tasks younger than this are left alone: most finish before any
        // other replica could have cancelled them.
        let runs = self.registry.older_than(WATCH_INTERVAL / 2);
        if runs.is_empty() {
            return Ok(0);
        }
        let lost = job_find_lost(&mut *self.db.conn()?, &runs)?;
        let mut interrupted = 0;
        for run in lost.gone {
            if self.registry.interrupt(run, Interrupt::Cancelled) {
                log::info!(
                    "job {} is no longer STARTED! under this run (cancelled or rescued): \
                     interrupting its task",
                    run.id
                );
                interrupted += 1;
            }
        }
        for run in lost.requested {
            if self.registry.interrupt(run, Interrupt::Requested) {
                log::info!("job {}: cancel requested; interrupting its task", run.id);
                interrupted += 1;
            }
        }
        Ok(interrupted)
    }

    /// Checks every [`WATCH_INTERVAL`] until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticks = TickLoop {
            what: "checking running jobs",
            interval: WATCH_INTERVAL,
            stop: &stop,
            health: self.db.health(),
        };
        ticks.run(|| self.run_once().map(drop));
    }
}
