//! The pruner: deletes final rows older than `RETENTION`.
//!
//! Every `PRUNE_INTERVAL` it deletes `DONE!`, `CANCELLED!` and `FAILED!` rows
//! whose `finished_at` is older than `RETENTION`, in batches of at most
//! [`BATCH`] rows per statement, so it never holds many locks or a long
//! transaction. Rows of any other status are never touched. With
//! `RETENTION=0` it does not run.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, never};

use crate::consumer::closed;
use crate::db::DbResult;
use crate::db::jobs::job_prune;
use crate::publisher::tick_loop;
use crate::service::Shared;

/// Rows deleted per statement at most.
pub const BATCH: usize = 1000;

/// The pruner.
pub struct Pruner {
    shared: Arc<Shared>,
    retention: Duration,
}

impl Pruner {
    /// A pruner keeping final rows for `retention`.
    pub fn new(shared: Arc<Shared>, retention: Duration) -> Pruner {
        Pruner { shared, retention }
    }

    /// One pass: deletes batch after batch until no old final row is left
    /// or `stop` closes. Returns how many rows it deleted.
    pub fn run_once(&self, stop: &Receiver<()>) -> DbResult<u64> {
        let mut deleted = 0;
        loop {
            let n = {
                let mut conn = self.shared.db.conn()?;
                job_prune(&mut conn, self.retention, BATCH)?
            };
            deleted += n;
            if (n as usize) < BATCH || closed(stop) {
                break;
            }
        }
        if deleted > 0 {
            log::info!(
                "pruned {deleted} final jobs older than RETENTION ({})",
                humantime::format_duration(self.retention)
            );
        }
        Ok(deleted)
    }

    /// Prunes on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let shared = Arc::clone(&self.shared);
        tick_loop(
            &shared,
            "pruning old jobs",
            shared.config.prune_interval,
            &stop,
            &never(),
            |_| self.run_once(&stop).map(|_| false),
        );
    }
}
