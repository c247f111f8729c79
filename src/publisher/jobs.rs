//! The jobs publisher: claims new rows and feeds them to the jobs consumers.
//!
//! Every `JOBS_POLL_INTERVAL`, in one transaction, it claims up to the jobs
//! channel's free room (`SELECT ... FOR UPDATE SKIP LOCKED`, then `QUEUED!`
//! with `queued_at`, this replica as owner and a new lease), and sends them
//! down the channel. It never claims more than the channel has room for, so
//! jobs do not sit claimed here while other replicas are idle. When a claim
//! filled the room there is probably more work waiting: it claims again as
//! soon as consumers have freed half the channel instead of waiting for the
//! next tick, so throughput is not capped at capacity / interval.

use crossbeam_channel::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::db::DbResult;
use crate::db::jobs::{Job, job_claim_many, job_release_claims};
use crate::metrics::Metrics;
use crate::publisher::{Trigger, tick_loop};
use crate::service::Shared;

/// What one claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// Free room in the channel when the claim began.
    pub room: usize,
    /// Jobs claimed and sent.
    pub claimed: usize,
}

impl Claimed {
    /// The claim took all the room: more work is probably waiting.
    pub fn filled(&self) -> bool {
        self.room > 0 && self.claimed == self.room
    }
}

/// The jobs publisher.
pub struct JobsPublisher {
    shared: Arc<Shared>,
    tx: Sender<Job>,
    /// Jobs of a claim whose commit failed: it may have landed, so they are
    /// put back before the next claim.
    in_doubt: Mutex<Vec<Job>>,
}

impl JobsPublisher {
    /// A publisher feeding `tx`.
    pub fn new(shared: Arc<Shared>, tx: Sender<Job>) -> JobsPublisher {
        JobsPublisher {
            shared,
            tx,
            in_doubt: Mutex::new(Vec::new()),
        }
    }

    /// Free room in the channel.
    pub fn room(&self) -> usize {
        self.tx
            .capacity()
            .unwrap_or(usize::MAX)
            .saturating_sub(self.tx.len())
    }

    /// One claim: up to the channel's free room.
    pub fn run_once(&self) -> DbResult<Claimed> {
        let room = self.room();
        if room == 0 {
            return Ok(Claimed { room, claimed: 0 });
        }
        let jobs = {
            let mut conn = self.shared.db.conn()?;
            let mut in_doubt = self.in_doubt.lock().unwrap_or_else(|p| p.into_inner());
            if !in_doubt.is_empty() {
                let released = job_release_claims(&mut conn, &in_doubt)?;
                log::info!("settled a claim whose commit failed: {released} jobs put back");
                Metrics::add(&self.shared.metrics.released, released);
                in_doubt.clear();
            }
            job_claim_many(&mut conn, &self.shared.worker, room, &mut in_doubt)?
        };
        let claimed = jobs.len();
        Metrics::add(&self.shared.metrics.claimed, claimed as u64);
        for job in jobs {
            // The channel had room for all of them and only this thread
            // sends, so this does not block. If the consumers are gone
            // (shutdown), the job stays QUEUED! and the shutdown release or
            // the rescuer puts it back.
            if self.tx.send(job).is_err() {
                break;
            }
        }
        if claimed > 0 {
            log::debug!("claimed {claimed} jobs (room {room})");
        }
        Ok(Claimed { room, claimed })
    }

    /// Claims on every tick, and early when consumers free room after a
    /// full claim, until `stop` closes.
    pub fn run(self, stop: Receiver<()>, room_freed: Receiver<()>) {
        let refill_at = (self.tx.capacity().unwrap_or(1) / 2).max(1);
        let shared = Arc::clone(&self.shared);
        tick_loop(
            &shared,
            "claiming jobs",
            shared.config.jobs_poll_interval,
            &stop,
            &room_freed,
            |trigger| {
                // Woken by a consumer: wait until half the channel is free
                // (or it ran dry) so claims stay batched.
                if trigger == Trigger::Wake && self.room() < refill_at && !self.tx.is_empty() {
                    return Ok(true);
                }
                Ok(self.run_once()?.filled())
            },
        );
    }
}
