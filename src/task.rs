//! Task kinds: the work a job does.
//!
//! A job's `kind` column names a registered [`Task`]; the binary registers
//! `sleep` (the original service's only kind), and a program embedding the
//! library registers its own through [`crate::runner::Runner`]. A task gets
//! the job ([`JobContext`]) and a [`Cancellation`] it must honour, and
//! returns success, a retryable error (the job is tried again later, up to
//! its `max_attempts`) or a permanent one (`FAILED!` at once).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::{Cancellation, Interrupt};
use crate::db::Db;

/// The kind a row gets when its `kind` column is left to its default.
pub const SLEEP: &str = "sleep";

/// What a task sees of its job.
#[derive(Clone)]
pub struct JobContext {
    /// The row's id.
    pub id: u64,
    /// The row's `object_id`.
    pub object_id: Option<i64>,
    /// The row's `sleep` (nanoseconds), used by the `sleep` kind.
    pub sleep: Option<i64>,
    /// The row's `kind`.
    pub kind: String,
    /// The row's `payload` (JSON text), if any.
    pub payload: Option<String>,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// How many attempts the job may have.
    pub max_attempts: u32,
    /// The service's connection pool, for tasks that work on the database.
    pub db: Db,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("object_id", &self.object_id)
            .field("kind", &self.kind)
            .field("payload", &self.payload)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// Why a task did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// Worth trying again later (a flaky dependency, a lock, a timeout).
    Retryable(String),
    /// Trying again will not help (bad input, a missing object).
    Permanent(String),
    /// The task stopped because its [`Cancellation`] fired.
    Interrupted,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Retryable(m) | TaskError::Permanent(m) => f.write_str(m),
            TaskError::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// A kind of work. Implementations must be thread-safe: every jobs consumer
/// calls the same instance.
pub trait Task: Send + Sync {
    /// Checks the job's input before it starts. An error marks the job
    /// `FAILED!` with that reason, without ever starting it.
    fn validate(&self, _job: &JobContext) -> Result<(), String> {
        Ok(())
    }

    /// Does the work. It must return soon after `cancel` fires (wait on
    /// [`Cancellation::sleep`] instead of sleeping, or poll
    /// [`Cancellation::check`] between steps): a cancelled job's thread is
    /// wanted for the next job. A panic is caught and fails the job.
    fn run(&self, job: &JobContext, cancel: &Cancellation) -> Result<(), TaskError>;
}

/// The registered task kinds, by name.
#[derive(Clone, Default)]
pub struct Tasks {
    kinds: HashMap<String, Arc<dyn Task>>,
}

impl Tasks {
    /// The kinds the binary runs: just `sleep`.
    pub fn with_sleep() -> Tasks {
        let mut tasks = Tasks::default();
        tasks.register(SLEEP, SleepTask);
        tasks
    }

    /// Registers `task` under `kind`, replacing any earlier one.
    pub fn register(&mut self, kind: &str, task: impl Task + 'static) {
        self.kinds.insert(kind.to_string(), Arc::new(task));
    }

    /// The task for `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Task>> {
        self.kinds.get(kind)
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }
}

/// The original service's task: sleeps `sleep` nanoseconds; a NULL `sleep`
/// never ends by itself, so only the canceller (or shutdown) ends it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepTask;

impl Task for SleepTask {
    fn validate(&self, job: &JobContext) -> Result<(), String> {
        match job.sleep {
            Some(ns) if ns < 0 => Err(format!(
                "invalid sleep {ns}: must be zero or more nanoseconds, or NULL"
            )),
            _ => Ok(()),
        }
    }

    fn run(&self, job: &JobContext, cancel: &Cancellation) -> Result<(), TaskError> {
        let interrupted: Option<Interrupt> = match job.sleep {
            Some(ns) => cancel.sleep(Duration::from_nanos(ns.max(0) as u64)),
            None => Some(cancel.wait()),
        };
        match interrupted {
            None => Ok(()),
            Some(_) => Err(TaskError::Interrupted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::Registry;
    use std::time::Instant;

    fn job(sleep: Option<i64>) -> JobContext {
        JobContext {
            id: 1,
            object_id: None,
            sleep,
            kind: SLEEP.into(),
            payload: None,
            attempt: 1,
            max_attempts: 1,
            db: Db::new("mysql://127.0.0.1:1/x", 1).unwrap(),
        }
    }

    #[test]
    fn negative_sleep_is_refused() {
        assert!(
            SleepTask
                .validate(&job(Some(-1)))
                .unwrap_err()
                .contains("-1")
        );
        assert!(SleepTask.validate(&job(Some(0))).is_ok());
        assert!(SleepTask.validate(&job(None)).is_ok());
    }

    #[test]
    fn sleeps_the_given_nanoseconds() {
        let started = Instant::now();
        assert_eq!(
            SleepTask.run(&job(Some(30_000_000)), &Cancellation::never()),
            Ok(())
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_stuck_task_ends_when_interrupted() {
        let registry = Registry::default();
        let run = crate::job::Run { id: 1, lease: 1 };
        let cancel = registry.start(run);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                registry.interrupt(run, Interrupt::Cancelled);
            });
            assert_eq!(
                SleepTask.run(&job(None), &cancel),
                Err(TaskError::Interrupted)
            );
        });
        assert_eq!(cancel.interrupted(), Some(Interrupt::Cancelled));
    }

    #[test]
    fn the_binary_registers_sleep() {
        assert_eq!(Tasks::with_sleep().kinds(), [SLEEP]);
    }
}
