//! Counters every thread bumps and the periodic summary reads, and the
//! histograms `/metrics` shows (see [`crate::http`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

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
    /// Claim sizes and run times.
    pub histograms: Histograms,
}

/// Distributions, kept by `prometheus-client` (a clone shares the counts,
/// so `/metrics` registers clones of these).
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Jobs per claim, for claims that found work.
    pub claim_batch: Histogram,
    /// Seconds each task ran, whatever its outcome.
    pub job_duration: Histogram,
}

/// Buckets of [`Histograms::claim_batch`]: up to the largest sensible
/// `CHANNEL_CAPACITY`.
pub const CLAIM_BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

/// Buckets of [`Histograms::job_duration`], in seconds: from instant tasks
/// to ones that run for many minutes.
pub const JOB_DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            claim_batch: Histogram::new(CLAIM_BATCH_BUCKETS),
            job_duration: Histogram::new(JOB_DURATION_BUCKETS),
        }
    }
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

    /// Records a claim of `jobs` jobs; an empty claim (nothing was waiting)
    /// is not a batch and is left out.
    pub fn observe_claim(&self, jobs: usize) {
        if jobs > 0 {
            self.histograms.claim_batch.observe(jobs as f64);
        }
    }

    /// Records how long a task ran (`None`: it was not running, nothing to
    /// record).
    pub fn observe_run(&self, ran: Option<Duration>) {
        if let Some(d) = ran {
            self.histograms.job_duration.observe(d.as_secs_f64());
        }
    }
}
