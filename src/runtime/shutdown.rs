//! Signals as a channel that closes.
//!
//! The first SIGTERM or SIGINT drops the only sender of the stop channel,
//! which wakes every receiver at once (the crossbeam-channel idiom); the
//! service then drains. A second signal exits at once, with code 130 (two
//! within [`SAME_SIGNAL`] are one stop sent twice, as by coreutils
//! `timeout`, which signals the child and then its process group). A
//! signal that comes while start-up is still waiting (for the database, or
//! for its name to be free) exits at once with code 0: nothing has been
//! claimed yet, and the wait could outlast Kubernetes' grace period.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

/// Signals this close together are one stop, not a second one.
pub const SAME_SIGNAL: Duration = Duration::from_millis(40);

/// Exit code of a second signal during shutdown.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Set once the service runs: from then on a signal drains it.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Tells the handler the service has started: a signal now drains it
/// rather than ending start-up.
pub fn mark_running() {
    RUNNING.store(true, Ordering::SeqCst);
}

/// Installs the SIGTERM/SIGINT handler. Returns the receiver that closes on
/// the first signal. Fails if a handler is already installed.
pub fn install() -> Result<Receiver<()>, ctrlc::Error> {
    let (tx, rx) = bounded::<()>(0);
    let slot: Mutex<Option<Sender<()>>> = Mutex::new(Some(tx));
    let first: Mutex<Option<Instant>> = Mutex::new(None);
    ctrlc::set_handler(move || {
        let mut first = first.lock().unwrap_or_else(|p| p.into_inner());
        match *first {
            // One stop sent twice: coreutils `timeout` signals the child and
            // then its process group, microseconds apart.
            Some(at) if at.elapsed() < SAME_SIGNAL => return,
            Some(_) => {
                log::warn!("second stop signal: exiting at once");
                std::process::exit(EXIT_SECOND_SIGNAL);
            }
            None => *first = Some(Instant::now()),
        }
        if !RUNNING.load(Ordering::SeqCst) {
            log::info!("stop signal received during start-up: nothing claimed yet, exiting");
            std::process::exit(0);
        }
        log::info!("stop signal received: draining (a second signal exits at once)");
        drop(slot.lock().unwrap_or_else(|p| p.into_inner()).take());
    })?;
    Ok(rx)
}
