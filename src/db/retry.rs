//! The one backoff-and-retry helper.
//!
//! Every call to the database that must not be given up at the first
//! failure goes through [`Retry`]: it retries what a retry can cure
//! (outages, lock waits, deadlocks; see [`ErrorKind`]), after a capped,
//! jittered, exponentially growing delay ([`Backoff`]), reports each
//! failure to the pool's [`DbHealth`] (one log line per outage), and gives
//! up only when told to: a stop channel closes, a deadline passes, or the
//! server refused the statement itself. Loops that run a pass on every tick
//! keep a [`Backoff`] of their own between failed passes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, select};

use super::error::{DbError, DbResult, ErrorKind};
use super::health::DbHealth;

/// Why a retried call ended without a result.
#[derive(Debug)]
pub enum GaveUp {
    /// The server refused the statement itself (bad input, a missing table):
    /// retrying would not help.
    Refused(DbError),
    /// The stop channel closed while the database was away.
    Stopped,
    /// The deadline passed; the last failure.
    TimedOut(DbError),
}

impl GaveUp {
    /// The failure that ended the retries (for a stop: that it stopped).
    pub fn into_error(self) -> DbError {
        match self {
            GaveUp::Refused(e) | GaveUp::TimedOut(e) => e,
            GaveUp::Stopped => DbError::Schema("gave up: the service is stopping".into()),
        }
    }
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GaveUp::Refused(e) | GaveUp::TimedOut(e) => e.fmt(f),
            GaveUp::Stopped => f.write_str("stopped"),
        }
    }
}

/// One database call, retried until it lands or a limit is reached.
pub struct Retry<'a> {
    what: &'a str,
    health: &'a DbHealth,
    backoff: Backoff,
    stop: Option<&'a Receiver<()>>,
    deadline: Option<Instant>,
    fatal_ends: bool,
}

impl<'a> Retry<'a> {
    /// Retries `what` (an operation, like "finishing jobs", for the log)
    /// forever, with the default backoff (100 ms to 5 s).
    pub fn new(what: &'a str, health: &'a DbHealth) -> Retry<'a> {
        Retry {
            what,
            health,
            backoff: Backoff::default(),
            stop: None,
            deadline: None,
            fatal_ends: false,
        }
    }

    /// Short delays, for writes of finished work: they should land soon
    /// after the database is back, and one try a second at most is no load.
    pub fn write(what: &'a str, health: &'a DbHealth) -> Retry<'a> {
        Retry {
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            ..Retry::new(what, health)
        }
    }

    /// Gives up when `stop` closes.
    pub fn until_stopped(mut self, stop: &'a Receiver<()>) -> Retry<'a> {
        self.stop = Some(stop);
        self
    }

    /// Gives up once `deadline` has passed (trying a last time at it).
    pub fn until(mut self, deadline: Instant) -> Retry<'a> {
        self.deadline = Some(deadline);
        self
    }

    /// Gives up at once on an error that will not fix itself (access
    /// denied, an unknown database or table): for start-up and commands. A
    /// running service instead keeps trying (and says it is not ready), so
    /// finished work is never dropped because a table went missing.
    pub fn give_up_on_fatal(mut self) -> Retry<'a> {
        self.fatal_ends = true;
        self
    }

    /// Runs `call` until it succeeds or a limit is reached. Bad input
    /// (the statement's data) is never retried.
    pub fn run<T>(mut self, mut call: impl FnMut() -> DbResult<T>) -> Result<T, GaveUp> {
        loop {
            let err = match call() {
                Ok(v) => {
                    self.health.ok();
                    self.health.worked();
                    return Ok(v);
                }
                Err(e) => e,
            };
            match err.kind() {
                ErrorKind::BadInput => return Err(GaveUp::Refused(err)),
                ErrorKind::Fatal if self.fatal_ends => return Err(GaveUp::Refused(err)),
                _ => {}
            }
            self.health.failed(self.what, &err);
            let mut delay = self.backoff.next_delay();
            if let Some(deadline) = self.deadline {
                // The last try is at the deadline, not a backoff before it.
                let now = Instant::now();
                if now >= deadline {
                    return Err(GaveUp::TimedOut(err));
                }
                delay = delay.min(deadline - now);
            }
            match self.stop {
                Some(stop) => select! {
                    recv(stop) -> _ => return Err(GaveUp::Stopped),
                    default(delay) => {}
                },
                None => std::thread::sleep(delay),
            }
        }
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

    fn io_error() -> DbError {
        DbError::Mysql(mysql::Error::IoError(std::io::Error::other("gone")))
    }

    #[test]
    fn retries_an_outage_until_it_lands() {
        let health = DbHealth::default();
        let mut tries = 0;
        let got = Retry::write("test", &health).run(|| {
            tries += 1;
            if tries < 3 {
                Err(io_error())
            } else {
                Ok(tries)
            }
        });
        assert_eq!(got.unwrap(), 3);
        assert!(!health.is_down(), "the success ends the outage");
        assert_eq!(health.failures(), 2);
    }

    #[test]
    fn gives_up_on_refusal_stop_or_deadline() {
        let health = DbHealth::default();
        let refused = Retry::new("test", &health)
            .give_up_on_fatal()
            .run(|| -> DbResult<()> { Err(DbError::Schema("no table".into())) });
        assert!(matches!(refused, Err(GaveUp::Refused(_))));
        let bad = Retry::new("test", &health).run(|| -> DbResult<()> {
            Err(DbError::Mysql(mysql::Error::MySqlError(
                mysql::MySqlError {
                    state: "22003".into(),
                    message: "out of range".into(),
                    code: 1264,
                },
            )))
        });
        assert!(
            matches!(bad, Err(GaveUp::Refused(_))),
            "bad input is never retried"
        );
        let (tx, stop) = crossbeam_channel::bounded::<()>(0);
        drop(tx);
        let stopped = Retry::new("test", &health)
            .until_stopped(&stop)
            .run(|| -> DbResult<()> { Err(io_error()) });
        assert!(matches!(stopped, Err(GaveUp::Stopped)));
        let late = Retry::new("test", &health)
            .until(Instant::now())
            .run(|| -> DbResult<()> { Err(io_error()) });
        assert!(matches!(late, Err(GaveUp::TimedOut(_))));
    }
}
