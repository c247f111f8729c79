//! The dashboard in a real browser: the binary's `dashboard` command,
//! Debian's Chromium driven through `playwright-core` (`tests/browser/
//! driver.mjs`, one JSON command per line), and a replica of the binary
//! doing the work, against a real database. The browser only clicks and
//! reads; the test checks the table between its steps.

use crate::fleet::*;
use crate::http::{get, poll, proxied};
use crate::testdb::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

const TOKEN: &str = "dashboard-token-for-tests-0123";

/// Where the browser driver lives.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The Chromium the tests drive: `CHROMIUM`, or Debian's.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// One page as the driver reads it.
#[derive(Debug)]
struct Page {
    status: u64,
    url: String,
    text: String,
}

/// A headless Chromium under the driver.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: crossbeam_channel::Receiver<String>,
}

impl Browser {
    /// Starts Chromium; fails with what is missing if it cannot.
    fn start(javascript: bool) -> Browser {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "playwright-core is missing: run `npm ci` in {} (scripts/test does)",
            dir.display()
        );
        assert!(
            Path::new(&chromium()).exists(),
            "Chromium is missing at {}: install Debian's `chromium` (scripts/test does), or set \
             CHROMIUM",
            chromium()
        );
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .current_dir(&dir)
            .env("CHROMIUM", chromium())
            .env("JAVASCRIPT", if javascript { "on" } else { "off" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("node is missing or failed to start: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, answers) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            child,
            stdin,
            answers,
        }
    }

    fn call(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("writing to the browser driver");
        let line = self
            .answers
            .recv_timeout(secs(60))
            .unwrap_or_else(|e| panic!("the browser driver did not answer {cmd}: {e}"));
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the driver answered {line:?}: {e}"));
        if let Some(error) = answer.get("error") {
            panic!("the browser failed {cmd}: {error}");
        }
        answer
    }

    fn page(answer: Value) -> Page {
        Page {
            status: answer["status"].as_u64().unwrap_or(0),
            url: answer["url"].as_str().unwrap_or_default().to_string(),
            text: answer["text"].as_str().unwrap_or_default().to_string(),
        }
    }

    fn goto(&mut self, url: &str) -> Page {
        Browser::page(self.call(json!({"op": "goto", "url": url})))
    }

    fn click(&mut self, selector: &str) -> Page {
        Browser::page(self.call(json!({"op": "click", "selector": selector})))
    }

    fn text(&mut self) -> Page {
        Browser::page(self.call(json!({"op": "text"})))
    }

    fn fill(&mut self, selector: &str, value: &str) {
        self.call(json!({"op": "fill", "selector": selector, "value": value}));
    }

    fn html(&mut self, selector: &str) -> String {
        self.call(json!({"op": "html", "selector": selector}))["html"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn post(&mut self, url: &str, form: Value) -> (u64, String) {
        let a = self.call(json!({"op": "post", "url": url, "form": form}));
        (
            a["status"].as_u64().unwrap_or(0),
            a["text"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn dialogs(&mut self) -> Vec<Value> {
        self.call(json!({"op": "dialogs"}))["dialogs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.answers.recv_timeout(secs(10));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `background-processing dashboard` on a port of its own, and where it
/// listens.
fn dashboard(url: &str, token: Option<&str>) -> (Service, String) {
    let mut env = vec![
        ("DATABASE_URL", url),
        ("DASHBOARD_ADDR", "127.0.0.1:0"),
        ("WORKER_DEAD_AFTER", "1s"),
        ("HEARTBEAT_INTERVAL", "100ms"),
    ];
    if let Some(t) = token {
        env.push(("DASHBOARD_TOKEN", t));
    }
    let mut svc = Service::spawn(&["dashboard"], &env);
    let marker = "dashboard on http://";
    let addr = poll(secs(20), "the dashboard to log its address", || {
        if !svc.is_running() {
            panic!("the dashboard exited:\n{}", svc.logs());
        }
        svc.stderr()
            .lines()
            .find_map(|l| {
                let rest = &l[l.find(marker)? + marker.len()..];
                rest.split_whitespace().next().map(str::to_string)
            })
            .ok_or_else(|| svc.logs())
    });
    (svc, format!("http://{addr}"))
}

/// Sends `raw` (a whole request) to `base`'s server; the status it answers.
fn raw_status(base: &str, raw: &[u8]) -> u16 {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&addr, secs(5)).unwrap();
    stream.set_read_timeout(Some(secs(10))).unwrap();
    // A server may answer before reading all of a request it refuses.
    let _ = stream.write_all(raw);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {:?}", &answer[..answer.len().min(200)]))
}

fn insert(db: &TestDb, columns: &str, values: &str) -> u64 {
    let mut conn = db.conn();
    mysql::prelude::Queryable::query_drop(
        &mut conn,
        format!("INSERT INTO jobs ({columns}) VALUES ({values})"),
    )
    .unwrap();
    conn.last_insert_id()
}

/// The job of `id`'s row, shown on failure.
fn row(db: &TestDb, id: u64) -> String {
    render_jobs(&db.jobs_where(&format!("id = {id}")))
}

const XSS: &str = "<script>alert('xss')</script><img src=x onerror=alert('img')>";

#[test]
fn the_dashboard_shows_filters_and_steers_in_a_real_browser() {
    let _serial = serial();
    let db = TestDb::new("dashboard");
    // Jobs in every status: done, failed (bad input), cancelled (past its
    // timeout), one a client marked failed with markup in its error, one no
    // replica serves; then a long one running and one queued behind it.
    let done = insert(&db, "object_id, sleep", "1, 0");
    let failed = insert(&db, "object_id, sleep", "2, -1");
    let cancelled = insert(&db, "object_id, sleep, timeout", "3, NULL, 50");
    let marked = insert(
        &db,
        "object_id, sleep, status, finished_at, error",
        &format!("4, 0, 'FAILED!', NOW(6), '{}'", XSS.replace('\'', "''")),
    );
    let unserved = insert(&db, "object_id, sleep, queue", "5, 0, 'nobody'");
    let mut replica = Service::run(
        &db,
        &[
            ("WORKER_NAME", "worker-a"),
            ("RATE_LIMIT", "0"),
            ("JOB_CONSUMERS", "1"),
            ("CHANNEL_CAPACITY", "1"),
            ("QUEUES", "default,other"),
            ("JOB_TIMEOUT", "300s"),
        ],
    );
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "done, failed and cancelled jobs",
        |_| {
            db.job(done).status() == DONE
                && db.job(failed).status() == FAILED
                && db.job(cancelled).status() == CANCELLED
        },
        String::new,
    );
    let running = insert(&db, "object_id, sleep", &format!("6, {}", 120_000 * MS));
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "a job STARTED!",
        |_| db.job(running).status() == STARTED,
        String::new,
    );
    let queued = insert(&db, "object_id, sleep", "7, 0");
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "a job QUEUED!",
        |_| db.job(queued).status() == QUEUED,
        String::new,
    );

    let (mut dash, base) = dashboard(db.url(), Some(TOKEN));
    let mut b = Browser::start(true);

    // The overview: every status, the queues, the worker.
    let p = b.goto(&format!("{base}/"));
    assert_eq!(p.status, 200, "{p:?}");
    for part in [
        "QUEUED!",
        "STARTED!",
        "DONE! in the last hour",
        "FAILED! in the last hour",
        "worker-a",
        "nobody",
        "no live replica serves that queue",
    ] {
        assert!(
            p.text.contains(part),
            "no {part:?} on the overview:\n{}",
            p.text
        );
    }

    // Filter to failed jobs, with the form.
    b.goto(&format!("{base}/jobs"));
    b.call(json!({"op": "select", "selector": "select[name=status]", "value": "FAILED!"}));
    let p = b.click("form.filters button[type=submit]");
    assert!(
        p.url.contains("status=FAILED%21") || p.url.contains("status=FAILED!"),
        "{p:?}"
    );
    assert!(
        p.text.contains(&failed.to_string()) && p.text.contains(&marked.to_string()),
        "{}",
        p.text
    );
    assert!(
        !p.text.contains(&format!("\n{done}\t")),
        "a DONE! job among the failed:\n{}",
        p.text
    );
    // The markup in an error is text, never markup.
    assert!(p.text.contains(XSS), "the error shows as text:\n{}", p.text);
    let cell = b.html("table.jobs tbody");
    assert!(
        cell.contains("&lt;script&gt;") && !cell.contains("<script"),
        "{cell}"
    );

    // Actions need a session: refused without one, with a wrong token, and
    // without the csrf field.
    let (status, _) = b.post(&format!("{base}/jobs/{marked}/retry"), json!({}));
    assert_eq!(status, 403, "a POST without a session");
    b.goto(&format!("{base}/login"));
    b.fill("input[name=token]", "not-the-token-at-all");
    let p = b.click("form button[type=submit]");
    assert_eq!(p.status, 403, "{p:?}");
    assert!(
        p.text.contains("That token does not open a session."),
        "{}",
        p.text
    );
    b.goto(&format!("{base}/login"));
    b.fill("input[name=token]", TOKEN);
    let p = b.click("form button[type=submit]");
    assert!(p.text.contains("Log out"), "logged in: {}", p.text);
    let (status, _) = b.post(&format!("{base}/jobs/{marked}/retry"), json!({}));
    assert_eq!(status, 403, "a POST with the session but without csrf");
    let (status, _) = b.post(
        &format!("{base}/jobs/{marked}/retry"),
        json!({"csrf": "forged"}),
    );
    assert_eq!(status, 403, "a POST with a forged csrf");
    assert_eq!(
        db.job(marked).status(),
        FAILED,
        "nothing ran: {}",
        row(&db, marked)
    );

    // The long job holds the only consumer: cancel it from its page; the
    // queued one behind it runs then.
    let p = b.goto(&format!("{base}/jobs/{running}"));
    assert!(p.text.contains("STARTED!"), "{}", p.text);
    let p = b.click("form[action$='/cancel'] button");
    assert!(p.text.contains("cancel requested"), "{}", p.text);
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "the running job CANCELLED! on request",
        |_| db.job(running).status() == CANCELLED,
        || row(&db, running),
    );
    assert_eq!(
        db.job(running).error.as_deref(),
        Some("cancelled on request")
    );
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "the queued job DONE!",
        |_| db.job(queued).status() == DONE,
        || row(&db, queued),
    );

    // Open the failed job, retry it, and see it run.
    b.goto(&format!("{base}/jobs?status=FAILED!"));
    let p = b.click(&format!("a[href='/jobs/{marked}']"));
    assert!(
        p.text.contains(&format!("Job {marked}")) && p.text.contains(XSS),
        "{}",
        p.text
    );
    let p = b.click("form[action$='/retry'] button");
    assert!(p.text.contains("new again"), "{}", p.text);
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "the retried job DONE!",
        |_| db.job(marked).status() == DONE,
        || row(&db, marked),
    );
    let p = b.goto(&format!("{base}/jobs/{marked}"));
    assert!(p.text.contains("DONE!"), "{}", p.text);

    // Pause the default queue from the overview: claims of it stop.
    b.goto(&format!("{base}/"));
    let p = b.click("form[action='/queues/default/pause'] button");
    assert!(p.text.contains("queue default paused"), "{}", p.text);
    let held = insert(&db, "object_id, sleep", "8, 0");
    let other = insert(&db, "object_id, sleep, queue", "9, 0, 'other'");
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "the other queue's job DONE!",
        |_| db.job(other).status() == DONE,
        || row(&db, other),
    );
    assert_eq!(
        db.job(held).status,
        None,
        "the paused queue's job was claimed: {}",
        row(&db, held)
    );
    let p = b.goto(&format!("{base}/"));
    assert!(p.text.contains("paused"), "{}", p.text);
    b.click("form[action='/queues/default/resume'] button");
    wait_running(
        &db,
        &mut [&mut replica],
        secs(30),
        "the resumed queue's job DONE!",
        |_| db.job(held).status() == DONE,
        || row(&db, held),
    );
    assert!(b.dialogs().is_empty(), "a script ran from the table's text");

    // Bad input: a 4xx page, never a 500.
    for (path, status) in [
        ("/jobs/abc", 404),
        ("/jobs/99999999", 404),
        ("/jobs?status=bogus", 400),
        ("/jobs?object_id=ten", 400),
        ("/jobs?queue=a%20b", 400),
        ("/jobs?page=2", 400),
        ("/nowhere", 404),
    ] {
        let p = b.goto(&format!("{base}{path}"));
        assert_eq!(p.status, status, "{path}: {}", p.text);
    }
    let long = format!(
        "GET /jobs?status={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert_eq!(
        raw_status(&base, long.as_bytes()),
        431,
        "a 1 MB query string"
    );
    let big = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
        1 << 20,
        "a".repeat(1 << 20)
    );
    assert_eq!(raw_status(&base, big.as_bytes()), 413, "a 1 MB form");
    let answer = get(base.trim_start_matches("http://").parse().unwrap(), "/").unwrap();
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{}",
        answer.head
    );

    // Without JavaScript the pages and their forms work the same.
    let mut plain = Browser::start(false);
    let p = plain.goto(&format!("{base}/"));
    assert!(p.status == 200 && p.text.contains("worker-a"), "{p:?}");
    plain.goto(&format!("{base}/login"));
    plain.fill("input[name=token]", TOKEN);
    plain.click("form button[type=submit]");
    let p = plain.click("form[action='/queues/default/pause'] button");
    assert!(p.text.contains("queue default paused"), "{}", p.text);
    let p = plain.click("form[action='/queues/default/resume'] button");
    assert!(p.text.contains("queue default resumed"), "{}", p.text);
    drop(plain);

    drop(b);
    dash.sigterm();
    let out = dash.finish(secs(20));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    stop_all(vec![replica], secs(30));
    let _ = unserved;
}

#[test]
fn a_read_only_dashboard_refuses_actions_and_an_outage_shows_a_banner_until_it_ends() {
    let _serial = serial();
    let db = TestDb::new("dashboard_outage");
    let id = insert(
        &db,
        "object_id, sleep, status, finished_at",
        "1, 0, 'FAILED!', NOW(6)",
    );
    let (url, proxy) = proxied(db.url());
    let (mut dash, base) = dashboard(&url, None);
    let mut b = Browser::start(true);
    let p = b.goto(&format!("{base}/jobs/{id}"));
    assert_eq!(p.status, 200, "{p:?}");
    assert!(
        p.text.contains("read-only") && !p.text.contains("Retry"),
        "{}",
        p.text
    );
    let (status, _) = b.post(&format!("{base}/jobs/{id}/retry"), json!({"csrf": "x"}));
    assert_eq!(status, 403);
    let p = b.goto(&format!("{base}/login"));
    assert_eq!(p.status, 404, "{p:?}");

    proxy.cut();
    let p = b.goto(&format!("{base}/"));
    assert_eq!(p.status, 503, "{p:?}");
    assert!(
        p.text.contains("The database is not answering"),
        "{}",
        p.text
    );
    proxy.restore();
    // The page reloads itself and comes back.
    poll(secs(30), "the overview to come back by itself", || {
        let p = b.text();
        if p.status == 200 && p.text.contains("Queues") {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });
    drop(b);
    dash.sigterm();
    let out = dash.finish(secs(20));
    assert_eq!(out.code, Some(0), "{}", out.describe());
}
