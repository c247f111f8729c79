//! Wiring: starts every thread of a replica and stops them in order.
//!
//! [`Service::start`] waits for the database (`DB_CONNECT_TIMEOUT`), checks
//! the schema, registers this replica in `workers`, then starts the threads
//! (see the crate docs for the list). [`Service::shutdown`] drains:
//!
//! 1. the jobs publisher stops claiming;
//! 2. consumers stop taking jobs, and this replica's `QUEUED!` jobs go back
//!    to new (status NULL) at once, retried until the deadline;
//! 3. running tasks get until `SHUTDOWN_TIMEOUT` to finish; then they are
//!    interrupted and their consumers mark them `CANCELLED!` with the reason
//!    (they started, so they must not start again elsewhere);
//! 4. the canceller, watcher, heartbeat, rescuer and summary stop, and this
//!    replica's row is removed;
//! 5. the `http` thread (`METRICS_ADDR`) stops last, so probes and scrapes
//!    answer throughout the drain (`/readyz` says it is shutting down).
//!
//! Every thread but `http` is started through [`Watch::spawn`], so
//! `/healthz` knows when one has died.
//!
//! The drain never stops on an error: each step logs and goes on, so a
//! database outage during shutdown costs at most the deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, bounded, select, tick};
use thiserror::Error;

use crate::batch::{Completer, Starter, run_completer, run_starter};
use crate::bucket::Bucket;
use crate::cancel::{Interrupt, Registry};
use crate::config::Config;
use crate::consumer;
use crate::db::jobs::{Dead, Job, job_release_queued};
use crate::db::workers::worker_remove;
use crate::db::{Db, DbError};
use crate::http::HttpServer;
use crate::metrics::Metrics;
use crate::outage::Backoff;
use crate::publisher::canceller::CancellerPublisher;
use crate::publisher::heartbeat::{Heartbeat, Liveness};
use crate::publisher::jobs::JobsPublisher;
use crate::publisher::pruner::Pruner;
use crate::publisher::rescuer::Rescuer;
use crate::publisher::watcher::Watcher;
use crate::task::Tasks;
use crate::watch::Watch;

/// How often the summary line is logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// How long interrupted tasks get to write `CANCELLED!` after the shutdown
/// deadline before the process stops waiting for them.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// State every thread of a replica shares.
pub struct Shared {
    /// The effective configuration.
    pub config: Config,
    /// The connection pool.
    pub db: Db,
    /// When this replica's heartbeats have been landing steadily.
    pub liveness: Liveness,
    /// Counters.
    pub metrics: Metrics,
    /// Tasks running in this process.
    pub registry: Registry,
    /// The token bucket in front of the jobs consumers.
    pub bucket: Bucket,
    /// This replica's name, as written in `jobs.owner` and `workers.name`.
    pub worker: String,
    /// The task kinds this replica runs.
    pub tasks: Tasks,
    /// Which threads are alive and the service's phase, for `/healthz` and
    /// `/readyz`.
    pub watch: Watch,
}

impl Shared {
    /// Shared state for `config`, running `tasks`, with a pool that
    /// connects lazily.
    pub fn new(config: Config, tasks: Tasks) -> Result<Shared, DbError> {
        let db = Db::new(&config.database_url, config.db_pool_size)?;
        Ok(Shared {
            db,
            liveness: Liveness::default(),
            metrics: Metrics::default(),
            registry: Registry::default(),
            bucket: Bucket::new(config.rate_limit),
            worker: config.worker_name.clone(),
            tasks,
            config,
            watch: Watch::default(),
        })
    }
}

/// Why the service could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The database did not answer within `DB_CONNECT_TIMEOUT`.
    #[error("database at {url} not reachable within DB_CONNECT_TIMEOUT ({timeout}): {cause}")]
    Unreachable {
        /// Where it tried, password redacted.
        url: String,
        /// How long it tried.
        timeout: String,
        /// The last error.
        cause: DbError,
    },
    /// The schema is missing or outdated, or registering failed.
    #[error("database at {url}: {cause}")]
    Database {
        /// Where, password redacted.
        url: String,
        /// What failed.
        cause: DbError,
    },
    /// The health and metrics endpoints could not listen.
    #[error(
        "cannot listen on METRICS_ADDR={addr}: {cause} (choose another address, or set \
         METRICS_ADDR empty to serve no health and metrics endpoints)"
    )]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: String,
    },
}

/// A running replica.
pub struct Service {
    shared: Arc<Shared>,
    stop_claiming: Option<Sender<()>>,
    stop_taking: Option<Sender<()>>,
    hard_stop: Option<Sender<()>>,
    stop_rest: Option<Sender<()>>,
    jobs_publisher: Option<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
    consumers_alive: Receiver<()>,
    others: Vec<JoinHandle<()>>,
    http: Option<HttpServer>,
}

/// What a shutdown did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// `QUEUED!` jobs put back to new.
    pub released: u64,
    /// Tasks interrupted at the deadline.
    pub interrupted: usize,
    /// Consumers still running when the process stopped waiting.
    pub stragglers: usize,
}

/// Starts a named thread (see [`Watch::spawn`] for a watched one).
pub(crate) fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

impl Service {
    /// Starts the health and metrics endpoints (`METRICS_ADDR`), connects,
    /// checks the schema, registers this replica and starts every thread.
    pub fn start(config: Config, tasks: Tasks) -> Result<Service, StartError> {
        let url = config.redacted_url();
        let shared = Shared::new(config, tasks).map_err(|cause| StartError::Database {
            url: url.clone(),
            cause,
        })?;
        let shared = Arc::new(shared);
        let http = match shared.config.metrics_addr {
            Some(addr) => Some(
                HttpServer::start(Arc::clone(&shared), addr)
                    .map_err(|cause| StartError::Metrics { addr, cause })?,
            ),
            None => None,
        };
        shared
            .db
            .wait_ready(shared.config.db_connect_timeout)
            .map_err(|cause| StartError::Unreachable {
                url: url.clone(),
                timeout: humantime::format_duration(shared.config.db_connect_timeout).to_string(),
                cause,
            })?;
        let db_err = |cause| StartError::Database {
            url: url.clone(),
            cause,
        };
        {
            let mut conn = shared.db.conn().map_err(db_err)?;
            crate::db::migrate::check(&mut conn).map_err(db_err)?;
            let replaced = crate::db::migrate::replaced_indexes_left(&mut conn).map_err(db_err)?;
            if !replaced.is_empty() {
                log::warn!(
                    "jobs still has the indexes this version replaced ({}), which slow every \
                     write: once every replica runs this version, run \
                     `background-processing migrate --drop-replaced`",
                    replaced.join(", ")
                );
            }
        }
        let heartbeat = Heartbeat::new(Arc::clone(&shared));
        heartbeat.register_at_start().map_err(db_err)?;
        // From here a stop signal must drain: jobs are about to be claimed.
        crate::shutdown::mark_running();
        let mut service = Service::spawn_threads(shared, heartbeat);
        service.http = http;
        service.shared.watch.set_running();
        Ok(service)
    }

    /// Where `/healthz`, `/readyz` and `/metrics` answer, if they do.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    fn spawn_threads(shared: Arc<Shared>, heartbeat: Heartbeat) -> Service {
        let cfg = &shared.config;
        let watch = &shared.watch;
        let (stop_claiming, stop_claiming_rx) = bounded::<()>(0);
        let (stop_taking, stop_taking_rx) = bounded::<()>(0);
        let (hard_stop, hard_stop_rx) = bounded::<()>(0);
        let (stop_rest, stop_rest_rx) = bounded::<()>(0);
        let (alive, consumers_alive) = bounded::<()>(0);
        let (jobs_tx, jobs_rx) = bounded::<Job>(cfg.channel_capacity);
        let (room_tx, room_rx) = bounded::<()>(1);
        let (cancel_tx, cancel_rx) = bounded::<Dead>(cfg.channel_capacity);
        watch.set_jobs_channel(jobs_rx.clone());

        let publisher = JobsPublisher::new(Arc::clone(&shared), jobs_tx);
        let jobs_publisher = watch.spawn("publisher-jobs".into(), move || {
            publisher.run(stop_claiming_rx, room_rx)
        });

        let (starter, start_rx) = Starter::new();
        let (completer, done_rx) = Completer::new();
        let mut consumers: Vec<JoinHandle<()>> = (0..cfg.job_consumers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let alive = alive.clone();
                let ch = consumer::jobs::Channels {
                    jobs: jobs_rx.clone(),
                    room_freed: room_tx.clone(),
                    stop_taking: stop_taking_rx.clone(),
                    hard_stop: hard_stop_rx.clone(),
                    starter: starter.for_consumer(i),
                    completer: completer.clone(),
                };
                watch.spawn(format!("consumer-jobs-{i}"), move || {
                    let _alive = alive;
                    consumer::jobs::run(shared, ch);
                })
            })
            .collect();
        // The batch writers stop once the last consumer is gone and what it
        // sent is written; they count among the consumers shutdown waits for.
        drop((starter, completer));
        // One starter: measured, a second one only adds statements (each
        // commit still waits for its own log flush on a busy server).
        let (s, stop, a) = (Arc::clone(&shared), stop_taking_rx.clone(), alive.clone());
        consumers.push(watch.spawn("starter".into(), move || {
            let _alive = a;
            run_starter(&s, start_rx, stop)
        }));
        let (s, stop, a) = (Arc::clone(&shared), hard_stop_rx.clone(), alive.clone());
        consumers.push(watch.spawn("completer".into(), move || {
            let _alive = a;
            run_completer(&s, done_rx, stop)
        }));
        drop(alive);

        let mut others = Vec::new();
        let p = CancellerPublisher::new(Arc::clone(&shared), cancel_tx);
        let stop = stop_rest_rx.clone();
        others.push(watch.spawn("publisher-canceller".into(), move || p.run(stop)));
        for i in 0..cfg.canceller_consumers {
            let shared = Arc::clone(&shared);
            let (rx, stop) = (cancel_rx.clone(), stop_rest_rx.clone());
            others.push(watch.spawn(format!("consumer-canceller-{i}"), move || {
                consumer::canceller::run(shared, rx, stop)
            }));
        }
        let w = Watcher::new(Arc::clone(&shared));
        let stop = stop_rest_rx.clone();
        others.push(watch.spawn("watcher".into(), move || w.run(stop)));
        let stop = stop_rest_rx.clone();
        others.push(watch.spawn("heartbeat".into(), move || heartbeat.run(stop)));
        let r = Rescuer::new(Arc::clone(&shared));
        let stop = stop_rest_rx.clone();
        others.push(watch.spawn("rescuer".into(), move || r.run(stop)));
        if let Some(retention) = cfg.retention {
            let p = Pruner::new(Arc::clone(&shared), retention);
            let stop = stop_rest_rx.clone();
            others.push(watch.spawn("pruner".into(), move || p.run(stop)));
        }
        let s = Arc::clone(&shared);
        others.push(watch.spawn("summary".into(), move || summary(s, jobs_rx, stop_rest_rx)));

        Service {
            shared,
            stop_claiming: Some(stop_claiming),
            stop_taking: Some(stop_taking),
            hard_stop: Some(hard_stop),
            stop_rest: Some(stop_rest),
            jobs_publisher: Some(jobs_publisher),
            consumers,
            consumers_alive,
            others,
            http: None,
        }
    }

    /// The state the threads share (counters, registry, configuration).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Runs until `stop` closes, then shuts down gracefully.
    pub fn run_until(self, stop: &Receiver<()>) -> ShutdownReport {
        let _ = stop.recv();
        self.shutdown()
    }

    /// Graceful shutdown; see the module docs for the order.
    pub fn shutdown(mut self) -> ShutdownReport {
        let shared = Arc::clone(&self.shared);
        shared.watch.set_stopping();
        let deadline = Instant::now() + shared.config.shutdown_timeout;
        let mut report = ShutdownReport::default();

        drop(self.stop_claiming.take());
        if let Some(h) = self.jobs_publisher.take() {
            let _ = h.join();
        }
        drop(self.stop_taking.take());
        report.released = release_queued(&shared, deadline);
        log::info!(
            "shutdown: put back {} waiting jobs; waiting up to {} for {} running",
            report.released,
            humantime::format_duration(round_ms(
                deadline.saturating_duration_since(Instant::now())
            )),
            shared.registry.len()
        );

        let finished = select! {
            recv(self.consumers_alive) -> _ => true,
            recv(at(deadline)) -> _ => false,
        };
        if !finished {
            report.interrupted = shared.registry.interrupt_all(Interrupt::Shutdown);
            log::warn!(
                "shutdown: SHUTDOWN_TIMEOUT passed; interrupted {} running jobs, marking them CANCELLED!",
                report.interrupted
            );
            select! {
                recv(self.consumers_alive) -> _ => {},
                recv(at(Instant::now() + INTERRUPT_GRACE)) -> _ => {},
            }
        }
        drop(self.hard_stop.take());
        let consumers = std::mem::take(&mut self.consumers);
        for h in consumers {
            if h.is_finished() {
                let _ = h.join();
            } else {
                report.stragglers += 1;
            }
        }
        // A consumer that took a job just as the first release ran may have
        // left it QUEUED!: put those back too.
        // Kept short: with SHUTDOWN_TIMEOUT and the grace above, the whole
        // drain stays inside Kubernetes' 30 s by default.
        report.released += release_queued(&shared, Instant::now() + Duration::from_secs(1));

        drop(self.stop_rest.take());
        for h in std::mem::take(&mut self.others) {
            let _ = h.join();
        }
        if let Err(e) = shared
            .db
            .conn()
            .and_then(|mut c| worker_remove(&mut c, &shared.worker))
        {
            log::warn!("shutdown: could not remove this worker's row: {e}");
        }
        log::info!(
            "shutdown complete: {}",
            summary_line(&shared, &Totals::default())
        );
        if let Some(http) = self.http.take() {
            http.stop();
        }
        report
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Dropping the senders stops every thread; a Service dropped without
        // shutdown() (a test that failed) must not leave threads running.
        self.shared.watch.set_stopping();
        self.stop_claiming.take();
        self.stop_taking.take();
        self.hard_stop.take();
        self.stop_rest.take();
        self.shared.registry.interrupt_all(Interrupt::Shutdown);
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Puts this replica's `QUEUED!` jobs back, retrying until `deadline`.
fn release_queued(shared: &Shared, deadline: Instant) -> u64 {
    let mut backoff = Backoff::default();
    loop {
        match shared
            .db
            .conn()
            .and_then(|mut c| job_release_queued(&mut c, &shared.worker))
        {
            Ok(n) => {
                Metrics::add(&shared.metrics.released, n);
                return n;
            }
            Err(e) => {
                shared.db.health().failed("putting back waiting jobs", &e);
                let wait = backoff.next_delay();
                if Instant::now() + wait >= deadline {
                    log::warn!(
                        "shutdown: could not put back waiting jobs before the deadline: {e}"
                    );
                    return 0;
                }
                std::thread::sleep(wait);
            }
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Totals {
    done: u64,
    cancelled: u64,
    failed: u64,
    waited: Duration,
}

fn totals(shared: &Shared) -> Totals {
    let m = &shared.metrics;
    Totals {
        done: Metrics::get(&m.done),
        cancelled: Metrics::get(&m.cancelled),
        failed: Metrics::get(&m.failed),
        waited: shared.bucket.waited(),
    }
}

fn summary_line(shared: &Shared, since: &Totals) -> String {
    let now = totals(shared);
    format!(
        "done {}, cancelled {}, failed {}, running {}, waited for tokens {:.1}s; \
         totals: claimed {}, done {}, released {}, rescued {}, lost {}, db retries {}",
        now.done - since.done,
        now.cancelled - since.cancelled,
        now.failed - since.failed,
        shared.registry.len(),
        (now.waited.saturating_sub(since.waited)).as_secs_f64(),
        Metrics::get(&shared.metrics.claimed),
        now.done,
        Metrics::get(&shared.metrics.released),
        Metrics::get(&shared.metrics.rescued),
        Metrics::get(&shared.metrics.lost),
        shared.db.health().failures(),
    )
}

/// Logs what happened in the last minute, every minute.
fn summary(shared: Arc<Shared>, jobs: Receiver<Job>, stop: Receiver<()>) {
    let ticker = tick(SUMMARY_INTERVAL);
    let mut last = totals(&shared);
    loop {
        select! {
            recv(stop) -> _ => return,
            recv(ticker) -> _ => {
                log::info!(
                    "last minute: {}; waiting in channel {}",
                    summary_line(&shared, &last),
                    jobs.len()
                );
                last = totals(&shared);
            }
        }
    }
}
