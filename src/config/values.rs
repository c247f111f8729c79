//! Reading and showing values: the parsers the variable table uses, and
//! the helpers around names, URLs and durations.

use std::net::SocketAddr;
use std::time::Duration;

use log::LevelFilter;

/// A duration as the logs and the start-up line show it (`25s`, `1m 30s`),
/// to the millisecond.
pub fn show_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// A measured or computed duration as the logs show it: whole seconds
/// from a second up (`25s`, not `24s 997ms`), milliseconds below.
pub fn show_rounded(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let secs = (d.as_millis() + 500) / 1000;
        humantime::format_duration(Duration::from_secs(secs as u64)).to_string()
    } else {
        show_duration(d)
    }
}

/// The fewest connections the service's own threads need from the pool at
/// once: the jobs publisher holds one, the canceller publisher, the
/// watcher, the rescuer, the pruner and the shutdown release take one for a
/// moment, and so does each canceller consumer. (The heartbeat, the starter
/// and the finisher have connections of their own, outside the pool.)
/// Tasks that use `job.db` need more.
pub fn min_pool_size(canceller_consumers: usize) -> u32 {
    (6 + canceller_consumers).min(u32::MAX as usize) as u32
}

/// The most connections the pool opens unless `DB_POOL_SIZE` says
/// otherwise: with the three of its own, 35 per replica, so three replicas,
/// a surge pod and the dashboard stay within a small server's
/// `max_connections` (151).
pub const DEFAULT_POOL_CAP: u32 = 32;

/// Connections every thread may hold at once: the service's own (see
/// [`min_pool_size`]), and two per consumer, so tasks that use `job.db`
/// (one or two connections each) do not wait for one; at most
/// [`DEFAULT_POOL_CAP`] (but never fewer than the service's own). The pool
/// opens connections only as they are used: consumers whose tasks do not
/// use the database hold none.
pub fn default_pool_size(job_consumers: usize, canceller_consumers: usize) -> u32 {
    // (The heartbeat has a connection of its own, outside the pool.)
    let wanted = (2 * job_consumers + canceller_consumers + 9).min(u32::MAX as usize) as u32;
    wanted
        .min(DEFAULT_POOL_CAP)
        .max(min_pool_size(canceller_consumers))
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

pub(super) fn default_worker_name() -> String {
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

/// Queue and kind names are written into SQL text by the claim, like worker
/// names: at most 64 letters, digits and `. _ - : @`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(is_name_char)
}

/// The longest list of queues or kinds, comma-separated, a replica can
/// register (`workers.queues` and `workers.kinds`).
pub const MAX_NAME_LIST: usize = 1024;

/// `QUEUES`: comma-separated queue names, each once.
pub(super) fn queue_list(value: &str) -> Result<Vec<String>, String> {
    let expected = "a comma-separated list of queue names (each at most 64 letters, digits and . _ - : @), like default or default,mail";
    let mut queues: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        if !is_name(name) {
            return Err(expected.into());
        }
        if !queues.iter().any(|q| q == name) {
            queues.push(name.to_string());
        }
    }
    if queues.join(",").len() > MAX_NAME_LIST {
        return Err(format!(
            "at most {MAX_NAME_LIST} characters of queue names, comma-separated"
        ));
    }
    Ok(queues)
}

/// Worker names are written into SQL text by the claim (one statement of
/// any batch size, never re-prepared), so they are kept to characters that
/// need no quoting: what host names, pod names and pids are made of.
pub fn is_worker_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.chars().all(is_name_char)
}

pub(super) fn database_url(url: &str) -> Result<String, String> {
    super::database::DatabaseUrl::parse(url).map(|_| url.to_string())
}

/// A whole number from 1 to 100,000.
pub(super) fn count<T: TryFrom<u64>>(value: &str) -> Result<T, String> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| "a whole number from 1 to 100000".into())
}

/// The longest duration any variable takes: beyond it, deadlines and
/// cut-offs computed from now leave the range of a `DATETIME`.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(super) fn parse_duration(value: &str) -> Option<Duration> {
    humantime::parse_duration(value.trim())
        .ok()
        .filter(|d| *d >= Duration::from_millis(1) && *d <= MAX_DURATION)
}

pub(super) fn duration(value: &str) -> Result<Duration, String> {
    parse_duration(value)
        .ok_or_else(|| "a duration from 1ms to 100 years (36500d), like 500ms, 2s or 1m".into())
}

/// An IP address and port, or blank (off).
pub(super) fn metrics_addr(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value.trim().parse::<SocketAddr>().map(Some).map_err(|_| {
        "an IP address and port to listen on, like 0.0.0.0:9090, 127.0.0.1:9090 or [::]:9090, \
         or empty to serve no health and metrics endpoints"
            .into()
    })
}

pub(super) fn dashboard_addr(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse::<SocketAddr>().map_err(|_| {
        "an IP address and port to listen on, like 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080"
            .into()
    })
}

/// `DASHBOARD_TOKEN`: long enough not to be guessed, and printable.
pub(super) fn dashboard_token(value: &str) -> Result<Option<String>, String> {
    let token = value.trim();
    if token.chars().count() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("at least 16 printable ASCII characters without spaces \
             (e.g. from `openssl rand -hex 24`), or unset for a read-only dashboard"
            .into());
    }
    Ok(Some(token.to_string()))
}

pub(super) fn level(value: &str) -> Result<LevelFilter, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err("one of error, warn, info, debug, trace".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_durations_show_in_whole_seconds() {
        assert_eq!(show_rounded(Duration::from_millis(24_997)), "25s");
        assert_eq!(show_rounded(Duration::from_millis(90_400)), "1m 30s");
        assert_eq!(show_rounded(Duration::from_millis(250)), "250ms");
    }
}
