//! Consumers: fixed pools of threads, one pool per channel, and the two
//! batch writers the jobs pool shares.
//!
//! - [`jobs`]: the jobs pool, behind the replica's token bucket: checks,
//!   starts and runs each claimed job;
//! - [`starter`]: writes the `STARTED!` of every waiting consumer in one
//!   statement (each consumer waits for its own before its task begins);
//! - [`finisher`]: the one finish path, writing every run's outcome
//!   (`DONE!`s batched);
//! - [`outcome`]: what a task's result means (retry, fail, done);
//! - [`canceller`]: the canceller pool, writing `CANCELLED!` for dead runs.
//!
//! Both ends of each channel run independently: publishers never wait on
//! consumers and consumers never poll the database for work.

pub mod canceller;
pub mod finisher;
pub mod jobs;
pub mod outcome;
pub mod starter;
