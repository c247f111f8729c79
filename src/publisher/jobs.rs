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

use crate::db::jobs::{Job, job_any_claimable, job_claim_many, job_release_claims};
use crate::db::{DbResult, PooledConn};
use crate::metrics::Metrics;
use crate::publisher::{Trigger, free_room, tick_loop};
use crate::service::Shared;

/// The free room at which an early claim is worth making: half the
/// channel, so claims stay batched.
pub fn refill_room(capacity: usize) -> usize {
    (capacity / 2).max(1)
}

/// Whether a consumer that just took a job from `jobs` should wake the
/// publisher: only once the channel has room for an early claim (or ran
/// dry), not on every job.
pub fn wake_publisher<T>(jobs: &Receiver<T>) -> bool {
    let capacity = jobs.capacity().unwrap_or(1);
    jobs.is_empty() || capacity.saturating_sub(jobs.len()) >= refill_room(capacity)
}

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
    state: Mutex<ClaimState>,
}

#[derive(Default)]
struct ClaimState {
    /// Jobs of a claim whose commit failed: it may have landed, so they are
    /// put back before the next claim.
    in_doubt: Vec<Job>,
    /// The connection kept between claims (a checkout costs a ping).
    conn: Option<PooledConn>,
    /// Where the last full claim ended: an early claim continues from there.
    after: Option<(i32, u64)>,
    /// The last claim found nothing: probe with a plain read first.
    idle: bool,
}

impl JobsPublisher {
    /// A publisher feeding `tx`.
    pub fn new(shared: Arc<Shared>, tx: Sender<Job>) -> JobsPublisher {
        JobsPublisher {
            shared,
            tx,
            state: Mutex::new(ClaimState::default()),
        }
    }

    /// Free room in the channel.
    pub fn room(&self) -> usize {
        free_room(&self.tx)
    }

    /// One claim: up to the channel's free room, from the top of the queue.
    pub fn run_once(&self) -> DbResult<Claimed> {
        self.claim(false)
    }

    /// One claim; `continue_after` continues after the last full claim
    /// instead of from the top (new or released jobs that sort earlier are
    /// picked up by the next claim from the top: every tick is one).
    fn claim(&self, continue_after: bool) -> DbResult<Claimed> {
        let room = self.room();
        if room == 0 {
            return Ok(Claimed { room, claimed: 0 });
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = Self::claim_with(&self.shared, &mut state, room, continue_after);
        if result.is_err() {
            state.conn = None;
        } else {
            self.shared.db.health().ok();
        }
        let jobs = result?;
        state.after = match jobs.last() {
            Some(last) if jobs.len() == room => Some((last.priority, last.id)),
            _ => None,
        };
        drop(state);
        let claimed = jobs.len();
        Metrics::add(&self.shared.metrics.claimed, claimed as u64);
        self.shared.metrics.observe_claim(claimed);
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

    fn claim_with(
        shared: &Shared,
        state: &mut ClaimState,
        room: usize,
        continue_after: bool,
    ) -> DbResult<Vec<Job>> {
        if state.conn.is_none() {
            state.conn = Some(shared.db.conn()?);
        }
        let conn = state.conn.as_mut().expect("just set");
        if !state.in_doubt.is_empty() {
            let released = job_release_claims(conn, &state.in_doubt)?;
            log::info!("settled a claim whose commit failed: {released} jobs put back");
            Metrics::add(&shared.metrics.released, released);
            state.in_doubt.clear();
        }
        if state.idle && !job_any_claimable(conn)? {
            return Ok(Vec::new());
        }
        let after = if continue_after { state.after } else { None };
        let jobs = job_claim_many(conn, &shared.worker, room, after, &mut state.in_doubt)?;
        state.idle = jobs.is_empty();
        Ok(jobs)
    }

    /// Claims on every tick, and early when consumers free room after a
    /// full claim, until `stop` closes.
    pub fn run(self, stop: Receiver<()>, room_freed: Receiver<()>) {
        let refill_at = refill_room(self.tx.capacity().unwrap_or(1));
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
                Ok(self.claim(trigger == Trigger::Wake)?.filled())
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_wake_the_publisher_once_half_the_channel_is_free() {
        let (tx, rx) = crossbeam_channel::bounded::<u32>(10);
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        let mut woke = Vec::new();
        while rx.try_recv().is_ok() {
            woke.push(wake_publisher(&rx));
        }
        // Taking jobs 1 to 4 leaves less than half free: no wake-up; from
        // the fifth on, a claim is due (the publisher's own check decides).
        assert_eq!(
            woke,
            [
                false, false, false, false, true, true, true, true, true, true
            ]
        );
        assert_eq!(refill_room(10), 5);
        assert_eq!(refill_room(1), 1, "a one-slot channel refills when empty");
    }
}
