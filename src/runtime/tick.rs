//! The loop every periodic duty runs in: a pass at start and on every tick
//! of a `crossbeam_channel::tick` ticker, until a stop channel closes.
//!
//! A loop never dies on an error: a failed pass is reported to the pool's
//! [`DbHealth`] (one log line per outage) and retried after a backoff delay
//! that never exceeds the loop's own interval (a heartbeat must not sit in
//! a 5 s backoff after the database is back).

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, never, select, tick};

use crate::db::DbHealth;
use crate::db::error::DbResult;
use crate::db::retry::Backoff;

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The ticker fired, the loop started, or a failed pass is retried.
    Tick,
    /// Something signalled on the wake channel after the last pass asked to
    /// be woken early.
    Wake,
}

/// What a pass asks of the loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pace {
    /// Run again as soon as the wake channel fires.
    pub eager: bool,
    /// Run again after this long (at most the interval), woken or not.
    pub again_in: Option<Duration>,
}

/// One periodic loop: what it is called (for the log), how often it runs,
/// when it stops, and what may wake it early.
pub struct TickLoop<'a> {
    /// What a pass does, for the log ("claiming jobs").
    pub what: &'a str,
    /// The ticker's interval.
    pub interval: Duration,
    /// Closes when the loop must end.
    pub stop: &'a Receiver<()>,
    /// Where failures are reported.
    pub health: &'a DbHealth,
}

impl TickLoop<'_> {
    /// Runs `pass` once at start and then on every tick until `stop` closes.
    pub fn run(&self, mut pass: impl FnMut() -> DbResult<()>) {
        self.run_waking(&never(), |_| pass().map(|()| false));
    }

    /// Like [`TickLoop::run`]; a pass that returns `Ok(true)` asks to run
    /// again as soon as `wake` fires rather than at the next tick.
    pub fn run_waking(&self, wake: &Receiver<()>, mut pass: impl FnMut(Trigger) -> DbResult<bool>) {
        self.run_paced(wake, |trigger| {
            pass(trigger).map(|eager| Pace {
                eager,
                again_in: None,
            })
        });
    }

    /// Like [`TickLoop::run_waking`]; a pass may also ask to run again after
    /// a delay shorter than the interval ([`Pace::again_in`]).
    pub fn run_paced(&self, wake: &Receiver<()>, mut pass: impl FnMut(Trigger) -> DbResult<Pace>) {
        let ticker = tick(self.interval);
        let mut backoff = Backoff::new(
            Duration::from_millis(100).min(self.interval),
            Duration::from_secs(5).min(self.interval),
        );
        let mut retry_at: Option<Instant> = None;
        let mut soon_at: Option<Instant> = None;
        let mut eager = false;
        let mut due = Some(Trigger::Tick);
        loop {
            if let Some(trigger) = due.take() {
                match pass(trigger) {
                    Ok(pace) => {
                        self.health.worked();
                        backoff.reset();
                        retry_at = None;
                        eager = pace.eager;
                        soon_at = pace.again_in.map(|d| Instant::now() + d.min(self.interval));
                    }
                    Err(e) => {
                        self.health.failed(self.what, &e);
                        retry_at = Some(Instant::now() + backoff.next_delay());
                        soon_at = None;
                    }
                }
            }
            let retry = retry_at.map(crossbeam_channel::at).unwrap_or_else(never);
            let soon = soon_at.map(crossbeam_channel::at).unwrap_or_else(never);
            let waiting = retry_at.is_none();
            select! {
                recv(self.stop) -> _ => return,
                recv(ticker) -> _ => if waiting { due = Some(Trigger::Tick) },
                recv(wake) -> _ => if waiting && eager { due = Some(Trigger::Wake) },
                recv(retry) -> _ => due = Some(Trigger::Tick),
                recv(soon) -> _ => due = Some(Trigger::Wake),
            }
        }
    }
}
