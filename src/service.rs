//! Wiring: builds every thread of a replica from the configuration, starts
//! them, and stops them in order.
//!
//! [`Service::start`] makes the handles the threads share (the pool, the
//! registry of running tasks, the token bucket, the thread watch, the
//! heartbeat record), waits for the database (`DB_CONNECT_TIMEOUT`, default
//! 30s), checks the schema, registers this replica in `workers`, then starts
//! each loop with its own small config and just the handles it needs (see
//! the crate docs for the list). [`Service::shutdown`] drains:
//!
//! 1. the jobs publisher stops claiming;
//! 2. consumers stop taking jobs, and this replica's `QUEUED!` jobs go back
//!    to new (status NULL) at once, retried until the deadline;
//! 3. running tasks get until `SHUTDOWN_TIMEOUT` (default 25s) to finish;
//!    then they are interrupted and marked `CANCELLED!` with the reason
//!    (they started, so they must not start again elsewhere);
//! 4. the canceller, watcher, heartbeat, rescuer, pruner and summary stop,
//!    and this replica's row is removed;
//! 5. the `http` thread (`METRICS_ADDR`) stops last, so probes and scrapes
//!    answer throughout the drain (`/readyz` says it is shutting down).
//!
//! Every thread but `http` is started through [`Watch::spawn`], so
//! `/healthz` knows when one has died. The drain never stops on an error:
//! each step logs and goes on, so a database outage during shutdown costs at
//! most the deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, bounded, select};
use thiserror::Error;

use crate::bucket::Bucket;
use crate::cancel::{Interrupt, Registry};
use crate::config::{Config, MAX_NAME_LIST, is_name};
use crate::consumer::canceller::Canceller;
use crate::consumer::finisher::Finisher;
use crate::consumer::jobs::{Channels, Consumer, Shared};
use crate::consumer::starter::Starter;
use crate::db::error::{DbError, ErrorKind};
use crate::db::owners::job_release_queued;
use crate::db::retry::Retry;
use crate::db::workers::worker_remove;
use crate::db::{Db, HeldConn};
use crate::http::{HealthView, HttpServer};
use crate::job::Job;
use crate::maintenance::backlog::BacklogLoop;
use crate::maintenance::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::maintenance::limits::LimitsLoop;
use crate::maintenance::pruner::{Pruner, PrunerConfig};
use crate::maintenance::rescuer::Rescuer;
use crate::maintenance::scheduler::Scheduler;
use crate::maintenance::summary::{Readings, Summary};
use crate::maintenance::watcher::Watcher;
use crate::metrics::{Counter, Metrics};
use crate::publisher::canceller::CancellerPublisher;
use crate::publisher::jobs::{JobsPublisher, JobsPublisherConfig};
use crate::queues::Queues;
use crate::runtime::liveness::Liveness;
use crate::runtime::threads::Watch;
use crate::task::Tasks;

/// How long interrupted tasks get to write `CANCELLED!` after the shutdown
/// deadline before the process stops waiting for them.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Why the service could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The database did not answer within `DB_CONNECT_TIMEOUT`.
    #[error(
        "database at {url} not reachable within DB_CONNECT_TIMEOUT ({timeout}): {}",
        .cause.with_hint()
    )]
    Unreachable {
        /// Where it tried, password redacted.
        url: String,
        /// How long it tried.
        timeout: String,
        /// The last error.
        cause: DbError,
    },
    /// The server refused the connection for good, the schema is missing
    /// or outdated, or registering failed.
    #[error("database at {url}: {}", .cause.with_hint())]
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
    /// A registered task kind has a name the claim cannot route by.
    #[error(
        "task kind {0:?} cannot be claimed: a kind is at most 64 letters, digits and . _ - : @"
    )]
    Kind(String),
    /// The registered kinds' names are too long to register together.
    #[error(
        "the task kinds' names, comma-separated, are longer than {MAX_NAME_LIST} characters \
         (workers.kinds): register fewer or shorter kinds"
    )]
    Kinds,
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

/// The handles a replica's threads share; each thread gets the ones it
/// needs.
#[derive(Clone)]
struct Parts {
    config: Arc<Config>,
    db: Db,
    liveness: Arc<Liveness>,
    registry: Arc<Registry>,
    bucket: Arc<Bucket>,
    watch: Arc<Watch>,
    queues: Arc<Queues>,
    tasks: Tasks,
}

impl Parts {
    fn new(config: Config, tasks: Tasks) -> Result<Parts, DbError> {
        let metrics = Arc::new(Metrics::default());
        let db = Db::connect(&(&config).into(), metrics)?;
        Ok(Parts {
            bucket: Arc::new(Bucket::new(config.rate_limit)),
            config: Arc::new(config),
            db,
            liveness: Arc::default(),
            registry: Arc::default(),
            watch: Arc::default(),
            queues: Arc::default(),
            tasks,
        })
    }

    fn health_view(&self) -> HealthView {
        HealthView {
            watch: Arc::clone(&self.watch),
            db: self.db.clone(),
            liveness: Arc::clone(&self.liveness),
            registry: Arc::clone(&self.registry),
            bucket: Arc::clone(&self.bucket),
            heartbeat_interval: self.config.heartbeat_interval,
            consumers: self.config.job_consumers,
            channel_capacity: self.config.channel_capacity,
            queues: Arc::clone(&self.queues),
        }
    }

    fn summary(&self, jobs: Receiver<Job>) -> Summary {
        Summary::new(
            Arc::clone(self.db.metrics()),
            Arc::clone(&self.registry),
            Arc::clone(&self.bucket),
            jobs,
        )
    }
}

/// The senders whose closing tells each group of threads to stop, in the
/// order the drain closes them.
struct Stops {
    claiming: Option<Sender<()>>,
    taking: Option<Sender<()>>,
    hard: Option<Sender<()>>,
    rest: Option<Sender<()>>,
}

/// The receiving ends of [`Stops`].
#[derive(Clone)]
struct StopSignals {
    claiming: Receiver<()>,
    taking: Receiver<()>,
    hard: Receiver<()>,
    rest: Receiver<()>,
}

fn stops() -> (Stops, StopSignals) {
    let (claiming, claiming_rx) = bounded(0);
    let (taking, taking_rx) = bounded(0);
    let (hard, hard_rx) = bounded(0);
    let (rest, rest_rx) = bounded(0);
    let stops = Stops {
        claiming: Some(claiming),
        taking: Some(taking),
        hard: Some(hard),
        rest: Some(rest),
    };
    let signals = StopSignals {
        claiming: claiming_rx,
        taking: taking_rx,
        hard: hard_rx,
        rest: rest_rx,
    };
    (stops, signals)
}

/// A running replica.
pub struct Service {
    parts: Parts,
    stops: Stops,
    jobs_publisher: Option<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
    consumers_alive: Receiver<()>,
    others: Vec<JoinHandle<()>>,
    summary: Summary,
    http: Option<HttpServer>,
}

impl Service {
    /// Starts the health and metrics endpoints (`METRICS_ADDR`), connects,
    /// checks the schema, registers this replica and starts every thread.
    pub fn start(config: Config, tasks: Tasks) -> Result<Service, StartError> {
        if let Some(bad) = tasks.kinds().into_iter().find(|k| !is_name(k)) {
            return Err(StartError::Kind(bad.to_string()));
        }
        if tasks.kinds().join(",").len() > MAX_NAME_LIST {
            return Err(StartError::Kinds);
        }
        let url = config.redacted_url();
        let db_err = |cause| StartError::Database {
            url: url.clone(),
            cause,
        };
        let parts = Parts::new(config, tasks).map_err(db_err)?;
        let config = Arc::clone(&parts.config);
        let http = match config.metrics_addr {
            Some(addr) => Some(
                HttpServer::start(parts.health_view(), addr)
                    .map_err(|cause| StartError::Metrics { addr, cause })?,
            ),
            None => None,
        };
        parts
            .db
            .wait_ready(config.db_connect_timeout)
            .map_err(|cause| match cause.kind() {
                // Refused at once: waiting longer would not have helped.
                ErrorKind::Fatal => db_err(cause),
                _ => StartError::Unreachable {
                    url: url.clone(),
                    timeout: crate::config::show_duration(config.db_connect_timeout),
                    cause,
                },
            })?;
        check_schema(&parts.db).map_err(db_err)?;
        // The heartbeat has a connection of its own: tasks that use the
        // pool cannot starve it and get this replica declared dead.
        let kinds = parts.tasks.kinds();
        let heartbeat = Heartbeat::new(
            HeartbeatConfig::new(&config, &kinds),
            parts.db.dedicated(),
            Arc::clone(&parts.liveness),
        );
        heartbeat.register_at_start().map_err(db_err)?;
        // Claims rely on SKIP LOCKED skipping: a server that only accepts
        // the syntax would have replicas claim the same jobs.
        if let Err(e) = check_skip_locked(&parts.db, &config.worker_name) {
            let _ = parts
                .db
                .conn()
                .and_then(|mut conn| worker_remove(&mut conn, &config.worker_name));
            return Err(db_err(e));
        }
        // The queues' limits apply from the first claim and start.
        LimitsLoop::new(
            config.as_ref().into(),
            parts.db.clone(),
            Arc::clone(&parts.queues),
        )
        .run_once()
        .map_err(db_err)?;
        // From here a stop signal must drain: jobs are about to be claimed.
        crate::runtime::shutdown::mark_running();
        let mut service = Service::spawn_threads(parts, heartbeat);
        service.http = http;
        service.parts.watch.set_running();
        Ok(service)
    }

    /// Where `/healthz`, `/readyz` and `/metrics` answer, if they do.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// The tasks running in this replica.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.parts.registry
    }

    /// This replica's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.parts.db.metrics()
    }

    /// This replica's name, as written in `jobs.owner` and `workers.name`.
    pub fn worker(&self) -> &str {
        &self.parts.config.worker_name
    }

    fn spawn_threads(parts: Parts, heartbeat: Heartbeat) -> Service {
        let (stops, signals) = stops();
        let (alive, consumers_alive) = bounded::<()>(0);
        let (jobs_tx, jobs_rx) = bounded::<Job>(parts.config.channel_capacity);
        parts.watch.set_jobs_channel(jobs_rx.clone());
        let (room_tx, room_rx) = bounded::<()>(1);
        let publisher = JobsPublisher::new(
            JobsPublisherConfig::new(&parts.config, &parts.tasks.kinds()),
            parts.db.clone(),
            Arc::clone(&parts.queues),
            jobs_tx,
        );
        let claiming = signals.claiming.clone();
        let jobs_publisher = parts.watch.spawn("publisher-jobs".into(), move || {
            publisher.run(claiming, room_rx)
        });
        let consumers = spawn_consumers(&parts, &signals, jobs_rx.clone(), room_tx, alive);
        let mut others = spawn_cancellers(&parts, &signals);
        others.extend(spawn_maintenance(&parts, &signals, heartbeat));
        let summary = parts.summary(jobs_rx.clone());
        let (rest, s) = (signals.rest.clone(), parts.summary(jobs_rx));
        others.push(parts.watch.spawn("summary".into(), move || s.run(rest)));
        Service {
            parts,
            stops,
            jobs_publisher: Some(jobs_publisher),
            consumers,
            consumers_alive,
            others,
            summary,
            http: None,
        }
    }

    /// Runs until `stop` closes, then shuts down gracefully.
    pub fn run_until(self, stop: &Receiver<()>) -> ShutdownReport {
        let _ = stop.recv();
        self.shutdown()
    }

    /// Graceful shutdown; see the module docs for the order.
    pub fn shutdown(mut self) -> ShutdownReport {
        let parts = self.parts.clone();
        parts.watch.set_stopping();
        let deadline = Instant::now() + parts.config.shutdown_timeout;
        let mut report = ShutdownReport::default();

        drop(self.stops.claiming.take());
        if let Some(h) = self.jobs_publisher.take() {
            let _ = h.join();
        }
        drop(self.stops.taking.take());
        report.released = release_queued(&parts, deadline);
        log::info!(
            "shutdown: put back {} waiting jobs; waiting up to {} for {} running",
            report.released,
            crate::config::show_rounded(deadline.saturating_duration_since(Instant::now())),
            parts.registry.len()
        );
        (report.interrupted, report.stragglers) = self.drain_consumers(&parts, deadline);
        // A consumer that took a job just as the first release ran may have
        // left it QUEUED!: put those back too. Kept short: with
        // SHUTDOWN_TIMEOUT and the grace above, the whole drain stays inside
        // Kubernetes' 30 s by default.
        report.released += release_queued(&parts, Instant::now() + Duration::from_secs(1));

        drop(self.stops.rest.take());
        for h in std::mem::take(&mut self.others) {
            let _ = h.join();
        }
        let worker = &parts.config.worker_name;
        if let Err(e) = parts
            .db
            .conn()
            .and_then(|mut c| worker_remove(&mut c, worker))
        {
            log::warn!("shutdown: could not remove this worker's row: {e}");
        }
        log::info!(
            "shutdown complete: {}",
            self.summary.line(&Readings::default())
        );
        if let Some(http) = self.http.take() {
            http.stop();
        }
        report
    }

    /// Waits for the consumers until `deadline`, then interrupts what still
    /// runs and gives it [`INTERRUPT_GRACE`]; returns how many tasks were
    /// interrupted and how many consumers were still running at the end.
    fn drain_consumers(&mut self, parts: &Parts, deadline: Instant) -> (usize, usize) {
        let finished = select! {
            recv(self.consumers_alive) -> _ => true,
            recv(at(deadline)) -> _ => false,
        };
        let mut interrupted = 0;
        let mut all_ended = finished;
        if !finished {
            interrupted = parts.registry.interrupt_all(Interrupt::Shutdown);
            log::warn!(
                "shutdown: SHUTDOWN_TIMEOUT passed; interrupted {interrupted} running jobs, marking them CANCELLED!"
            );
            all_ended = select! {
                recv(self.consumers_alive) -> _ => true,
                recv(at(Instant::now() + INTERRUPT_GRACE)) -> _ => false,
            };
        }
        drop(self.stops.hard.take());
        let mut stragglers = 0;
        for h in std::mem::take(&mut self.consumers) {
            // Once every thread has let `alive` go, each is only returning:
            // joining it cannot block (a check of is_finished() alone could
            // catch one a moment before its end and call it a straggler).
            if all_ended || h.is_finished() {
                let _ = h.join();
            } else {
                stragglers += 1;
            }
        }
        (interrupted, stragglers)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Dropping the senders stops every thread; a Service dropped without
        // shutdown() (a test that failed) must not leave threads running.
        self.parts.watch.set_stopping();
        self.stops.claiming.take();
        self.stops.taking.take();
        self.stops.hard.take();
        self.stops.rest.take();
        self.parts.registry.interrupt_all(Interrupt::Shutdown);
    }
}

/// Fails when the schema is missing or outdated; warns about the indexes
/// this version replaced, which slow every write.
/// [`crate::db::probe::skip_locked_check`] on two of the pool's sessions.
fn check_skip_locked(db: &Db, worker: &str) -> Result<(), DbError> {
    let (mut holder, mut reader) = (db.conn()?, db.conn()?);
    crate::db::probe::skip_locked_check(&mut holder, &mut reader, worker)?;
    log::debug!("checked: SKIP LOCKED skips a row locked by another session");
    Ok(())
}

fn check_schema(db: &Db) -> Result<(), DbError> {
    let mut conn = db.conn()?;
    crate::db::migrate::check(&mut conn)?;
    let replaced = crate::db::migrate::replaced_indexes_left(&mut conn)?;
    if !replaced.is_empty() {
        log::warn!(
            "jobs still has the indexes this version replaced ({}), which slow every \
             write: once every replica runs this version, run \
             `background-processing migrate --drop-replaced`",
            replaced.join(", ")
        );
    }
    Ok(())
}

/// The jobs consumers, the starter and the finisher. They count among the
/// consumers shutdown waits for: each holds `alive` until it ends, and the
/// batch writers end once the last consumer is gone and what it sent is
/// written.
fn spawn_consumers(
    parts: &Parts,
    signals: &StopSignals,
    jobs: Receiver<Job>,
    room_freed: Sender<()>,
    alive: Sender<()>,
) -> Vec<JoinHandle<()>> {
    let cfg = &parts.config;
    // The batch writers have sessions of their own that never wait for a
    // row lock: one locked row must not hold up a whole batch.
    let (finisher, finish) = Finisher::new(
        cfg.as_ref().into(),
        HeldConn::new(parts.db.dedicated_without_lock_waits()),
        Arc::clone(&parts.registry),
    );
    let (starter, start) = Starter::new(
        cfg.as_ref().into(),
        HeldConn::new(parts.db.dedicated_without_lock_waits()),
        Arc::clone(&parts.queues),
        finish.clone(),
    );
    let shared = Shared {
        tasks: parts.tasks.clone(),
        bucket: Arc::clone(&parts.bucket),
        registry: Arc::clone(&parts.registry),
        db: parts.db.clone(),
    };
    let mut handles: Vec<JoinHandle<()>> = (0..cfg.job_consumers)
        .map(|i| {
            let ch = Channels {
                jobs: jobs.clone(),
                room_freed: room_freed.clone(),
                stop_taking: signals.taking.clone(),
                starter: start.for_consumer(i),
                finisher: finish.clone(),
            };
            let consumer = Consumer::new(cfg.as_ref().into(), shared.clone(), ch);
            let alive = alive.clone();
            parts.watch.spawn(format!("consumer-jobs-{i}"), move || {
                let _alive = alive;
                consumer.run();
            })
        })
        .collect();
    drop((start, finish));
    // One starter: measured, a second one only adds statements (each commit
    // still waits for its own log flush on a busy server).
    let (stop, a) = (signals.taking.clone(), alive.clone());
    handles.push(parts.watch.spawn("starter".into(), move || {
        let _alive = a;
        starter.run(stop);
    }));
    let stop = signals.hard.clone();
    handles.push(parts.watch.spawn("completer".into(), move || {
        let _alive = alive;
        finisher.run(stop);
    }));
    handles
}

/// The canceller publisher and its consumers.
fn spawn_cancellers(parts: &Parts, signals: &StopSignals) -> Vec<JoinHandle<()>> {
    let cfg = &parts.config;
    let (cancel_tx, cancel_rx) = bounded(cfg.channel_capacity);
    let publisher = CancellerPublisher::new(cfg.as_ref().into(), parts.db.clone(), cancel_tx);
    let stop = signals.rest.clone();
    let mut handles = vec![
        parts
            .watch
            .spawn("publisher-canceller".into(), move || publisher.run(stop)),
    ];
    for i in 0..cfg.canceller_consumers {
        let canceller = Canceller::new(
            cfg.as_ref().into(),
            parts.db.clone(),
            Arc::clone(&parts.registry),
            Arc::clone(&parts.liveness),
        );
        let (rx, stop) = (cancel_rx.clone(), signals.rest.clone());
        handles.push(
            parts
                .watch
                .spawn(format!("consumer-canceller-{i}"), move || {
                    canceller.run(rx, stop)
                }),
        );
    }
    handles
}

/// The watcher, heartbeat, rescuer and (with a `RETENTION`) the pruner.
fn spawn_maintenance(
    parts: &Parts,
    signals: &StopSignals,
    heartbeat: Heartbeat,
) -> Vec<JoinHandle<()>> {
    let cfg = &parts.config;
    let watcher = Watcher::new(parts.db.clone(), Arc::clone(&parts.registry));
    let rescuer = Rescuer::new(
        cfg.as_ref().into(),
        parts.db.clone(),
        Arc::clone(&parts.liveness),
    );
    let spawn = |name: &str, f: Box<dyn FnOnce(Receiver<()>) + Send>| {
        let stop = signals.rest.clone();
        parts.watch.spawn(name.into(), move || f(stop))
    };
    let limits = LimitsLoop::new(
        cfg.as_ref().into(),
        parts.db.clone(),
        Arc::clone(&parts.queues),
    );
    let backlog = BacklogLoop::new(
        cfg.as_ref().into(),
        parts.db.clone(),
        Arc::clone(&parts.queues),
    );
    let scheduler = Scheduler::new(cfg.as_ref().into(), parts.db.clone());
    let mut handles = vec![
        spawn("watcher", Box::new(move |stop| watcher.run(stop))),
        spawn("heartbeat", Box::new(move |stop| heartbeat.run(stop))),
        spawn("rescuer", Box::new(move |stop| rescuer.run(stop))),
        spawn("limits", Box::new(move |stop| limits.run(stop))),
        spawn("backlog", Box::new(move |stop| backlog.run(stop))),
        spawn("scheduler", Box::new(move |stop| scheduler.run(stop))),
    ];
    if let Some(pruner_cfg) = PrunerConfig::from_config(cfg) {
        let pruner = Pruner::new(pruner_cfg, parts.db.clone());
        handles.push(spawn("pruner", Box::new(move |stop| pruner.run(stop))));
    }
    handles
}

/// Puts this replica's `QUEUED!` jobs back, retrying until `deadline`.
fn release_queued(parts: &Parts, deadline: Instant) -> u64 {
    let worker = &parts.config.worker_name;
    let released = Retry::new("putting back waiting jobs", parts.db.health())
        .until(deadline)
        .run(|| job_release_queued(&mut *parts.db.conn()?, worker));
    match released {
        Ok(n) => {
            parts.db.metrics().add(Counter::Released, n);
            n
        }
        Err(e) => {
            log::warn!("shutdown: could not put back waiting jobs before the deadline: {e}");
            0
        }
    }
}
