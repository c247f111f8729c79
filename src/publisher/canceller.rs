//! The canceller publisher: finds dead jobs and hands them to the canceller
//! consumers.
//!
//! Every `CANCELLER_POLL_INTERVAL` it looks for jobs still `STARTED!` more
//! than `JOB_TIMEOUT` after they started, on any replica, and sends as many
//! as the cancel channel has room for. The consumers
//! ([`crate::consumer::canceller`]) write `CANCELLED!` conditionally, so two
//! replicas' cancellers finding the same job cancel it once.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, never};

use crate::db::DbResult;
use crate::db::jobs::{Dead, job_find_dead};
use crate::publisher::{free_room, tick_loop};
use crate::service::Shared;

/// The canceller publisher.
pub struct CancellerPublisher {
    shared: Arc<Shared>,
    tx: Sender<Dead>,
}

impl CancellerPublisher {
    /// A publisher feeding `tx`.
    pub fn new(shared: Arc<Shared>, tx: Sender<Dead>) -> CancellerPublisher {
        CancellerPublisher { shared, tx }
    }

    /// One scan: sends dead jobs to the channel; returns how many.
    pub fn run_once(&self) -> DbResult<usize> {
        let room = free_room(&self.tx);
        let dead = {
            let mut conn = self.shared.db.conn()?;
            job_find_dead(&mut conn, self.shared.config.job_timeout, room)?
        };
        let mut sent = 0;
        for job in dead {
            if self.tx.try_send(job).is_err() {
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            log::debug!("found {sent} jobs past JOB_TIMEOUT");
        }
        Ok(sent)
    }

    /// Scans on every tick until `stop` closes.
    pub fn run(self, stop: Receiver<()>) {
        let shared = Arc::clone(&self.shared);
        tick_loop(
            &shared,
            "finding dead jobs",
            shared.config.canceller_poll_interval,
            &stop,
            &never(),
            |_| self.run_once().map(|_| false),
        );
    }
}
