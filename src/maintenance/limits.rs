//! The limits: keeps this replica's copy of the queues' steering current.
//!
//! Every `HEARTBEAT_INTERVAL` (default 2s) it reads, in one statement, the
//! queues that have a row steering them (`paused`, `rate_limit`,
//! `max_running`) and how many live replicas (heartbeat fresher than
//! `WORKER_DEAD_AFTER`, default 10s) serve each, and hands them to
//! [`Queues`]: a change to a row takes effect within a heartbeat, and a
//! replica that dies stops counting once its heartbeat is that old.
//!
//! Each of the `n` replicas serving a queue gets `rate_limit / n` tokens a
//! second, in a bucket that holds at most a second's worth (at least one
//! token), so the cluster's burst is at most a second's worth too. When the
//! rate is below `n` (one token would take longer than a second to come),
//! only the first `ceil(rate_limit)` of them by name take the queue's jobs,
//! each `rate_limit / ceil(rate_limit)`: ten replicas with `rate_limit = 1`
//! do not start ten jobs at once after a quiet spell.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::db::Db;
use crate::db::error::DbResult;
use crate::db::queues::queue_limits;
use crate::queues::Queues;
use crate::runtime::tick::TickLoop;

/// What the limits loop reads of the configuration.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// How often it reads (`HEARTBEAT_INTERVAL`).
    pub interval: Duration,
    /// A replica silent this long no longer counts (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
    /// This replica (`WORKER_NAME`).
    pub worker: String,
}

impl From<&Config> for LimitsConfig {
    fn from(c: &Config) -> Self {
        LimitsConfig {
            interval: c.heartbeat_interval,
            dead_after: c.worker_dead_after,
            worker: c.worker_name.clone(),
        }
    }
}

/// The limits loop.
pub struct LimitsLoop {
    cfg: LimitsConfig,
    db: Db,
    queues: Arc<Queues>,
}

impl LimitsLoop {
    /// A loop reading `db` into `queues`.
    pub fn new(cfg: LimitsConfig, db: Db, queues: Arc<Queues>) -> LimitsLoop {
        LimitsLoop { cfg, db, queues }
    }

    /// One read; returns how many queues are steered.
    pub fn run_once(&self) -> DbResult<usize> {
        let limits = queue_limits(&mut *self.db.conn()?, self.cfg.dead_after, &self.cfg.worker)?;
        let n = limits.len();
        if limits != self.queues.all() {
            log::debug!("queue limits: {limits:?}");
        }
        self.queues.set(limits);
        Ok(n)
    }

    /// Reads on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticks = TickLoop {
            what: "reading queue limits",
            interval: self.cfg.interval,
            stop: &stop,
            health: self.db.health(),
        };
        ticks.run(|| self.run_once().map(drop));
    }
}
