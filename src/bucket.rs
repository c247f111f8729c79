//! The token bucket in front of the jobs consumers.
//!
//! Wraps `ratelimit`'s lock-free bucket: it starts empty, refills
//! continuously at `RATE_LIMIT` tokens per second (not in a lump each
//! second), and holds at most one second's worth, so a replica never starts
//! more than `RATE_LIMIT` tasks in any second. Waiting for a token can be
//! cut short by shutdown, and the time spent waiting is counted for the
//! periodic summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use ratelimit::{Clock, Ratelimiter, StdClock, TryWaitError};

/// A shared token bucket; `rate` 0 means unlimited.
pub struct Bucket<C: Clock = StdClock> {
    limiter: Option<Ratelimiter<C>>,
    waited_nanos: AtomicU64,
}

impl Bucket<StdClock> {
    /// A bucket of `rate` tokens per second, starting empty.
    pub fn new(rate: u64) -> Bucket<StdClock> {
        Bucket::with_clock(rate, StdClock::new())
    }
}

impl<C: Clock> Bucket<C> {
    /// A bucket reading time from `clock` (tests pass a fake one).
    pub fn with_clock(rate: u64, clock: C) -> Bucket<C> {
        let limiter = (rate > 0).then(|| {
            ratelimit::Builder::with_clock(rate, clock)
                .max_tokens(rate)
                .initial_available(0)
                .build()
                .expect("max_tokens = rate >= 1 and no initial tokens is always valid")
        });
        Bucket {
            limiter,
            waited_nanos: AtomicU64::new(0),
        }
    }

    /// Takes a token if one is there; otherwise says how long until one is.
    pub fn try_take(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.try_wait() {
            Ok(()) => Ok(()),
            Err(TryWaitError::Insufficient(wait)) => Err(wait.max(Duration::from_micros(100))),
            // max_tokens >= 1, so one token always fits; wait a tick if the
            // crate ever says otherwise rather than spin.
            Err(_) => Err(Duration::from_millis(1)),
        }
    }

    /// Takes a token, waiting as long as needed. Returns `false` if `stop`
    /// closed while waiting (no token taken).
    pub fn take(&self, stop: &Receiver<()>) -> bool {
        let began = Instant::now();
        let taken = loop {
            match self.try_take() {
                Ok(()) => break true,
                Err(wait) => select! {
                    recv(stop) -> _ => break false,
                    default(wait) => {}
                },
            }
        };
        let waited = began.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.waited_nanos.fetch_add(waited, Ordering::Relaxed);
        taken
    }

    /// Total time consumers spent waiting for tokens.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn drain(bucket: &Bucket<FakeClock>) -> u64 {
        let mut n = 0;
        while bucket.try_take().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn starts_empty() {
        let clock = FakeClock::default();
        let bucket = Bucket::with_clock(50, clock.clone());
        assert_eq!(drain(&bucket), 0);
    }

    #[test]
    fn refills_continuously_not_in_lumps() {
        let clock = FakeClock::default();
        let bucket = Bucket::with_clock(50, clock.clone());
        // 50/s is one token every 20 ms: after 20 ms there is exactly one.
        clock.advance(Duration::from_millis(20));
        assert_eq!(drain(&bucket), 1);
        clock.advance(Duration::from_millis(10));
        assert_eq!(drain(&bucket), 0);
        let wait = bucket.try_take().unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        clock.advance(Duration::from_millis(10));
        assert_eq!(drain(&bucket), 1);
    }

    #[test]
    fn holds_the_rate_over_time() {
        let clock = FakeClock::default();
        let bucket = Bucket::with_clock(50, clock.clone());
        let mut taken = 0;
        // Ten simulated seconds in 1 ms steps, taking greedily.
        for _ in 0..10_000 {
            clock.advance(Duration::from_millis(1));
            taken += drain(&bucket);
        }
        assert!(
            (499..=500).contains(&taken),
            "{taken} tokens in 10 s at 50/s"
        );
    }

    #[test]
    fn burst_is_at_most_one_second() {
        let clock = FakeClock::default();
        let bucket = Bucket::with_clock(50, clock.clone());
        clock.advance(Duration::from_secs(10));
        assert_eq!(drain(&bucket), 50);
    }

    #[test]
    fn zero_is_unlimited() {
        let bucket = Bucket::with_clock(0, FakeClock::default());
        assert_eq!(
            (0..10_000).filter(|_| bucket.try_take().is_ok()).count(),
            10_000
        );
    }

    #[test]
    fn take_gives_up_when_stopped() {
        let bucket = Bucket::with_clock(1, FakeClock::default());
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        drop(tx);
        assert!(!bucket.take(&rx));
    }
}
