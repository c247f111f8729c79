//! The watcher: interrupts tasks whose job this replica no longer holds.
//!
//! Another replica's canceller may cancel a job that runs here, or the
//! rescuer may take it while this replica was paused or cut off. Every
//! second, while tasks have been running here for a while, one query checks
//! that their rows are still `STARTED!` under this run's lease; any that are
//! not are interrupted, so their threads take the next job within about a
//! second. An idle replica sends nothing.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, never};

use crate::cancel::Interrupt;
use crate::db::DbResult;
use crate::db::jobs::job_find_lost;
use crate::publisher::tick_loop;
use crate::service::Shared;

/// How often running tasks are checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The watcher.
pub struct Watcher {
    shared: Arc<Shared>,
}

impl Watcher {
    /// A watcher over the shared registry of running tasks.
    pub fn new(shared: Arc<Shared>) -> Watcher {
        Watcher { shared }
    }

    /// One check; returns how many tasks were interrupted.
    pub fn run_once(&self) -> DbResult<usize> {
        // Tasks younger than this are left alone: most finish before any
        // other replica could have cancelled them.
        let runs = self.shared.registry.older_than(WATCH_INTERVAL / 2);
        if runs.is_empty() {
            return Ok(0);
        }
        let lost = {
            let mut conn = self.shared.db.conn()?;
            job_find_lost(&mut conn, &runs)?
        };
        let mut interrupted = 0;
        for id in lost {
            let lease = runs.iter().find(|r| r.id == id).map(|r| r.lease);
            if self
                .shared
                .registry
                .interrupt(id, lease, Interrupt::Cancelled)
            {
                log::info!(
                    "job {id} is no longer STARTED! under this run (cancelled or rescued): interrupting its task"
                );
                interrupted += 1;
            }
        }
        Ok(interrupted)
    }

    /// Checks every second until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let shared = Arc::clone(&self.shared);
        tick_loop(
            &shared,
            "checking running jobs",
            WATCH_INTERVAL,
            &stop,
            &never(),
            |_| self.run_once().map(|_| false),
        );
    }
}
