//! Statements on the `schedules` table: what the scheduler reads and
//! writes while firing, and what `schedules` lists.
//!
//! Times are the server's (`NOW(6)`, as every other column of the service
//! holds them); the scheduler converts them to UTC to evaluate cron
//! expressions, with the offset between `NOW(6)` and `UTC_TIMESTAMP(6)`
//! read in the same statement.

use chrono::NaiveDateTime;
use mysql::params;

use super::conn::Connection;
use super::error::DbResult;
use super::row::col;

/// The server's clocks and what the scheduler should look at.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleClock {
    /// `NOW(6)`: the time the service's columns are in.
    pub now: NaiveDateTime,
    /// `UTC_TIMESTAMP(6)`, read at the same instant.
    pub utc: NaiveDateTime,
    /// Enabled rows that need a look now: due within the lookahead, never
    /// seen, or edited since.
    pub attention: u64,
    /// The earliest `next_run_at` of the enabled rows.
    pub next_due: Option<NaiveDateTime>,
}

/// The rows that need a look: enabled, and due within `lookahead_us`, or
/// without a next fire time, or whose `cron` changed since it was computed.
fn attention_sql(lookahead_us: i64) -> String {
    format!(
        "enabled = 1 AND (next_run_at IS NULL OR next_run_at <= NOW(6) + INTERVAL {lookahead_us} \
         MICROSECOND OR NOT (cron <=> cron_seen))"
    )
}

/// Reads the clocks, how many rows need a look, and the next fire time: one
/// plain read (no lock, no transaction), which is all an idle scheduler
/// sends.
pub fn schedule_clock(conn: &mut Connection, lookahead_us: i64) -> DbResult<ScheduleClock> {
    let rows = conn.query_rows(
        format!(
            "SELECT NOW(6) AS now, UTC_TIMESTAMP(6) AS utc, \
             (SELECT COUNT(*) FROM schedules WHERE {}) AS attention, \
             (SELECT MIN(next_run_at) FROM schedules WHERE enabled = 1) AS next_due",
            attention_sql(lookahead_us)
        ),
        |mut row| {
            Ok(ScheduleClock {
                now: col(&mut row, "now")?,
                utc: col(&mut row, "utc")?,
                attention: col(&mut row, "attention")?,
                next_due: col(&mut row, "next_due")?,
            })
        },
    )?;
    rows.into_iter()
        .next()
        .ok_or_else(|| super::error::DbError::Row("the clock query returned no row".into()))
}

/// One schedule, as the scheduler reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Its name (primary key).
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// The fired jobs' kind.
    pub kind: String,
    /// The fired jobs' queue.
    pub queue: String,
    /// The fired jobs' payload (JSON text).
    pub payload: Option<String>,
    /// The fired jobs' sleep.
    pub sleep: Option<i64>,
    /// The fired jobs' priority.
    pub priority: i32,
    /// The next fire time (server time).
    pub next_run_at: Option<NaiveDateTime>,
    /// The expression `next_run_at` was computed from.
    pub cron_seen: Option<String>,
    /// The last fired job.
    pub last_job_id: Option<u64>,
    /// Its `error`.
    pub error: Option<String>,
}

/// Locks the rows that need a look (see [`schedule_clock`]), skipping those
/// another replica is firing right now; inside a transaction.
pub fn schedules_due_locked(conn: &mut Connection, lookahead_us: i64) -> DbResult<Vec<Schedule>> {
    conn.query_rows(
        format!(
            "SELECT name, cron, kind, queue, payload, sleep, priority, next_run_at, cron_seen, \
             last_job_id, error FROM schedules WHERE {} ORDER BY name FOR UPDATE SKIP LOCKED",
            attention_sql(lookahead_us)
        ),
        |mut row| {
            Ok(Schedule {
                name: col(&mut row, "name")?,
                cron: col(&mut row, "cron")?,
                kind: col(&mut row, "kind")?,
                queue: col(&mut row, "queue")?,
                payload: col(&mut row, "payload")?,
                sleep: col(&mut row, "sleep")?,
                priority: col(&mut row, "priority")?,
                next_run_at: col(&mut row, "next_run_at")?,
                cron_seen: col(&mut row, "cron_seen")?,
                last_job_id: col(&mut row, "last_job_id")?,
                error: col(&mut row, "error")?,
            })
        },
    )
}

/// Enqueues the job of one fire of `s`: its kind, queue, payload, sleep and
/// priority, `run_at` (NULL: now) and `unique_key`. Returns the new job's
/// id, or `None` if a job that is not final already holds the key (this
/// fire time was enqueued before).
pub fn schedule_enqueue(
    conn: &mut Connection,
    s: &Schedule,
    run_at: Option<NaiveDateTime>,
    unique_key: &str,
) -> DbResult<Option<u64>> {
    conn.exec_drop(
        "INSERT IGNORE INTO jobs (kind, queue, payload, sleep, priority, run_at, unique_key) \
         VALUES (:kind, :queue, :payload, :sleep, :priority, :run_at, :unique_key)",
        params! {
            "kind" => &s.kind,
            "queue" => &s.queue,
            "payload" => &s.payload,
            "sleep" => s.sleep,
            "priority" => s.priority,
            run_at,
            unique_key,
        },
    )?;
    Ok((conn.affected_rows() == 1).then(|| conn.last_insert_id()))
}

/// What a look at a schedule writes back.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleUpdate {
    /// The next fire time (server time); `None` when it never fires again.
    pub next_run_at: Option<NaiveDateTime>,
    /// The job this look enqueued (else the previous one stays).
    pub last_job_id: Option<u64>,
    /// The row's `error` from now on.
    pub error: Option<String>,
    /// `false`: the row is disabled.
    pub enabled: bool,
}

/// Writes `u` to the schedule `name`, and records that its next fire time
/// was computed from `cron`.
pub fn schedule_update(
    conn: &mut Connection,
    name: &str,
    cron: &str,
    u: &ScheduleUpdate,
) -> DbResult<()> {
    conn.exec_drop(
        "UPDATE schedules SET next_run_at = :next_run_at, \
         last_job_id = COALESCE(:last_job_id, last_job_id), error = :error, \
         enabled = :enabled, cron_seen = :cron WHERE name = :name",
        params! {
            "next_run_at" => u.next_run_at,
            "last_job_id" => u.last_job_id,
            "error" => &u.error,
            "enabled" => u.enabled as i32,
            cron,
            name,
        },
    )
}

/// One schedule, as `schedules` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleListing {
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// Its kind and queue.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Enabled.
    pub enabled: bool,
    /// The next fire time.
    pub next_run_at: Option<String>,
    /// The last fired job and its status in words: `new`, a status, or
    /// `deleted` (pruned).
    pub last_job: Option<(u64, String)>,
    /// Its `error`.
    pub error: Option<String>,
}

/// Every schedule with its last job's status.
pub fn schedule_list(conn: &mut Connection) -> DbResult<Vec<ScheduleListing>> {
    conn.query_rows(
        "SELECT s.name, s.cron, s.kind, s.queue, s.enabled, \
         CAST(s.next_run_at AS CHAR) AS next_run_at, s.last_job_id, \
         j.id AS job_id, j.status AS job_status, s.error \
         FROM schedules s LEFT JOIN jobs j ON j.id = s.last_job_id ORDER BY s.name",
        |mut row| {
            let last: Option<u64> = col(&mut row, "last_job_id")?;
            let found: Option<u64> = col(&mut row, "job_id")?;
            let status: Option<String> = col(&mut row, "job_status")?;
            Ok(ScheduleListing {
                name: col(&mut row, "name")?,
                cron: col(&mut row, "cron")?,
                kind: col(&mut row, "kind")?,
                queue: col(&mut row, "queue")?,
                enabled: col::<i64>(&mut row, "enabled")? != 0,
                next_run_at: col(&mut row, "next_run_at")?,
                last_job: last.map(|id| {
                    let shown = match (found, status) {
                        (None, _) => "deleted".to_string(),
                        (Some(_), None) => "new".to_string(),
                        (Some(_), Some(s)) => s,
                    };
                    (id, shown)
                }),
                error: col(&mut row, "error")?,
            })
        },
    )
}
