//! Several replicas of the real binary on one table: their settings, the
//! counts and logs a failure message shows, waiting while every replica must
//! stay up, and stopping them all. Tests that start several processes and
//! check timing promises take [`serial`], so they run one at a time: on a
//! 2-core machine two of them side by side would mostly measure each other.

use crate::testdb::*;
use mysql::prelude::Queryable;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One millisecond of `sleep`, in nanoseconds.
pub const MS: i64 = 1_000_000;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test of this module at a time (a failed test must not block the rest).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A replica's settings on top of `service_env` (heartbeat 100 ms, dead
/// after 1 s): its name, its consumers and channel, no rate limit and a
/// `JOB_TIMEOUT`.
pub fn replica(
    name: &'static str,
    consumers: &'static str,
    channel: &'static str,
    job_timeout: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("WORKER_NAME", name),
        ("RATE_LIMIT", "0"),
        ("JOB_CONSUMERS", consumers),
        ("CHANNEL_CAPACITY", channel),
        ("JOB_TIMEOUT", job_timeout),
    ]
}

/// Inserts `n` jobs of `sleep_ns` in one statement (minimal client columns).
pub fn insert_many(db: &TestDb, n: usize, sleep_ns: i64) -> Vec<u64> {
    let before: u64 = db.scalar("SELECT COALESCE(MAX(id), 0) FROM jobs");
    let mut conn = db.conn();
    for chunk in 0..n.div_ceil(1000) {
        let rows = (n - chunk * 1000).min(1000);
        let values = vec![format!("(10, {sleep_ns})"); rows].join(",");
        conn.query_drop(format!(
            "INSERT INTO jobs (object_id, sleep) VALUES {values}"
        ))
        .expect("insert jobs");
    }
    let ids: Vec<u64> = conn
        .query(format!(
            "SELECT id FROM jobs WHERE id > {before} ORDER BY id"
        ))
        .expect("read ids");
    assert_eq!(ids.len(), n, "inserted {n} jobs");
    ids
}

/// `status (owner): count` over the whole table, for messages.
pub fn counts(db: &TestDb) -> String {
    let rows: Vec<(Option<String>, Option<String>, u64)> = db
        .conn()
        .query(
            "SELECT status, owner, COUNT(*) FROM jobs GROUP BY status, owner ORDER BY status, owner",
        )
        .expect("counts");
    rows.iter()
        .map(|(s, o, n)| {
            format!(
                "{} ({}): {n}",
                s.as_deref().unwrap_or("NULL"),
                o.as_deref().unwrap_or("NULL")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn owned(db: &TestDb, owner: &str, status: &str) -> u64 {
    db.conn()
        .exec_first(
            "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status = ?",
            (owner, status),
        )
        .unwrap()
        .unwrap()
}

pub fn worker_rows(db: &TestDb) -> Vec<String> {
    db.conn()
        .query("SELECT name FROM workers ORDER BY name")
        .expect("read workers")
}

pub fn db_now(db: &TestDb) -> String {
    db.scalar("SELECT CAST(NOW(6) AS CHAR)")
}

/// Counts, worker rows and every service's log tail, for failure messages.
pub fn context(db: &TestDb, services: &[&Service]) -> String {
    let mut out = format!(
        "--- counts: {}\n--- workers: {:?}\n",
        counts(db),
        worker_rows(db)
    );
    for s in services {
        out.push_str(&s.logs());
        out.push('\n');
    }
    out
}

/// Asserts every service is still running (with its logs if not).
pub fn assert_running(services: &mut [&mut Service]) {
    for s in services.iter_mut() {
        assert!(
            s.is_running(),
            "a replica exited unexpectedly ({:?}):\n{}",
            s.try_exit(),
            s.logs()
        );
    }
}

/// Polls `cond` every 50 ms until it holds, like [`wait_until_or`], but also
/// fails at once if any service exits. `cond` gets the services (to read their
/// logs); a timeout shows `extra()`, the counts and every service's logs.
pub fn wait_running(
    db: &TestDb,
    services: &mut [&mut Service],
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut(&[&mut Service]) -> bool,
    extra: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        assert_running(services);
        if cond(services) {
            return;
        }
        if Instant::now() >= deadline {
            let refs: Vec<&Service> = services.iter().map(|s| &**s).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}{}",
                extra(),
                context(db, &refs)
            );
        }
        std::thread::sleep(ms(50));
    }
}

/// SIGTERM every service, then each must exit 0 within `timeout`.
pub fn stop_all(services: Vec<Service>, timeout: Duration) {
    let mut services = services;
    for s in &mut services {
        s.sigterm();
    }
    for s in services {
        let out = s.finish(timeout);
        assert_eq!(
            out.code,
            Some(0),
            "a replica did not exit 0 after SIGTERM:\n{}",
            out.describe()
        );
        assert!(
            !out.stderr.contains("panicked"),
            "the service panicked:\n{}",
            out.describe()
        );
    }
}

/// After every replica stopped: nothing claimed or running is left behind
/// and the workers registry is empty.
pub fn assert_clean_after_stop(db: &TestDb) {
    assert_eq!(
        db.count("status IN ('QUEUED!', 'STARTED!')"),
        0,
        "jobs left QUEUED!/STARTED! after every replica stopped: {}\n{}",
        counts(db),
        render_jobs(&db.jobs_where("status IN ('QUEUED!', 'STARTED!')"))
    );
    let workers = worker_rows(db);
    assert!(
        workers.is_empty(),
        "workers table not empty after every replica stopped: {workers:?}"
    );
}

/// Lines of `log` at WARN or ERROR level.
pub fn warn_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("[WARN]") || l.contains("[ERROR]"))
        .collect()
}

/// Wall-clock time of day (UTC) with milliseconds, to compare with log lines.
pub fn clock() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Splits `scheme://[userinfo@]host:port/rest` into its parts.
pub fn url_parts(url: &str) -> (&str, Option<&str>, &str, &str) {
    let (scheme, rest) = url.split_once("://").expect("URL has a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((user, hostport)) => (scheme, Some(user), hostport, tail),
        None => (scheme, None, authority, tail),
    }
}

/// The `host:port` of a database URL.
pub fn host_port(url: &str) -> String {
    url_parts(url).2.to_string()
}

/// `url` pointed at `addr` instead of its own `host:port`, over TCP only.
pub fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, user, _, tail) = url_parts(url);
    let user = user.map(|u| format!("{u}@")).unwrap_or_default();
    // The mysql crate otherwise moves a loopback TCP connection over to the
    // server's Unix socket right after the handshake, bypassing the proxy.
    let sep = if tail.contains('?') { '&' } else { '?' };
    format!("{scheme}://{user}{addr}{tail}{sep}prefer_socket=false")
}
