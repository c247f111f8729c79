//! The dashboard's pages: what each shows, in the shape its template
//! (`templates/*.html`, compiled in by `askama`, every value HTML-escaped)
//! reads.

use askama::Template;

use crate::db::browse::{JobLine, LiveCounts, Minute, WorkerRow};
use crate::db::schedules::ScheduleListing;
use crate::db::steer::QueueRow;
use crate::queues::Backlog;

/// What every page has.
#[derive(Debug, Clone, Default)]
pub struct PageInfo {
    /// Its title.
    pub title: String,
    /// The database is not answering: why.
    pub banner: Option<String>,
    /// What the last action did.
    pub flash: Option<String>,
    /// The session's CSRF token, when one is open (forms are shown then).
    pub session: Option<String>,
    /// Whether `DASHBOARD_TOKEN` is set (a login link is shown then).
    pub auth_enabled: bool,
    /// Reloads itself every few seconds (with JavaScript on).
    pub refresh: bool,
    /// The service's version.
    pub version: &'static str,
}

impl PageInfo {
    /// A page titled `title`.
    pub fn new(title: &str) -> PageInfo {
        PageInfo {
            title: title.to_string(),
            version: crate::config::VERSION,
            ..PageInfo::default()
        }
    }
}

/// `/`.
#[derive(Template)]
#[template(path = "overview.html")]
pub struct Overview {
    /// Common parts.
    pub page: PageInfo,
    /// New, queued, running.
    pub counts: LiveCounts,
    /// Final jobs of the last hour, by status.
    pub hour: Minute,
    /// The chart.
    pub chart: Chart,
    /// The queues.
    pub queues: Vec<QueueView>,
    /// Jobs no live replica serves, in words.
    pub unserved: Vec<String>,
    /// The replicas.
    pub workers: Vec<WorkerView>,
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
}

/// A queue on the overview.
#[derive(Debug, Clone)]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// New jobs due now.
    pub waiting: u64,
    /// New jobs scheduled for later.
    pub scheduled: u64,
    /// Running now.
    pub running: u64,
    /// Paused.
    pub paused: bool,
    /// Its `rate_limit`, or `-`.
    pub rate_limit: String,
    /// Its `max_running`, or `-`.
    pub max_running: String,
    /// Age of its oldest waiting job, or `-`.
    pub oldest: String,
}

/// The queues: those with a row in `queues`, running jobs or new ones, and
/// those a replica serves (`served`).
pub fn queue_views(
    rows: &[QueueRow],
    backlog: &[Backlog],
    served: &[String],
) -> (Vec<QueueView>, Vec<String>) {
    let mut names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    names.extend(backlog.iter().map(|b| b.queue.clone()));
    names.extend(served.iter().cloned());
    names.sort();
    names.dedup();
    let views = names
        .into_iter()
        .map(|name| {
            let row = rows.iter().find(|r| r.name == name);
            let of: Vec<&Backlog> = backlog.iter().filter(|b| b.queue == name).collect();
            let oldest = of.iter().filter_map(|b| b.oldest).max();
            QueueView {
                waiting: of.iter().map(|b| b.waiting).sum(),
                scheduled: of.iter().map(|b| b.scheduled).sum(),
                running: row.map_or(0, |r| r.running),
                paused: row.is_some_and(|r| r.paused),
                rate_limit: row
                    .and_then(|r| r.rate_limit)
                    .map_or("-".into(), |r| format!("{r}/s")),
                max_running: row
                    .and_then(|r| r.max_running)
                    .map_or("-".into(), |m| m.to_string()),
                oldest: oldest.map_or("-".into(), |d| age(d.as_secs_f64())),
                name,
            }
        })
        .collect();
    let unserved = backlog
        .iter()
        .filter(|b| !b.served && b.waiting > 0)
        .map(|b| {
            format!(
                "{} jobs in queue {} of kind {} wait: no live replica serves that queue and runs \
                 that kind",
                b.waiting, b.queue, b.kind
            )
        })
        .collect();
    (views, unserved)
}

/// A duration in seconds, as a person reads it.
pub fn age(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m {}s", (secs / 60.0) as u64, secs as u64 % 60)
    } else if secs < 86400.0 {
        format!("{}h {}m", (secs / 3600.0) as u64, (secs as u64 % 3600) / 60)
    } else {
        format!(
            "{}d {}h",
            (secs / 86400.0) as u64,
            (secs as u64 % 86400) / 3600
        )
    }
}

/// A replica on the overview.
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Its name.
    pub name: String,
    /// Host.
    pub host: String,
    /// Pid.
    pub pid: u64,
    /// Version.
    pub version: String,
    /// Started at.
    pub started_at: String,
    /// Heartbeat age, in words.
    pub heartbeat: String,
    /// Its heartbeat is older than `WORKER_DEAD_AFTER`.
    pub stale: bool,
    /// Queues served.
    pub queues: String,
    /// Kinds run.
    pub kinds: String,
}

/// The replicas, with those silent longer than `dead_after_secs` marked.
pub fn worker_views(rows: Vec<WorkerRow>, dead_after_secs: f64) -> Vec<WorkerView> {
    rows.into_iter()
        .map(|w| WorkerView {
            heartbeat: format!("{} ago", age(w.heartbeat_age)),
            stale: w.heartbeat_age > dead_after_secs,
            name: w.name,
            host: w.host,
            pid: w.pid,
            version: w.version,
            started_at: w.started_at,
            queues: w.queues,
            kinds: w.kinds,
        })
        .collect()
}

/// A schedule on the overview.
#[derive(Debug, Clone)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// Its cron.
    pub cron: String,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Enabled.
    pub enabled: bool,
    /// Next fire time, or `-`.
    pub next: String,
    /// Last job and status, or `-`.
    pub last: String,
    /// Its error, or empty.
    pub error: String,
}

/// The schedules.
pub fn schedule_views(rows: Vec<ScheduleListing>) -> Vec<ScheduleView> {
    rows.into_iter()
        .map(|s| ScheduleView {
            next: s.next_run_at.unwrap_or_else(|| "-".into()),
            last: s
                .last_job
                .map_or("-".into(), |(id, status)| format!("{id} ({status})")),
            error: s.error.unwrap_or_default(),
            name: s.name,
            cron: s.cron,
            kind: s.kind,
            queue: s.queue,
            enabled: s.enabled,
        })
        .collect()
}

/// The throughput chart: one stacked bar per minute, oldest on the left.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Width of the drawing.
    pub width: u32,
    /// Height of the bars' area.
    pub height: u32,
    /// Height with the labels.
    pub view_height: u32,
    /// Where the labels sit.
    pub tick_y: u32,
    /// Width of a bar.
    pub bar_width: u32,
    /// The bars.
    pub bars: Vec<Bar>,
    /// The tallest minute.
    pub max: u64,
    /// The chart reads only the newest `cap` final jobs, and reached them.
    pub capped: bool,
    /// That cap.
    pub cap: u64,
}

/// One minute's bar: each status's segment as (top, height).
#[derive(Debug, Clone)]
pub struct Bar {
    /// Left edge.
    pub x: u32,
    /// `DONE!` segment top.
    pub done_y: f64,
    /// `DONE!` segment height.
    pub done_h: f64,
    /// `CANCELLED!` segment top.
    pub cancelled_y: f64,
    /// `CANCELLED!` segment height.
    pub cancelled_h: f64,
    /// `FAILED!` segment top.
    pub failed_y: f64,
    /// `FAILED!` segment height.
    pub failed_h: f64,
    /// Tooltip.
    pub title: String,
}

/// Draws `minutes` (0 = now).
pub fn chart(minutes: &[Minute], capped: bool, cap: u64) -> Chart {
    let (width, height, bar_width) = (720u32, 140u32, 10u32);
    let max = minutes
        .iter()
        .map(|m| m.done + m.cancelled + m.failed)
        .max()
        .unwrap_or(0);
    let scale = if max == 0 {
        0.0
    } else {
        f64::from(height) / max as f64
    };
    let bars = minutes
        .iter()
        .map(|m| {
            let x = (59 - m.ago.min(59)) * (width / 60);
            let (done_h, cancelled_h, failed_h) = (
                m.done as f64 * scale,
                m.cancelled as f64 * scale,
                m.failed as f64 * scale,
            );
            let done_y = f64::from(height) - done_h;
            let cancelled_y = done_y - cancelled_h;
            let failed_y = cancelled_y - failed_h;
            Bar {
                x,
                done_y,
                done_h,
                cancelled_y,
                cancelled_h,
                failed_y,
                failed_h,
                title: format!(
                    "{} min ago: {} DONE!, {} CANCELLED!, {} FAILED!",
                    m.ago, m.done, m.cancelled, m.failed
                ),
            }
        })
        .collect();
    Chart {
        width,
        height,
        view_height: height + 20,
        tick_y: height + 15,
        bar_width,
        bars,
        max,
        capped,
        cap,
    }
}

/// The sum of `minutes`.
pub fn hour_total(minutes: &[Minute]) -> Minute {
    minutes.iter().fold(Minute::default(), |mut t, m| {
        t.done += m.done;
        t.cancelled += m.cancelled;
        t.failed += m.failed;
        t
    })
}

/// `/jobs`.
#[derive(Template)]
#[template(path = "jobs.html")]
pub struct JobsList {
    /// Common parts.
    pub page: PageInfo,
    /// The filter, as the form shows it.
    pub filter: FilterView,
    /// The status choices.
    pub statuses: Vec<StatusOption>,
    /// The jobs.
    pub jobs: Vec<JobRow>,
    /// What was searched, in words.
    pub searched: String,
    /// The next page's link.
    pub next: Option<String>,
}

/// The filter's fields, as typed.
#[derive(Debug, Clone, Default)]
pub struct FilterView {
    /// `status` (`NULL` for new jobs, empty for any).
    pub status: String,
    /// `queue`.
    pub queue: String,
    /// `kind`.
    pub kind: String,
    /// `object_id`.
    pub object_id: String,
}

/// A choice of the status filter.
#[derive(Debug, Clone)]
pub struct StatusOption {
    /// The value sent.
    pub value: &'static str,
    /// What it says.
    pub label: &'static str,
    /// Chosen now.
    pub selected: bool,
}

/// The status filter's values: the statuses as the table spells them.
pub const STATUS_FILTERS: &[(&str, &str)] = &[
    ("", "any"),
    ("NULL", "NULL (new)"),
    ("QUEUED!", "QUEUED!"),
    ("STARTED!", "STARTED!"),
    ("DONE!", "DONE!"),
    ("CANCELLED!", "CANCELLED!"),
    ("FAILED!", "FAILED!"),
];

/// The choices, with `chosen` selected.
pub fn status_options(chosen: &str) -> Vec<StatusOption> {
    STATUS_FILTERS
        .iter()
        .map(|(value, label)| StatusOption {
            value,
            label,
            selected: *value == chosen,
        })
        .collect()
}

/// A job in the list, as text.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// `id`.
    pub id: u64,
    /// `object_id`.
    pub object_id: String,
    /// `sleep`.
    pub sleep: String,
    /// `status` (`NULL` for a new job).
    pub status: String,
    /// A CSS class for it.
    pub status_class: &'static str,
    /// `created_at`.
    pub created_at: String,
    /// `queued_at`.
    pub queued_at: String,
    /// `started_at`.
    pub started_at: String,
    /// `finished_at`.
    pub finished_at: String,
    /// `cancelled_at`.
    pub cancelled_at: String,
    /// `queue`.
    pub queue: String,
    /// `kind`.
    pub kind: String,
    /// `attempts`.
    pub attempts: u64,
    /// `error`, shortened.
    pub error: String,
}

fn or_null<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "NULL".into(), |v| v.to_string())
}

/// The CSS class of `status`.
pub fn status_class(status: Option<&str>) -> &'static str {
    match status {
        Some("DONE!") => "done",
        Some("CANCELLED!") => "cancelled",
        Some("FAILED!") => "failed",
        Some("STARTED!") => "started",
        _ => "",
    }
}

/// A listed job as text.
pub fn job_row(j: JobLine) -> JobRow {
    JobRow {
        id: j.id,
        object_id: or_null(&j.object_id),
        sleep: or_null(&j.sleep),
        status_class: status_class(j.status.as_deref()),
        status: or_null(&j.status),
        created_at: or_null(&j.created_at),
        queued_at: or_null(&j.queued_at),
        started_at: or_null(&j.started_at),
        finished_at: or_null(&j.finished_at),
        cancelled_at: or_null(&j.cancelled_at),
        queue: j.queue,
        kind: j.kind,
        attempts: j.attempts,
        error: j.error.unwrap_or_default(),
    }
}

/// `/jobs/{id}`.
#[derive(Template)]
#[template(path = "job.html")]
pub struct JobPage {
    /// Common parts.
    pub page: PageInfo,
    /// Its id.
    pub id: u64,
    /// Its status (`NULL` for new).
    pub status: String,
    /// Its CSS class.
    pub status_class: &'static str,
    /// A cancel applies.
    pub can_cancel: bool,
    /// A retry applies.
    pub can_retry: bool,
    /// Every column.
    pub fields: Vec<Field>,
    /// `errors`, one per attempt.
    pub errors: Vec<String>,
    /// Its `object_id`.
    pub object_id: String,
    /// Other jobs of that object.
    pub related: Vec<u64>,
}

/// One column of a job.
#[derive(Debug, Clone)]
pub struct Field {
    /// The column.
    pub name: String,
    /// Its value (`None`: NULL).
    pub value: Option<String>,
}

/// `/login`.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// Common parts.
    pub page: PageInfo,
}

/// Any refusal or failure.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Common parts.
    pub page: PageInfo,
    /// The HTTP status.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}
