//! When this replica's heartbeats have been landing: written by the
//! heartbeat, read by the rescuer (which judges others only while its own
//! heartbeat is steady) and by `/readyz` (ready only while it is fresh).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::CHECKOUT_TIMEOUT;

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
        let mut beats = self.lock();
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
        match *self.lock() {
            Some((since, last)) if now.duration_since(last) <= max_gap(interval) => {
                now.duration_since(since)
            }
            _ => Duration::ZERO,
        }
    }

    /// How long ago the latest heartbeat landed; `None` before the first.
    pub fn last_beat_age(&self) -> Option<Duration> {
        let beats = *self.lock();
        beats.map(|(_, last)| last.elapsed())
    }

    /// Whether the latest heartbeat landed recently enough that the others
    /// see this replica alive (within two intervals, plus a checkout).
    pub fn is_fresh(&self, interval: Duration) -> bool {
        self.last_beat_age()
            .is_some_and(|age| age <= max_gap(interval))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Instant)>> {
        self.beats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn max_gap(interval: Duration) -> Duration {
    interval * 2 + CHECKOUT_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_make_a_steady_run_until_one_is_overdue() {
        let live = Liveness::default();
        let interval = Duration::from_secs(60);
        assert_eq!(live.last_beat_age(), None);
        assert!(!live.is_fresh(interval));
        live.beat(interval);
        live.beat(interval);
        assert!(live.is_fresh(interval));
        assert!(live.steady_for(interval) < interval);
    }
}
