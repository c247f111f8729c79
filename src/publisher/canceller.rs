//! The canceller publisher: finds dead runs and hands them to the canceller
//! consumers ([`crate::consumer::canceller`]).
//!
//! Every `CANCELLER_POLL_INTERVAL` (default 2s) it looks for jobs still
//! `STARTED!` past their deadline (the job's own `timeout`, else
//! `JOB_TIMEOUT`, default 10s), on any replica, and sends as many as the
//! cancel channel (`CHANNEL_CAPACITY`) has room for. The consumers write
//! `CANCELLED!` conditionally, so two replicas' cancellers finding the same
//! job cancel it once.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::db::Db;
use crate::db::error::DbResult;
use crate::db::jobs::{Dead, job_find_dead};
use crate::runtime::channel::free_room;
use crate::runtime::tick::TickLoop;

/// What the canceller publisher reads of the configuration.
#[derive(Debug, Clone)]
pub struct CancellerPublisherConfig {
    /// A run without a timeout of its own is dead this long after it
    /// started (`JOB_TIMEOUT`).
    pub job_timeout: Duration,
    /// How often it looks (`CANCELLER_POLL_INTERVAL`).
    pub poll_interval: Duration,
    /// This replica (`WORKER_NAME`): of the running jobs whose cancel was
    /// requested, it looks at its own.
    pub worker: String,
}

impl From<&Config> for CancellerPublisherConfig {
    fn from(c: &Config) -> Self {
        CancellerPublisherConfig {
            job_timeout: c.job_timeout,
            poll_interval: c.canceller_poll_interval,
            worker: c.worker_name.clone(),
        }
    }
}

/// The canceller publisher.
pub struct CancellerPublisher {
    cfg: CancellerPublisherConfig,
    db: Db,
    tx: Sender<Dead>,
}

impl CancellerPublisher {
    /// A publisher reading `db` and feeding `tx`.
    pub fn new(cfg: CancellerPublisherConfig, db: Db, tx: Sender<Dead>) -> CancellerPublisher {
        CancellerPublisher { cfg, db, tx }
    }

    /// One scan: sends dead runs to the channel; returns how many.
    pub fn run_once(&self) -> DbResult<usize> {
        let room = free_room(&self.tx);
        let dead = job_find_dead(
            &mut *self.db.conn()?,
            self.cfg.job_timeout,
            room,
            &self.cfg.worker,
        )?;
        let sent = dead
            .into_iter()
            .take_while(|job| self.tx.try_send(job.clone()).is_ok())
            .count();
        if sent > 0 {
            log::debug!("found {sent} jobs past JOB_TIMEOUT");
        }
        Ok(sent)
    }

    /// Scans on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticks = TickLoop {
            what: "finding dead jobs",
            interval: self.cfg.poll_interval,
            stop: &stop,
            health: self.db.health(),
        };
        ticks.run(|| self.run_once().map(drop));
    }
}
