//! The dashboard: web pages over the tables, served by `background-processing
//! dashboard` on `DASHBOARD_ADDR` (its own process; worker replicas serve no
//! UI), on the same small synchronous server as the health endpoints
//! ([`crate::runtime::http_server`]).
//!
//! - `/`: queues (depth, running, paused, limits), jobs by status,
//!   throughput over the last hour (an SVG drawn here), workers, schedules;
//! - `/jobs?status=&queue=&kind=&object_id=&before=`: jobs, newest first,
//!   50 a page, each page searching at most 20,000 rows by primary key;
//! - `/jobs/{id}`: every column and the errors of every attempt.
//!
//! Actions (cancel, retry, pause, resume, retry every failed job of a
//! filter) are POST forms that run the statements of [`crate::db::steer`],
//! the same the CLI runs; they need a session opened with `DASHBOARD_TOKEN`
//! and the session's `csrf` field ([`auth`]); without the token the
//! dashboard is read-only. Pages are `askama` templates, which escape every
//! value; a restrictive Content-Security-Policy lets a page load only this
//! server's stylesheet and script (which only reloads the page), and the
//! pages work without it. A database that does not answer shows a banner,
//! and the page reloads itself until it does.

pub mod auth;
pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;

use crate::config::{Config, is_name};
use crate::db::Db;
use crate::db::browse::{
    JOBS_WINDOW, JobFilter, THROUGHPUT_ROWS, job_detail, jobs_of_object, jobs_page, live_counts,
    throughput, workers,
};
use crate::db::error::DbError;
use crate::db::schedules::schedule_list;
use crate::db::steer::{
    FailedFilter, cancel_sql, job_failed_with_held_keys, job_holding_key, job_statuses, pause_sql,
    queue_rows, resume_sql, retry_failed_sql, retry_sql, steer,
};
use crate::maintenance::backlog::read_backlog;
use crate::runtime::http_server::{Handler, Limits, Request, Response, Server};
use auth::{Auth, COOKIE, Login};
use pages::*;

/// The Content-Security-Policy of every page: nothing from elsewhere, no
/// inline script or style, forms only to this server, no framing.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("../../static/style.css");
const SCRIPT: &str = include_str!("../../static/refresh.js");

/// What the dashboard reads of the configuration.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Where it listens (`DASHBOARD_ADDR`).
    pub addr: SocketAddr,
    /// What opens a session (`DASHBOARD_TOKEN`); `None`: read-only.
    pub token: Option<String>,
    /// A replica silent this long is shown as stale (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
}

impl From<&Config> for DashboardConfig {
    fn from(c: &Config) -> Self {
        DashboardConfig {
            addr: c.dashboard_addr,
            token: c.dashboard_token.clone(),
            dead_after: c.worker_dead_after,
        }
    }
}

/// The pages and actions, over one pool.
pub struct Dashboard {
    cfg: DashboardConfig,
    db: Db,
    auth: Auth,
}

/// Threads answering requests.
const WORKERS: usize = 4;

impl Dashboard {
    /// The dashboard of `db`.
    pub fn new(cfg: DashboardConfig, db: Db) -> Dashboard {
        let auth = Auth::new(cfg.token.clone());
        Dashboard { cfg, db, auth }
    }

    /// Serves it on `DASHBOARD_ADDR` until the server is stopped.
    pub fn serve(self) -> std::io::Result<Server> {
        let addr = self.cfg.addr;
        let limits = Limits {
            head: 16 * 1024,
            body: 16 * 1024,
            timeout: Duration::from_secs(10),
            workers: WORKERS,
        };
        let dashboard = Arc::new(self);
        let handler: Handler = Arc::new(move |req: &Request| dashboard.handle(req));
        Server::start("dashboard", addr, limits, handler)
    }

    /// Answers one request.
    pub fn handle(&self, req: &Request) -> Response {
        let path = req.path.as_str();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = matches!(req.method.as_str(), "GET" | "HEAD");
        let post = req.method == "POST";
        let response = match (get, post, segments.as_slice()) {
            (true, _, ["healthz"]) => Response::text(200, "ok\n"),
            (true, _, ["static", "style.css"]) => asset(STYLE, "text/css; charset=utf-8"),
            (true, _, ["static", "refresh.js"]) => asset(SCRIPT, "text/javascript; charset=utf-8"),
            (true, _, [""]) => self.overview(req),
            (true, _, ["jobs"]) => self.jobs(req),
            (true, _, ["jobs", id]) => match id.parse::<u64>() {
                Ok(id) => self.job(req, id),
                Err(_) => self.refuse(req, 404, "no such page: a job id is a whole number"),
            },
            (true, _, ["login"]) => self.login_page(req),
            (_, true, ["login"]) => self.login(req),
            (_, true, ["logout"]) => self.logout(req),
            (_, true, ["jobs", id, action @ ("cancel" | "retry")]) => match id.parse::<u64>() {
                Ok(id) => self.act(req, Act::Job(id, action == &"cancel")),
                Err(_) => self.refuse(req, 404, "no such job: a job id is a whole number"),
            },
            (_, true, ["jobs", "retry-failed"]) => self.act(req, Act::RetryFailed),
            (_, true, ["queues", name, action @ ("pause" | "resume")]) => {
                match decode(name).filter(|n| is_name(n)) {
                    Some(name) => self.act(req, Act::Queue(name, action == &"pause")),
                    None => self.refuse(req, 404, "no such queue name"),
                }
            }
            (false, false, _) => self
                .refuse(req, 405, "this dashboard answers GET, HEAD and POST only")
                .with_header("Allow", "GET, HEAD, POST"),
            (true, _, _) | (_, true, _) => self.refuse(req, 404, "no such page"),
        };
        secure(response)
    }

    fn session_id<'a>(&self, req: &'a Request) -> Option<&'a str> {
        cookie(req, COOKIE)
    }

    /// The common parts of a page for `req`.
    fn page(&self, req: &Request, title: &str) -> PageInfo {
        let mut page = PageInfo::new(title);
        page.auth_enabled = self.auth.enabled();
        if let Some(id) = self.session_id(req) {
            page.session = self.auth.csrf(id);
            if page.session.is_some() {
                page.flash = self.auth.take_flash(id);
            }
        }
        page
    }

    fn render(&self, status: u16, t: &impl Template) -> Response {
        match t.render() {
            Ok(html) => html_response(status, html),
            Err(e) => {
                log::error!("rendering a page: {e}");
                Response::text(500, "the page could not be rendered\n")
            }
        }
    }

    /// An error page with `status`.
    fn refuse(&self, req: &Request, status: u16, message: &str) -> Response {
        let page = ErrorPage {
            page: self.page(req, "Not possible"),
            status,
            reason: reason(status),
            message: message.to_string(),
        };
        self.render(status, &page)
    }

    /// The page shown while the database does not answer.
    fn outage(&self, req: &Request, e: &DbError) -> Response {
        let mut page = self.page(req, "Database unavailable");
        page.banner = Some(format!(
            "The database is not answering ({e}). This page reloads itself every 5 seconds."
        ));
        let page = ErrorPage {
            page,
            status: 503,
            reason: reason(503),
            message: "Waiting for the database; nothing is lost meanwhile.".into(),
        };
        self.render(503, &page)
    }

    fn overview(&self, req: &Request) -> Response {
        match self.read_overview(req) {
            Ok(page) => self.render(200, &page),
            Err(e) => self.outage(req, &e),
        }
    }

    fn read_overview(&self, req: &Request) -> Result<Overview, DbError> {
        let mut conn = self.db.conn()?;
        let counts = live_counts(&mut conn)?;
        let (minutes, capped) = throughput(&mut conn)?;
        let rows = queue_rows(&mut conn)?;
        let worker_rows = workers(&mut conn)?;
        let schedules = schedule_list(&mut conn)?;
        drop(conn);
        let backlog = read_backlog(&self.db, self.cfg.dead_after)?;
        let served: Vec<String> = worker_rows
            .iter()
            .flat_map(|w| w.queues.split(','))
            .filter(|q| !q.is_empty())
            .map(str::to_string)
            .collect();
        let (queues, unserved) = queue_views(&rows, &backlog, &served);
        let mut page = self.page(req, "Overview");
        page.refresh = true;
        Ok(Overview {
            page,
            counts,
            hour: hour_total(&minutes),
            chart: chart(&minutes, capped, THROUGHPUT_ROWS),
            queues,
            unserved,
            workers: worker_views(worker_rows, self.cfg.dead_after.as_secs_f64()),
            schedules: schedule_views(schedules),
        })
    }

    fn jobs(&self, req: &Request) -> Response {
        let (filter, view) = match parse_filter(&req.query) {
            Ok(f) => f,
            Err(why) => return self.refuse(req, 400, &why),
        };
        let page = match jobs_page(
            &mut *match self.db.conn() {
                Ok(c) => c,
                Err(e) => return self.outage(req, &e),
            },
            &filter,
        ) {
            Ok(p) => p,
            Err(e) => return self.outage(req, &e),
        };
        let searched = match page.searched {
            Some((lo, hi)) => {
                format!("Searched jobs {lo} to {hi} (at most {JOBS_WINDOW} a page, newest first).")
            }
            None => "No jobs.".into(),
        };
        let next = page.next_before.map(|before| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("status", &view.status),
                ("queue", &view.queue),
                ("kind", &view.kind),
                ("object_id", &view.object_id),
            ] {
                if !v.is_empty() {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("before", &before.to_string());
            format!("/jobs?{}", q.finish())
        });
        let list = JobsList {
            page: self.page(req, "Jobs"),
            statuses: status_options(&view.status),
            filter: view,
            jobs: page.jobs.into_iter().map(job_row).collect(),
            searched,
            next,
        };
        self.render(200, &list)
    }

    fn job(&self, req: &Request, id: u64) -> Response {
        let mut conn = match self.db.conn() {
            Ok(c) => c,
            Err(e) => return self.outage(req, &e),
        };
        let fields = match job_detail(&mut conn, id) {
            Ok(Some(f)) => f,
            Ok(None) => return self.refuse(req, 404, &format!("there is no job {id}")),
            Err(e) => return self.outage(req, &e),
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.clone())
        };
        let status = get("status");
        let object_id = get("object_id");
        let related = match object_id.as_deref().and_then(|o| o.parse::<i64>().ok()) {
            Some(o) => jobs_of_object(&mut conn, o, id).unwrap_or_default(),
            None => Vec::new(),
        };
        let errors: Vec<String> = get("errors")
            .map(|e| e.lines().map(str::to_string).collect())
            .unwrap_or_default();
        let page = JobPage {
            page: self.page(req, &format!("Job {id}")),
            id,
            status_class: status_class(status.as_deref()),
            can_cancel: matches!(status.as_deref(), None | Some("QUEUED!" | "STARTED!")),
            can_retry: matches!(status.as_deref(), Some("DONE!" | "CANCELLED!" | "FAILED!")),
            status: status.unwrap_or_else(|| "NULL".into()),
            fields: fields
                .into_iter()
                .map(|(name, value)| Field { name, value })
                .collect(),
            errors,
            object_id: object_id.unwrap_or_default(),
            related,
        };
        self.render(200, &page)
    }

    fn login_page(&self, req: &Request) -> Response {
        if !self.auth.enabled() {
            return self.refuse(
                req,
                404,
                "this dashboard is read-only: start it with DASHBOARD_TOKEN set to allow actions",
            );
        }
        self.render(
            200,
            &LoginPage {
                page: self.page(req, "Log in"),
            },
        )
    }

    fn login(&self, req: &Request) -> Response {
        let form = form(&req.body);
        let token = field(&form, "token").unwrap_or_default();
        match self.auth.login(token, req.peer.map(|p| p.ip())) {
            Login::Opened(id) => redirect("/").with_header(
                "Set-Cookie",
                format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
            ),
            Login::Refused => self.refuse(req, 403, "That token does not open a session."),
            Login::TooSoon(wait) => self
                .refuse(
                    req,
                    429,
                    &format!(
                        "Too many wrong tokens from this address: try again in {} s.",
                        wait.as_secs().max(1)
                    ),
                )
                .with_header("Retry-After", wait.as_secs().max(1).to_string()),
            Login::ReadOnly => self.refuse(req, 403, "This dashboard is read-only."),
            Login::Unavailable => self.refuse(req, 503, "No session could be opened; try again."),
        }
    }

    fn logout(&self, req: &Request) -> Response {
        let form = form(&req.body);
        if let Some(id) = self.session_id(req) {
            if self.auth.allows(Some(id), field(&form, "csrf")) {
                self.auth.logout(id);
            }
        }
        redirect("/").with_header(
            "Set-Cookie",
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )
    }

    /// Runs one action for a session whose form carries its csrf token.
    fn act(&self, req: &Request, act: Act) -> Response {
        let form = form(&req.body);
        let session = self.session_id(req);
        if !self.auth.enabled() {
            return self.refuse(req, 403, "This dashboard is read-only.");
        }
        if !self.auth.allows(session, field(&form, "csrf")) {
            return self.refuse(
                req,
                403,
                "Not allowed: log in first, and send the form from this dashboard's own pages.",
            );
        }
        let (said, back) = match self.run_act(&act, &form) {
            Ok(done) => done,
            Err(ActError::Bad(why)) => return self.refuse(req, 400, &why),
            Err(ActError::Db(e)) => return self.outage(req, &e),
        };
        log::info!("dashboard: {said}");
        if let Some(id) = session {
            self.auth.set_flash(id, said);
        }
        redirect(&back)
    }

    fn run_act(&self, act: &Act, form: &[(String, String)]) -> Result<(String, String), ActError> {
        let mut conn = self.db.conn()?;
        Ok(match act {
            Act::Job(id, cancel) => {
                let sql = if *cancel {
                    cancel_sql(&[*id])
                } else {
                    retry_sql(&[*id])
                };
                let changed = steer(&mut conn, &sql)?;
                let now = job_statuses(&mut conn, &[*id], false)?;
                let said = match (now.first(), changed) {
                    (None, _) => format!("job {id}: no such job"),
                    (Some(_), 1) if *cancel => format!("job {id}: cancel requested"),
                    (Some(_), 1) => format!("job {id}: new again, it will run once more"),
                    (Some(j), _) => {
                        let status = j.status.as_deref().unwrap_or("new");
                        let held = match (&j.unique_key, cancel) {
                            (Some(key), false) => job_holding_key(&mut conn, key)?
                                .map(|h| format!(" (job {h}, not final, holds its unique_key)")),
                            _ => None,
                        };
                        format!(
                            "job {id} is {status}: nothing changed{}",
                            held.unwrap_or_default()
                        )
                    }
                };
                (said, format!("/jobs/{id}"))
            }
            Act::Queue(name, pause) => {
                let sql = if *pause {
                    pause_sql(name)
                } else {
                    resume_sql(name)
                };
                let changed = steer(&mut conn, &sql)?;
                let said = match (pause, changed) {
                    (true, 0) => format!("queue {name} was paused already"),
                    (true, _) => format!("queue {name} paused: no replica claims from it"),
                    (false, 0) => format!("queue {name} was not paused"),
                    (false, _) => format!("queue {name} resumed"),
                };
                (said, "/".into())
            }
            Act::RetryFailed => {
                let name = |k: &str| -> Result<Option<String>, ActError> {
                    match field(form, k).filter(|v| !v.is_empty()) {
                        None => Ok(None),
                        Some(v) if is_name(v) => Ok(Some(v.to_string())),
                        Some(v) => Err(ActError::Bad(format!("{k} {v:?} is not a name"))),
                    }
                };
                let filter = FailedFilter {
                    queue: name("queue")?,
                    kind: name("kind")?,
                };
                let changed = steer(&mut conn, &retry_failed_sql(&filter))?;
                let held = job_failed_with_held_keys(&mut conn, &filter)?;
                let mut said = format!("{changed} failed jobs are new again");
                if held > 0 {
                    said.push_str(&format!(
                        "; {held} stay FAILED!: another job that is not final holds their unique_key"
                    ));
                }
                (said, "/jobs?status=FAILED%21".into())
            }
        })
    }
}

/// An action.
enum Act {
    /// Cancel (`true`) or retry a job.
    Job(u64, bool),
    /// Pause (`true`) or resume a queue.
    Queue(String, bool),
    /// Retry every failed job of the form's queue and kind.
    RetryFailed,
}

enum ActError {
    Bad(String),
    Db(DbError),
}

impl From<DbError> for ActError {
    fn from(e: DbError) -> Self {
        ActError::Db(e)
    }
}

/// The filter of `/jobs`, from its query string, and as the form shows it.
pub fn parse_filter(query: &str) -> Result<(JobFilter, FilterView), String> {
    let mut filter = JobFilter::default();
    let mut view = FilterView::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim().to_string();
        match k.as_ref() {
            "status" => {
                if !STATUS_FILTERS.iter().any(|(s, _)| *s == v) {
                    return Err(format!(
                        "unknown status {v:?}: one of NULL, QUEUED!, STARTED!, DONE!, \
                         CANCELLED!, FAILED!"
                    ));
                }
                filter.status = match v.as_str() {
                    "" => None,
                    "NULL" => Some(None),
                    s => Some(Some(s.to_string())),
                };
                view.status = v;
            }
            "queue" | "kind" if v.is_empty() => {}
            "queue" | "kind" if !is_name(&v) => {
                return Err(format!(
                    "{k} {v:?} is not a name (at most 64 letters, digits and . _ - : @)"
                ));
            }
            "queue" => {
                filter.queue = Some(v.clone());
                view.queue = v;
            }
            "kind" => {
                filter.kind = Some(v.clone());
                view.kind = v;
            }
            "object_id" if v.is_empty() => {}
            "object_id" => {
                filter.object_id = Some(
                    v.parse()
                        .map_err(|_| format!("object_id {v:?} is not a whole number"))?,
                );
                view.object_id = v;
            }
            "before" if v.is_empty() => {}
            "before" => {
                filter.before = Some(
                    v.parse()
                        .map_err(|_| format!("before {v:?} is not a job id"))?,
                );
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok((filter, view))
}

/// The pairs of an `application/x-www-form-urlencoded` body.
fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A percent-encoded path segment, decoded.
fn decode(segment: &str) -> Option<String> {
    let query = format!("x={}", segment.replace('+', "%2B"));
    form_urlencoded::parse(query.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// The value of cookie `name`.
fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn html_response(status: u16, html: String) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
        body: html.into_bytes(),
    }
}

fn asset(body: &str, content_type: &str) -> Response {
    Response {
        status: 200,
        headers: vec![
            ("Content-Type".into(), content_type.into()),
            ("Cache-Control".into(), "public, max-age=300".into()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

fn redirect(to: &str) -> Response {
    Response {
        status: 303,
        headers: vec![("Location".into(), to.into())],
        body: Vec::new(),
    }
}

/// The headers every answer carries.
fn secure(r: Response) -> Response {
    let cache = if r.headers.iter().any(|(n, _)| n == "Cache-Control") {
        None
    } else {
        Some("no-store")
    };
    let mut r = r
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("X-Frame-Options", "DENY")
        .with_header("Referrer-Policy", "no-referrer");
    if let Some(c) = cache {
        r = r.with_header("Cache-Control", c);
    }
    r
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    }
}
