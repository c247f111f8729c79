//! The heartbeat: proves this replica alive in the `workers` table.
//!
//! Every `HEARTBEAT_INTERVAL` it refreshes this replica's `heartbeat_at`.
//! Other replicas' rescuers treat a replica silent for `WORKER_DEAD_AFTER`
//! as dead. If this replica finds its row gone (it was paused or cut off
//! long enough to be declared dead), its jobs were already rescued: it says
//! so and registers again; its late writes are refused by the leases.

use std::sync::Arc;

use crossbeam_channel::{Receiver, never};

use crate::db::DbResult;
use crate::db::workers::{worker_heartbeat, worker_register};
use crate::publisher::tick_loop;
use crate::service::Shared;

/// The heartbeat publisher.
pub struct Heartbeat {
    shared: Arc<Shared>,
}

impl Heartbeat {
    /// A heartbeat for this replica.
    pub fn new(shared: Arc<Shared>) -> Heartbeat {
        Heartbeat { shared }
    }

    /// Registers this replica (at start-up, before anything is claimed).
    pub fn register(&self) -> DbResult<()> {
        let mut conn = self.shared.db.conn()?;
        worker_register(
            &mut conn,
            &self.shared.worker,
            &crate::config::host_name(),
            std::process::id(),
            crate::VERSION,
        )
    }

    /// One beat. Returns `false` when the row was gone and had to be
    /// registered again.
    pub fn run_once(&self) -> DbResult<bool> {
        let mut conn = self.shared.db.conn()?;
        if worker_heartbeat(&mut conn, &self.shared.worker)? {
            return Ok(true);
        }
        log::warn!(
            "this replica ({}) was declared dead by the others (no heartbeat for WORKER_DEAD_AFTER); \
             its claims were rescued; registering again",
            self.shared.worker
        );
        drop(conn);
        self.register()?;
        Ok(false)
    }

    /// Beats on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let shared = Arc::clone(&self.shared);
        tick_loop(
            &shared,
            "heartbeat",
            shared.config.heartbeat_interval,
            &stop,
            &never(),
            |_| self.run_once().map(|_| false),
        );
    }
}
