//! A task kind of your own: `tally`.
//!
//! For the object named in the job's `object_id`, it counts that object's
//! jobs by final status and writes the counts into `object_tallies`, a table
//! this example creates. It shows the three ways a task ends: success, a
//! permanent error (no `object_id`: trying again will not help) and a
//! retryable one (the database said no, or was away: worth another try).
//!
//! ```sh
//! cargo run --example tally -- migrate
//! cargo run --example tally            # the service, running `sleep` and `tally`
//! # elsewhere:
//! mariadb -e "INSERT INTO jobs (object_id, kind) VALUES (10, 'tally')" background_processing
//! mariadb -e "SELECT * FROM object_tallies" background_processing
//! ```
//!
//! Everything else (environment variables, commands, threads, rate limit,
//! shutdown) is the same as the `background-processing` binary.

use std::process::ExitCode;

use background_processing::cancel::Cancellation;
use background_processing::runner::Runner;
use background_processing::task::{JobContext, Task, TaskError};
use mysql::params;
use mysql::prelude::Queryable;

/// Counts an object's jobs by final status into `object_tallies`.
struct Tally;

impl Task for Tally {
    fn validate(&self, job: &JobContext) -> Result<(), String> {
        match job.object_id {
            Some(_) => Ok(()),
            None => Err("tally needs an object_id".into()),
        }
    }

    fn run(&self, job: &JobContext, cancel: &Cancellation) -> Result<(), TaskError> {
        let object_id = job
            .object_id
            .ok_or_else(|| TaskError::Permanent("tally needs an object_id".into()))?;
        // Any database error here is worth another attempt (the row's
        // max_attempts, or MAX_ATTEMPTS, says how many).
        let retry = |e: &dyn std::fmt::Display| {
            TaskError::Retryable(format!("tallying object {object_id}: {e}"))
        };
        let mut conn = job.db.conn().map_err(|e| retry(&e))?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS object_tallies (object_id BIGINT PRIMARY KEY, \
             done BIGINT NOT NULL, cancelled BIGINT NOT NULL, failed BIGINT NOT NULL, \
             updated_at DATETIME(6) NOT NULL)",
        )
        .map_err(|e| retry(&e))?;
        // A long task checks its cancellation between steps and stops when
        // asked, so its thread is free for the next job.
        if cancel.check().is_some() {
            return Err(TaskError::Interrupted);
        }
        let counts: Option<(u64, u64, u64)> = conn
            .exec_first(
                "SELECT COALESCE(SUM(status = 'DONE!'), 0), COALESCE(SUM(status = 'CANCELLED!'), 0), \
                 COALESCE(SUM(status = 'FAILED!'), 0) FROM jobs WHERE object_id = :object_id",
                params! { object_id },
            )
            .map_err(|e| retry(&e))?;
        let (done, cancelled, failed) = counts.unwrap_or_default();
        conn.exec_drop(
            "INSERT INTO object_tallies (object_id, done, cancelled, failed, updated_at) \
             VALUES (:object_id, :done, :cancelled, :failed, NOW(6)) \
             ON DUPLICATE KEY UPDATE done = VALUES(done), cancelled = VALUES(cancelled), \
             failed = VALUES(failed), updated_at = VALUES(updated_at)",
            params! { object_id, done, cancelled, failed },
        )
        .map_err(|e| retry(&e))?;
        Ok(())
    }
}

fn main() -> ExitCode {
    Runner::new().register("tally", Tally).main()
}
