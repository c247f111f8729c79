//! The effective configuration: one field per environment variable (see
//! [`super::VARS`] for their names, defaults and parsing).

use std::net::SocketAddr;
use std::time::Duration;

use log::LevelFilter;

/// The service's effective configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the jobs table lives (may hold a password: print with
    /// [`redact_url`]).
    pub database_url: String,
    /// Jobs publisher tick.
    pub jobs_poll_interval: Duration,
    /// Canceller publisher tick.
    pub canceller_poll_interval: Duration,
    /// A job still `STARTED!` this long after it started is dead.
    pub job_timeout: Duration,
    /// Threads running jobs.
    pub job_consumers: usize,
    /// Threads cancelling jobs.
    pub canceller_consumers: usize,
    /// Tasks started per second by this replica; 0 means unlimited.
    pub rate_limit: u64,
    /// Bound of each channel.
    pub channel_capacity: usize,
    /// r2d2 pool size.
    pub db_pool_size: u32,
    /// How long running tasks may finish after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// How long start-up waits for the database.
    pub db_connect_timeout: Duration,
    /// A statement without an answer this long is abandoned and retried.
    pub db_statement_timeout: Duration,
    /// Log verbosity.
    pub log_level: LevelFilter,
    /// How this replica signs the rows it owns.
    pub worker_name: String,
    /// The queues this replica claims from.
    pub queues: Vec<String>,
    /// How often the heartbeat thread proves this replica alive.
    pub heartbeat_interval: Duration,
    /// A replica whose heartbeat is older than this is dead.
    pub worker_dead_after: Duration,
    /// Attempts a job gets when its `max_attempts` column is NULL.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles with each attempt.
    pub retry_backoff: Duration,
    /// Final rows older than this are deleted; `None` keeps everything.
    pub retention: Option<Duration>,
    /// How often the pruner runs.
    pub prune_interval: Duration,
    /// How often the scheduler looks for new or edited schedules (it wakes
    /// for each fire time it knows of, too).
    pub scheduler_interval: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` answer; `None` (the
    /// variable set but empty) serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// Where `dashboard` listens.
    pub dashboard_addr: SocketAddr,
    /// What opens a dashboard session for actions; `None`: read-only.
    pub dashboard_token: Option<String>,
}
