//! The database: an r2d2 pool of blocking `mysql` connections, and every SQL
//! statement the service sends.
//!
//! - [`conn`]: the [`Connection`] every statement runs on; [`pool`]: the
//!   pool, killing the sessions of broken connections, and waiting for the
//!   server at start-up;
//! - [`error`]: [`DbError`] and the one place MySQL errors are classified
//!   ([`ErrorKind`]: outage, transient, bad input, fatal);
//! - [`retry`]: the one backoff-and-retry helper, and [`health`]: one log
//!   line per outage instead of one per retry;
//! - [`row`]: reading rows by column name, never panicking on a row of the
//!   wrong shape;
//! - the statements, one function per statement, named noun first
//!   (`job_claim_many`, `job_cancel`, `worker_heartbeat`): the claim in
//!   [`claim`], one run's transitions in [`jobs`], everything an owner holds
//!   in [`owners`], the registry of replicas in [`workers`], `stats` in
//!   [`stats`], and the schema in [`migrate`];
//! - [`probe`]: the start-up check that `SKIP LOCKED` skips locked rows.
//!
//! Every transition of a job is conditional on the state it expects (status
//! and lease) and returns how many rows it changed, so a replica that no
//! longer owns a job cannot change its row.

pub mod browse;
pub mod claim;
pub mod conn;
pub mod error;
pub mod health;
pub mod jobs;
pub mod migrate;
pub mod owners;
pub mod pool;
pub mod probe;
pub mod queues;
pub mod retry;
pub mod row;
pub mod schedules;
pub mod stats;
pub mod steer;
pub mod workers;

pub use conn::Connection;
pub use error::{DbError, DbResult, ErrorKind};
pub use health::DbHealth;
pub use pool::{CHECKOUT_TIMEOUT, Db, DbConfig, HeldConn, PooledConn};
