//! Interrupting running tasks.
//!
//! Every task runs with a [`Cancellation`]: a channel it waits on instead of
//! sleeping blindly, so an interrupt wakes it at once. The [`Registry`] maps
//! each running job to the sending side, so the canceller, the watcher of
//! runs lost to other replicas and the shutdown deadline can interrupt a
//! task from any thread, and its consumer takes the next job.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use crate::job::Run;

/// Why a task was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// Its job was cancelled (timeout, or its run was lost to another
    /// replica): the row already says so, the task just stops.
    Cancelled,
    /// The service is shutting down and the drain deadline passed: the
    /// consumer marks the job `CANCELLED!`.
    Shutdown,
}

/// The task's side: wait on it, or poll it between steps of work. It
/// remembers the interrupt once seen, so the consumer can tell afterwards
/// whether the task was interrupted, whatever the task returned.
#[derive(Debug)]
pub struct Cancellation {
    rx: Receiver<Interrupt>,
    seen: OnceLock<Interrupt>,
}

impl Cancellation {
    /// A cancellation nobody can trigger (for tests and benches).
    pub fn never() -> Cancellation {
        let (tx, rx) = bounded(1);
        std::mem::forget(tx);
        Cancellation::new(rx)
    }

    fn new(rx: Receiver<Interrupt>) -> Cancellation {
        Cancellation {
            rx,
            seen: OnceLock::new(),
        }
    }

    fn note(&self, why: Interrupt) -> Interrupt {
        *self.seen.get_or_init(|| why)
    }

    /// Sleeps for `duration`, or until interrupted. `None` means the full
    /// duration elapsed.
    pub fn sleep(&self, duration: Duration) -> Option<Interrupt> {
        if let Some(why) = self.seen.get() {
            return Some(*why);
        }
        match self.rx.recv_timeout(duration) {
            Ok(why) => Some(self.note(why)),
            Err(RecvTimeoutError::Timeout) => None,
            // The registry dropped the sender without a reason: treat as a
            // cancellation rather than run on unsupervised.
            Err(RecvTimeoutError::Disconnected) => Some(self.note(Interrupt::Cancelled)),
        }
    }

    /// Waits until interrupted, however long that takes.
    pub fn wait(&self) -> Interrupt {
        if let Some(why) = self.seen.get() {
            return *why;
        }
        self.note(self.rx.recv().unwrap_or(Interrupt::Cancelled))
    }

    /// Whether an interrupt came, without waiting.
    pub fn check(&self) -> Option<Interrupt> {
        if let Some(why) = self.seen.get() {
            return Some(*why);
        }
        self.rx.try_recv().ok().map(|why| self.note(why))
    }

    /// The interrupt, if one came (checked now, without waiting).
    pub fn interrupted(&self) -> Option<Interrupt> {
        self.check()
    }
}

struct Entry {
    lease: u64,
    since: Instant,
    tx: Sender<Interrupt>,
}

/// The jobs running in this process, by id.
#[derive(Default)]
pub struct Registry {
    running: Mutex<HashMap<u64, Entry>>,
}

impl Registry {
    /// Records that `run` starts running; returns the task's cancellation.
    /// Call [`Registry::finish`] when it ends.
    pub fn start(&self, run: Run) -> Cancellation {
        let (tx, rx) = bounded(1);
        self.lock().insert(
            run.id,
            Entry {
                lease: run.lease,
                since: Instant::now(),
                tx,
            },
        );
        Cancellation::new(rx)
    }

    /// Forgets job `id`; returns how long it ran, if it was running.
    pub fn finish(&self, id: u64) -> Option<Duration> {
        self.lock().remove(&id).map(|e| e.since.elapsed())
    }

    /// Interrupts `run` if it runs here. Returns whether a task was
    /// interrupted.
    pub fn interrupt(&self, run: Run, why: Interrupt) -> bool {
        let map = self.lock();
        match map.get(&run.id) {
            Some(e) if e.lease == run.lease => e.tx.try_send(why).is_ok(),
            _ => false,
        }
    }

    /// Interrupts every running task; returns how many.
    pub fn interrupt_all(&self, why: Interrupt) -> usize {
        self.lock()
            .values()
            .filter(|e| e.tx.try_send(why).is_ok())
            .count()
    }

    /// Runs that have been going for at least `min_age`.
    pub fn older_than(&self, min_age: Duration) -> Vec<Run> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, e)| now.duration_since(e.since) >= min_age)
            .map(|(id, e)| Run {
                id: *id,
                lease: e.lease,
            })
            .collect()
    }

    /// How many tasks are running.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every operation is a single insert, remove or read), so a poisoned
        // lock is still safe to use.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_wakes_a_sleeping_task_at_once() {
        let registry = Registry::default();
        let run = Run { id: 7, lease: 1 };
        let cancel = registry.start(run);
        let started = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                assert!(registry.interrupt(run, Interrupt::Cancelled));
            });
            assert_eq!(
                cancel.sleep(Duration::from_secs(30)),
                Some(Interrupt::Cancelled)
            );
        });
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_stale_lease_interrupts_nothing() {
        let registry = Registry::default();
        let cancel = registry.start(Run { id: 7, lease: 2 });
        assert!(!registry.interrupt(Run { id: 7, lease: 1 }, Interrupt::Cancelled));
        assert!(!registry.interrupt(Run { id: 8, lease: 2 }, Interrupt::Cancelled));
        assert_eq!(cancel.check(), None);
        registry.finish(7);
        assert!(registry.is_empty());
    }

    #[test]
    fn interrupt_all_reaches_every_task() {
        let registry = Registry::default();
        let a = registry.start(Run { id: 1, lease: 1 });
        let b = registry.start(Run { id: 2, lease: 1 });
        assert_eq!(registry.interrupt_all(Interrupt::Shutdown), 2);
        assert_eq!(a.wait(), Interrupt::Shutdown);
        assert_eq!(b.wait(), Interrupt::Shutdown);
    }
}
