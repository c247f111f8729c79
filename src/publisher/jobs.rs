//! The jobs publisher: claims new rows and feeds them to the jobs consumers.
//!
//! Every `JOBS_POLL_INTERVAL` (default 2s), in one transaction, it claims up
//! to the jobs channel's free room (`CHANNEL_CAPACITY`, default 256) and
//! sends the jobs down the channel, this replica (`WORKER_NAME`) as their
//! owner. It claims only jobs of the queues it serves (`QUEUES`, default
//! `default`) and of the kinds it runs, never from a paused queue, from a
//! queue with a `rate_limit` only what this replica's share of it allows,
//! and from a queue with a `max_running` no more than may start now. It
//! never claims more than the channel has room for, so jobs do not
//! sit claimed here while other replicas are idle. When a claim filled the
//! room there is probably more work waiting: it claims again as soon as
//! consumers have freed half the channel instead of waiting for the next
//! tick, so throughput is not capped at capacity / interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::db::claim::{
    Claim, Source, job_any_claimable, job_claim_many, job_release_claims, job_running_in,
};
use crate::db::error::DbResult;
use crate::db::{Connection, Db, HeldConn};
use crate::job::{Job, Run};
use crate::metrics::Counter;
use crate::queues::Queues;
use crate::runtime::channel::{free_room, refill_room};
use crate::runtime::tick::{Pace, TickLoop, Trigger};

/// Where the last claim of each (queue, kind) stopped: priority and id.
type Afters = HashMap<(String, String), (i32, u64)>;

/// What the jobs publisher reads of the configuration.
#[derive(Debug, Clone)]
pub struct JobsPublisherConfig {
    /// This replica's name, written as each claimed job's owner.
    pub worker: String,
    /// How often it claims (`JOBS_POLL_INTERVAL`).
    pub poll_interval: Duration,
    /// The queues it claims from (`QUEUES`).
    pub queues: Vec<String>,
    /// The kinds it claims (those this replica runs).
    pub kinds: Vec<String>,
}

impl JobsPublisherConfig {
    /// The publisher of a replica configured by `c` that runs `kinds`.
    pub fn new(c: &Config, kinds: &[&str]) -> Self {
        JobsPublisherConfig {
            worker: c.worker_name.clone(),
            poll_interval: c.jobs_poll_interval,
            queues: c.queues.clone(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
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
    queues: Arc<Queues>,
    tx: Sender<Job>,
    state: Mutex<ClaimState>,
}

struct ClaimState {
    /// Runs of a claim whose commit failed: it may have landed, so they are
    /// put back before the next claim.
    in_doubt: Vec<Run>,
    /// The connection kept between claims.
    held: HeldConn,
    /// Where the last full claim from each source ended: an early claim
    /// continues from there.
    after: Afters,
    /// The last claim found nothing: probe with a plain read first.
    idle: bool,
    /// The last claim took all the tokens of a rate-limited queue.
    token_short: bool,
}

impl JobsPublisher {
    /// A publisher claiming from `db`, within the limits `queues` holds,
    /// and feeding `tx`.
    pub fn new(
        cfg: JobsPublisherConfig,
        db: Db,
        queues: Arc<Queues>,
        tx: Sender<Job>,
    ) -> JobsPublisher {
        let state = ClaimState {
            in_doubt: Vec::new(),
            held: HeldConn::new(db.clone()),
            after: HashMap::new(),
            idle: false,
            token_short: false,
        };
        JobsPublisher {
            cfg,
            db,
            queues,
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
        let (jobs, sources) = self.claim_with(&mut state, room, continue_after)?;
        self.db.health().ok();
        remember_where_full_sources_ended(&mut state.after, &sources, &jobs);
        // A rate-limited queue whose tokens ran out before its jobs did is
        // claimed again as soon as it has tokens; one that ran out of jobs
        // waits for the next tick.
        state.token_short = self.cfg.queues.iter().any(|q| {
            self.queues.limits(q).share.is_some()
                && sources.iter().find(|s| &s.queue == q).is_some_and(|s| {
                    s.limit < room && jobs.iter().filter(|j| &j.queue == q).count() >= s.limit
                })
        });
        drop(state);
        for queue in &self.cfg.queues {
            let n = jobs.iter().filter(|j| &j.queue == queue).count();
            self.queues.claimed(queue, n);
        }
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
    ) -> DbResult<(Vec<Job>, Vec<Source>)> {
        let ClaimState {
            in_doubt,
            held,
            after,
            idle,
            ..
        } = state;
        held.run(|conn| {
            if !in_doubt.is_empty() {
                let released = job_release_claims(conn, &self.cfg.worker, in_doubt)?;
                log::info!("settled a claim whose commit failed: {released} jobs put back");
                self.db.metrics().add(Counter::Released, released);
                in_doubt.clear();
            }
            let sources = self.sources(conn, room, continue_after.then_some(&*after))?;
            if sources.iter().all(|s| s.limit == 0) {
                return Ok((Vec::new(), sources));
            }
            if *idle && !job_any_claimable(conn, &sources)? {
                return Ok((Vec::new(), sources));
            }
            let claim = Claim {
                owner: &self.cfg.worker,
                sources: &sources,
                limit: room,
                continued: continue_after,
            };
            let jobs = job_claim_many(conn, &claim).map_err(|failed| {
                *in_doubt = failed.in_doubt.iter().map(Job::run).collect();
                failed.error
            })?;
            *idle = jobs.is_empty();
            Ok((jobs, sources))
        })
    }

    /// Where this claim takes from: every queue served and kind run, each at
    /// most what its queue's limits allow now (a share of its `rate_limit`;
    /// for a `max_running`, what may start now).
    fn sources(
        &self,
        conn: &mut Connection,
        room: usize,
        after: Option<&Afters>,
    ) -> DbResult<Vec<Source>> {
        let mut sources = Vec::new();
        for queue in &self.cfg.queues {
            let mut cap = self.queues.claimable(queue, room);
            if let Some(max) = self.queues.max_running(queue).filter(|_| cap > 0) {
                let running = job_running_in(conn, queue)?;
                cap = cap.min((max as u64).saturating_sub(running) as usize);
            }
            for kind in &self.cfg.kinds {
                let key = (queue.clone(), kind.clone());
                sources.push(Source {
                    after: after.and_then(|a| a.get(&key).copied()),
                    ..Source::new(queue, kind, cap)
                });
            }
        }
        Ok(sources)
    }

    /// Claims on every tick, early when consumers free room after a full
    /// claim, and again as soon as a rate-limited queue whose tokens the
    /// last claim used up has a few more, until `stop` closes.
    pub fn run(self, stop: Receiver<()>, room_freed: Receiver<()>) {
        let refill_at = refill_room(self.tx.capacity().unwrap_or(1));
        let db = self.db.clone();
        let ticks = TickLoop {
            what: "claiming jobs",
            interval: self.cfg.poll_interval,
            stop: &stop,
            health: db.health(),
        };
        ticks.run_paced(&room_freed, |trigger| {
            // Woken by a consumer: wait until half the channel is free (or
            // it ran dry) so claims stay batched.
            if trigger == Trigger::Wake && self.room() < refill_at && !self.tx.is_empty() {
                return Ok(Pace {
                    eager: true,
                    again_in: None,
                });
            }
            let claimed = self.claim(trigger == Trigger::Wake)?;
            Ok(Pace {
                eager: claimed.filled(),
                again_in: self.rate_limited_again(),
            })
        });
    }

    /// When to claim again for the rate-limited queues served, if the last
    /// claim took all their tokens: when the next token comes in (at least
    /// 100 ms on).
    fn rate_limited_again(&self) -> Option<Duration> {
        if !self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .token_short
        {
            return None;
        }
        let limited: Vec<String> = self
            .cfg
            .queues
            .iter()
            .filter(|q| self.queues.limits(q).share.is_some())
            .cloned()
            .collect();
        if limited.is_empty() {
            return None;
        }
        let next = self.queues.next_token(&limited)?;
        Some(next.max(Duration::from_millis(100)))
    }
}

/// After a claim: each source that gave all it was asked for probably has
/// more; the next early claim continues it after its last row.
fn remember_where_full_sources_ended(after: &mut Afters, sources: &[Source], jobs: &[Job]) {
    after.clear();
    for s in sources.iter().filter(|s| s.limit > 0) {
        let from: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.queue == s.queue && j.kind == s.kind)
            .collect();
        if let Some(last) = from.last().filter(|_| from.len() == s.limit) {
            after.insert((s.queue.clone(), s.kind.clone()), (last.priority, last.id));
        }
    }
}
