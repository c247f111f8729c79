//! The rescuer: gives back the jobs of replicas that died.
//!
//! Every `HEARTBEAT_INTERVAL` (default 2s) it compares the owners of
//! `QUEUED!` and `STARTED!` jobs with the replicas whose heartbeat is
//! fresher than `WORKER_DEAD_AFTER` (default 10s). A dead owner's `QUEUED!`
//! jobs go back to new (status NULL), claimable at once by any live
//! replica; its `STARTED!` jobs are cancelled with the reason in the row
//! (they started, so they must never start again). Dead replicas' rows are
//! then removed. `QUEUED!` rows with no owner at all (left by the original
//! service) are put back too.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::db::Connection;
use crate::db::Db;
use crate::db::error::DbResult;
use crate::db::owners::{
    OwnedCancel, job_owners_active, job_release_unowned, job_rescue_queued, job_rescue_started,
};
use crate::db::workers::{Registered, worker_list, worker_remove_dead};
use crate::metrics::Counter;
use crate::runtime::liveness::Liveness;
use crate::runtime::tick::TickLoop;

/// What the rescuer reads of the configuration.
#[derive(Debug, Clone)]
pub struct RescuerConfig {
    /// This replica's name (`WORKER_NAME`): never judged by itself.
    pub worker: String,
    /// How often it looks: every half `WORKER_DEAD_AFTER` (at least every
    /// `HEARTBEAT_INTERVAL`), so a dead replica's jobs are rescued within
    /// 1.5 x `WORKER_DEAD_AFTER` of its last heartbeat, and an idle replica
    /// sends few statements.
    pub interval: Duration,
    /// A replica silent this long is dead (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
}

impl From<&Config> for RescuerConfig {
    fn from(c: &Config) -> Self {
        RescuerConfig {
            worker: c.worker_name.clone(),
            interval: (c.worker_dead_after / 2).max(c.heartbeat_interval),
            dead_after: c.worker_dead_after,
        }
    }
}

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
    cfg: RescuerConfig,
    db: Db,
    liveness: Arc<Liveness>,
}

impl Rescuer {
    /// A rescuer that judges others only while `liveness` (this replica's
    /// own heartbeat) is steady.
    pub fn new(cfg: RescuerConfig, db: Db, liveness: Arc<Liveness>) -> Rescuer {
        Rescuer { cfg, db, liveness }
    }

    /// Whether this replica's own heartbeat has been landing steadily for
    /// `WORKER_DEAD_AFTER`. After an outage (or a stall here) every
    /// replica's heartbeat is stale for the same reason: each gets that
    /// long, with a working database, to beat again before anyone judges.
    fn steady(&self) -> bool {
        let steady = self.liveness.steady_for(self.cfg.interval);
        if steady < self.cfg.dead_after {
            log::debug!(
                "rescuer: own heartbeat steady for {} only; judging no one yet",
                crate::config::show_rounded(steady)
            );
            return false;
        }
        true
    }

    /// One pass. Steadiness is checked before the reads (nothing to do) and
    /// after them (they may have waited out an outage).
    pub fn run_once(&self) -> DbResult<Rescued> {
        if !self.steady() {
            return Ok(Rescued::default());
        }
        let mut conn = self.db.conn()?;
        // Owners first, workers second: a replica registers before it claims
        // anything, so one that appears between the two reads is seen as
        // live, never as a dead owner.
        let owners = job_owners_active(&mut conn)?;
        let workers = worker_list(&mut conn, self.cfg.dead_after)?;
        if !self.steady() {
            return Ok(Rescued::default());
        }
        let mut out = self.rescue_owners(&mut conn, &owners, &workers)?;
        if owners.contains(&None) {
            out.released += job_release_unowned(&mut conn)?;
        }
        out.removed_workers = self.remove_dead(&mut conn, &workers)?;
        let m = self.db.metrics();
        m.add(Counter::Released, out.released);
        m.add(Counter::Cancelled, out.cancelled);
        m.add(Counter::Rescued, out.released + out.cancelled);
        Ok(out)
    }

    /// Puts back or cancels what each dead owner holds.
    fn rescue_owners(
        &self,
        conn: &mut Connection,
        owners: &[Option<String>],
        workers: &[Registered],
    ) -> DbResult<Rescued> {
        let live = |name: &str| workers.iter().any(|w| w.fresh && w.name == name);
        let dead_after = self.cfg.dead_after;
        let mut out = Rescued::default();
        for owner in owners.iter().flatten() {
            if *owner == self.cfg.worker || live(owner) {
                continue;
            }
            let released = job_rescue_queued(conn, owner, dead_after)?;
            let reason = format!(
                "cancelled: its worker {owner} died (no heartbeat for {})",
                crate::config::show_duration(dead_after)
            );
            let cancel = OwnedCancel {
                owner,
                reason: &reason,
            };
            let cancelled = job_rescue_started(conn, &cancel, dead_after)?;
            if released + cancelled > 0 {
                log::warn!(
                    "worker {owner} is dead: put back {released} queued jobs, cancelled {cancelled} started ones"
                );
            }
            out.released += released;
            out.cancelled += cancelled;
            out.dead_owners.push(owner.clone());
        }
        Ok(out)
    }

    /// Removes the rows of dead replicas; returns how many went.
    fn remove_dead(&self, conn: &mut Connection, workers: &[Registered]) -> DbResult<u64> {
        let mut removed = 0;
        for w in workers
            .iter()
            .filter(|w| !w.fresh && w.name != self.cfg.worker)
        {
            if worker_remove_dead(conn, &w.name, self.cfg.dead_after)? {
                log::info!("removed dead worker {} from the registry", w.name);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Rescues on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticks = TickLoop {
            what: "rescuing jobs",
            interval: self.cfg.interval,
            stop: &stop,
            health: self.db.health(),
        };
        ticks.run(|| self.run_once().map(drop));
    }
}
