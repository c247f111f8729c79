//! The pruner: deletes final rows older than `RETENTION`.
//!
//! Every `PRUNE_INTERVAL` (default 1m) it deletes `DONE!`, `CANCELLED!` and
//! `FAILED!` rows whose `finished_at` is older than `RETENTION` (default
//! 7d), in batches of at most [`BATCH`] rows per statement, so it never
//! holds many locks or a long transaction. Rows of any other status are
//! never touched. With `RETENTION=0` it does not run.

use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

use crate::config::Config;
use crate::db::Db;
use crate::db::error::DbResult;
use crate::db::jobs::{job_count_prunable, job_prune};
use crate::runtime::tick::TickLoop;

/// Rows deleted per statement at most.
pub const BATCH: usize = 1000;

/// What the pruner reads of the configuration.
#[derive(Debug, Clone)]
pub struct PrunerConfig {
    /// Final rows older than this go (`RETENTION`).
    pub retention: Duration,
    /// How often it prunes (`PRUNE_INTERVAL`).
    pub interval: Duration,
}

impl PrunerConfig {
    /// The pruner's configuration, if `RETENTION` asks for one.
    pub fn from_config(c: &Config) -> Option<PrunerConfig> {
        c.retention.map(|retention| PrunerConfig {
            retention,
            interval: c.prune_interval,
        })
    }
}

/// The pruner.
pub struct Pruner {
    cfg: PrunerConfig,
    db: Db,
}

impl Pruner {
    /// A pruner of `db`'s jobs table.
    pub fn new(cfg: PrunerConfig, db: Db) -> Pruner {
        Pruner { cfg, db }
    }

    /// Says how many final rows the first pass will delete, if any: after
    /// an upgrade from the original service, its old rows are among them.
    pub fn announce(&self) -> DbResult<u64> {
        const CAP: u64 = 1_000_000;
        let n = job_count_prunable(&mut *self.db.conn()?, self.cfg.retention, CAP)?;
        if n > 0 {
            log::warn!(
                "the pruner will delete {}{n} final jobs finished more than RETENTION ({}) ago, \
                 {} rows per statement; set RETENTION=0 to keep every row",
                if n == CAP { "at least " } else { "" },
                crate::config::show_duration(self.cfg.retention),
                BATCH
            );
        }
        Ok(n)
    }

    /// One pass: deletes batch after batch until no old final row is left
    /// or `stop` closes. Returns how many rows it deleted.
    pub fn run_once(&self, stop: &Receiver<()>) -> DbResult<u64> {
        let mut deleted = 0;
        loop {
            let n = job_prune(&mut *self.db.conn()?, self.cfg.retention, BATCH)?;
            deleted += n;
            let stopped = matches!(stop.try_recv(), Err(TryRecvError::Disconnected));
            if (n as usize) < BATCH || stopped {
                break;
            }
        }
        if deleted > 0 {
            log::info!(
                "pruned {deleted} final jobs older than RETENTION ({})",
                crate::config::show_duration(self.cfg.retention)
            );
        }
        Ok(deleted)
    }

    /// Prunes on every tick until `stop` closes (first saying how much it
    /// is about to delete).
    pub fn run(self, stop: Receiver<()>) {
        if let Err(e) = self.announce() {
            log::debug!("counting the rows to prune: {e}");
        }
        let ticks = TickLoop {
            what: "pruning old jobs",
            interval: self.cfg.interval,
            stop: &stop,
            health: self.db.health(),
        };
        ticks.run(|| self.run_once(&stop).map(drop));
    }
}
