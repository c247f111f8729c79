//! The one table of environment variables.
//!
//! Each [`Var`] says its name, its default as a user would write it, what it
//! means, how its value is read into [`Config`] and how the effective value
//! is shown. Parsing ([`Config::from_lookup`]), `--help`, the start-up log
//! line and the checks that the README and the ConfigMap list every
//! variable with its default are all derived from [`VARS`].

use std::time::Duration;

use super::settings::Config;
use super::values::{
    count, dashboard_addr, dashboard_token, database_url, duration, level, metrics_addr,
    parse_duration, queue_list, show_duration,
};

/// The default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "mysql://root@127.0.0.1:3306/background_processing";

/// The default `METRICS_ADDR`: every interface, so the kubelet and
/// Prometheus can reach it in a pod.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";

/// The default `DASHBOARD_ADDR`: this machine only (a pod sets
/// `0.0.0.0:8080` for its Service).
pub const DEFAULT_DASHBOARD_ADDR: &str = "127.0.0.1:8080";

/// One environment variable.
pub struct Var {
    /// The variable's name.
    pub name: &'static str,
    /// Its default, as it would be written in the environment (or, for a
    /// computed default, how it is computed).
    pub default: &'static str,
    /// What it means, in a few words.
    pub help: &'static str,
    /// How its value is read.
    pub(super) read: Read,
    /// Reads a value into the configuration; the error says what a valid
    /// value looks like.
    pub(super) set: fn(&mut Config, &str) -> Result<(), String>,
    /// The effective value, as the start-up line shows it.
    pub(super) show: fn(&Config) -> String,
}

/// How a variable's value is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// Unset or blank: the default.
    Plain,
    /// Unset or blank: computed from other settings afterwards.
    Computed,
    /// Unset: the default; set but blank: a value of its own (`METRICS_ADDR`
    /// empty turns the endpoints off).
    BlankIsValue,
    /// Like `Plain`, and the value is a secret: errors show it redacted.
    Secret,
    /// Unset or blank: off (its default names no value); set: a secret,
    /// never shown.
    Token,
}

/// Stores a parsed value.
fn put<T>(slot: &mut T, value: Result<T, String>) -> Result<(), String> {
    *slot = value?;
    Ok(())
}

fn d(duration: Duration) -> String {
    show_duration(duration)
}

/// Every variable the service reads, in the order `--help` lists them.
pub const VARS: &[Var] = &[
    Var {
        name: "DATABASE_URL",
        default: DEFAULT_DATABASE_URL,
        help: "where the jobs table lives; TLS: ?ssl-mode=VERIFY_IDENTITY&ssl-ca=/path/ca.pem",
        read: Read::Secret,
        set: |c, v| {
            c.database_url = database_url(v)?;
            Ok(())
        },
        show: |c| c.redacted_url(),
    },
    Var {
        name: "JOBS_POLL_INTERVAL",
        default: "2s",
        help: "jobs publisher tick",
        read: Read::Plain,
        set: |c, v| put(&mut c.jobs_poll_interval, duration(v)),
        show: |c| d(c.jobs_poll_interval),
    },
    Var {
        name: "CANCELLER_POLL_INTERVAL",
        default: "2s",
        help: "canceller publisher tick",
        read: Read::Plain,
        set: |c, v| put(&mut c.canceller_poll_interval, duration(v)),
        show: |c| d(c.canceller_poll_interval),
    },
    Var {
        name: "JOB_TIMEOUT",
        default: "10s",
        help: "a job running longer is dead and gets cancelled",
        read: Read::Plain,
        set: |c, v| put(&mut c.job_timeout, duration(v)),
        show: |c| d(c.job_timeout),
    },
    Var {
        name: "JOB_CONSUMERS",
        default: "32",
        help: "threads running jobs",
        read: Read::Plain,
        set: |c, v| put(&mut c.job_consumers, count(v)),
        show: |c| c.job_consumers.to_string(),
    },
    Var {
        name: "CANCELLER_CONSUMERS",
        default: "2",
        help: "threads cancelling jobs",
        read: Read::Plain,
        set: |c, v| put(&mut c.canceller_consumers, count(v)),
        show: |c| c.canceller_consumers.to_string(),
    },
    Var {
        name: "RATE_LIMIT",
        default: "50",
        help: "tasks started per second by this replica; 0 = unlimited",
        read: Read::Plain,
        set: |c, v| {
            c.rate_limit = v
                .trim()
                .parse::<u64>()
                .map_err(|_| "a whole number of tasks per second (0 = unlimited)".to_string())?;
            Ok(())
        },
        show: |c| c.rate_limit.to_string(),
    },
    Var {
        name: "CHANNEL_CAPACITY",
        default: "256",
        help: "bound of each channel",
        read: Read::Plain,
        set: |c, v| put(&mut c.channel_capacity, count(v)),
        show: |c| c.channel_capacity.to_string(),
    },
    Var {
        name: "DB_POOL_SIZE",
        default: "enough for every thread",
        help: "database connection pool size",
        read: Read::Computed,
        set: |c, v| put(&mut c.db_pool_size, count(v)),
        show: |c| c.db_pool_size.to_string(),
    },
    Var {
        name: "SHUTDOWN_TIMEOUT",
        default: "25s",
        help: "how long running tasks may finish after SIGTERM",
        read: Read::Plain,
        set: |c, v| put(&mut c.shutdown_timeout, duration(v)),
        show: |c| d(c.shutdown_timeout),
    },
    Var {
        name: "DB_CONNECT_TIMEOUT",
        default: "30s",
        help: "how long start-up waits for the database",
        read: Read::Plain,
        set: |c, v| put(&mut c.db_connect_timeout, duration(v)),
        show: |c| d(c.db_connect_timeout),
    },
    Var {
        name: "DB_STATEMENT_TIMEOUT",
        default: "30s",
        help: "a statement without an answer this long is abandoned (its session killed) and retried",
        read: Read::Plain,
        set: |c, v| {
            put(&mut c.db_statement_timeout, duration(v))?;
            if c.db_statement_timeout < Duration::from_secs(2) {
                return Err(
                    "a duration of at least 2s (lock waits, at least 1s, must fit below it)".into(),
                );
            }
            Ok(())
        },
        show: |c| d(c.db_statement_timeout),
    },
    Var {
        name: "LOG_LEVEL",
        default: "info",
        help: "error, warn, info, debug or trace",
        read: Read::Plain,
        set: |c, v| put(&mut c.log_level, level(v)),
        show: |c| c.log_level.as_str().to_lowercase(),
    },
    Var {
        name: "WORKER_NAME",
        default: "host name + pid",
        help: "how this replica signs the rows it owns",
        read: Read::Computed,
        set: |c, v| {
            if !super::values::is_worker_name(v) {
                return Err("at most 255 letters, digits and . _ - : @".into());
            }
            c.worker_name = v.to_string();
            Ok(())
        },
        show: |c| c.worker_name.clone(),
    },
    Var {
        name: "QUEUES",
        default: "default",
        help: "the queues this replica claims from, comma-separated",
        read: Read::Plain,
        set: |c, v| put(&mut c.queues, queue_list(v)),
        show: |c| c.queues.join(","),
    },
    Var {
        name: "HEARTBEAT_INTERVAL",
        default: "2s",
        help: "how often this replica proves it is alive and looks for dead ones",
        read: Read::Plain,
        set: |c, v| put(&mut c.heartbeat_interval, duration(v)),
        show: |c| d(c.heartbeat_interval),
    },
    Var {
        name: "WORKER_DEAD_AFTER",
        default: "10s",
        help: "a replica silent this long is dead (at least 3 heartbeats)",
        read: Read::Plain,
        set: |c, v| put(&mut c.worker_dead_after, duration(v)),
        show: |c| d(c.worker_dead_after),
    },
    Var {
        name: "MAX_ATTEMPTS",
        default: "1",
        help: "attempts a job gets when its max_attempts column is NULL",
        read: Read::Plain,
        set: |c, v| put(&mut c.max_attempts, count(v)),
        show: |c| c.max_attempts.to_string(),
    },
    Var {
        name: "RETRY_BACKOFF",
        default: "1s",
        help: "delay before the first retry; doubles each attempt, with jitter, up to 1h",
        read: Read::Plain,
        set: |c, v| put(&mut c.retry_backoff, duration(v)),
        show: |c| d(c.retry_backoff),
    },
    Var {
        name: "RETENTION",
        default: "7d",
        help: "final rows older than this are deleted; 0 keeps everything",
        read: Read::Plain,
        set: |c, v| {
            c.retention =
                match v.trim() {
                    "0" => None,
                    _ => Some(parse_duration(v).ok_or(
                        "0 (keep everything) or a duration up to 100 years, like 7d or 12h",
                    )?),
                };
            Ok(())
        },
        show: |c| c.retention.map(d).unwrap_or_else(|| "0".into()),
    },
    Var {
        name: "PRUNE_INTERVAL",
        default: "1m",
        help: "how often old final rows are deleted",
        read: Read::Plain,
        set: |c, v| put(&mut c.prune_interval, duration(v)),
        show: |c| d(c.prune_interval),
    },
    Var {
        name: "SCHEDULER_INTERVAL",
        default: "10s",
        help: "how often new or edited schedules are looked for (each fire time wakes it too)",
        read: Read::Plain,
        set: |c, v| put(&mut c.scheduler_interval, duration(v)),
        show: |c| d(c.scheduler_interval),
    },
    Var {
        name: "METRICS_ADDR",
        default: DEFAULT_METRICS_ADDR,
        help: "where /healthz, /readyz and /metrics answer over HTTP; empty disables",
        read: Read::BlankIsValue,
        set: |c, v| put(&mut c.metrics_addr, metrics_addr(v)),
        show: |c| {
            c.metrics_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "\"\" (off)".into())
        },
    },
    Var {
        name: "DASHBOARD_ADDR",
        default: DEFAULT_DASHBOARD_ADDR,
        help: "where `dashboard` serves its pages",
        read: Read::Plain,
        set: |c, v| put(&mut c.dashboard_addr, dashboard_addr(v)),
        show: |c| c.dashboard_addr.to_string(),
    },
    Var {
        name: "DASHBOARD_TOKEN",
        default: "unset",
        help: "unset: the dashboard is read-only; set: actions need a session opened with it",
        read: Read::Token,
        set: |c, v| put(&mut c.dashboard_token, dashboard_token(v)),
        show: |c| match c.dashboard_token {
            Some(_) => "(set)".into(),
            None => "unset".into(),
        },
    },
];

/// The variable named `name`.
pub fn var(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.name == name)
}
