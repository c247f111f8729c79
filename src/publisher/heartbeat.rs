//! The heartbeat: proves this replica alive in the `workers` table.
//!
//! Every `HEARTBEAT_INTERVAL` it refreshes this replica's `heartbeat_at`.
//! Other replicas' rescuers treat a replica silent for `WORKER_DEAD_AFTER`
//! as dead. If this replica finds its row gone (it was paused or cut off
//! long enough to be declared dead), its jobs were already rescued: it says
//! so and registers again; its late writes are refused by the leases.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, never};

use crate::db::jobs::{job_cancel_owned, job_release_queued};
use crate::db::workers::{worker_heartbeat, worker_heartbeat_age, worker_register};
use crate::db::{DbError, DbResult};
use crate::publisher::tick_loop;
use crate::service::Shared;

/// When this replica's heartbeats have been landing without a gap.
#[derive(Debug, Default)]
pub struct Liveness {
    /// (first beat of the current run of beats, latest beat)
    beats: Mutex<Option<(Instant, Instant)>>,
}

impl Liveness {
    /// Records a heartbeat that landed. A gap of more than two intervals
    /// since the previous one starts a new run.
    pub fn beat(&self, interval: Duration) {
        let now = Instant::now();
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        *beats = match *beats {
            Some((since, last)) if now.duration_since(last) <= max_gap(interval) => {
                Some((since, now))
            }
            _ => Some((now, now)),
        };
    }

    /// How long heartbeats have been landing without a gap, up to now; zero
    /// if the latest is already overdue.
    pub fn steady_for(&self, interval: Duration) -> Duration {
        let now = Instant::now();
        match *self.beats.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((since, last)) if now.duration_since(last) <= max_gap(interval) => {
                now.duration_since(since)
            }
            _ => Duration::ZERO,
        }
    }
}

impl Liveness {
    /// How long ago the latest heartbeat landed; `None` before the first.
    pub fn last_beat_age(&self) -> Option<Duration> {
        let beats = *self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.map(|(_, last)| last.elapsed())
    }

    /// Whether the latest heartbeat landed recently enough that the others
    /// see this replica alive (within two intervals, plus a checkout).
    pub fn is_fresh(&self, interval: Duration) -> bool {
        self.last_beat_age()
            .is_some_and(|age| age <= max_gap(interval))
    }
}

fn max_gap(interval: Duration) -> Duration {
    interval * 2 + crate::db::CHECKOUT_TIMEOUT
}

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
        )?;
        self.shared
            .liveness
            .beat(self.shared.config.heartbeat_interval);
        Ok(())
    }

    /// Takes this replica's name at start-up. A row under the same name
    /// with a fresh heartbeat is another live replica, or this one's previous
    /// life (a restarted container keeps its host name and pid): wait until
    /// it has been silent for `WORKER_DEAD_AFTER`, and refuse to start if it
    /// keeps beating. Then whatever the name still holds was left by a dead
    /// process: its `QUEUED!` jobs go back to new and its `STARTED!` jobs are
    /// cancelled, before this replica claims anything.
    pub fn register_at_start(&self) -> DbResult<()> {
        let cfg = &self.shared.config;
        let name = &self.shared.worker;
        let deadline =
            std::time::Instant::now() + cfg.worker_dead_after + cfg.heartbeat_interval * 2;
        let mut warned = false;
        loop {
            let age = worker_heartbeat_age(&mut *self.shared.db.conn()?, name)?;
            match age {
                Some(age) if age < cfg.worker_dead_after => {
                    if std::time::Instant::now() >= deadline {
                        return Err(DbError::NameInUse(format!(
                            "another live replica is using WORKER_NAME={name} (heartbeat {:.1}s ago): \
                             give each replica its own name",
                            age.as_secs_f64()
                        )));
                    }
                    if !warned {
                        log::warn!(
                            "worker name {name} has a fresh heartbeat ({:.1}s ago): waiting until it is \
                             silent for WORKER_DEAD_AFTER before taking the name",
                            age.as_secs_f64()
                        );
                        warned = true;
                    }
                    std::thread::sleep(cfg.heartbeat_interval);
                }
                _ => break,
            }
        }
        self.register()?;
        let mut conn = self.shared.db.conn()?;
        let released = job_release_queued(&mut conn, name)?;
        let reason =
            format!("cancelled: its worker {name} stopped without finishing it (restarted)");
        let cancelled = job_cancel_owned(&mut conn, name, &reason)?;
        if released + cancelled > 0 {
            log::warn!(
                "a previous process named {name} left {released} queued jobs (put back) and \
                 {cancelled} started ones (cancelled)"
            );
        }
        Ok(())
    }

    /// One beat. Returns `false` when the row was gone and had to be
    /// registered again.
    pub fn run_once(&self) -> DbResult<bool> {
        let mut conn = self.shared.db.conn()?;
        if worker_heartbeat(&mut conn, &self.shared.worker)? {
            self.shared
                .liveness
                .beat(self.shared.config.heartbeat_interval);
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
