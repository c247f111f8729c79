//! Configuration from the environment.
//!
//! Every setting is an environment variable with a default; the one table
//! of them, [`VARS`], lives in [`vars`] and drives parsing, `--help` and the
//! start-up line. [`Config::from_lookup`] takes a lookup function so tests
//! pass a map instead of touching the process environment. Everything is
//! validated here, before any database work: a bad value is a
//! [`ConfigError`] naming the variable, the value and what was expected,
//! and `main` exits 2 on it.
//!
//! Each thread of the service gets a small config of its own, built from
//! this one (`From<&Config>` next to each loop), so what a loop reads is
//! visible at its constructor.

mod database;
mod settings;
mod values;
pub mod vars;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use log::LevelFilter;
use thiserror::Error;

pub use database::{DatabaseUrl, SslMode};
pub use settings::Config;
pub use values::{
    MAX_DURATION, MAX_NAME_LIST, default_pool_size, host_name, is_name, is_worker_name,
    min_pool_size, redact_url, show_duration, show_rounded,
};
pub use vars::{DEFAULT_DATABASE_URL, DEFAULT_METRICS_ADDR, VARS, Var};

use values::default_worker_name;
use vars::Read;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A bad environment variable.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}={value:?} is invalid: expected {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value it had (redacted for a secret).
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable's value, or
    /// `None` when unset). Blank values count as unset, except where a
    /// variable gives blank a meaning of its own.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::blank();
        let mut computed = Vec::new();
        for var in VARS {
            let value = match (lookup(var.name), var.read) {
                (Some(v), Read::BlankIsValue) => v,
                (Some(v), _) if !v.trim().is_empty() => v,
                (_, Read::Computed) => {
                    computed.push(var.name);
                    continue;
                }
                (_, Read::Token) => continue,
                _ => var.default.to_string(),
            };
            (var.set)(&mut config, &value).map_err(|expected| ConfigError {
                var: var.name,
                value: match var.read {
                    Read::Secret => redact_url(&value),
                    Read::Token => "***".into(),
                    _ => value.clone(),
                },
                expected,
            })?;
        }
        if computed.contains(&"DB_POOL_SIZE") {
            config.db_pool_size =
                default_pool_size(config.job_consumers, config.canceller_consumers);
        }
        if computed.contains(&"WORKER_NAME") {
            config.worker_name = default_worker_name();
        }
        config.check(&lookup)?;
        Ok(config)
    }

    /// Checks that hold between variables.
    fn check(&self, lookup: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if self.worker_dead_after < self.heartbeat_interval * 3 {
            return Err(ConfigError {
                var: "WORKER_DEAD_AFTER",
                value: lookup("WORKER_DEAD_AFTER")
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| show_duration(self.worker_dead_after)),
                expected: format!(
                    "at least three heartbeats (3 x HEARTBEAT_INTERVAL = {})",
                    show_duration(self.heartbeat_interval * 3)
                ),
            });
        }
        let min_pool = min_pool_size(self.canceller_consumers);
        if self.db_pool_size < min_pool {
            return Err(ConfigError {
                var: "DB_POOL_SIZE",
                value: self.db_pool_size.to_string(),
                expected: format!(
                    "at least {min_pool}: the service's own threads hold 6 connections, plus one \
                     per CANCELLER_CONSUMERS (tasks that use the database need more)"
                ),
            });
        }
        Ok(())
    }

    /// Every field at a placeholder, each then set from its variable.
    fn blank() -> Config {
        Config {
            database_url: String::new(),
            jobs_poll_interval: Duration::ZERO,
            canceller_poll_interval: Duration::ZERO,
            job_timeout: Duration::ZERO,
            job_consumers: 0,
            canceller_consumers: 0,
            rate_limit: 0,
            channel_capacity: 0,
            db_pool_size: 0,
            shutdown_timeout: Duration::ZERO,
            db_connect_timeout: Duration::ZERO,
            db_statement_timeout: Duration::ZERO,
            log_level: LevelFilter::Info,
            worker_name: String::new(),
            queues: Vec::new(),
            heartbeat_interval: Duration::ZERO,
            worker_dead_after: Duration::ZERO,
            max_attempts: 0,
            retry_backoff: Duration::ZERO,
            retention: None,
            prune_interval: Duration::ZERO,
            scheduler_interval: Duration::ZERO,
            metrics_addr: None,
            dashboard_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            dashboard_token: None,
        }
    }

    /// The database URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.database_url)
    }
}

/// Prints the effective configuration with the password redacted: the
/// start-up log line, one `NAME=value` per variable.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: Vec<String> = VARS
            .iter()
            .map(|v| format!("{}={}", v.name, (v.show)(self)))
            .collect();
        f.write_str(&settings.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

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
        assert_eq!(c.job_consumers, 32);
        assert_eq!(c.canceller_consumers, 2);
        assert_eq!(c.rate_limit, 50);
        assert_eq!(c.channel_capacity, 256);
        assert_eq!(c.db_pool_size, 32);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(c.db_connect_timeout, Duration::from_secs(30));
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.worker_dead_after, Duration::from_secs(10));
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
            ("QUEUES", "mail,"),
            ("QUEUES", "a b"),
            ("SCHEDULER_INTERVAL", "0s"),
        ];
        let many_queues: Vec<String> = (0..20).map(|i| format!("{i:0>64}")).collect();
        let many_queues = many_queues.join(",");
        let cases = cases.into_iter().chain([("QUEUES", many_queues.as_str())]);
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
    fn pool_size_follows_the_thread_count_up_to_its_cap() {
        let c = config(&[("JOB_CONSUMERS", "4"), ("CANCELLER_CONSUMERS", "4")]).unwrap();
        assert_eq!(c.db_pool_size, 21);
        let c = config(&[("JOB_CONSUMERS", "20"), ("CANCELLER_CONSUMERS", "4")]).unwrap();
        assert_eq!(c.db_pool_size, 32);
        let c = config(&[("CANCELLER_CONSUMERS", "40")]).unwrap();
        assert_eq!(
            c.db_pool_size, 46,
            "never fewer than the service's own threads need"
        );
        let c = config(&[("DB_POOL_SIZE", "80")]).unwrap();
        assert_eq!(c.db_pool_size, 80);
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
