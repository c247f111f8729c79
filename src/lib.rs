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
//! publisher thread looping on a `crossbeam_channel::tick` ticker:
//!
//! | thread | duty |
//! |---|---|
//! | `publisher-jobs` | claims new rows (`QUEUED!`) into the bounded jobs channel |
//! | `consumer-jobs-N` | fixed pool behind a token bucket: `STARTED!`, runs the task, `DONE!` |
//! | `starter` | writes the `STARTED!` of every consumer waiting (and of those started moments ago, if back within one write's time), in one statement |
//! | `completer` | writes `DONE!` in batches, every few milliseconds |
//! | `publisher-canceller` | finds jobs running past `JOB_TIMEOUT` |
//! | `consumer-canceller-N` | writes `CANCELLED!` and interrupts the task if it runs here |
//! | `watcher` | interrupts tasks whose job was cancelled or rescued elsewhere |
//! | `heartbeat` | keeps this replica's row in `workers` fresh |
//! | `rescuer` | gives back the jobs of replicas whose heartbeat stopped |
//! | `pruner` | deletes final rows older than `RETENTION` |
//! | `summary` | logs what was done every minute |
//! | `http` | `/healthz`, `/readyz` and `/metrics` on `METRICS_ADDR` ([`http`]) |
//!
//! What a job does is a [`task::Task`] registered under the row's `kind`;
//! [`runner::Runner`] runs the service with the kinds a program registers
//! (the binary registers `sleep`).
//!
//! All SQL lives in [`db`], one function per statement; every job
//! transition is conditional on the status and lease (fencing token) it
//! expects, so a replica that lost a job cannot change its row.
//!
//! # Shutdown order
//!
//! On the first SIGTERM/SIGINT ([`shutdown`]): the jobs publisher stops
//! claiming; consumers stop taking jobs; this replica's `QUEUED!` jobs go
//! back to new at once; running tasks get `SHUTDOWN_TIMEOUT` to finish, then
//! are interrupted and marked `CANCELLED!`; the other threads stop, the
//! replica's row is removed, and the process exits 0. See [`service`].

pub mod batch;
pub mod bucket;
pub mod cancel;
pub mod config;
pub mod consumer;
pub mod db;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod outage;
pub mod publisher;
pub mod runner;
pub mod service;
pub mod shutdown;
pub mod task;
pub mod watch;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
