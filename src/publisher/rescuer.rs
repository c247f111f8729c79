//! The rescuer: gives back the jobs of replicas that died.
//!
//! Every `HEARTBEAT_INTERVAL` it compares the owners of `QUEUED!` and
//! `STARTED!` jobs with the replicas whose heartbeat is fresher than
//! `WORKER_DEAD_AFTER`. A dead owner's `QUEUED!` jobs go back to new (status
//! NULL), claimable at once by any live replica; its `STARTED!` jobs are
//! cancelled with the reason in the row (they started, so they must never
//! start again). Dead replicas' rows are then removed. `QUEUED!` rows with no
//! owner at all (left by the original service) are put back too.

use std::sync::Arc;

use crossbeam_channel::{Receiver, never};

use crate::db::DbResult;
use crate::db::jobs::{
    job_owners_active, job_release_unowned, job_rescue_queued, job_rescue_started,
};
use crate::db::workers::{worker_list, worker_remove_dead};
use crate::metrics::Metrics;
use crate::publisher::tick_loop;
use crate::service::Shared;

/// What one rescue pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// Dead owners whose jobs were rescued.
    pub dead_owners: Vec<String>,
    /// `QUEUED!` jobs put back to new.
    pub released: u64,
    /// `STARTED!` jobs cancelled.
    pub cancelled: u64,
    /// Dead replicas' rows removed.
    pub removed_workers: u64,
}

/// The rescuer.
pub struct Rescuer {
    shared: Arc<Shared>,
}

impl Rescuer {
    /// A rescuer.
    pub fn new(shared: Arc<Shared>) -> Rescuer {
        Rescuer { shared }
    }

    fn steady(&self) -> bool {
        let steady = self
            .shared
            .liveness
            .steady_for(self.shared.config.heartbeat_interval);
        if steady < self.shared.config.worker_dead_after {
            log::debug!("rescuer: own heartbeat steady for {steady:?} only; judging no one yet");
            return false;
        }
        true
    }

    /// One pass.
    pub fn run_once(&self) -> DbResult<Rescued> {
        let dead_after = self.shared.config.worker_dead_after;
        // Judge others only while this replica's own heartbeat has been
        // landing steadily for WORKER_DEAD_AFTER. After an outage (or a
        // stall here) every replica's heartbeat is stale for the same reason:
        // each gets that long, with a working database, to beat again.
        // Checked before the reads (nothing to do) and after them (they may
        // have waited out an outage).
        if !self.steady() {
            return Ok(Rescued::default());
        }
        let mut conn = self.shared.db.conn()?;
        // Owners first, workers second: a replica registers before it claims
        // anything, so one that appears between the two reads is seen as
        // live, never as a dead owner.
        let owners = job_owners_active(&mut conn)?;
        let workers = worker_list(&mut conn, dead_after)?;
        if !self.steady() {
            return Ok(Rescued::default());
        }
        let live = |name: &str| workers.iter().any(|(n, fresh)| *fresh && n == name);
        let mut out = Rescued::default();
        let mut unowned = false;
        for owner in owners {
            let Some(owner) = owner else {
                unowned = true;
                continue;
            };
            if owner == self.shared.worker || live(&owner) {
                continue;
            }
            let released = job_rescue_queued(&mut conn, &owner, dead_after)?;
            let reason = format!(
                "cancelled: its worker {owner} died (no heartbeat for {})",
                humantime::format_duration(dead_after)
            );
            let cancelled = job_rescue_started(&mut conn, &owner, &reason, dead_after)?;
            if released + cancelled > 0 {
                log::warn!(
                    "worker {owner} is dead: put back {released} queued jobs, cancelled {cancelled} started ones"
                );
            }
            out.released += released;
            out.cancelled += cancelled;
            out.dead_owners.push(owner);
        }
        if unowned {
            out.released += job_release_unowned(&mut conn)?;
        }
        let dead = workers
            .iter()
            .filter(|(name, fresh)| !fresh && *name != self.shared.worker);
        for (name, _) in dead {
            if worker_remove_dead(&mut conn, name, dead_after)? {
                log::info!("removed dead worker {name} from the registry");
                out.removed_workers += 1;
            }
        }
        let m = &self.shared.metrics;
        Metrics::add(&m.released, out.released);
        Metrics::add(&m.cancelled, out.cancelled);
        Metrics::add(&m.rescued, out.released + out.cancelled);
        Ok(out)
    }

    /// Rescues on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let shared = Arc::clone(&self.shared);
        tick_loop(
            &shared,
            "rescuing jobs",
            shared.config.heartbeat_interval,
            &stop,
            &never(),
            |_| self.run_once().map(|_| false),
        );
    }
}
