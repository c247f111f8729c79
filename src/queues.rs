//! What this replica knows of the queues: their limits, as the `queues`
//! table says and the live replicas share them, and what waits in them.
//!
//! The limits loop ([`crate::maintenance::limits`]) refreshes [`Queues`]
//! every `HEARTBEAT_INTERVAL`; the jobs publisher reads it to claim from a
//! rate-limited queue only what this replica's share of its `rate_limit`
//! allows (each of the `n` live replicas that serve a queue gets
//! `rate_limit / n` tokens a second, in a bucket of its own that starts
//! empty, refills continuously and holds at most a second's worth), and the
//! starter reads it to start the jobs of a queue with a `max_running` under
//! that queue's row lock. The backlog loop ([`crate::maintenance::backlog`])
//! records what waits in each queue for each kind, for `/metrics`.
//! Pausing needs none of this: the claim itself skips paused queues.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// One queue's steering, as this replica applies it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// No replica claims from it.
    pub paused: bool,
    /// Tasks started per second from it across all replicas.
    pub rate_limit: Option<f64>,
    /// This replica's share of `rate_limit`: divided among the live replicas
    /// that serve the queue.
    pub share: Option<f64>,
    /// Jobs of it `STARTED!` at once across all replicas.
    pub max_running: Option<u32>,
}

/// What waits in one queue for one kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    /// The queue.
    pub queue: String,
    /// The kind.
    pub kind: String,
    /// New jobs due now.
    pub waiting: u64,
    /// New jobs scheduled for later.
    pub scheduled: u64,
    /// How long the oldest job due now has waited (since `created_at`).
    pub oldest: Option<Duration>,
    /// Whether a live replica serves the queue and runs the kind.
    pub served: bool,
}

/// A token bucket with a fractional rate: this replica's share of a
/// queue's `rate_limit`.
#[derive(Debug, Clone)]
struct Share {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Share {
    fn new(rate: f64) -> Share {
        Share {
            rate,
            tokens: 0.0,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        // At most a second's worth (and at least one token can fit).
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.at = now;
    }

    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor().max(0.0) as usize
    }

    fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// How long until the next token (an hour for a share of nothing).
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        if self.rate <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).min(3600.0))
    }
}

/// The steering of every queue this replica serves, and the backlog.
#[derive(Debug, Default)]
pub struct Queues {
    limits: RwLock<HashMap<String, Limits>>,
    shares: Mutex<HashMap<String, Share>>,
    backlog: RwLock<Vec<Backlog>>,
}

impl Queues {
    /// Replaces the limits (queues without an entry are unlimited). A share
    /// whose rate changed keeps its tokens, within its new burst.
    pub fn set(&self, limits: HashMap<String, Limits>) {
        let mut shares = self.lock_shares();
        shares.retain(|q, _| limits.get(q).and_then(|l| l.share).is_some());
        for (queue, l) in &limits {
            if let Some(rate) = l.share {
                let share = shares
                    .entry(queue.clone())
                    .or_insert_with(|| Share::new(rate));
                share.refill(Instant::now());
                share.rate = rate;
                share.tokens = share.tokens.min(rate.max(1.0));
            }
        }
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// The limits of `queue`.
    pub fn limits(&self, queue: &str) -> Limits {
        self.limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .cloned()
            .unwrap_or_default()
    }

    /// Every queue's limits.
    pub fn all(&self) -> HashMap<String, Limits> {
        self.limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `max_running` of `queue`, if it has one.
    pub fn max_running(&self, queue: &str) -> Option<u32> {
        self.limits(queue).max_running
    }

    /// How many jobs of `queue` this replica may claim now, at most `room`
    /// (all of it for a queue without a `rate_limit`).
    pub fn claimable(&self, queue: &str, room: usize) -> usize {
        match self.lock_shares().get_mut(queue) {
            Some(share) => share.available(Instant::now()).min(room),
            None => room,
        }
    }

    /// Records `n` jobs of `queue` claimed: they used its tokens.
    pub fn claimed(&self, queue: &str, n: usize) {
        if let Some(share) = self.lock_shares().get_mut(queue) {
            share.take(n);
        }
    }

    /// How long until a rate-limited queue of these has a token again
    /// (`None`: none is rate-limited).
    pub fn next_token(&self, queues: &[String]) -> Option<Duration> {
        let shares = self.lock_shares();
        queues
            .iter()
            .filter_map(|q| shares.get(q))
            .map(Share::wait)
            .min()
    }

    /// Replaces the backlog.
    pub fn set_backlog(&self, backlog: Vec<Backlog>) {
        *self.backlog.write().unwrap_or_else(|p| p.into_inner()) = backlog;
    }

    /// What waits, by queue and kind.
    pub fn backlog(&self) -> Vec<Backlog> {
        self.backlog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock_shares(&self) -> std::sync::MutexGuard<'_, HashMap<String, Share>> {
        self.shares.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(share: f64) -> HashMap<String, Limits> {
        HashMap::from([(
            "mail".to_string(),
            Limits {
                rate_limit: Some(share * 3.0),
                share: Some(share),
                ..Limits::default()
            },
        )])
    }

    #[test]
    fn a_share_starts_empty_refills_and_holds_a_second_at_most() {
        let mut share = Share::new(20.0);
        let t0 = share.at;
        assert_eq!(share.available(t0), 0);
        assert_eq!(share.available(t0 + Duration::from_millis(100)), 2);
        share.take(2);
        assert_eq!(
            share.available(t0 + Duration::from_secs(10)),
            20,
            "a second's worth"
        );
        let mut slow = Share::new(0.5);
        let t0 = slow.at;
        assert_eq!(slow.available(t0 + Duration::from_secs(1)), 0);
        assert_eq!(slow.available(t0 + Duration::from_secs(2)), 1);
        assert!(slow.wait() <= Duration::from_secs(2));
    }

    #[test]
    fn unlimited_queues_claim_the_whole_room() {
        let queues = Queues::default();
        assert_eq!(queues.claimable("default", 50), 50);
        queues.set(limited(20.0));
        assert_eq!(queues.claimable("default", 50), 50);
        assert!(queues.claimable("mail", 50) <= 20);
        assert_eq!(queues.limits("mail").share, Some(20.0));
        queues.set(HashMap::new());
        assert_eq!(queues.claimable("mail", 50), 50, "the limit was lifted");
    }
}
