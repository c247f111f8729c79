//! Signals as a channel that closes.
//!
//! The first SIGTERM or SIGINT drops the only sender of the stop channel,
//! which wakes every receiver at once (the crossbeam-channel idiom); the
//! service then drains. A second signal exits at once, with code 130.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};

/// Exit code of a second signal during shutdown.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Installs the SIGTERM/SIGINT handler. Returns the receiver that closes on
/// the first signal. Fails if a handler is already installed.
pub fn install() -> Result<Receiver<()>, ctrlc::Error> {
    let (tx, rx) = bounded::<()>(0);
    let slot: Mutex<Option<Sender<()>>> = Mutex::new(Some(tx));
    let seen = AtomicBool::new(false);
    ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            log::warn!("second stop signal: exiting at once");
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
        log::info!("stop signal received: draining (a second signal exits at once)");
        drop(slot.lock().unwrap_or_else(|p| p.into_inner()).take());
    })?;
    Ok(rx)
}
