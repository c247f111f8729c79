//! The summary: what this replica did, logged every [`SUMMARY_INTERVAL`],
//! and once more at shutdown. Its parts come from the counter table
//! ([`COUNTERS`]): each counter says whether it shows in the last minute's
//! part, in the running totals, or both.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, select, tick};

use crate::bucket::Bucket;
use crate::cancel::Registry;
use crate::job::Job;
use crate::metrics::{COUNTERS, Metrics};

/// How often the summary line is logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// The counters and the time spent waiting for tokens, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    counters: Vec<u64>,
    waited: Duration,
}

/// The summary.
pub struct Summary {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    bucket: Arc<Bucket>,
    jobs: Receiver<Job>,
}

impl Summary {
    /// A summary of these counters, running tasks, token waits and the jobs
    /// channel's depth.
    pub fn new(
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        bucket: Arc<Bucket>,
        jobs: Receiver<Job>,
    ) -> Summary {
        Summary {
            metrics,
            registry,
            bucket,
            jobs,
        }
    }

    /// What the counters say now.
    pub fn readings(&self) -> Readings {
        Readings {
            counters: self.metrics.snapshot().to_vec(),
            waited: self.bucket.waited(),
        }
    }

    /// One line: what changed since `since`, and the running totals.
    pub fn line(&self, since: &Readings) -> String {
        let now = self.readings();
        let before = |i: usize| since.counters.get(i).copied().unwrap_or(0);
        let mut minute: Vec<String> = COUNTERS
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some(format!("{} {}", c.minute?, now.counters[i] - before(i))))
            .collect();
        minute.push(format!("running {}", self.registry.len()));
        minute.push(format!(
            "waited for tokens {:.1}s",
            now.waited.saturating_sub(since.waited).as_secs_f64()
        ));
        let totals: Vec<String> = COUNTERS
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some(format!("{} {}", c.total?, now.counters[i])))
            .collect();
        format!("{}; totals: {}", minute.join(", "), totals.join(", "))
    }

    /// Logs the last minute's line every [`SUMMARY_INTERVAL`] until `stop`
    /// closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticker = tick(SUMMARY_INTERVAL);
        let mut last = self.readings();
        loop {
            select! {
                recv(stop) -> _ => return,
                recv(ticker) -> _ => {
                    log::info!(
                        "last minute: {}; waiting in channel {}",
                        self.line(&last),
                        self.jobs.len()
                    );
                    last = self.readings();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counter;

    #[test]
    fn the_line_shows_the_minute_and_the_totals() {
        let metrics = Arc::new(Metrics::default());
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let summary = Summary::new(
            Arc::clone(&metrics),
            Arc::default(),
            Arc::new(Bucket::new(0)),
            rx,
        );
        metrics.add(Counter::Done, 5);
        let since = summary.readings();
        metrics.add(Counter::Done, 2);
        metrics.add(Counter::Lost, 1);
        let line = summary.line(&since);
        assert!(
            line.starts_with("done 2, cancelled 0, failed 0, running 0"),
            "{line}"
        );
        assert!(line.contains("totals: claimed 0, done 7"), "{line}");
        assert!(line.contains("lost 1"), "{line}");
    }
}
