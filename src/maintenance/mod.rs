//! The loops that keep the replica and the table healthy without feeding a
//! channel: each a small config with its defaults, a constructor taking the
//! handles it needs, a `run_once` that does one pass and returns what it did
//! (tests call it directly), and a `run` loop around it on its own ticker
//! ([`crate::runtime::tick`]) that never dies on a database error.
//!
//! - [`heartbeat`]: proves this replica alive in `workers`;
//! - [`rescuer`]: gives back the jobs of replicas whose heartbeat stopped;
//! - [`watcher`]: interrupts tasks whose run was cancelled or rescued
//!   elsewhere;
//! - [`pruner`]: deletes final rows older than `RETENTION`;
//! - [`limits`]: keeps the queues' limits current, and each replica's share;
//! - [`backlog`]: counts what waits in each queue, and what nobody serves;
//! - [`scheduler`]: enqueues the jobs of `schedules`, one per fire time;
//! - [`summary`]: logs what the replica did, once a minute.

pub mod backlog;
pub mod heartbeat;
pub mod limits;
pub mod pruner;
pub mod rescuer;
pub mod scheduler;
pub mod summary;
pub mod watcher;
