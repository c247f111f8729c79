//! What the dashboard reads. Every statement is an index range or bounded:
//! counts read index entries only, the throughput chart reads at most
//! [`THROUGHPUT_ROWS`] final rows of the last hour, and a page of jobs reads
//! at most [`JOBS_WINDOW`] rows by primary key, however large the table.

use mysql::{Row, Value, params};

use super::conn::Connection;
use super::error::DbResult;
use super::row::{col, first};

/// At most this many final rows feed the throughput chart.
pub const THROUGHPUT_ROWS: u64 = 100_000;

/// A page of jobs searches at most this many rows, newest first.
pub const JOBS_WINDOW: u64 = 20_000;

/// Jobs on one page.
pub const PAGE_SIZE: usize = 50;

/// How many jobs are in the statuses that have an index of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// New (status NULL), due now or later.
    pub new: u64,
    /// `QUEUED!`.
    pub queued: u64,
    /// `STARTED!`.
    pub started: u64,
}

/// Counts new, queued and running jobs from their indexes (the running
/// ones among the held rows).
pub fn live_counts(conn: &mut Connection) -> DbResult<LiveCounts> {
    let rows: Vec<(u64, u64, u64)> = conn.query_rows(
        format!(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE is_new = 1) AS new, \
             (SELECT COUNT(*) FROM jobs WHERE held_by IS NOT NULL) AS held, \
             (SELECT COUNT(*) FROM {}) AS started",
            super::claim::RUNNING_JOBS
        ),
        |mut row| {
            Ok((
                col(&mut row, "new")?,
                col(&mut row, "held")?,
                col(&mut row, "started")?,
            ))
        },
    )?;
    let (new, held, started) = rows.into_iter().next().unwrap_or_default();
    Ok(LiveCounts {
        new,
        queued: held.saturating_sub(started),
        started,
    })
}

/// Final jobs of one minute of the last hour, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minute {
    /// Minutes ago (0: the current one), 0 to 59.
    pub ago: u32,
    /// `DONE!`s.
    pub done: u64,
    /// `CANCELLED!`s.
    pub cancelled: u64,
    /// `FAILED!`s.
    pub failed: u64,
}

/// The last hour's final jobs per minute, from the newest
/// [`THROUGHPUT_ROWS`] of them; and whether that cap was reached.
pub fn throughput(conn: &mut Connection) -> DbResult<(Vec<Minute>, bool)> {
    let rows: Vec<(u32, String, u64)> = conn.query_rows(
        format!(
            "SELECT LEAST(59, FLOOR(TIMESTAMPDIFF(SECOND, final_at, NOW(6)) / 60)) AS ago, \
             status, COUNT(*) AS n FROM (SELECT final_at, status FROM jobs \
             FORCE INDEX (jobs_final_at) WHERE final_at >= NOW(6) - INTERVAL 1 HOUR \
             ORDER BY final_at DESC LIMIT {THROUGHPUT_ROWS}) recent GROUP BY ago, status"
        ),
        |mut row| {
            Ok((
                col::<i64>(&mut row, "ago")?.clamp(0, 59) as u32,
                col(&mut row, "status")?,
                col(&mut row, "n")?,
            ))
        },
    )?;
    let mut minutes: Vec<Minute> = (0..60)
        .map(|ago| Minute {
            ago,
            ..Minute::default()
        })
        .collect();
    let mut total = 0;
    for (ago, status, n) in rows {
        let m = &mut minutes[ago as usize];
        total += n;
        match status.as_str() {
            "DONE!" => m.done += n,
            "CANCELLED!" => m.cancelled += n,
            _ => m.failed += n,
        }
    }
    Ok((minutes, total >= THROUGHPUT_ROWS))
}

/// A live replica, as the overview shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Its name.
    pub name: String,
    /// Host and pid.
    pub host: String,
    /// Its pid.
    pub pid: u64,
    /// Its version.
    pub version: String,
    /// When it started.
    pub started_at: String,
    /// Seconds since its heartbeat.
    pub heartbeat_age: f64,
    /// The queues it serves.
    pub queues: String,
    /// The kinds it runs.
    pub kinds: String,
}

/// Every row of `workers` (one per replica: a small table).
pub fn workers(conn: &mut Connection) -> DbResult<Vec<WorkerRow>> {
    conn.query_rows(
        "SELECT name, host, pid, version, CAST(started_at AS CHAR) AS started_at, \
         TIMESTAMPDIFF(MICROSECOND, heartbeat_at, NOW(6)) AS age_us, queues, kinds \
         FROM workers ORDER BY name",
        |mut row| {
            Ok(WorkerRow {
                name: col(&mut row, "name")?,
                host: col(&mut row, "host")?,
                pid: col(&mut row, "pid")?,
                version: col(&mut row, "version")?,
                started_at: col(&mut row, "started_at")?,
                heartbeat_age: col::<i64>(&mut row, "age_us")? as f64 / 1e6,
                queues: col(&mut row, "queues")?,
                kinds: col(&mut row, "kinds")?,
            })
        },
    )
}

/// Which jobs a page lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// A status; `Some(None)`: new jobs (status NULL).
    pub status: Option<Option<String>>,
    /// A queue (a validated name).
    pub queue: Option<String>,
    /// A kind (a validated name).
    pub kind: Option<String>,
    /// An object id.
    pub object_id: Option<i64>,
    /// Only jobs older (smaller id) than this.
    pub before: Option<u64>,
}

/// One job in a list.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLine {
    /// The classic columns, as text (`NULL` for none).
    pub id: u64,
    /// `object_id`.
    pub object_id: Option<i64>,
    /// `sleep`.
    pub sleep: Option<i64>,
    /// `status` (`None`: new).
    pub status: Option<String>,
    /// `created_at`.
    pub created_at: Option<String>,
    /// `queued_at`.
    pub queued_at: Option<String>,
    /// `started_at`.
    pub started_at: Option<String>,
    /// `finished_at`.
    pub finished_at: Option<String>,
    /// `cancelled_at`.
    pub cancelled_at: Option<String>,
    /// `queue`.
    pub queue: String,
    /// `kind`.
    pub kind: String,
    /// `attempts`.
    pub attempts: u64,
    /// `error`, its first 200 characters.
    pub error: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobsPage {
    /// The jobs, newest first, at most [`PAGE_SIZE`].
    pub jobs: Vec<JobLine>,
    /// The `before` of the next page, if older jobs remain.
    pub next_before: Option<u64>,
    /// The range of ids this page searched (lowest, highest).
    pub searched: Option<(u64, u64)>,
}

/// The list's columns; timestamps to the millisecond (the job's page shows
/// them whole).
const LINE_COLUMNS: &str = "id, object_id, sleep, status, \
     LEFT(CAST(created_at AS CHAR), 23) AS created_at, \
     LEFT(CAST(queued_at AS CHAR), 23) AS queued_at, \
     LEFT(CAST(started_at AS CHAR), 23) AS started_at, \
     LEFT(CAST(finished_at AS CHAR), 23) AS finished_at, \
     LEFT(CAST(cancelled_at AS CHAR), 23) AS cancelled_at, \
     queue, kind, attempts, LEFT(error, 200) AS error";

/// A page of jobs matching `f`: the newest [`PAGE_SIZE`] among the
/// [`JOBS_WINDOW`] rows before `f.before`, by primary key.
pub fn jobs_page(conn: &mut Connection, f: &JobFilter) -> DbResult<JobsPage> {
    let before = f.before.unwrap_or(u64::MAX);
    let window: Vec<(Option<u64>, Option<u64>, u64)> = conn.exec_rows(
        format!(
            "SELECT MIN(id) AS lo, MAX(id) AS hi, COUNT(*) AS n FROM (SELECT id FROM jobs \
             WHERE id < :before ORDER BY id DESC LIMIT {JOBS_WINDOW}) w"
        ),
        params! { before },
        |mut row| {
            Ok((
                col(&mut row, "lo")?,
                col(&mut row, "hi")?,
                col(&mut row, "n")?,
            ))
        },
    )?;
    let Some((Some(lo), Some(hi), n)) = window.into_iter().next() else {
        return Ok(JobsPage::default());
    };
    let mut sql = format!("SELECT {LINE_COLUMNS} FROM jobs WHERE id >= :lo AND id <= :hi");
    let mut params: Vec<(String, Value)> = vec![("lo".into(), lo.into()), ("hi".into(), hi.into())];
    match &f.status {
        Some(None) => sql.push_str(" AND status IS NULL"),
        Some(Some(s)) => {
            sql.push_str(" AND status = :status");
            params.push(("status".into(), s.clone().into()));
        }
        None => {}
    }
    if let Some(q) = &f.queue {
        sql.push_str(" AND queue = :queue");
        params.push(("queue".into(), q.clone().into()));
    }
    if let Some(k) = &f.kind {
        sql.push_str(" AND kind = :kind");
        params.push(("kind".into(), k.clone().into()));
    }
    if let Some(o) = f.object_id {
        sql.push_str(" AND object_id = :object_id");
        params.push(("object_id".into(), o.into()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", PAGE_SIZE + 1));
    let params = mysql::Params::Named(
        params
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect(),
    );
    let mut jobs: Vec<JobLine> = conn.exec_rows(sql, params, |mut row| job_line(&mut row))?;
    let next_before = if jobs.len() > PAGE_SIZE {
        jobs.truncate(PAGE_SIZE);
        jobs.last().map(|j| j.id)
    } else if n >= JOBS_WINDOW && lo > 1 {
        // The window ended before the page filled: older rows remain.
        Some(lo)
    } else {
        None
    };
    Ok(JobsPage {
        jobs,
        next_before,
        searched: Some((lo, hi)),
    })
}

fn job_line(row: &mut Row) -> DbResult<JobLine> {
    Ok(JobLine {
        id: col(row, "id")?,
        object_id: col(row, "object_id")?,
        sleep: col(row, "sleep")?,
        status: col(row, "status")?,
        created_at: col(row, "created_at")?,
        queued_at: col(row, "queued_at")?,
        started_at: col(row, "started_at")?,
        finished_at: col(row, "finished_at")?,
        cancelled_at: col(row, "cancelled_at")?,
        queue: col(row, "queue")?,
        kind: col(row, "kind")?,
        attempts: col(row, "attempts")?,
        error: col(row, "error")?,
    })
}

/// A row's columns by name, as text (`None`: NULL), in the table's order.
pub type Columns = Vec<(String, Option<String>)>;

/// One job: every column.
pub fn job_detail(conn: &mut Connection, id: u64) -> DbResult<Option<Columns>> {
    let rows: Vec<Columns> =
        conn.exec_rows("SELECT * FROM jobs WHERE id = :id", params! { id }, |row| {
            let columns = row.columns();
            let values = row.unwrap();
            Ok(columns
                .iter()
                .zip(values)
                .map(|(c, v)| (c.name_str().to_string(), value_text(v)))
                .collect())
        })?;
    Ok(rows.into_iter().next())
}

/// A value as the dashboard shows it.
fn value_text(v: Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        Value::Date(y, mo, d, h, mi, s, us) => Some(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
        )),
        Value::Time(neg, d, h, mi, s, us) => Some(format!(
            "{}{}:{mi:02}:{s:02}.{us:06}",
            if neg { "-" } else { "" },
            u64::from(d) * 24 + u64::from(h)
        )),
    }
}

/// The ids of the jobs of `object_id`, newest first, at most 20 (for a
/// job's page; bounded by the jobs window).
pub fn jobs_of_object(conn: &mut Connection, object_id: i64, not: u64) -> DbResult<Vec<u64>> {
    conn.exec_rows(
        format!(
            "SELECT id FROM (SELECT id, object_id FROM jobs ORDER BY id DESC LIMIT {JOBS_WINDOW}) w \
             WHERE object_id = :object_id AND id <> :not ORDER BY id DESC LIMIT 20"
        ),
        params! { object_id, not },
        first,
    )
}
