//! Counters every thread bumps and the periodic summary reads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters for this process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Jobs claimed (`QUEUED!`) by this replica.
    pub claimed: AtomicU64,
    /// Jobs this replica started.
    pub started: AtomicU64,
    /// Statements that started a batch of jobs.
    pub start_batches: AtomicU64,
    /// Jobs this replica finished `DONE!`.
    pub done: AtomicU64,
    /// Jobs cancelled by this replica's canceller, rescuer or shutdown.
    pub cancelled: AtomicU64,
    /// Attempts that failed with a retryable error and were put back.
    pub retried: AtomicU64,
    /// Jobs marked `FAILED!` by this replica.
    pub failed: AtomicU64,
    /// Jobs put back to new (shutdown release, rescue of dead replicas).
    pub released: AtomicU64,
    /// Jobs of dead replicas rescued by this replica (released or cancelled).
    pub rescued: AtomicU64,
    /// Writes rejected because this replica no longer held the job.
    pub lost: AtomicU64,
    /// Database statements that failed and were retried.
    pub db_retries: AtomicU64,
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
