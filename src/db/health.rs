//! The database's state as all threads see it.
//!
//! All threads share one [`DbHealth`], which turns their failures into one
//! warning when the database goes away and one info line when it is back,
//! instead of a line per retry per thread. Failures, conflicts and outages
//! are counted in the process's [`Metrics`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{DbError, ErrorKind};
use crate::metrics::{Counter, Metrics};

/// How long after an outage ends a connection failure is taken as its tail
/// rather than as a new outage.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Outage tracking shared by everything that uses one pool.
#[derive(Debug, Default)]
pub struct DbHealth {
    down_since: Mutex<Option<Instant>>,
    /// When the last outage ended.
    back_at: Mutex<Option<Instant>>,
    /// The last error that will not fix itself (a missing table), until a
    /// call succeeds again.
    refusal: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    quiet: bool,
}

impl DbHealth {
    /// Tracking that counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> DbHealth {
        DbHealth {
            down_since: Mutex::new(None),
            back_at: Mutex::new(None),
            refusal: Mutex::new(None),
            metrics,
            quiet: false,
        }
    }

    /// Tracking that logs nothing (its caller says what happened).
    pub fn quiet() -> DbHealth {
        DbHealth {
            quiet: true,
            ..DbHealth::default()
        }
    }

    /// Records a failed database call by `what` (an operation, like
    /// "claiming jobs"). An outage logs a warning only when it opens; an
    /// error the server answered with is logged as is; a conflict (a
    /// deadlock, or a Galera certification conflict) is counted apart and
    /// logged only at debug level: on a cluster it is part of normal work,
    /// and its transaction was rolled back whole, ready to be retried.
    pub fn failed(&self, what: &str, err: &DbError) {
        if err.is_conflict() {
            self.metrics.add(Counter::DbConflicts, 1);
            if !self.quiet {
                log::debug!("{what}: {err}; rolled back, retrying");
            }
            return;
        }
        self.metrics.add(Counter::DbErrors, 1);
        if err.kind() == ErrorKind::Fatal {
            *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
        }
        if self.quiet {
            return;
        }
        if err.kind() != ErrorKind::Outage {
            // The server is there and said no: not an outage, but worth a
            // line each time (a lock wait timeout, a missing table).
            log::warn!("{what}: {}; retrying", describe(err));
            return;
        }
        let mut down = self.lock();
        if down.is_none() && self.settling() {
            // The tail of the outage that just ended: some connections come
            // back a moment later than others.
            log::debug!("{what}: {err} (just after the database came back)");
        } else if down.is_none() {
            *down = Some(Instant::now());
            self.metrics.add(Counter::DbOutages, 1);
            log::warn!("database unavailable ({what}: {err}); retrying with backoff");
        } else {
            log::debug!("{what}: {err}");
        }
    }

    /// Records that the server answered; logs once when that ends an outage.
    pub fn ok(&self) {
        let mut down = self.lock();
        let Some(since) = down.take() else {
            return;
        };
        *self.back_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if !self.quiet {
            log::info!(
                "database is back after {:.1}s ({} failed calls retried so far)",
                since.elapsed().as_secs_f64(),
                self.failures()
            );
        }
    }

    /// Whether an outage ended moments ago ([`SETTLE`]).
    fn settling(&self) -> bool {
        self.back_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < SETTLE)
    }

    /// Records that a statement succeeded: an earlier refusal is over.
    pub fn worked(&self) {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// The last error that will not fix itself, while no call has succeeded
    /// since (`/readyz` reports it).
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the last call failed.
    pub fn is_down(&self) -> bool {
        self.lock().is_some()
    }

    /// Failed calls so far (each was retried or given up at shutdown).
    pub fn failures(&self) -> u64 {
        self.metrics.get(Counter::DbErrors)
    }

    /// Conflicts so far (each rolled back and retried).
    pub fn conflicts(&self) -> u64 {
        self.metrics.get(Counter::DbConflicts)
    }

    /// Outages so far.
    pub fn episodes(&self) -> u64 {
        self.metrics.get(Counter::DbOutages)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An error, with what it means where the server's words are not enough.
pub fn describe(err: &DbError) -> String {
    match err.code() {
        Some(1205) => format!(
            "a lock wait timed out: another session holds a lock this statement needs (a row \
             lock, or a table's metadata lock while an ALTER TABLE waits for it) ({err})"
        ),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_conflict_is_counted_apart_and_is_no_failure() {
        let health = DbHealth::default();
        let conflict = DbError::Mysql(mysql::Error::MySqlError(mysql::MySqlError {
            state: "40001".into(),
            message: "Deadlock found when trying to get lock; try restarting transaction".into(),
            code: 1213,
        }));
        health.failed("claiming jobs", &conflict);
        health.failed("starting jobs", &conflict);
        assert_eq!(health.conflicts(), 2);
        assert_eq!(health.failures(), 0, "not counted as a failed call");
        assert!(!health.is_down());
        assert_eq!(health.refusal(), None);
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
        assert!(health.refusal().unwrap().contains("missing"));
        health.ok();
        assert!(health.refusal().is_some(), "a checkout is not a statement");
        health.worked();
        assert_eq!(health.refusal(), None);
    }
}
