//! The backlog: what waits in each queue for each kind, and whether any live
//! replica can take it.
//!
//! Every [`BACKLOG_INTERVAL`] it counts the new jobs by queue and kind (due
//! now, and scheduled for later), how long the oldest due one has waited,
//! and which of them no live replica serves (its queue in `QUEUES` and its
//! kind registered): those stay new, never failed for it, and it says so in
//! the log once a minute at most. `/metrics` shows the counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::db::Db;
use crate::db::error::DbResult;
use crate::db::queues::{job_ages, job_backlog, worker_served};
use crate::queues::{Backlog, Queues};
use crate::runtime::tick::TickLoop;

/// How often the backlog is counted.
pub const BACKLOG_INTERVAL: Duration = Duration::from_secs(15);

/// How often, at most, the log says which jobs no live replica can take.
pub const UNSERVED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the backlog loop reads of the configuration.
#[derive(Debug, Clone)]
pub struct BacklogConfig {
    /// A replica silent this long no longer serves (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
}

impl From<&Config> for BacklogConfig {
    fn from(c: &Config) -> Self {
        BacklogConfig {
            dead_after: c.worker_dead_after,
        }
    }
}

/// The backlog loop.
pub struct BacklogLoop {
    cfg: BacklogConfig,
    db: Db,
    queues: Arc<Queues>,
    said: std::sync::Mutex<Option<Instant>>,
}

/// What waits, as counted by [`read_backlog`].
pub type Counted = Vec<Backlog>;

/// Counts the backlog: new jobs by queue and kind, the oldest due one's
/// age, and whether a live replica serves each (for `stats`, `queues` and
/// the loop below).
pub fn read_backlog(db: &Db, dead_after: Duration) -> DbResult<Counted> {
    let mut conn = db.conn()?;
    let rows = job_backlog(&mut conn)?;
    let oldest: Vec<u64> = rows.iter().filter_map(|(_, id)| *id).collect();
    let ages = job_ages(&mut conn, &oldest)?;
    let served = worker_served(&mut conn, dead_after)?;
    // As claims match them: in the columns' collation, whatever the case.
    let serves = |list: &str, name: &str| list.split(',').any(|x| x.eq_ignore_ascii_case(name));
    Ok(rows
        .into_iter()
        .map(|(mut b, id)| {
            b.oldest = id.and_then(|id| ages.get(&id).copied());
            b.served = served
                .iter()
                .any(|(q, k)| serves(q, &b.queue) && serves(k, &b.kind));
            b
        })
        .collect())
}

impl BacklogLoop {
    /// A loop counting `db`'s backlog into `queues`.
    pub fn new(cfg: BacklogConfig, db: Db, queues: Arc<Queues>) -> BacklogLoop {
        BacklogLoop {
            cfg,
            db,
            queues,
            said: std::sync::Mutex::new(None),
        }
    }

    /// One count; returns the jobs due now that no live replica can take.
    pub fn run_once(&self) -> DbResult<u64> {
        let backlog = read_backlog(&self.db, self.cfg.dead_after)?;
        let unserved: Vec<&Backlog> = backlog
            .iter()
            .filter(|b| !b.served && b.waiting > 0)
            .collect();
        let stranded = unserved.iter().map(|b| b.waiting).sum();
        if stranded > 0 && self.time_to_say() {
            let groups: Vec<String> = unserved
                .iter()
                .map(|b| format!("{} in queue {} of kind {}", b.waiting, b.queue, b.kind))
                .collect();
            log::warn!(
                "{stranded} jobs wait for a queue or kind no live replica serves ({}): they stay \
                 new until a replica with QUEUES and kinds that match starts",
                groups.join(", ")
            );
        }
        self.queues.set_backlog(backlog);
        Ok(stranded)
    }

    fn time_to_say(&self) -> bool {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        if said.is_some_and(|at| at.elapsed() < UNSERVED_LOG_INTERVAL) {
            return false;
        }
        *said = Some(Instant::now());
        true
    }

    /// Counts on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticks = TickLoop {
            what: "counting the backlog",
            interval: BACKLOG_INTERVAL,
            stop: &stop,
            health: self.db.health(),
        };
        ticks.run(|| self.run_once().map(drop));
    }
}
