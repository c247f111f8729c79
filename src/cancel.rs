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
    /// A cancel was requested (`cancel_requested_at`): the consumer marks
    /// the job `CANCELLED!`, "cancelled on request".
    Requested,
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
    state: State,
}

/// Where a run in the registry stands. Its changes happen under the
/// registry's lock, so the task's own end and an interrupt from outside
/// never both win: a run whose task returned first is `Finishing` and an
/// interrupt leaves it alone (its outcome is on its way to the database);
/// a run interrupted first ends as interrupted, whatever the task returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its task is running.
    Running,
    /// Interrupted from outside while running.
    Interrupted(Interrupt),
    /// Its task returned; its outcome is being written.
    Finishing,
}

/// What [`Registry::check_out`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The run's task runs here (now interrupted, when asked to be).
    Running,
    /// The run's task returned here; its outcome is being written.
    Finishing,
    /// A consumer here waits for the run's start to be written (it may
    /// have landed before an outage hid the answer): its task begins once
    /// the start is known to hold.
    Starting,
    /// The run is not this process's.
    Absent,
}

/// The jobs running in this process, by id: from the start of their task
/// until their outcome is written.
#[derive(Default)]
pub struct Registry {
    running: Mutex<HashMap<u64, Entry>>,
    /// Runs whose start a consumer here is waiting for.
    starting: Mutex<std::collections::HashSet<Run>>,
}

impl Registry {
    /// Records that a consumer here waits for `run`'s start to be written.
    pub fn starting(&self, run: Run) {
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run);
    }

    /// The wait for `run`'s start is over (its task was put in the running
    /// map first, if it starts).
    pub fn start_settled(&self, run: Run) {
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run);
    }

    /// Records that `run` starts running; returns the task's cancellation.
    /// Call [`Registry::returned`] when the task returns.
    pub fn start(&self, run: Run) -> Cancellation {
        let (tx, rx) = bounded(1);
        self.lock().insert(
            run.id,
            Entry {
                lease: run.lease,
                since: Instant::now(),
                tx,
                state: State::Running,
            },
        );
        Cancellation::new(rx)
    }

    /// The task of `run` returned: how long it ran, and the interrupt that
    /// came first, if one did (then the run counts as interrupted, whatever
    /// the task returned). Without one the run is `Finishing` until
    /// [`Registry::forget`].
    pub fn returned(&self, run: Run) -> (Option<Duration>, Option<Interrupt>) {
        let mut map = self.lock();
        match map.get_mut(&run.id) {
            Some(e) if e.lease == run.lease => {
                let ran = Some(e.since.elapsed());
                match e.state {
                    State::Interrupted(why) => (ran, Some(why)),
                    _ => {
                        e.state = State::Finishing;
                        (ran, None)
                    }
                }
            }
            _ => (None, None),
        }
    }

    /// Forgets `run`: its outcome is written (or nothing is left to write).
    pub fn forget(&self, run: Run) {
        let mut map = self.lock();
        if map.get(&run.id).is_some_and(|e| e.lease == run.lease) {
            map.remove(&run.id);
        }
    }

    /// Interrupts `run` if its task runs here. Returns whether a task was
    /// interrupted.
    pub fn interrupt(&self, run: Run, why: Interrupt) -> bool {
        self.check_out(run, why) == Presence::Running
    }

    /// Where `run` stands here; a running task is interrupted with `why`
    /// (the canceller decides on this: a run whose task already returned is
    /// left to its outcome).
    pub fn check_out(&self, run: Run, why: Interrupt) -> Presence {
        // The starting set first: a consumer puts the run in the running
        // map before taking it out of this set, so a run is never missed
        // between the two.
        if self
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&run)
        {
            return Presence::Starting;
        }
        let mut map = self.lock();
        match map.get_mut(&run.id) {
            Some(e) if e.lease == run.lease => match e.state {
                State::Running => {
                    e.state = State::Interrupted(why);
                    let _ = e.tx.try_send(why);
                    Presence::Running
                }
                State::Interrupted(_) => Presence::Running,
                State::Finishing => Presence::Finishing,
            },
            _ => Presence::Absent,
        }
    }

    /// Whether `run`'s task here was interrupted already (and has not
    /// returned yet).
    pub fn was_interrupted(&self, run: Run) -> bool {
        matches!(
            self.lock().get(&run.id),
            Some(e) if e.lease == run.lease && matches!(e.state, State::Interrupted(_))
        )
    }

    /// Interrupts every running task; returns how many.
    pub fn interrupt_all(&self, why: Interrupt) -> usize {
        let mut map = self.lock();
        let mut n = 0;
        for e in map.values_mut().filter(|e| e.state == State::Running) {
            e.state = State::Interrupted(why);
            let _ = e.tx.try_send(why);
            n += 1;
        }
        n
    }

    /// Runs whose task has been running for at least `min_age`.
    pub fn older_than(&self, min_age: Duration) -> Vec<Run> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, e)| e.state == State::Running && now.duration_since(e.since) >= min_age)
            .map(|(id, e)| Run {
                id: *id,
                lease: e.lease,
            })
            .collect()
    }

    /// How many tasks are running (not counting runs whose task returned
    /// and whose outcome is being written).
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.state != State::Finishing)
            .count()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs whose outcome is being written.
    pub fn finishing(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.state == State::Finishing)
            .count()
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
        let run = Run { id: 7, lease: 2 };
        let cancel = registry.start(run);
        assert!(!registry.interrupt(Run { id: 7, lease: 1 }, Interrupt::Cancelled));
        assert!(!registry.interrupt(Run { id: 8, lease: 2 }, Interrupt::Cancelled));
        assert_eq!(cancel.check(), None);
        assert_eq!(registry.returned(run).1, None);
        assert!(registry.is_empty(), "returned: no longer running");
        registry.forget(run);
        assert_eq!(registry.finishing(), 0);
    }

    #[test]
    fn a_task_that_returned_first_is_not_interrupted_and_vice_versa() {
        let registry = Registry::default();
        let (done, cut) = (Run { id: 1, lease: 1 }, Run { id: 2, lease: 1 });
        let _a = registry.start(done);
        let b = registry.start(cut);
        assert_eq!(registry.returned(done).1, None);
        assert_eq!(
            registry.check_out(done, Interrupt::Cancelled),
            Presence::Finishing,
            "its outcome is on its way: left alone"
        );
        assert_eq!(
            registry.check_out(cut, Interrupt::Cancelled),
            Presence::Running
        );
        assert_eq!(b.check(), Some(Interrupt::Cancelled));
        assert_eq!(
            registry.returned(cut).1,
            Some(Interrupt::Cancelled),
            "interrupted first: interrupted, whatever the task returned"
        );
        assert_eq!(
            registry.check_out(Run { id: 3, lease: 1 }, Interrupt::Cancelled),
            Presence::Absent
        );
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
