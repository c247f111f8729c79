//! The two publishers: one thread each, looping on a `crossbeam_channel`
//! ticker and feeding a bounded channel that a fixed pool of consumers
//! drains ([`crate::consumer`]). Each has a `run_once` that does one pass and
//! returns what it did (tests call it directly), and a `run` loop around it
//! ([`crate::runtime::tick`]) that never dies on a database error.
//!
//! - [`jobs`]: claims new rows into the jobs channel;
//! - [`canceller`]: finds runs past their timeout for the canceller pool.

pub mod canceller;
pub mod jobs;
