//! What this process counted: the one table of counters ([`COUNTERS`]),
//! which `/metrics` and the once-a-minute summary line both read, and the
//! histograms `/metrics` shows.
//!
//! A counter is added to where the thing it counts happens; nothing else
//! keeps a count of its own. Database failures, conflicts and outages are
//! counted here too (by [`crate::db::DbHealth`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// A monotonic counter of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Jobs claimed (`QUEUED!`).
    Claimed,
    /// Jobs started (`STARTED!`).
    Started,
    /// Statements that started a batch of jobs.
    StartBatches,
    /// Jobs finished `DONE!`.
    Done,
    /// Jobs cancelled by this replica (timeout, dead replica, shutdown).
    Cancelled,
    /// Jobs marked `FAILED!`.
    Failed,
    /// Attempts that failed with a retryable error and were put back.
    Retried,
    /// Jobs of dead replicas put back or cancelled.
    Rescued,
    /// Claimed jobs put back to new unstarted.
    Released,
    /// Writes refused because this replica no longer held the job.
    Lost,
    /// Jobs enqueued by schedules.
    SchedulesFired,
    /// Fire times of schedules passed over after a downtime (one catch-up
    /// fire stands for them).
    SchedulesSkipped,
    /// Schedules disabled for a bad row (expression, kind, queue, name).
    SchedulesDisabled,
    /// Database calls that failed (each was retried or given up at shutdown).
    DbErrors,
    /// Times the database became unreachable.
    DbOutages,
    /// Transactions the server rolled back for a conflict (a deadlock, or a
    /// Galera certification conflict with another node's commit), retried.
    DbConflicts,
}

/// One row of the counter table.
pub struct CounterInfo {
    /// Which counter.
    pub counter: Counter,
    /// Its `/metrics` name, without the prefix and `_total`.
    pub name: &'static str,
    /// Its `/metrics` help text.
    pub help: &'static str,
    /// Its label in the summary's "last minute" part, if it is there.
    pub minute: Option<&'static str>,
    /// Its label in the summary's running totals, if it is there.
    pub total: Option<&'static str>,
}

/// Every counter, in the order `/metrics` lists them.
pub const COUNTERS: &[CounterInfo] = &[
    CounterInfo {
        counter: Counter::Claimed,
        name: "jobs_claimed",
        help: "Jobs claimed (QUEUED!) by this replica",
        minute: None,
        total: Some("claimed"),
    },
    CounterInfo {
        counter: Counter::Started,
        name: "jobs_started",
        help: "Jobs this replica started (STARTED!)",
        minute: None,
        total: None,
    },
    CounterInfo {
        counter: Counter::StartBatches,
        name: "start_batches",
        help: "Statements that started a batch of jobs (jobs_started / this = jobs per start)",
        minute: None,
        total: None,
    },
    CounterInfo {
        counter: Counter::Done,
        name: "jobs_done",
        help: "Jobs this replica finished DONE!",
        minute: Some("done"),
        total: Some("done"),
    },
    CounterInfo {
        counter: Counter::Cancelled,
        name: "jobs_cancelled",
        help: "Jobs this replica cancelled (timeout, dead replica, shutdown deadline)",
        minute: Some("cancelled"),
        total: None,
    },
    CounterInfo {
        counter: Counter::Failed,
        name: "jobs_failed",
        help: "Jobs this replica marked FAILED!",
        minute: Some("failed"),
        total: None,
    },
    CounterInfo {
        counter: Counter::Retried,
        name: "jobs_retried",
        help: "Attempts that failed with a retryable error and were put back",
        minute: None,
        total: None,
    },
    CounterInfo {
        counter: Counter::Rescued,
        name: "jobs_rescued",
        help: "Jobs of dead replicas this replica put back or cancelled",
        minute: None,
        total: Some("rescued"),
    },
    CounterInfo {
        counter: Counter::Released,
        name: "jobs_released",
        help: "Claimed jobs put back to new unstarted (shutdown, settled claims, rescues)",
        minute: None,
        total: Some("released"),
    },
    CounterInfo {
        counter: Counter::Lost,
        name: "jobs_lost",
        help: "Writes refused because this replica no longer held the job",
        minute: None,
        total: Some("lost"),
    },
    CounterInfo {
        counter: Counter::SchedulesFired,
        name: "schedules_fired",
        help: "Jobs this replica enqueued for schedules (one per fire time, across replicas)",
        minute: None,
        total: None,
    },
    CounterInfo {
        counter: Counter::SchedulesSkipped,
        name: "schedules_skipped",
        help: "Fire times passed over after a downtime (one catch-up fire stood for them)",
        minute: None,
        total: None,
    },
    CounterInfo {
        counter: Counter::SchedulesDisabled,
        name: "schedules_disabled",
        help: "Schedules this replica disabled for a bad row (the reason is in its error)",
        minute: None,
        total: None,
    },
    CounterInfo {
        counter: Counter::DbErrors,
        name: "database_errors",
        help: "Database calls that failed (each was retried)",
        minute: None,
        total: Some("db retries"),
    },
    CounterInfo {
        counter: Counter::DbOutages,
        name: "database_outages",
        help: "Times the database went away; each ended with a reconnect, or is still open",
        minute: None,
        total: None,
    },
    CounterInfo {
        counter: Counter::DbConflicts,
        name: "database_conflicts_retried",
        help: "Transactions rolled back whole for a conflict (error 1213: a deadlock, or a Galera \
               certification conflict with another node's commit) and retried",
        minute: None,
        total: Some("conflicts retried"),
    },
];

const N: usize = COUNTERS.len();

/// Counters and histograms for this process.
#[derive(Debug, Default)]
pub struct Metrics {
    values: [AtomicU64; N],
    /// Claim sizes and run times.
    pub histograms: Histograms,
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        self.values[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// Every counter's value, in table order.
    pub fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|i| self.values[i].load(Ordering::Relaxed))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_counter_order() {
        for (i, info) in COUNTERS.iter().enumerate() {
            assert_eq!(info.counter as usize, i, "{}", info.name);
        }
    }

    #[test]
    fn counters_add_up() {
        let m = Metrics::default();
        m.add(Counter::Done, 2);
        m.add(Counter::Done, 3);
        assert_eq!(m.get(Counter::Done), 5);
        assert_eq!(m.snapshot()[Counter::Done as usize], 5);
        assert_eq!(m.get(Counter::Lost), 0);
    }
}
