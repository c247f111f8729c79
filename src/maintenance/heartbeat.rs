//! The heartbeat: proves this replica alive in the `workers` table.
//!
//! Every `HEARTBEAT_INTERVAL` (default 2s) it refreshes this replica's
//! `heartbeat_at`. Other replicas' rescuers treat a replica silent for
//! `WORKER_DEAD_AFTER` (default 10s) as dead. If this replica finds its row
//! gone (it was paused or cut off long enough to be declared dead), its jobs
//! were already rescued: it says so and registers again; its late writes are
//! refused by the leases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::db::Db;
use crate::db::error::{DbError, DbResult};
use crate::db::owners::{OwnedCancel, job_cancel_owned, job_release_queued};
use crate::db::workers::{Registration, worker_heartbeat, worker_heartbeat_age, worker_register};
use crate::runtime::liveness::Liveness;
use crate::runtime::tick::TickLoop;

/// What the heartbeat reads of the configuration.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// This replica's name (`WORKER_NAME`).
    pub worker: String,
    /// How often it beats (`HEARTBEAT_INTERVAL`).
    pub interval: Duration,
    /// When a silent name is free to take (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
    /// The queues this replica serves (`QUEUES`), as registered.
    pub queues: Vec<String>,
    /// The kinds it runs, as registered.
    pub kinds: Vec<String>,
}

impl HeartbeatConfig {
    /// The heartbeat of a replica configured by `c` that runs `kinds`.
    pub fn new(c: &Config, kinds: &[&str]) -> Self {
        HeartbeatConfig {
            worker: c.worker_name.clone(),
            interval: c.heartbeat_interval,
            dead_after: c.worker_dead_after,
            queues: c.queues.clone(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
        }
    }
}

/// The heartbeat.
pub struct Heartbeat {
    cfg: HeartbeatConfig,
    db: Db,
    liveness: Arc<Liveness>,
}

impl Heartbeat {
    /// A heartbeat writing to `db` and recording each beat in `liveness`.
    pub fn new(cfg: HeartbeatConfig, db: Db, liveness: Arc<Liveness>) -> Heartbeat {
        Heartbeat { cfg, db, liveness }
    }

    /// Registers this replica (at start-up, before anything is claimed).
    pub fn register(&self) -> DbResult<()> {
        let host = crate::config::host_name();
        worker_register(
            &mut *self.db.conn()?,
            &Registration {
                name: &self.cfg.worker,
                host: &host,
                pid: std::process::id(),
                version: crate::config::VERSION,
                queues: &self.cfg.queues.join(","),
                kinds: &self.cfg.kinds.join(","),
            },
        )?;
        self.liveness.beat(self.cfg.interval);
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
        self.wait_for_name()?;
        self.register()?;
        let name = &self.cfg.worker;
        let mut conn = self.db.conn()?;
        let released = job_release_queued(&mut conn, name)?;
        let reason =
            format!("cancelled: its worker {name} stopped without finishing it (restarted)");
        let cancelled = job_cancel_owned(
            &mut conn,
            &OwnedCancel {
                owner: name,
                reason: &reason,
            },
        )?;
        if released + cancelled > 0 {
            log::warn!(
                "a previous process named {name} left {released} queued jobs (put back) and \
                 {cancelled} started ones (cancelled)"
            );
        }
        Ok(())
    }

    /// Waits until the name's heartbeat, if any, is older than
    /// `WORKER_DEAD_AFTER`; fails if it keeps beating.
    fn wait_for_name(&self) -> DbResult<()> {
        let cfg = &self.cfg;
        let name = &cfg.worker;
        let deadline = Instant::now() + cfg.dead_after + cfg.interval * 2;
        let mut warned = false;
        loop {
            let age = match worker_heartbeat_age(&mut *self.db.conn()?, name)? {
                Some(age) if age < cfg.dead_after => age,
                _ => return Ok(()),
            };
            if Instant::now() >= deadline {
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
            std::thread::sleep(cfg.interval);
        }
    }

    /// One beat. Returns `false` when the row was gone and had to be
    /// registered again.
    pub fn run_once(&self) -> DbResult<bool> {
        if worker_heartbeat(&mut *self.db.conn()?, &self.cfg.worker)? {
            self.liveness.beat(self.cfg.interval);
            return Ok(true);
        }
        log::warn!(
            "this replica ({}) was declared dead by the others (no heartbeat for WORKER_DEAD_AFTER); \
             its claims were rescued; registering again",
            self.cfg.worker
        );
        self.register()?;
        Ok(false)
    }

    /// Beats on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticks = TickLoop {
            what: "heartbeat",
            interval: self.cfg.interval,
            stop: &stop,
            health: self.db.health(),
        };
        ticks.run(|| self.run_once().map(drop));
    }
}
