//! What a run's end means: the task's result (or its panic, or an
//! interrupt) turned into the [`Outcome`] to write, and the delay before a
//! retry. `MAX_ATTEMPTS` (default 1) applies to a job whose `max_attempts`
//! is NULL; `RETRY_BACKOFF` (default 1s) is the first retry's delay.

use std::time::Duration;

use super::finisher::Outcome;
use crate::cancel::Interrupt;
use crate::task::{JobContext, TaskError};

/// The `error` of a job cancelled by `cancel_requested_at`.
pub const CANCELLED_ON_REQUEST: &str = "cancelled on request";

/// The longest delay between two attempts.
pub const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// How a task's run ended, before it is judged.
#[derive(Debug)]
pub enum Ended {
    /// Interrupted from outside: the run was cancelled (the row already says
    /// so) or the shutdown deadline passed.
    Interrupted(Interrupt),
    /// The task returned (or panicked).
    Returned(std::thread::Result<Result<(), TaskError>>),
}

/// The outcome to write for a run that ended so; `None` when there is
/// nothing to write (a cancellation wrote the row already). An interrupt
/// wins over whatever the task returned: the run was ended from outside.
pub fn judge(
    ctx: &JobContext,
    ended: Ended,
    retry_backoff: Duration,
    shutdown_timeout: Duration,
) -> Option<Outcome> {
    let result = match ended {
        Ended::Interrupted(Interrupt::Cancelled) => return None,
        Ended::Interrupted(Interrupt::Requested) => {
            return Some(Outcome::Cancelled(CANCELLED_ON_REQUEST.into()));
        }
        Ended::Interrupted(Interrupt::Shutdown) => {
            return Some(Outcome::Cancelled(format!(
                "cancelled: interrupted by shutdown, still running SHUTDOWN_TIMEOUT ({}) after the stop signal",
                crate::config::show_duration(shutdown_timeout)
            )));
        }
        Ended::Returned(result) => result,
    };
    let attempt = format!("attempt {}/{}", ctx.attempt, ctx.max_attempts);
    Some(match result {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(TaskError::Retryable(msg))) if ctx.attempt < ctx.max_attempts => Outcome::Retry {
            reason: format!("{attempt}: {msg}"),
            delay: retry_delay(retry_backoff, ctx.attempt),
        },
        Ok(Err(TaskError::Retryable(msg) | TaskError::Permanent(msg))) => {
            Outcome::Failed(format!("{attempt}: {msg}"))
        }
        Ok(Err(TaskError::Interrupted)) => Outcome::Failed(format!(
            "{attempt}: the task reported an interrupt, but nothing interrupted it"
        )),
        Err(panic) => Outcome::Failed(format!(
            "{attempt}: task panicked: {}",
            panic_message(&*panic)
        )),
    })
}

/// Delay before retrying after failed attempt number `attempt` (from 1):
/// `base` doubled for each attempt before, capped at [`RETRY_BACKOFF_CAP`],
/// with "equal" jitter: until the cap, a later delay is never shorter than
/// an earlier one.
pub fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(RETRY_BACKOFF_CAP);
    crate::db::retry::equal_jitter(exp)
}

/// The message a panic carried.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let base = Duration::from_secs(1);
        let first = retry_delay(base, 1);
        assert!(first >= Duration::from_millis(500) && first <= base);
        assert!(retry_delay(base, 3) >= Duration::from_secs(2));
        assert!(retry_delay(base, 30) <= RETRY_BACKOFF_CAP);
    }

    #[test]
    fn panics_carry_their_message() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "boom 1");
    }
}
