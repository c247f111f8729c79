//! The start-up check that `SKIP LOCKED` really skips a locked row.
//!
//! Claims rely on it: some MySQL-compatible engines accept `FOR UPDATE SKIP
//! LOCKED` and take no lock, or wait for the lock instead of skipping, and
//! then two replicas would claim the same rows, or wait on each other. So
//! before it claims anything a replica checks on two sessions of its own:
//! one locks this replica's row in `workers` (registered a moment before),
//! the other reads that row `FOR UPDATE SKIP LOCKED` and must get nothing.
//!
//! The row is this replica's alone, so replicas starting at once never wait
//! for each other's check, and nothing is written (locking reads run on a
//! server that is read-only for a moment): two round trips per session,
//! then a rollback.

use super::conn::Connection;
use super::error::{DbError, DbResult};
use super::row::first;

/// What the second session saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipLocked {
    /// It skipped the locked row: claims work.
    Skips,
    /// It read the locked row: the first session's lock was not taken, or
    /// not honoured.
    ReadsLockedRows,
    /// It waited for the lock instead of skipping it (a lock wait timeout).
    Waits,
}

impl SkipLocked {
    /// The verdict on what the second session's read returned.
    pub fn from_read(read: &DbResult<Vec<String>>) -> DbResult<SkipLocked> {
        match read {
            Ok(rows) if rows.is_empty() => Ok(SkipLocked::Skips),
            Ok(_) => Ok(SkipLocked::ReadsLockedRows),
            // 1205: lock wait timeout, 3572 (MySQL) or 1969 (MariaDB): NOWAIT
            // or a statement timeout: it waited.
            Err(e) if matches!(e.code(), Some(1205 | 1969 | 3572)) => Ok(SkipLocked::Waits),
            Err(e) => Err(DbError::Schema(format!(
                "checking that SKIP LOCKED skips locked rows: {e}"
            ))),
        }
    }

    /// `Ok` when claims can rely on the server, or why not, naming it.
    pub fn verdict(&self, server_version: &str) -> Result<(), String> {
        let what = match self {
            SkipLocked::Skips => return Ok(()),
            SkipLocked::ReadsLockedRows => "reads a row another session has locked",
            SkipLocked::Waits => "waits for a row another session has locked",
        };
        Err(format!(
            "this server ({server_version}) accepts SELECT ... FOR UPDATE SKIP LOCKED but {what} \
             instead of skipping it: replicas would claim the same jobs. The service needs \
             MySQL 8.0+ or MariaDB 10.6+ with InnoDB"
        ))
    }
}

/// Checks on two sessions, `holder` and `reader`, that a row `holder` has
/// locked is skipped by `reader`'s `SKIP LOCKED` read. `worker` names this
/// replica's row in `workers`, which only it locks. Refuses (a fatal
/// [`DbError::Schema`]) where the server does not skip.
pub fn skip_locked_check(
    holder: &mut Connection,
    reader: &mut Connection,
    worker: &str,
) -> DbResult<()> {
    let version: String = holder
        .query_rows("SELECT VERSION()", first)?
        .into_iter()
        .next()
        .unwrap_or_default();
    holder.begin()?;
    let held = holder.exec_rows(
        "SELECT name FROM workers WHERE name = ? FOR UPDATE",
        (worker,),
        first::<String>,
    );
    let result = match held {
        Ok(rows) if rows.is_empty() => Err(DbError::Schema(format!(
            "checking that SKIP LOCKED skips locked rows: this replica's row in workers \
             ({worker}) is gone"
        ))),
        Ok(_) => {
            // Should the server wait instead of skipping, wait briefly.
            let wait: u64 = reader
                .query_rows("SELECT @@SESSION.innodb_lock_wait_timeout", first)?
                .into_iter()
                .next()
                .unwrap_or(5);
            reader.query_drop("SET SESSION innodb_lock_wait_timeout = 1")?;
            let read = reader.exec_rows(
                "SELECT name FROM workers WHERE name = ? FOR UPDATE SKIP LOCKED",
                (worker,),
                first::<String>,
            );
            let restored =
                reader.query_drop(format!("SET SESSION innodb_lock_wait_timeout = {wait}"));
            let verdict = SkipLocked::from_read(&read);
            restored.and(verdict)
        }
        Err(e) => Err(e),
    };
    holder.rollback();
    result?.verdict(&version).map_err(DbError::Schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::error::server;

    #[test]
    fn an_empty_read_is_a_skip() {
        let v = SkipLocked::from_read(&Ok(vec![])).unwrap();
        assert_eq!(v, SkipLocked::Skips);
        assert_eq!(v.verdict("10.11.6-MariaDB"), Ok(()));
    }

    #[test]
    fn a_server_that_reads_or_waits_is_refused_by_version() {
        let read = SkipLocked::from_read(&Ok(vec!["me".into()])).unwrap();
        let err = read.verdict("5.7.44-compatible").unwrap_err();
        assert!(err.contains("5.7.44-compatible"), "{err}");
        assert!(
            err.contains("reads a row another session has locked"),
            "{err}"
        );
        let waits = SkipLocked::from_read(&Err(server(1205))).unwrap();
        assert_eq!(waits, SkipLocked::Waits);
        assert!(waits.verdict("x").unwrap_err().contains("waits"));
        assert!(SkipLocked::from_read(&Err(server(1146))).is_err());
    }
}
