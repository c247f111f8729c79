//! Publishers: one thread per duty, each looping on a `crossbeam_channel`
//! ticker. Each has a `run_once` that does one pass and returns what it did
//! (tests call it directly), and a `run` loop around it that never dies on a
//! database error: it logs through the shared [`DbHealth`](crate::outage::DbHealth),
//! backs off and tries again.

pub mod canceller;
pub mod heartbeat;
pub mod jobs;
pub mod pruner;
pub mod rescuer;
pub mod watcher;

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, never, select, tick};

use crate::db::DbResult;
use crate::outage::Backoff;
use crate::service::Shared;

/// Free room in a bounded channel: how much a pass may send without
/// blocking.
pub(crate) fn free_room<T>(tx: &crossbeam_channel::Sender<T>) -> usize {
    tx.capacity().unwrap_or(usize::MAX).saturating_sub(tx.len())
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The ticker fired, the loop started, or a failed pass is retried.
    Tick,
    /// Something signalled on the wake channel after the last pass asked to
    /// be woken early.
    Wake,
}

/// Runs `pass` once at start and then on every tick of `interval` until
/// `stop` closes. A pass that returns `Ok(true)` asks to run again as soon
/// as `wake` fires rather than at the next tick. A failed pass is reported
/// to the pool's health and retried after a backoff delay (never longer
/// than the interval).
pub(crate) fn tick_loop(
    shared: &Shared,
    what: &str,
    interval: std::time::Duration,
    stop: &Receiver<()>,
    wake: &Receiver<()>,
    mut pass: impl FnMut(Trigger) -> DbResult<bool>,
) {
    let ticker = tick(interval);
    // Retry at least as often as the ticker would have: a heartbeat must not
    // sit in a 5 s backoff after the database is back.
    let mut backoff = Backoff::new(
        Duration::from_millis(100).min(interval),
        Duration::from_secs(5).min(interval),
    );
    let mut retry_at: Option<Instant> = None;
    let mut eager = false;
    let mut due = Some(Trigger::Tick);
    loop {
        if let Some(trigger) = due.take() {
            match pass(trigger) {
                Ok(again) => {
                    backoff.reset();
                    retry_at = None;
                    eager = again;
                }
                Err(e) => {
                    shared.db.health().failed(what, &e);
                    retry_at = Some(Instant::now() + backoff.next_delay());
                }
            }
        }
        let retry = retry_at.map(crossbeam_channel::at).unwrap_or_else(never);
        let waiting = retry_at.is_none();
        select! {
            recv(stop) -> _ => return,
            recv(ticker) -> _ => if waiting { due = Some(Trigger::Tick) },
            recv(wake) -> _ => if waiting && eager { due = Some(Trigger::Wake) },
            recv(retry) -> _ => due = Some(Trigger::Tick),
        }
    }
}
