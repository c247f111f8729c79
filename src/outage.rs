//! Living through database outages.
//!
//! Every loop that talks to the database keeps a [`Backoff`]: after a
//! failure it waits a capped, jittered, exponentially growing delay before
//! trying again, so a vanished server is neither hammered nor given up on.
//! All threads share one [`DbHealth`], which turns their failures into one
//! warning when the database goes away and one info line when it is back,
//! instead of a line per retry per thread.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::db::DbError;

/// The database's state as all threads see it.
#[derive(Debug, Default)]
pub struct DbHealth {
    down_since: Mutex<Option<Instant>>,
    failures: AtomicU64,
    episodes: AtomicU64,
}

impl DbHealth {
    /// Records a failed database call by `what` (an operation, like
    /// "claiming jobs"). A connection failure logs a warning only when it
    /// opens an outage; an error the server answered with is logged as is.
    pub fn failed(&self, what: &str, err: &DbError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if err.is_server_error() {
            // The server is there and said no: not an outage, but worth a
            // line each time (a lock wait timeout, a permission).
            log::warn!("{what}: {err}; retrying");
            return;
        }
        let mut down = self.lock();
        if down.is_none() {
            *down = Some(Instant::now());
            self.episodes.fetch_add(1, Ordering::Relaxed);
            log::warn!("database unavailable ({what}: {err}); retrying with backoff");
        } else {
            log::debug!("{what}: {err}");
        }
    }

    /// Records that the server answered (a connection was checked out and
    /// pinged); logs once when that ends an outage.
    pub fn ok(&self) {
        let mut down = self.lock();
        if let Some(since) = down.take() {
            log::info!(
                "database is back after {:.1}s ({} failed calls retried so far)",
                since.elapsed().as_secs_f64(),
                self.failures.load(Ordering::Relaxed)
            );
        }
    }

    /// Whether the last call failed.
    pub fn is_down(&self) -> bool {
        self.lock().is_some()
    }

    /// Failed calls so far (each was retried or given up at shutdown).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Outages so far.
    pub fn episodes(&self) -> u64 {
        self.episodes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Capped exponential backoff with jitter, per loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start near `base` and never exceed `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next try; grows with every call.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        equal_jitter(exp)
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// "Equal jitter": half of `d` fixed, half random, so replicas that lost the
/// database together do not come back in lockstep, and a delay drawn for a
/// doubled `d` is never shorter than one drawn for `d`.
pub fn equal_jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(jitter())
}

/// A number in [0, 1) that differs between threads and calls; good enough
/// for jitter, no crate needed.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn one_outage_is_one_episode() {
        let health = DbHealth::default();
        let err = DbError::Mysql(mysql::Error::IoError(std::io::Error::other("gone")));
        for _ in 0..100 {
            health.failed("claiming jobs", &err);
        }
        assert!(health.is_down());
        health.ok();
        health.ok();
        assert!(!health.is_down());
        assert_eq!(health.episodes(), 1);
        assert_eq!(health.failures(), 100);
    }

    #[test]
    fn an_error_the_server_answered_is_no_outage() {
        let health = DbHealth::default();
        health.failed(
            "claiming jobs",
            &DbError::Schema("table jobs is missing".into()),
        );
        assert!(!health.is_down());
        assert_eq!(health.episodes(), 0);
    }
}
