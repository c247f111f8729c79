//! The health and metrics endpoints of the real binary (`METRICS_ADDR`),
//! scraped with a plain HTTP/1.0 GET over `std::net::TcpStream`: the probes
//! say what Kubernetes needs to hear, and the counters match the table.

use crate::proxy::Proxy;
use crate::testdb::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MS: i64 = 1_000_000; // one millisecond of `sleep`, in nanoseconds

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` over HTTP/1.0 (the server closes the connection after the
/// answer, so reading to the end reads it all).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, secs(2))?;
    stream.set_read_timeout(Some(secs(5)))?;
    stream.set_write_timeout(Some(secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

fn must_get(addr: SocketAddr, path: &str) -> Answer {
    get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// The value of the sample `name` (no labels) in a Prometheus text body.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn must_sample(body: &str, name: &str) -> f64 {
    sample(body, name).unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
}

const LISTENING: &str = "serving /healthz, /readyz and /metrics on http://";

/// Calls `attempt` every 50 ms until it gives a value; panics with `what`
/// and the last reason after `within`.
pub fn poll<T>(within: Duration, what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Where the service listens: it was given port 0 and logs the port the
/// kernel chose, so no two tests can race for one.
pub fn http_addr(svc: &mut Service) -> SocketAddr {
    poll(secs(20), "the service to log its METRICS_ADDR", || {
        if !svc.is_running() {
            panic!("the service exited:\n{}", svc.logs());
        }
        svc.stderr()
            .lines()
            .find_map(|l| {
                let rest = &l[l.find(LISTENING)? + LISTENING.len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
            .ok_or_else(|| svc.logs())
    })
}

fn wait_status(svc: &Service, addr: SocketAddr, path: &str, want: u16, within: Duration) {
    poll(
        within,
        &format!("GET {path} to answer {want}"),
        || match get(addr, path) {
            Ok(a) if a.status == want => Ok(()),
            other => Err(format!("last answer: {other:?}\n{}", svc.logs())),
        },
    )
}

fn metrics(addr: SocketAddr) -> String {
    let a = must_get(addr, "/metrics");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "Prometheus text format expected: {}",
        a.head
    );
    a.body
}

fn name(short: &str) -> String {
    format!("background_processing_{short}")
}

#[test]
fn endpoints_answer_and_counters_match_the_table() {
    let db = TestDb::new("http_metrics");
    let mut svc = Service::run(
        &db,
        &[
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("RATE_LIMIT", "0"),
            ("JOB_CONSUMERS", "4"),
            ("SHUTDOWN_TIMEOUT", "10s"),
        ],
    );
    let addr = http_addr(&mut svc);
    assert_eq!(must_get(addr, "/healthz").status, 200);
    wait_status(&svc, addr, "/readyz", 200, secs(20));

    let before = metrics(addr);
    for counter in [
        "jobs_claimed_total",
        "jobs_started_total",
        "jobs_done_total",
        "jobs_cancelled_total",
        "jobs_failed_total",
        "jobs_retried_total",
        "jobs_rescued_total",
        "token_wait_seconds_total",
        "database_errors_total",
        "database_outages_total",
        "channel_depth",
        "consumers_busy",
        "claim_batch_size_count",
        "job_duration_seconds_count",
    ] {
        assert_eq!(
            must_sample(&before, &name(counter)),
            0.0,
            "{counter} before any job:\n{before}"
        );
    }

    // Eight quick jobs end DONE!, two stuck ones are cancelled at their own
    // 300 ms timeout, a negative sleep ends FAILED! without starting.
    db.insert_jobs(&vec![(Some(1), Some(20 * MS)); 8]);
    db.exec("INSERT INTO jobs (object_id, sleep, timeout) VALUES (2, NULL, 300), (2, NULL, 300)");
    db.insert_job(Some(3), Some(-1));
    wait_until_or(
        secs(30),
        "all eleven jobs final",
        || db.count("status IN ('DONE!', 'CANCELLED!', 'FAILED!')") == 11,
        || format!("{}\n{}", db.dump(), svc.logs()),
    );

    // Counters move right after each row is written: give the last ones a
    // moment, then they must equal the table exactly.
    let expected = |db: &TestDb| {
        [
            ("jobs_claimed_total", db.count("queued_at IS NOT NULL")),
            ("jobs_started_total", db.count("started_at IS NOT NULL")),
            ("jobs_done_total", db.count_status(DONE)),
            ("jobs_cancelled_total", db.count_status(CANCELLED)),
            ("jobs_failed_total", db.count_status(FAILED)),
            // Every run is timed, whatever its outcome.
            (
                "job_duration_seconds_count",
                db.count("started_at IS NOT NULL"),
            ),
            // Every claimed job was in exactly one batch.
            ("claim_batch_size_sum", db.count("queued_at IS NOT NULL")),
            ("channel_depth", 0),
            ("consumers_busy", 0),
        ]
    };
    let body = poll(secs(10), "/metrics to match the table", || {
        let body = metrics(addr);
        let mismatches: Vec<String> = expected(&db)
            .iter()
            .filter(|(n, want)| sample(&body, &name(n)) != Some(*want as f64))
            .map(|(n, want)| format!("{n}: table {want}, scraped {:?}", sample(&body, &name(n))))
            .collect();
        if mismatches.is_empty() {
            Ok(body)
        } else {
            Err(format!("{mismatches:#?}\n{body}\n{}", db.dump()))
        }
    });
    assert_eq!(must_sample(&body, &name("jobs_done_total")), 8.0, "{body}");
    assert_eq!(must_sample(&body, &name("jobs_cancelled_total")), 2.0);
    assert_eq!(must_sample(&body, &name("jobs_failed_total")), 1.0);
    // The stuck runs lasted about their 300 ms timeout each (counted from
    // a few milliseconds after the `started_at` the deadline is set from).
    let ran = must_sample(&body, &name("job_duration_seconds_sum"));
    assert!(ran >= 8.0 * 0.02 + 2.0 * 0.25, "{ran} s of runs:\n{body}");
    let le_10ms = body
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "{}{{le=\"0.01\"}} ",
                name("job_duration_seconds_bucket")
            ))
        })
        .unwrap_or_else(|| panic!("no 10 ms bucket:\n{body}"));
    assert_eq!(le_10ms, "0", "no 20 ms job runs under 10 ms:\n{body}");
    assert_eq!(must_sample(&body, &name("database_up")), 1.0);
    assert_eq!(must_get(addr, "/healthz").status, 200);
    assert_eq!(must_get(addr, "/readyz").status, 200);
    assert_eq!(must_get(addr, "/nothing-here").status, 404);

    // A graceful shutdown with a task still running: the replica stays
    // alive for the kubelet (no restart mid-drain) but is no longer ready.
    let long = db.insert_job(Some(4), Some(3000 * MS));
    wait_until_or(
        secs(20),
        "the 3 s job STARTED!",
        || db.job(long).status() == STARTED,
        || format!("{}\n{}", db.dump(), svc.logs()),
    );
    svc.sigterm();
    wait_status(&svc, addr, "/readyz", 503, secs(2));
    let ready = must_get(addr, "/readyz");
    assert!(ready.body.contains("shutting down"), "{ready:?}");
    assert_eq!(
        must_get(addr, "/healthz").status,
        200,
        "draining is healthy\n{}",
        svc.logs()
    );
    let status = svc.wait_exit(secs(15));
    assert_eq!(status.code(), Some(0), "{}", svc.logs());
    assert_eq!(db.job(long).status(), DONE, "{}", db.dump());
    assert!(
        get(addr, "/healthz").is_err(),
        "nothing answers once the process is gone"
    );
}

/// A proxy the test controls in front of the server of a
/// `mysql://user@host:port/db` URL, and the URL pointed at it, over TCP (the
/// mysql crate otherwise moves a loopback connection to the server's Unix
/// socket, bypassing the proxy).
pub fn proxied(url: &str) -> (String, Proxy) {
    let rest = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let proxy = Proxy::start(host);
    let addr = proxy.addr();
    let sep = if tail.contains('?') { '&' } else { '?' };
    (
        format!("mysql://{user}{addr}{tail}{sep}prefer_socket=false"),
        proxy,
    )
}

#[test]
fn an_outage_makes_the_replica_unready_not_unhealthy() {
    let db = TestDb::new("http_outage");
    let (url, proxy) = proxied(db.url());
    let mut svc = Service::spawn(
        &["run"],
        &service_env(&url, &[("METRICS_ADDR", "127.0.0.1:0")]),
    );
    let addr = http_addr(&mut svc);
    wait_status(&svc, addr, "/readyz", 200, secs(20));
    let body = metrics(addr);
    assert_eq!(must_sample(&body, &name("database_outages_total")), 0.0);

    proxy.cut();
    wait_status(&svc, addr, "/readyz", 503, secs(10));
    let during = metrics(addr);
    assert_eq!(
        must_get(addr, "/healthz").status,
        200,
        "an outage is no reason to restart\n{}",
        svc.logs()
    );
    assert!(
        must_sample(&during, &name("database_errors_total")) >= 1.0,
        "{during}"
    );

    proxy.restore();
    wait_status(&svc, addr, "/readyz", 200, secs(20));
    let after = metrics(addr);
    assert!(
        must_sample(&after, &name("database_outages_total")) >= 1.0,
        "{after}"
    );
    assert_eq!(must_sample(&after, &name("database_up")), 1.0, "{after}");
    svc.sigterm();
    assert_eq!(svc.wait_exit(secs(15)).code(), Some(0), "{}", svc.logs());
}

#[test]
fn metrics_addr_in_use_exits_1_naming_it_before_waiting_for_the_database() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let value = format!("127.0.0.1:{port}");
    let env = service_env(
        CLOSED_PORT_URL,
        &[("METRICS_ADDR", &value), ("DB_CONNECT_TIMEOUT", "30s")],
    );
    let out = run_cmd(&["run"], &env, secs(20));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("METRICS_ADDR={value}")),
        "{}",
        out.describe()
    );
    assert!(
        out.elapsed < secs(10),
        "it waited for the database first: {:?}",
        out.elapsed
    );
}

#[test]
fn bad_metrics_addr_exits_2_naming_it() {
    for value in ["9090", "localhost:9090", "0.0.0.0:http"] {
        let env = service_env(CLOSED_PORT_URL, &[("METRICS_ADDR", value)]);
        let out = run_cmd(&["run"], &env, secs(20));
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(
            out.stderr.contains("METRICS_ADDR") && out.stderr.contains(value),
            "{}",
            out.describe()
        );
    }
}
