//! Starting named threads, and watching them.
//!
//! Threads are named (`publisher-jobs`, `consumer-jobs-3`): the names show
//! in logs, panics and `top -H`. Every thread the service starts goes
//! through [`Watch::spawn`], which gives the thread a guard: when the thread
//! ends, by returning or by panicking, the guard records it. Outside a
//! shutdown no service thread ever ends, so one that did is a dead thread
//! and `/healthz` says so (a restart is the cure). During a shutdown threads
//! end on purpose, and that is not a failure. The [`Watch`] also holds the
//! service's phase and its jobs channel, for the probes and `/metrics`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::job::Job;

/// Starts a named thread (unwatched: see [`Watch::spawn`] for the
/// service's own threads).
pub fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the database, checking the schema, registering; no
    /// thread claims yet.
    Starting,
    /// Every thread started.
    Running,
    /// A shutdown began: threads end on purpose.
    Stopping,
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;

const ALIVE: u8 = 0;
const RETURNED: u8 = 1;
const PANICKED: u8 = 2;

/// How one thread ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadState {
    /// Still running.
    Alive,
    /// Its function returned.
    Returned,
    /// It panicked.
    Panicked,
}

/// One watched thread.
#[derive(Debug)]
struct Watched {
    name: String,
    state: Arc<AtomicU8>,
}

/// Sets its thread's state when the thread ends, however it ends.
struct Guard(Arc<AtomicU8>);

impl Drop for Guard {
    fn drop(&mut self) {
        let end = if std::thread::panicking() {
            PANICKED
        } else {
            RETURNED
        };
        self.0.store(end, Ordering::SeqCst);
    }
}

/// The service's threads, phase and jobs channel, as `/healthz`, `/readyz`
/// and `/metrics` see them.
#[derive(Debug, Default)]
pub struct Watch {
    phase: AtomicU8,
    threads: Mutex<Vec<Watched>>,
    jobs: OnceLock<Receiver<Job>>,
}

impl Watch {
    /// Starts a named thread and watches it.
    pub fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        let state = Arc::new(AtomicU8::new(ALIVE));
        let guard = Guard(Arc::clone(&state));
        self.lock().push(Watched {
            name: name.clone(),
            state,
        });
        spawn(name, move || {
            let _guard = guard;
            f()
        })
    }

    /// The service's phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            STARTING => Phase::Starting,
            RUNNING => Phase::Running,
            _ => Phase::Stopping,
        }
    }

    /// Every thread has started.
    pub fn set_running(&self) {
        // Never back from Stopping: a shutdown that began stays begun.
        let _ = self
            .phase
            .compare_exchange(STARTING, RUNNING, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// A shutdown began.
    pub fn set_stopping(&self) {
        self.phase.store(STOPPING, Ordering::SeqCst);
    }

    /// Each watched thread's name and state, in start order.
    pub fn threads(&self) -> Vec<(String, ThreadState)> {
        self.lock()
            .iter()
            .map(|w| {
                let state = match w.state.load(Ordering::SeqCst) {
                    ALIVE => ThreadState::Alive,
                    RETURNED => ThreadState::Returned,
                    _ => ThreadState::Panicked,
                };
                (w.name.clone(), state)
            })
            .collect()
    }

    /// Names of threads that ended although no shutdown asked them to (and
    /// of any that panicked, whenever they did).
    pub fn dead(&self) -> Vec<String> {
        let stopping = self.phase() == Phase::Stopping;
        self.threads()
            .into_iter()
            .filter(|(_, s)| match s {
                ThreadState::Alive => false,
                ThreadState::Returned => !stopping,
                ThreadState::Panicked => true,
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// Remembers the jobs channel, so its depth can be read.
    pub fn set_jobs_channel(&self, jobs: Receiver<Job>) {
        let _ = self.jobs.set(jobs);
    }

    /// Jobs claimed and waiting in the channel (0 before the channel
    /// exists).
    pub fn jobs_waiting(&self) -> usize {
        self.jobs.get().map_or(0, Receiver::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        // Pushes and reads only: a poisoned lock still holds a whole list.
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_ends_outside_a_shutdown_is_dead() {
        let watch = Watch::default();
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let runs = watch.spawn("loop".into(), move || {
            let _ = rx.recv();
        });
        let ends = watch.spawn("quits".into(), || {});
        ends.join().unwrap();
        watch.set_running();
        assert_eq!(watch.dead(), vec!["quits".to_string()]);
        assert_eq!(
            watch.threads(),
            vec![
                ("loop".to_string(), ThreadState::Alive),
                ("quits".to_string(), ThreadState::Returned)
            ]
        );
        // In a shutdown, returning is what threads are asked to do.
        watch.set_stopping();
        drop(tx);
        runs.join().unwrap();
        assert!(watch.dead().is_empty());
        watch.set_running();
        assert_eq!(watch.phase(), Phase::Stopping);
    }

    #[test]
    fn a_panicked_thread_is_dead_even_in_a_shutdown() {
        let watch = Watch::default();
        let h = watch.spawn("bad".into(), || panic!("boom"));
        assert!(h.join().is_err());
        watch.set_stopping();
        assert_eq!(watch.dead(), vec!["bad".to_string()]);
        assert_eq!(watch.threads()[0].1, ThreadState::Panicked);
    }

    #[test]
    fn channel_depth_reads_the_jobs_channel() {
        let watch = Watch::default();
        assert_eq!(watch.jobs_waiting(), 0);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(4);
        watch.set_jobs_channel(rx);
        tx.send(Job::default()).unwrap();
        assert_eq!(watch.jobs_waiting(), 1);
    }
}
