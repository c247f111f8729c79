//! Configuration from the environment.
//!
//! Every setting is an environment variable with a default (the README's
//! configuration table).
//! [`Config::from_lookup`] takes a lookup function so tests pass a map instead
//! of touching the process environment. Everything is validated here, before
//! any database work: a bad value is a [`ConfigError`] naming the variable,
//! the value and what was expected, and `main` exits 2 on it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use log::LevelFilter;
use thiserror::Error;

/// The default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "mysql://root@127.0.0.1:3306/background_processing";

/// The default `METRICS_ADDR`: every interface, so the kubelet and
/// Prometheus can reach it in a pod.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";

/// One environment variable: its name, default (as a user would write it)
/// and meaning. `--help` prints this table; [`Config::from_lookup`] reads it.
pub struct Var {
    /// The variable's name.
    pub name: &'static str,
    /// Its default, as it would be written in the environment.
    pub default: &'static str,
    /// What it means, in a few words.
    pub help: &'static str,
}

/// Every variable the service reads, in the order `--help` lists them.
pub const VARS: &[Var] = &[
    Var {
        name: "DATABASE_URL",
        default: DEFAULT_DATABASE_URL,
        help: "where the jobs table lives",
    },
    Var {
        name: "JOBS_POLL_INTERVAL",
        default: "2s",
        help: "jobs publisher tick",
    },
    Var {
        name: "CANCELLER_POLL_INTERVAL",
        default: "2s",
        help: "canceller publisher tick",
    },
    Var {
        name: "JOB_TIMEOUT",
        default: "10s",
        help: "a job running longer is dead and gets cancelled",
    },
    Var {
        name: "JOB_CONSUMERS",
        default: "8",
        help: "threads running jobs",
    },
    Var {
        name: "CANCELLER_CONSUMERS",
        default: "2",
        help: "threads cancelling jobs",
    },
    Var {
        name: "RATE_LIMIT",
        default: "50",
        help: "tasks started per second by this replica; 0 = unlimited",
    },
    Var {
        name: "CHANNEL_CAPACITY",
        default: "100",
        help: "bound of each channel",
    },
    Var {
        name: "DB_POOL_SIZE",
        default: "enough for every thread",
        help: "database connection pool size",
    },
    Var {
        name: "SHUTDOWN_TIMEOUT",
        default: "25s",
        help: "how long running tasks may finish after SIGTERM",
    },
    Var {
        name: "DB_CONNECT_TIMEOUT",
        default: "30s",
        help: "how long start-up waits for the database",
    },
    Var {
        name: "LOG_LEVEL",
        default: "info",
        help: "error, warn, info, debug or trace",
    },
    Var {
        name: "WORKER_NAME",
        default: "host name + pid",
        help: "how this replica signs the rows it owns",
    },
    Var {
        name: "HEARTBEAT_INTERVAL",
        default: "2s",
        help: "how often this replica proves it is alive and looks for dead ones",
    },
    Var {
        name: "WORKER_DEAD_AFTER",
        default: "10s",
        help: "a replica silent this long is dead (at least 3 heartbeats)",
    },
    Var {
        name: "MAX_ATTEMPTS",
        default: "1",
        help: "attempts a job gets when its max_attempts column is NULL",
    },
    Var {
        name: "RETRY_BACKOFF",
        default: "1s",
        help: "delay before the first retry; doubles each attempt, with jitter, up to 1h",
    },
    Var {
        name: "RETENTION",
        default: "7d",
        help: "final rows older than this are deleted; 0 keeps everything",
    },
    Var {
        name: "PRUNE_INTERVAL",
        default: "1m",
        help: "how often old final rows are deleted",
    },
    Var {
        name: "METRICS_ADDR",
        default: DEFAULT_METRICS_ADDR,
        help: "where /healthz, /readyz and /metrics answer over HTTP; empty disables",
    },
];

/// A bad environment variable.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}={value:?} is invalid: expected {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value it had.
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
}

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
    /// Log verbosity.
    pub log_level: LevelFilter,
    /// How this replica signs the rows it owns.
    pub worker_name: String,
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
    /// Where `/healthz`, `/readyz` and `/metrics` answer; `None` (the
    /// variable set but empty) serves nothing.
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable's value, or
    /// `None` when unset). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let database_url = match get("DATABASE_URL") {
            Some(url) => {
                validate_url(&url)?;
                url
            }
            None => DEFAULT_DATABASE_URL.to_string(),
        };
        let job_consumers = count(&get, "JOB_CONSUMERS", 8)?;
        let canceller_consumers = count(&get, "CANCELLER_CONSUMERS", 2)?;
        let db_pool_size = match get("DB_POOL_SIZE") {
            Some(v) => parse_count("DB_POOL_SIZE", &v)?,
            None => default_pool_size(job_consumers, canceller_consumers),
        };
        let heartbeat_interval = duration(&get, "HEARTBEAT_INTERVAL", "2s")?;
        let worker_dead_after = duration(&get, "WORKER_DEAD_AFTER", "10s")?;
        if worker_dead_after < heartbeat_interval * 3 {
            return Err(ConfigError {
                var: "WORKER_DEAD_AFTER",
                value: get("WORKER_DEAD_AFTER").unwrap_or_else(|| "10s".into()),
                expected: format!(
                    "at least three heartbeats (3 x HEARTBEAT_INTERVAL = {})",
                    humantime::format_duration(heartbeat_interval * 3)
                ),
            });
        }
        let worker_name = match get("WORKER_NAME") {
            Some(name) if !is_worker_name(&name) => {
                return Err(ConfigError {
                    var: "WORKER_NAME",
                    value: name,
                    expected: "at most 255 letters, digits and . _ - : @".into(),
                });
            }
            Some(name) => name,
            None => default_worker_name(),
        };
        Ok(Config {
            database_url,
            jobs_poll_interval: duration(&get, "JOBS_POLL_INTERVAL", "2s")?,
            canceller_poll_interval: duration(&get, "CANCELLER_POLL_INTERVAL", "2s")?,
            job_timeout: duration(&get, "JOB_TIMEOUT", "10s")?,
            job_consumers,
            canceller_consumers,
            rate_limit: match get("RATE_LIMIT") {
                Some(v) => v.trim().parse::<u64>().map_err(|_| ConfigError {
                    var: "RATE_LIMIT",
                    value: v.clone(),
                    expected: "a whole number of tasks per second (0 = unlimited)".into(),
                })?,
                None => 50,
            },
            channel_capacity: count(&get, "CHANNEL_CAPACITY", 100)?,
            db_pool_size,
            shutdown_timeout: duration(&get, "SHUTDOWN_TIMEOUT", "25s")?,
            db_connect_timeout: duration(&get, "DB_CONNECT_TIMEOUT", "30s")?,
            log_level: match get("LOG_LEVEL") {
                Some(v) => parse_level(&v)?,
                None => LevelFilter::Info,
            },
            worker_name,
            heartbeat_interval,
            worker_dead_after,
            max_attempts: count::<u32>(&get, "MAX_ATTEMPTS", 1)?,
            retry_backoff: duration(&get, "RETRY_BACKOFF", "1s")?,
            retention: match get("RETENTION") {
                Some(v) if v.trim() == "0" => None,
                Some(v) => Some(parse_duration(
                    "RETENTION",
                    &v,
                    "0 (keep everything) or a duration like 7d or 12h",
                )?),
                None => Some(Duration::from_secs(7 * 24 * 3600)),
            },
            prune_interval: duration(&get, "PRUNE_INTERVAL", "1m")?,
            // Not through `get`: here an empty value means "off", not "unset".
            metrics_addr: parse_metrics_addr(lookup("METRICS_ADDR"))?,
        })
    }

    /// The database URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.database_url)
    }
}

/// Prints the effective configuration with the password redacted: the
/// start-up log line.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        write!(
            f,
            "DATABASE_URL={} JOBS_POLL_INTERVAL={} CANCELLER_POLL_INTERVAL={} JOB_TIMEOUT={} \
             JOB_CONSUMERS={} CANCELLER_CONSUMERS={} RATE_LIMIT={} CHANNEL_CAPACITY={} \
             DB_POOL_SIZE={} SHUTDOWN_TIMEOUT={} DB_CONNECT_TIMEOUT={} LOG_LEVEL={} \
             WORKER_NAME={} HEARTBEAT_INTERVAL={} WORKER_DEAD_AFTER={} MAX_ATTEMPTS={} \
             RETRY_BACKOFF={} RETENTION={} PRUNE_INTERVAL={} METRICS_ADDR={}",
            self.redacted_url(),
            d(self.jobs_poll_interval),
            d(self.canceller_poll_interval),
            d(self.job_timeout),
            self.job_consumers,
            self.canceller_consumers,
            self.rate_limit,
            self.channel_capacity,
            self.db_pool_size,
            d(self.shutdown_timeout),
            d(self.db_connect_timeout),
            self.log_level.as_str().to_lowercase(),
            self.worker_name,
            d(self.heartbeat_interval),
            d(self.worker_dead_after),
            self.max_attempts,
            d(self.retry_backoff),
            self.retention.map(d).unwrap_or_else(|| "0".into()),
            d(self.prune_interval),
            self.metrics_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "\"\" (off)".into()),
        )
    }
}

/// Connections every thread may hold at once: one per consumer (a task may
/// use one too, through `job.db`), one each for the starter, the completer
/// and the publishers (jobs, canceller, watcher, heartbeat, rescuer,
/// pruner), and one for the shutdown release.
pub fn default_pool_size(job_consumers: usize, canceller_consumers: usize) -> u32 {
    (2 * job_consumers + canceller_consumers + 9).min(u32::MAX as usize) as u32
}

/// `mysql://user:secret@host/db` -> `mysql://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{host}"),
        None => url.to_string(),
    }
}

/// This machine's (or pod's) host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_worker_name() -> String {
    let host: String = host_name()
        .chars()
        .map(|c| if is_name_char(c) { c } else { '-' })
        .take(200)
        .collect();
    format!("{host}-{}", std::process::id())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')
}

/// Worker names are written into SQL text by the claim (one statement of
/// any batch size, never re-prepared), so they are kept to characters that
/// need no quoting: what host names, pod names and pids are made of.
pub fn is_worker_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.chars().all(is_name_char)
}

fn validate_url(url: &str) -> Result<(), ConfigError> {
    let err = |expected: &str| ConfigError {
        var: "DATABASE_URL",
        value: redact_url(url),
        expected: expected.into(),
    };
    if !url.starts_with("mysql://") {
        return Err(err("a URL like mysql://user:password@host:3306/database"));
    }
    let opts =
        mysql::Opts::from_url(url).map_err(|e| err(&format!("a valid mysql:// URL ({e})")))?;
    match opts.get_db_name() {
        Some(db) if !db.is_empty() => Ok(()),
        _ => Err(err(
            "a URL that names a database, like mysql://host:3306/background_processing",
        )),
    }
}

fn count<T: TryFrom<u64>>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(var) {
        Some(v) => parse_count(var, &v),
        None => Ok(default),
    }
}

fn parse_count<T: TryFrom<u64>>(var: &'static str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= 1 && *n <= 100_000)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| ConfigError {
            var,
            value: value.to_string(),
            expected: "a whole number from 1 to 100000".into(),
        })
}

fn duration(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<Duration, ConfigError> {
    let value = get(var).unwrap_or_else(|| default.to_string());
    parse_duration(
        var,
        &value,
        "a duration of at least 1ms, like 500ms, 2s or 1m",
    )
}

fn parse_duration(var: &'static str, value: &str, expected: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= Duration::from_millis(1) => Ok(d),
        _ => Err(ConfigError {
            var,
            value: value.to_string(),
            expected: expected.into(),
        }),
    }
}

/// `METRICS_ADDR`: unset means the default, set but empty (or blank)
/// means off, anything else must be an IP address and port.
fn parse_metrics_addr(value: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    let value = value.unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_string());
    if value.trim().is_empty() {
        return Ok(None);
    }
    value
        .trim()
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| ConfigError {
            var: "METRICS_ADDR",
            value,
            expected: "an IP address and port to listen on, like 0.0.0.0:9090 or 127.0.0.1:9090, \
                   or empty to serve no health and metrics endpoints"
                .into(),
        })
}

fn parse_level(value: &str) -> Result<LevelFilter, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(ConfigError {
            var: "LOG_LEVEL",
            value: value.to_string(),
            expected: "one of error, warn, info, debug, trace".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = config(&[("WORKER_NAME", "w")]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.jobs_poll_interval, Duration::from_secs(2));
        assert_eq!(c.canceller_poll_interval, Duration::from_secs(2));
        assert_eq!(c.job_timeout, Duration::from_secs(10));
        assert_eq!(c.job_consumers, 8);
        assert_eq!(c.canceller_consumers, 2);
        assert_eq!(c.rate_limit, 50);
        assert_eq!(c.channel_capacity, 100);
        assert_eq!(c.db_pool_size, 27);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(c.db_connect_timeout, Duration::from_secs(30));
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.worker_dead_after, Duration::from_secs(10));
    }

    #[test]
    fn every_var_is_listed_for_help() {
        for name in [
            "DATABASE_URL",
            "JOBS_POLL_INTERVAL",
            "CANCELLER_POLL_INTERVAL",
            "JOB_TIMEOUT",
            "JOB_CONSUMERS",
            "CANCELLER_CONSUMERS",
            "RATE_LIMIT",
            "CHANNEL_CAPACITY",
            "DB_POOL_SIZE",
            "SHUTDOWN_TIMEOUT",
            "DB_CONNECT_TIMEOUT",
            "LOG_LEVEL",
            "WORKER_NAME",
            "HEARTBEAT_INTERVAL",
            "WORKER_DEAD_AFTER",
            "MAX_ATTEMPTS",
            "RETRY_BACKOFF",
            "RETENTION",
            "PRUNE_INTERVAL",
            "METRICS_ADDR",
        ] {
            assert!(
                VARS.iter().any(|v| v.name == name),
                "{name} missing from VARS"
            );
        }
    }

    #[test]
    fn bad_values_name_the_variable_value_and_expectation() {
        let cases = [
            ("JOB_CONSUMERS", "0"),
            ("JOB_CONSUMERS", "abc"),
            ("CANCELLER_CONSUMERS", "-1"),
            ("RATE_LIMIT", "-1"),
            ("RATE_LIMIT", "fast"),
            ("CHANNEL_CAPACITY", "1.5"),
            ("DB_POOL_SIZE", "0"),
            ("JOBS_POLL_INTERVAL", "fast"),
            ("JOB_TIMEOUT", "0s"),
            ("SHUTDOWN_TIMEOUT", "10"),
            ("LOG_LEVEL", "loud"),
            ("WORKER_NAME", "bob's"),
            ("WORKER_NAME", "a b"),
            ("MAX_ATTEMPTS", "0"),
            ("RETRY_BACKOFF", "soon"),
            ("RETENTION", "forever"),
            ("PRUNE_INTERVAL", "0s"),
            ("DATABASE_URL", "postgres://x/y"),
            ("DATABASE_URL", "mysql://127.0.0.1:3306"),
            ("METRICS_ADDR", "9090"),
            ("METRICS_ADDR", "localhost:9090"),
            ("METRICS_ADDR", "0.0.0.0"),
            ("METRICS_ADDR", "0.0.0.0:99999"),
        ];
        for (var, value) in cases {
            let err = config(&[(var, value)]).expect_err(var);
            assert_eq!(err.var, var);
            let msg = err.to_string();
            assert!(msg.starts_with(var), "{msg}");
            assert!(msg.contains("expected"), "{msg}");
        }
    }

    #[test]
    fn retention_zero_keeps_everything() {
        assert_eq!(config(&[("RETENTION", "0")]).unwrap().retention, None);
        assert_eq!(
            config(&[("RETENTION", "12h")]).unwrap().retention,
            Some(Duration::from_secs(12 * 3600))
        );
        let c = config(&[]).unwrap();
        assert_eq!(c.retention, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(c.max_attempts, 1);
        assert_eq!(c.retry_backoff, Duration::from_secs(1));
    }

    #[test]
    fn metrics_addr_defaults_to_every_interface_and_empty_turns_it_off() {
        let default: SocketAddr = DEFAULT_METRICS_ADDR.parse().unwrap();
        assert_eq!(config(&[]).unwrap().metrics_addr, Some(default));
        assert_eq!(config(&[("METRICS_ADDR", "")]).unwrap().metrics_addr, None);
        assert_eq!(
            config(&[("METRICS_ADDR", "  ")]).unwrap().metrics_addr,
            None
        );
        assert_eq!(
            config(&[("METRICS_ADDR", "127.0.0.1:9191")])
                .unwrap()
                .metrics_addr,
            Some("127.0.0.1:9191".parse().unwrap())
        );
        assert_eq!(
            config(&[("METRICS_ADDR", "[::]:9090")])
                .unwrap()
                .metrics_addr,
            Some("[::]:9090".parse().unwrap())
        );
        let err = config(&[("METRICS_ADDR", "metrics.local:9090")]).unwrap_err();
        assert_eq!(err.var, "METRICS_ADDR");
        assert_eq!(err.value, "metrics.local:9090");
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(format!("{:?}", config(&[]).unwrap()).contains("METRICS_ADDR=0.0.0.0:9090"));
    }

    #[test]
    fn rate_limit_zero_means_unlimited() {
        assert_eq!(config(&[("RATE_LIMIT", "0")]).unwrap().rate_limit, 0);
    }

    #[test]
    fn worker_dead_after_needs_three_heartbeats() {
        let err = config(&[("HEARTBEAT_INTERVAL", "1s"), ("WORKER_DEAD_AFTER", "2s")]).unwrap_err();
        assert_eq!(err.var, "WORKER_DEAD_AFTER");
        assert!(config(&[("HEARTBEAT_INTERVAL", "1s"), ("WORKER_DEAD_AFTER", "3s")]).is_ok());
    }

    #[test]
    fn pool_size_follows_the_thread_count() {
        let c = config(&[("JOB_CONSUMERS", "20"), ("CANCELLER_CONSUMERS", "4")]).unwrap();
        assert_eq!(c.db_pool_size, 53);
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("mysql://bob:hunter2@db:3306/jobs"),
            "mysql://bob:***@db:3306/jobs"
        );
        assert_eq!(redact_url("mysql://bob@db/jobs"), "mysql://bob@db/jobs");
        let c = config(&[("DATABASE_URL", "mysql://bob:hunter2@db:3306/jobs")]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let err = config(&[("DATABASE_URL", "mysql://bob:hunter2@db:3306")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
