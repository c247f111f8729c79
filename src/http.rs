//! Health and metrics over HTTP, for Kubernetes probes and Prometheus.
//!
//! One thread, `http`, answers on `METRICS_ADDR` (default `0.0.0.0:9090`;
//! set it empty to serve nothing), on the service's own small synchronous
//! server ([`crate::runtime::http_server`]: bounded requests, no body
//! accepted, no async runtime); the exposition format is written by
//! `prometheus-client`, the Prometheus project's own Rust library.
//!
//! | path | 200 | 503 |
//! |---|---|---|
//! | `/healthz` | every service thread is running (or ended because a shutdown asked it to) | a thread died: restart the process |
//! | `/readyz` | started, the database answered its last call, this replica's heartbeat is fresh | starting, stopping, database unavailable, heartbeat overdue, a thread died |
//! | `/metrics` | always: Prometheus text format 0.0.4 | |
//!
//! Liveness ignores the database on purpose: the service rides out an
//! outage by itself, and restarting every replica would not bring the
//! database back. Nothing here touches the database either: each answer is
//! read from memory, so a probe is cheap and never waits on MySQL.
//!
//! The server starts before the service waits for the database, so a
//! replica that is still connecting or taking over its name answers
//! `/healthz` (200) and `/readyz` (503, starting) instead of looking dead.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::bucket::Bucket;
use crate::cancel;
use crate::db::Db;
use crate::metrics::COUNTERS;
use crate::queues::{Backlog, Queues};
use crate::runtime::http_server::{Handler, Limits, Request, Response, Server};
use crate::runtime::liveness::Liveness;
use crate::runtime::threads::{Phase, ThreadState, Watch};

/// What the endpoints read: the replica's state in memory, never the
/// database.
#[derive(Clone)]
pub struct HealthView {
    /// Which threads are alive, the phase, the jobs channel.
    pub watch: Arc<Watch>,
    /// The pool: whether the database answered its last call, and the
    /// counters.
    pub db: Db,
    /// When this replica's heartbeat last landed.
    pub liveness: Arc<Liveness>,
    /// Tasks running now.
    pub registry: Arc<cancel::Registry>,
    /// Time waited for rate-limit tokens.
    pub bucket: Arc<Bucket>,
    /// `HEARTBEAT_INTERVAL`, for freshness.
    pub heartbeat_interval: Duration,
    /// `JOB_CONSUMERS`.
    pub consumers: usize,
    /// `CHANNEL_CAPACITY`.
    pub channel_capacity: usize,
    /// What waits in each queue (counted every few seconds).
    pub queues: Arc<Queues>,
}

/// Every metric's name starts with this and `_`.
pub const PREFIX: &str = "background_processing";

/// The `Content-Type` of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The running endpoints; stopped by [`HttpServer::stop`] or on drop.
pub struct HttpServer {
    server: Server,
}

impl HttpServer {
    /// Listens on `addr` and starts the `http` threads. Fails only when the
    /// address cannot be bound; the message names `METRICS_ADDR`.
    pub fn start(view: HealthView, addr: SocketAddr) -> Result<HttpServer, String> {
        let registry = registry(view.clone());
        let handler: Handler = Arc::new(move |request: &Request| {
            let url = match request.query.as_str() {
                "" => request.path.clone(),
                q => format!("{}?{q}", request.path),
            };
            let reply = route(&view, &registry, &request.method, &url);
            Response::text(reply.status, reply.body).with_header("Content-Type", reply.content_type)
        });
        let limits = Limits::default();
        let server = Server::start("http", addr, limits, handler).map_err(|e| e.to_string())?;
        log::info!(
            "serving /healthz, /readyz and /metrics on http://{}",
            server.addr()
        );
        Ok(HttpServer { server })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops answering and joins the threads.
    pub fn stop(self) {
        self.server.stop();
    }
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    fn check(check: Check) -> Reply {
        Reply::text(if check.ok { 200 } else { 503 }, check.text + "\n")
    }
}

/// The answer to `method` on `url` (path and query).
pub fn route(shared: &HealthView, registry: &Registry, method: &str, url: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET and HEAD\n".into());
    }
    match url.split('?').next().unwrap_or_default() {
        "/healthz" => Reply::check(health(shared)),
        "/readyz" => Reply::check(readiness(shared)),
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
                Ok(()) => Reply {
                    status: 200,
                    content_type: METRICS_CONTENT_TYPE,
                    body,
                },
                Err(_) => Reply::text(500, "encoding the metrics failed\n".into()),
            }
        }
        "/" => Reply::text(
            200,
            format!(
                "background-processing {}: /healthz (threads alive), /readyz (database and \
                 heartbeat), /metrics (Prometheus)\n",
                crate::config::VERSION
            ),
        ),
        _ => Reply::text(404, "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}

/// A probe's verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// 200 or 503.
    pub ok: bool,
    /// One line for whoever reads the probe's output.
    pub text: String,
}

/// `/healthz`: is every thread alive? A thread that ended outside a
/// shutdown, or panicked, makes the process unhealthy: a restart is the
/// cure. Starting and draining replicas are healthy.
pub fn health(shared: &HealthView) -> Check {
    let dead = shared.watch.dead();
    if !dead.is_empty() {
        return Check {
            ok: false,
            text: format!("threads died: {}", dead.join(", ")),
        };
    }
    let threads = shared.watch.threads();
    let alive = threads
        .iter()
        .filter(|(_, s)| *s == ThreadState::Alive)
        .count();
    let text = match shared.watch.phase() {
        Phase::Starting => "ok: starting".to_string(),
        Phase::Running => format!("ok: all {alive} threads alive"),
        Phase::Stopping => format!("ok: shutting down, {alive} threads still running"),
    };
    Check { ok: true, text }
}

/// `/readyz`: is this replica doing its work? Started, not stopping, every
/// thread alive, the database answered its last call, and this replica's
/// heartbeat landed recently (so the others see it alive).
pub fn readiness(shared: &HealthView) -> Check {
    let not = |text: String| Check { ok: false, text };
    match shared.watch.phase() {
        Phase::Starting => {
            return not(
                "starting: waiting for the database, the schema check and registration".into(),
            );
        }
        Phase::Stopping => return not("shutting down: this replica takes no more jobs".into()),
        Phase::Running => {}
    }
    let health = health(shared);
    if !health.ok {
        return not(health.text);
    }
    if shared.db.health().is_down() {
        return not("database unavailable: retrying with backoff".into());
    }
    if let Some(why) = shared.db.health().refusal() {
        return not(format!(
            "the database refuses this replica's statements: {why}"
        ));
    }
    let interval = shared.heartbeat_interval;
    let age = shared.liveness.last_beat_age();
    let age_text = age.map_or("never".to_string(), |a| {
        format!("{:.1}s ago", a.as_secs_f64())
    });
    if !shared.liveness.is_fresh(interval) {
        return not(format!(
            "heartbeat overdue: the last one landed {age_text} (HEARTBEAT_INTERVAL={})",
            crate::config::show_duration(interval)
        ));
    }
    Check {
        ok: true,
        text: format!("ready: database answering, heartbeat {age_text}"),
    }
}

/// The registry `/metrics` encodes: the counters and gauges read at each
/// scrape, and the two histograms.
pub fn registry(shared: HealthView) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    let h = &shared.db.metrics().histograms;
    registry.register(
        "claim_batch_size",
        "Jobs per claim, for claims that found work",
        h.claim_batch.clone(),
    );
    registry.register(
        "job_duration_seconds",
        "How long each task ran, whatever its outcome",
        h.job_duration.clone(),
    );
    registry.register_collector(Box::new(Scrape(shared)));
    registry
}

/// Reads the service's counters and gauges at each scrape.
struct Scrape(HealthView);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let e = &mut enc;
        let values = s.db.metrics().snapshot();
        for (info, value) in COUNTERS.iter().zip(values) {
            counter(e, info.name, info.help, value)?;
        }
        counter(
            e,
            "token_wait_seconds",
            "Seconds jobs consumers spent waiting for rate-limit tokens (RATE_LIMIT)",
            s.bucket.waited().as_secs_f64(),
        )?;
        gauge(
            e,
            "database_up",
            "1 when the last database call succeeded, 0 during an outage",
            i64::from(!s.db.health().is_down()),
        )?;
        gauge(
            e,
            "channel_depth",
            "Jobs claimed and waiting in this replica's channel",
            s.watch.jobs_waiting() as i64,
        )?;
        gauge(
            e,
            "channel_capacity",
            "Bound of the jobs channel (CHANNEL_CAPACITY)",
            s.channel_capacity as i64,
        )?;
        gauge(
            e,
            "consumers_busy",
            "Jobs consumers running a task right now",
            s.registry.len() as i64,
        )?;
        gauge(
            e,
            "consumers",
            "Jobs consumer threads (JOB_CONSUMERS)",
            s.consumers as i64,
        )?;
        gauge(
            e,
            "heartbeat_age_seconds",
            "Seconds since this replica's heartbeat last landed (-1 before the first)",
            s.liveness.last_beat_age().map_or(-1.0, |a| a.as_secs_f64()),
        )?;
        backlog(e, &s.queues.backlog())
    }
}

/// The jobs waiting in each queue for each kind, by label.
fn backlog(e: &mut DescriptorEncoder, backlog: &[Backlog]) -> fmt::Result {
    let labels = |b: &Backlog| {
        vec![
            ("queue".to_string(), b.queue.clone()),
            ("kind".to_string(), b.kind.clone()),
            ("served".to_string(), b.served.to_string()),
        ]
    };
    type Value = fn(&Backlog) -> f64;
    let families: [(&str, &str, Value); 3] = [
        (
            "jobs_waiting",
            "New jobs due now, by queue and kind; served=false: no live replica serves the queue \
             and runs the kind",
            |b| b.waiting as f64,
        ),
        (
            "jobs_scheduled",
            "New jobs scheduled for later, by queue and kind",
            |b| b.scheduled as f64,
        ),
        (
            "oldest_waiting_seconds",
            "How long the oldest job due now has waited, by queue and kind",
            |b| b.oldest.map_or(0.0, |d| d.as_secs_f64()),
        ),
    ];
    for (name, help, value) in families {
        let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for b in backlog {
            let g = ConstGauge::new(value(b));
            g.encode(family.encode_family(&labels(b))?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counter;

    fn shared() -> HealthView {
        HealthView {
            watch: Arc::default(),
            // The pool connects lazily: nothing here talks to a database.
            db: Db::new("mysql://127.0.0.1:1/x", 1).unwrap(),
            liveness: Arc::default(),
            registry: Arc::default(),
            bucket: Arc::new(Bucket::new(50)),
            heartbeat_interval: Duration::from_millis(100),
            consumers: 8,
            channel_capacity: 100,
            queues: Arc::default(),
        }
    }

    #[test]
    fn starting_is_healthy_but_not_ready() {
        let s = shared();
        assert!(health(&s).ok);
        let r = readiness(&s);
        assert!(!r.ok);
        assert!(r.text.starts_with("starting"), "{}", r.text);
    }

    #[test]
    fn ready_needs_a_fresh_heartbeat() {
        let s = shared();
        s.watch.set_running();
        let r = readiness(&s);
        assert!(!r.ok && r.text.contains("heartbeat"), "{}", r.text);
        s.liveness.beat(s.heartbeat_interval);
        assert!(readiness(&s).ok, "{}", readiness(&s).text);
    }

    #[test]
    fn a_dead_thread_fails_both_probes_and_stopping_is_not_ready() {
        let s = shared();
        s.liveness.beat(s.heartbeat_interval);
        let h = s.watch.spawn("consumer-jobs-0".into(), || {});
        h.join().unwrap();
        s.watch.set_running();
        let (hz, rz) = (health(&s), readiness(&s));
        assert!(!hz.ok && hz.text.contains("consumer-jobs-0"), "{}", hz.text);
        assert!(!rz.ok && rz.text.contains("consumer-jobs-0"), "{}", rz.text);
        s.watch.set_stopping();
        assert!(health(&s).ok);
        assert!(!readiness(&s).ok);
    }

    #[test]
    fn routes() {
        let s = shared();
        let reg = registry(s.clone());
        assert_eq!(route(&s, &reg, "GET", "/healthz").status, 200);
        assert_eq!(route(&s, &reg, "HEAD", "/readyz?verbose").status, 503);
        assert_eq!(route(&s, &reg, "POST", "/metrics").status, 405);
        assert_eq!(route(&s, &reg, "GET", "/nope").status, 404);
        assert_eq!(route(&s, &reg, "GET", "/").status, 200);
    }

    #[test]
    fn metrics_are_prometheus_text_with_every_series() {
        let s = shared();
        let reg = registry(s.clone());
        s.db.metrics().add(Counter::Done, 3);
        s.db.metrics().observe_claim(4);
        s.db.metrics().observe_claim(0);
        s.db.metrics()
            .observe_run(Some(std::time::Duration::from_millis(20)));
        let r = route(&s, &reg, "GET", "/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
        let body = r.body;
        for line in [
            "# TYPE background_processing_jobs_done_total counter",
            "background_processing_jobs_done_total 3",
            "background_processing_jobs_claimed_total 0",
            "background_processing_jobs_started_total 0",
            "background_processing_jobs_cancelled_total 0",
            "background_processing_jobs_failed_total 0",
            "background_processing_jobs_retried_total 0",
            "background_processing_jobs_rescued_total 0",
            "background_processing_token_wait_seconds_total 0.0",
            "background_processing_database_errors_total 0",
            "background_processing_database_outages_total 0",
            "background_processing_database_up 1",
            "background_processing_channel_depth 0",
            "background_processing_consumers_busy 0",
            "# TYPE background_processing_claim_batch_size histogram",
            "background_processing_claim_batch_size_count 1",
            "background_processing_claim_batch_size_sum 4.0",
            "background_processing_claim_batch_size_bucket{le=\"5\"} 1",
            "# TYPE background_processing_job_duration_seconds histogram",
            "background_processing_job_duration_seconds_count 1",
            "background_processing_job_duration_seconds_bucket{le=\"0.025\"} 1",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in:\n{body}"
            );
        }
        // Prometheus text 0.0.4, not OpenMetrics.
        assert!(!body.contains("# EOF"), "{body}");
    }
}
