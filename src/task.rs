//! The `sleep` task: the original service's only kind of work.
//!
//! It sleeps `sleep` nanoseconds; a NULL `sleep` never ends by itself, so
//! only the canceller (or shutdown) ends it. Either way it waits on its
//! [`Cancellation`], so an interrupt ends it at once and frees its thread.

use std::time::Duration;

use crate::cancel::{Cancellation, Interrupt};

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to the end.
    Done,
    /// It was interrupted.
    Interrupted(Interrupt),
    /// It cannot run: the reason goes into the row.
    Failed(String),
}

/// Checks a row's `sleep` before the job is started, so bad input becomes
/// `FAILED!` without ever being `STARTED!`.
pub fn validate_sleep(sleep: Option<i64>) -> Result<(), String> {
    match sleep {
        Some(ns) if ns < 0 => Err(format!(
            "invalid sleep {ns}: must be zero or more nanoseconds, or NULL"
        )),
        _ => Ok(()),
    }
}

/// Runs the sleep task.
pub fn run_sleep(sleep: Option<i64>, cancel: &Cancellation) -> Outcome {
    if let Err(reason) = validate_sleep(sleep) {
        return Outcome::Failed(reason);
    }
    let interrupted = match sleep {
        Some(ns) => cancel.sleep(Duration::from_nanos(ns as u64)),
        None => Some(cancel.wait()),
    };
    match interrupted {
        None => Outcome::Done,
        Some(why) => Outcome::Interrupted(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::Registry;
    use std::time::Instant;

    #[test]
    fn negative_sleep_is_refused() {
        assert!(validate_sleep(Some(-1)).unwrap_err().contains("-1"));
        assert!(validate_sleep(Some(0)).is_ok());
        assert!(validate_sleep(None).is_ok());
        assert!(matches!(
            run_sleep(Some(-5), &Cancellation::never()),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn sleeps_the_given_nanoseconds() {
        let started = Instant::now();
        assert_eq!(
            run_sleep(Some(30_000_000), &Cancellation::never()),
            Outcome::Done
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_stuck_task_ends_when_interrupted() {
        let registry = Registry::default();
        let cancel = registry.start(1, 1);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                registry.interrupt(1, None, Interrupt::Cancelled);
            });
            assert_eq!(
                run_sleep(None, &cancel),
                Outcome::Interrupted(Interrupt::Cancelled)
            );
        });
    }
}
