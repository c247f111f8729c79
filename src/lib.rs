//! background-processing: a background-jobs service whose only interface is
//! a MySQL table.
//!
//! Programs insert rows into `jobs`; the service claims them, runs them at a
//! controlled rate, writes back status and timestamps, and cancels the ones
//! that die. Many replicas may run against one database, which is the only
//! coordination point.
//!
//! # Design
//!
//! Synchronous and multi-threaded, no async runtime. Each duty has its own
//! thread, looping on a `crossbeam_channel::tick` ticker; the two
//! publishers feed bounded channels, each drained by a fixed pool of
//! consumers:
//!
//! | thread | module | duty |
//! |---|---|---|
//! | `publisher-jobs` | [`publisher::jobs`] | claims new rows (`QUEUED!`) into the bounded jobs channel |
//! | `consumer-jobs-N` | [`consumer::jobs`] | fixed pool behind a token bucket: checks, starts and runs each job |
//! | `starter` | [`consumer::starter`] | writes the `STARTED!` of every waiting consumer in one statement |
//! | `completer` | [`consumer::finisher`] | writes every run's outcome (`DONE!`s batched every few milliseconds) |
//! | `publisher-canceller` | [`publisher::canceller`] | finds jobs running past `JOB_TIMEOUT` |
//! | `consumer-canceller-N` | [`consumer::canceller`] | writes `CANCELLED!` and interrupts the task if it runs here |
//! | `watcher` | [`maintenance::watcher`] | interrupts tasks whose job was cancelled or rescued elsewhere |
//! | `heartbeat` | [`maintenance::heartbeat`] | keeps this replica's row in `workers` fresh |
//! | `rescuer` | [`maintenance::rescuer`] | gives back the jobs of replicas whose heartbeat stopped |
//! | `pruner` | [`maintenance::pruner`] | deletes final rows older than `RETENTION` |
//! | `summary` | [`maintenance::summary`] | logs what was done every minute |
//! | `http` | [`http`] | `/healthz`, `/readyz` and `/metrics` on `METRICS_ADDR` |
//!
//! A job's path: the publisher claims it (a [`job::Job`], whose
//! [`job::Run`] is the id and the claim's lease); a consumer takes it,
//! checks its input, takes a token, asks the starter to commit `STARTED!`
//! and waits for that, runs the task (a [`task::Task`] registered under the
//! row's `kind`, with a [`cancel::Cancellation`] the canceller, the watcher
//! or the shutdown deadline can trigger), and hands the outcome to the
//! finisher. Every write names the run it expects, so a replica that lost a
//! job cannot change its row.
//!
//! # The house
//!
//! Lower layers never import higher ones (`.ci/check-imports` checks it):
//!
//! 1. [`config`] (the one table of environment variables), [`job`],
//!    [`metrics`] (the one table of counters), [`bucket`], [`queues`] (what
//!    this replica knows of the queues' limits and backlog);
//! 2. [`db`]: the pool, every SQL statement, the one classification of
//!    MySQL errors and the one retry helper; [`cancel`]: interrupting tasks;
//! 3. [`task`]: task kinds; [`runtime`]: threads, tickers, channels,
//!    liveness and signals, knowing nothing of jobs;
//! 4. the loops: [`publisher`], [`consumer`], [`maintenance`]; and [`http`];
//! 5. [`service`]: builds each loop from its own small config and the
//!    handles it needs, starts them and drains them; [`dashboard`]: the web
//!    pages, a process of their own;
//! 6. [`cli`] and [`runner`]: the command line.
//!
//! # Shutdown order
//!
//! On the first SIGTERM/SIGINT ([`runtime::shutdown`]): the jobs publisher
//! stops claiming; consumers stop taking jobs; this replica's `QUEUED!` jobs
//! go back to new at once; running tasks get `SHUTDOWN_TIMEOUT` to finish,
//! then are interrupted and marked `CANCELLED!`; the other threads stop, the
//! replica's row is removed, and the process exits 0. See [`service`].

pub mod bucket;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dashboard;
pub mod db;
pub mod http;
pub mod job;
pub mod maintenance;
pub mod metrics;
pub mod publisher;
pub mod queues;
pub mod runner;
pub mod runtime;
pub mod service;
pub mod task;

pub use config::VERSION;
