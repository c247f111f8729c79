//! The jobs publisher: claims new rows and feeds them to the jobs consumers.
//!
//! Every `JOBS_POLL_INTERVAL` (default 2s), in one transaction, it claims up
//! to the jobs channel's free room (`CHANNEL_CAPACITY`, default 100) and
//! sends the jobs down the channel, this replica (`WORKER_NAME`) as their
//! owner. It never claims more than the channel has room for, so jobs do not
//! sit claimed here while other replicas are idle. When a claim filled the
//! room there is probably more work waiting: it claims again as soon as
//! consumers have freed half the channel instead of waiting for the next
//! tick, so throughput is not capped at capacity / interval.

use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::db::claim::{After, Claim, job_any_claimable, job_claim_many, job_release_claims};
use crate::db::error::DbResult;
use crate::db::{Db, HeldConn};
use crate::job::{Job, Run};
use crate::metrics::Counter;
use crate::runtime::channel::{free_room, refill_room};
use crate::runtime::tick::{TickLoop, Trigger};

/// What the jobs publisher reads of the configuration.
#[derive(Debug, Clone)]
pub struct JobsPublisherConfig {
    /// This replica's name, written as each claimed job's owner.
    pub worker: String,
    /// How often it claims (`JOBS_POLL_INTERVAL`).
    pub poll_interval: Duration,
}

impl From<&Config> for JobsPublisherConfig {
    fn from(c: &Config) -> Self {
        JobsPublisherConfig {
            worker: c.worker_name.clone(),
            poll_interval: c.jobs_poll_interval,
        }
    }
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
    cfg: JobsPublisherConfig,
    db: Db,
    tx: Sender<Job>,
    state: Mutex<ClaimState>,
}

struct ClaimState {
    /// Runs of a claim whose commit failed: it may have landed, so they are
    /// put back before the next claim.
    in_doubt: Vec<Run>,
    /// The connection kept between claims.
    held: HeldConn,
    /// Where the last full claim ended: an early claim continues from there.
    after: After,
    /// The last claim found nothing: probe with a plain read first.
    idle: bool,
}

impl JobsPublisher {
    /// A publisher claiming from `db` and feeding `tx`.
    pub fn new(cfg: JobsPublisherConfig, db: Db, tx: Sender<Job>) -> JobsPublisher {
        let state = ClaimState {
            in_doubt: Vec::new(),
            held: HeldConn::new(db.clone()),
            after: None,
            idle: false,
        };
        JobsPublisher {
            cfg,
            db,
            tx,
            state: Mutex::new(state),
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
        let jobs = self.claim_with(&mut state, room, continue_after)?;
        self.db.health().ok();
        state.after = match jobs.last() {
            Some(last) if jobs.len() == room => Some((last.priority, last.id)),
            _ => None,
        };
        drop(state);
        let claimed = jobs.len();
        self.db.metrics().add(Counter::Claimed, claimed as u64);
        self.db.metrics().observe_claim(claimed);
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
        &self,
        state: &mut ClaimState,
        room: usize,
        continue_after: bool,
    ) -> DbResult<Vec<Job>> {
        let ClaimState {
            in_doubt,
            held,
            after,
            idle,
        } = state;
        held.run(|conn| {
            if !in_doubt.is_empty() {
                let released = job_release_claims(conn, in_doubt)?;
                log::info!("settled a claim whose commit failed: {released} jobs put back");
                self.db.metrics().add(Counter::Released, released);
                in_doubt.clear();
            }
            if *idle && !job_any_claimable(conn)? {
                return Ok(Vec::new());
            }
            let claim = Claim {
                owner: &self.cfg.worker,
                limit: room,
                after: if continue_after { *after } else { None },
            };
            let jobs = job_claim_many(conn, &claim).map_err(|failed| {
                *in_doubt = failed.in_doubt.iter().map(Job::run).collect();
                failed.error
            })?;
            *idle = jobs.is_empty();
            Ok(jobs)
        })
    }

    /// Claims on every tick, and early when consumers free room after a
    /// full claim, until `stop` closes.
    pub fn run(self, stop: Receiver<()>, room_freed: Receiver<()>) {
        let refill_at = refill_room(self.tx.capacity().unwrap_or(1));
        let db = self.db.clone();
        let ticks = TickLoop {
            what: "claiming jobs",
            interval: self.cfg.poll_interval,
            stop: &stop,
            health: db.health(),
        };
        ticks.run_waking(&room_freed, |trigger| {
            // Woken by a consumer: wait until half the channel is free (or
            // it ran dry) so claims stay batched.
            if trigger == Trigger::Wake && self.room() < refill_at && !self.tx.is_empty() {
                return Ok(true);
            }
            Ok(self.claim(trigger == Trigger::Wake)?.filled())
        });
    }
}
