//! Steering by SQL with the real binary: routing by queue and kind, pause
//! and resume, cancel, retry and the cluster-wide limits of the `queues`
//! table, each through the statement the README documents (run by the CLI,
//! or by the test itself), with several replicas on one table.
//!
//! Tests that start several processes and measure rates or latencies take
//! [`serial`].

use crate::audit::*;
use crate::fleet::*;
use crate::http::{get, http_addr};
use crate::testdb::*;
use mysql::prelude::Queryable;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A replica of `program` (the binary or the tally example) named `name`,
/// serving `queues`, with `extra` on top of [`replica`]'s settings.
fn start(
    program: &str,
    db: &TestDb,
    name: &'static str,
    queues: &'static str,
    extra: &[(&str, &str)],
) -> Service {
    let mut vars = replica(name, "4", "20", "120s");
    vars.push(("QUEUES", queues));
    let mut env = service_env(db.url(), &vars);
    for (k, v) in extra {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    Service::spawn_program(program, &["run"], &env)
}

/// Runs a CLI command against `db`; it must exit 0.
fn cli(db: &TestDb, args: &[&str]) -> String {
    let out = run_cmd(args, &[("DATABASE_URL", db.url())], secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    out.stdout
}

/// Inserts `n` jobs with `columns` = `values` each; returns their ids.
fn insert(db: &TestDb, n: usize, columns: &str, values: &str) -> Vec<u64> {
    let before: u64 = db.scalar("SELECT COALESCE(MAX(id), 0) FROM jobs");
    let rows = vec![format!("({values})"); n].join(",");
    db.exec(&format!("INSERT INTO jobs ({columns}) VALUES {rows}"));
    db.conn()
        .query(format!(
            "SELECT id FROM jobs WHERE id > {before} ORDER BY id"
        ))
        .unwrap()
}

fn ids(list: &[u64]) -> String {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn count_in(db: &TestDb, list: &[u64], cond: &str) -> u64 {
    db.count(&format!("id IN ({}) AND {cond}", ids(list)))
}

/// The worker row of `name`: its queues and kinds.
fn served(db: &TestDb, name: &str) -> Option<(String, String)> {
    db.conn()
        .exec_first("SELECT queues, kinds FROM workers WHERE name = ?", (name,))
        .unwrap()
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

#[test]
fn replicas_claim_only_the_queues_they_serve_and_the_kinds_they_run() {
    let _serial = serial();
    let db = TestDb::new("routing");
    let tally = insert(&db, 6, "object_id, kind", "10, 'tally'");
    let sleep = insert(&db, 20, "object_id, sleep", &format!("10, {}", 5 * MS));
    let mail = insert(&db, 3, "object_id, sleep, queue", "11, 0, 'mail'");

    // The plain binary runs only `sleep`: it takes the sleep jobs of its
    // queue and leaves the rest new.
    let mut plain = start(
        &bin(),
        &db,
        "plain",
        "default",
        &[("METRICS_ADDR", "127.0.0.1:0")],
    );
    let addr = http_addr(&mut plain);
    wait_running(
        &db,
        &mut [&mut plain],
        secs(30),
        "the sleep jobs DONE! by the plain replica",
        |_| count_in(&db, &sleep, "status = 'DONE!'") == 20,
        String::new,
    );
    assert_eq!(
        count_in(
            &db,
            &tally,
            "status IS NULL AND owner IS NULL AND error IS NULL"
        ),
        6,
        "a kind the replica does not run stays new: {}",
        counts(&db)
    );
    assert_eq!(count_in(&db, &mail, "status IS NULL"), 3, "{}", counts(&db));
    assert_eq!(
        served(&db, "plain"),
        Some(("default".into(), "sleep".into()))
    );

    // What no live replica takes is visible: the log, stats, queues and
    // /metrics say so.
    wait_running(
        &db,
        &mut [&mut plain],
        secs(30),
        "the log to name the jobs no replica serves",
        |s| {
            let log = s[0].stderr();
            log.contains("jobs wait for a queue or kind no live replica serves")
                && log.contains("6 in queue default of kind tally")
                && log.contains("3 in queue mail of kind sleep")
        },
        String::new,
    );
    let stats = cli(&db, &["stats"]);
    assert!(
        stats.contains("6 due, 0 later  (no live replica serves this queue and kind)")
            && stats.contains("queue mail"),
        "{stats}"
    );
    let queues = cli(&db, &["queues"]);
    assert!(
        queues.contains("6 jobs in queue default of kind tally wait for a replica")
            && queues.contains("3 jobs in queue mail of kind sleep wait for a replica"),
        "{queues}"
    );
    let body = get(addr, "/metrics").expect("GET /metrics").body;
    for line in [
        r#"background_processing_jobs_waiting{queue="default",kind="tally",served="false"} 6"#,
        r#"background_processing_jobs_waiting{queue="mail",kind="sleep",served="false"} 3"#,
    ] {
        assert!(body.contains(line), "no {line} in /metrics:\n{body}");
    }
    assert!(
        body.contains(r#"background_processing_oldest_waiting_seconds{queue="default",kind="tally",served="false"}"#),
        "{body}"
    );

    // The tally example runs both kinds: it takes the tally jobs.
    let mut tallier = start(&tally_bin(), &db, "tallier", "default", &[]);
    wait_running(
        &db,
        &mut [&mut plain, &mut tallier],
        secs(30),
        "the tally jobs DONE! by the tally replica",
        |_| count_in(&db, &tally, "status = 'DONE!' AND owner = 'tallier'") == 6,
        String::new,
    );
    assert_eq!(
        served(&db, "tallier"),
        Some(("default".into(), "sleep,tally".into()))
    );

    // A replica that serves `mail` takes its jobs.
    let mut mailer = start(&bin(), &db, "mailer", "mail,default", &[]);
    wait_running(
        &db,
        &mut [&mut plain, &mut tallier, &mut mailer],
        secs(30),
        "the mail jobs DONE! by the mail replica",
        |_| count_in(&db, &mail, "status = 'DONE!' AND owner = 'mailer'") == 3,
        String::new,
    );
    assert_eq!(db.count_status(FAILED), 0, "nothing failed for its kind");
    stop_all(vec![plain, tallier, mailer], secs(30));
    assert_clean_after_stop(&db);
}

// ---------------------------------------------------------------------------
// Pause and resume
// ---------------------------------------------------------------------------

#[test]
fn a_paused_queue_is_not_claimed_its_running_jobs_go_on_and_resume_takes_it_up() {
    let _serial = serial();
    let db = TestDb::new("pause");
    let mut svc = start(&bin(), &db, "w", "default,other", &[]);
    let long = insert(&db, 1, "object_id, sleep", &format!("1, {}", 1500 * MS))[0];
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the long job STARTED!",
        |_| db.job(long).status() == STARTED,
        String::new,
    );

    let out = cli(&db, &["pause", "default"]);
    assert!(out.contains("queue default paused"), "{out}");
    let out = cli(&db, &["pause", "default"]);
    assert!(
        out.contains("queue default was paused already: nothing changed"),
        "{out}"
    );
    let waiting = insert(&db, 5, "object_id, sleep", "2, 0");
    // A job of another queue, inserted after them, is claimed and done: the
    // claims that took it passed the paused queue's jobs by.
    let other = insert(&db, 1, "object_id, sleep, queue", "3, 0, 'other'")[0];
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the other queue's job DONE!",
        |_| db.job(other).status() == DONE,
        String::new,
    );
    assert_eq!(
        count_in(&db, &waiting, "status IS NULL"),
        5,
        "a paused queue's jobs stay new: {}",
        counts(&db)
    );
    let queues = cli(&db, &["queues"]);
    let line = queues
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("no default line:\n{queues}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[1..6],
        ["5", "0", "1", "yes", "-"],
        "waiting, scheduled, running, paused, rate_limit:\n{queues}"
    );
    // The job that ran when the queue was paused finishes.
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the long job DONE!",
        |_| db.job(long).status() == DONE,
        String::new,
    );

    let sql = cli(&db, &["resume", "default", "--sql"]);
    assert_eq!(
        sql.trim(),
        "UPDATE queues SET paused = 0 WHERE name = 'default' AND paused = 1;"
    );
    assert_eq!(
        count_in(&db, &waiting, "status IS NULL"),
        5,
        "--sql runs nothing"
    );
    let out = cli(&db, &["resume", "default"]);
    assert!(out.contains("queue default resumed"), "{out}");
    let resumed_at = Instant::now();
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the resumed queue's jobs DONE!",
        |_| count_in(&db, &waiting, "status = 'DONE!'") == 5,
        String::new,
    );
    eprintln!(
        "resume to all 5 done: {:?} (JOBS_POLL_INTERVAL 100ms)",
        resumed_at.elapsed()
    );
    let out = cli(&db, &["resume", "default"]);
    assert!(
        out.contains("queue default was not paused: nothing changed"),
        "{out}"
    );
    stop_all(vec![svc], secs(30));
}

#[test]
fn steering_commands_check_their_arguments_and_print_their_statements() {
    let db = TestDb::new("steer_cli");
    let env = [("DATABASE_URL", db.url())];
    for (args, says) in [
        (vec!["cancel"], "cancel needs at least one job id"),
        (vec!["cancel", "12", "x"], "\"x\" is not a job id"),
        (vec!["retry", "0"], "\"0\" is not a job id"),
        (vec!["pause"], "pause takes one queue name"),
        (vec!["pause", "a b"], "\"a b\" is not a queue name"),
        (vec!["resume", "q1", "q2"], "resume takes one queue name"),
        (
            vec!["retry", "--failed", "--queue"],
            "--queue needs a queue or kind name",
        ),
        (vec!["retry", "--failed", "--all"], "not \"--all\""),
    ] {
        let out = run_cmd(&args, &env, secs(30));
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(out.stderr.contains(says), "{}", out.describe());
    }
    for (args, sql) in [
        (
            vec!["cancel", "42", "7", "--sql"],
            "UPDATE jobs SET cancel_requested_at = NOW(6) WHERE id IN (7,42) \
             AND (status IS NULL OR status IN ('QUEUED!', 'STARTED!'));",
        ),
        (
            vec!["retry", "--sql", "42"],
            "UPDATE IGNORE jobs SET status = NULL, run_at = NULL WHERE id IN (42) \
             AND status IN ('FAILED!', 'CANCELLED!', 'DONE!');",
        ),
        (
            vec![
                "retry", "--failed", "--queue", "mail", "--kind", "tally", "--sql",
            ],
            "UPDATE IGNORE jobs SET status = NULL, run_at = NULL WHERE final_at IS NOT NULL \
             AND status = 'FAILED!' AND queue = 'mail' AND kind = 'tally';",
        ),
        (
            vec!["pause", "mail", "--sql"],
            "INSERT INTO queues (name, paused) VALUES ('mail', 1) \
             ON DUPLICATE KEY UPDATE paused = 1;",
        ),
    ] {
        let out = run_cmd(&args, &env, secs(30));
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_eq!(out.stdout.trim(), sql, "{}", out.describe());
    }
    assert_eq!(db.count("1"), 0);
    let paused: u64 = db.scalar("SELECT COUNT(*) FROM queues");
    assert_eq!(paused, 0, "--sql ran nothing");
}

// ---------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------

/// `(cancel_requested_at → finished_at in ms, error)` of a cancelled job.
fn cancel_latency(db: &TestDb, id: u64) -> (i64, Option<String>) {
    db.conn()
        .exec_first(
            "SELECT TIMESTAMPDIFF(MICROSECOND, cancel_requested_at, finished_at) DIV 1000, error \
             FROM jobs WHERE id = ?",
            (id,),
        )
        .unwrap()
        .unwrap()
}

#[test]
fn cancel_stops_new_queued_and_running_jobs_on_any_replica() {
    let _serial = serial();
    let db = TestDb::new("cancel");
    install_audit(&db);
    // One consumer and a channel of one each: a long job running and one
    // waiting behind it in the channel. The canceller polls at its default
    // pace: the watcher is what interrupts a running job within a second.
    let one = [
        ("JOB_CONSUMERS", "1"),
        ("CHANNEL_CAPACITY", "1"),
        ("CANCELLER_POLL_INTERVAL", "2s"),
    ];
    let done = insert(&db, 1, "object_id, sleep", "1, 0")[0];
    let mut a = start(&bin(), &db, "a", "default", &one);
    wait_running(
        &db,
        &mut [&mut a],
        secs(20),
        "a job DONE!",
        |_| db.job(done).status() == DONE,
        String::new,
    );
    let long = format!("2, {}", 60_000 * MS);
    let running_a = insert(&db, 1, "object_id, sleep", &long)[0];
    wait_running(
        &db,
        &mut [&mut a],
        secs(20),
        "a long job STARTED! on a",
        |_| db.job(running_a).status() == STARTED,
        String::new,
    );
    let queued = insert(&db, 1, "object_id, sleep", "3, 0")[0];
    wait_running(
        &db,
        &mut [&mut a],
        secs(20),
        "a job QUEUED! behind it",
        |_| db.job(queued).status() == QUEUED,
        String::new,
    );
    let mut b = start(&bin(), &db, "b", "default", &one);
    let running_b = insert(&db, 1, "object_id, sleep", &long)[0];
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(20),
        "a long job STARTED! on b",
        |_| db.job(running_b).status() == STARTED,
        String::new,
    );
    assert_eq!(owned(&db, "a", STARTED), 1, "{}", counts(&db));
    assert_eq!(owned(&db, "b", STARTED), 1, "{}", counts(&db));
    // A job no replica serves, and jobs that wait for the threads.
    let new = insert(&db, 1, "object_id, sleep, queue", "4, 0, 'nobody'")[0];
    let followers = insert(&db, 4, "object_id, sleep", "5, 0");

    let out = cli(
        &db,
        &[
            "cancel",
            &running_a.to_string(),
            &running_b.to_string(),
            &queued.to_string(),
            &new.to_string(),
            &done.to_string(),
            "999999",
        ],
    );
    for line in [
        "4 of 6 jobs changed".to_string(),
        format!("job {running_a}: cancel requested (was STARTED!)"),
        format!("job {running_b}: cancel requested (was STARTED!)"),
        format!("job {queued}: cancel requested (was QUEUED!)"),
        format!("job {new}: cancel requested (was new)"),
        format!(
            "job {done}: DONE!, nothing changed (only a new, queued or running job can be \
             cancelled)"
        ),
        "job 999999: no such job".to_string(),
    ] {
        assert!(out.contains(&line), "no {line:?} in:\n{out}");
    }
    let cancelled = [running_a, running_b, queued, new];
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(20),
        "the four jobs CANCELLED! and the followers DONE!",
        |_| {
            count_in(&db, &cancelled, "status = 'CANCELLED!'") == 4
                && count_in(&db, &followers, "status = 'DONE!'") == 4
        },
        String::new,
    );
    for id in cancelled {
        let job = db.job(id);
        assert_eq!(
            job.error.as_deref(),
            Some("cancelled on request"),
            "{job:?}"
        );
        assert!(
            job.cancelled_at.is_some() && job.finished_at.is_some(),
            "{job:?}"
        );
        job.assert_timestamps_ordered();
    }
    for id in [queued, new] {
        assert_eq!(db.job(id).started_at, None, "job {id} never started");
    }
    let h = assert_audit_sound(&db);
    for id in [queued, new] {
        assert!(starts(&h, id).is_empty(), "{}", render_history(id, &h[&id]));
    }
    for id in [running_a, running_b] {
        let (ms, _) = cancel_latency(&db, id);
        eprintln!("job {id}: cancel requested to its thread free: {ms} ms");
        // The task would have run 60 s more.
        assert!(
            ms < 10_000,
            "job {id}: {ms} ms from the request to CANCELLED!"
        );
    }
    let out = cli(&db, &["cancel", &running_a.to_string()]);
    assert!(
        out.contains("0 of 1 jobs changed") && out.contains("CANCELLED!, nothing changed"),
        "{out}"
    );
    stop_all(vec![a, b], secs(30));
    assert_clean_after_stop(&db);
}

// ---------------------------------------------------------------------------
// Retry
// ---------------------------------------------------------------------------

/// A start as `start_log` recorded it: job, attempts, and the row's
/// `finished_at`, `cancelled_at`, `error` and `cancel_requested_at` then.
type StartLogged = (
    u64,
    u32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Records, at every start, what the row's previous run left in it.
fn install_start_log(db: &TestDb) {
    db.exec(
        "CREATE TABLE start_log (seq BIGINT AUTO_INCREMENT PRIMARY KEY, job_id BIGINT, \
         attempts INT, finished_at DATETIME(6) NULL, cancelled_at DATETIME(6) NULL, \
         error TEXT NULL, cancel_requested_at DATETIME(6) NULL)",
    );
    db.exec(
        "CREATE TRIGGER jobs_start_log AFTER UPDATE ON jobs FOR EACH ROW
         BEGIN
           IF NEW.status = 'STARTED!' AND NOT (OLD.status <=> 'STARTED!') THEN
             INSERT INTO start_log (job_id, attempts, finished_at, cancelled_at, error,
                                    cancel_requested_at)
             VALUES (NEW.id, NEW.attempts, NEW.finished_at, NEW.cancelled_at, NEW.error,
                     NEW.cancel_requested_at);
           END IF;
         END",
    );
}

#[test]
fn retry_runs_a_final_job_once_more_whatever_its_attempts() {
    let _serial = serial();
    let db = TestDb::new("retry");
    install_start_log(&db);
    // tally fails (retryably) while its table lacks the columns it writes.
    db.exec("CREATE TABLE object_tallies (object_id BIGINT PRIMARY KEY)");
    let failing = insert(&db, 3, "object_id, kind, max_attempts", "10, 'tally', 2");
    let done = insert(&db, 1, "object_id, sleep", "11, 0")[0];
    let cancelled = insert(&db, 1, "object_id, sleep", &format!("12, {}", 1500 * MS))[0];
    let mut svc = start(
        &tally_bin(),
        &db,
        "t",
        "default",
        &[("RETRY_BACKOFF", "10ms")],
    );
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "the long job STARTED!",
        |_| db.job(cancelled).status() == STARTED,
        String::new,
    );
    cli(&db, &["cancel", &cancelled.to_string()]);
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "tally jobs FAILED! after 2 attempts, one DONE!, one CANCELLED!",
        |_| {
            count_in(&db, &failing, "status = 'FAILED!' AND attempts = 2") == 3
                && db.job(done).status() == DONE
                && db.job(cancelled).status() == CANCELLED
        },
        String::new,
    );
    let errors: String = db.scalar(&format!(
        "SELECT errors FROM jobs WHERE id = {}",
        failing[0]
    ));
    assert_eq!(errors.lines().count(), 2, "{errors}");
    db.exec("DROP TABLE object_tallies");

    let new = insert(&db, 1, "object_id, sleep, queue", "13, 0, 'nobody'")[0];
    let out = cli(
        &db,
        &[
            "retry",
            &failing[0].to_string(),
            &done.to_string(),
            &cancelled.to_string(),
            &new.to_string(),
        ],
    );
    for line in [
        "3 of 4 jobs changed".to_string(),
        format!("job {}: new again (was FAILED!)", failing[0]),
        format!("job {done}: new again (was DONE!)"),
        format!("job {cancelled}: new again (was CANCELLED!)"),
        format!(
            "job {new}: new, nothing changed (only a FAILED!, CANCELLED! or DONE! job can run \
             again)"
        ),
    ] {
        assert!(out.contains(&line), "no {line:?} in:\n{out}");
    }
    let out = cli(
        &db,
        &["retry", "--failed", "--kind", "tally", "--queue", "other"],
    );
    assert!(out.contains("0 failed jobs are new again"), "{out}");
    let out = cli(&db, &["retry", "--failed", "--kind", "tally"]);
    assert!(out.contains("2 failed jobs are new again"), "{out}");
    let rerun = [failing.clone(), vec![done, cancelled]].concat();
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "every retried job DONE!",
        |_| count_in(&db, &rerun, "status = 'DONE!'") == 5,
        String::new,
    );
    assert_eq!(db.job(new).status, None, "{}", counts(&db));
    for id in &failing {
        let (attempts, error, errors): (u32, Option<String>, String) = db
            .conn()
            .exec_first(
                "SELECT attempts, error, errors FROM jobs WHERE id = ?",
                (id,),
            )
            .unwrap()
            .unwrap();
        assert_eq!(attempts, 3, "a manual retry grants an attempt");
        assert_eq!(error, None);
        assert_eq!(
            errors.lines().count(),
            2,
            "errors keeps the history: {errors}"
        );
    }
    // Every start after the first found the previous run's traces cleared.
    let starts: Vec<StartLogged> = db
        .conn()
        .query(
            "SELECT job_id, attempts, CAST(finished_at AS CHAR), CAST(cancelled_at AS CHAR), \
             error, CAST(cancel_requested_at AS CHAR) FROM start_log ORDER BY seq",
        )
        .unwrap();
    for id in &rerun {
        let mine: Vec<_> = starts.iter().filter(|s| s.0 == *id).collect();
        let expected = if failing.contains(id) { 3 } else { 2 };
        assert_eq!(mine.len(), expected, "starts of job {id}: {mine:?}");
        let last = mine.last().unwrap();
        assert_eq!(
            (&last.2, &last.3, &last.4, &last.5),
            (&None, &None, &None, &None),
            "job {id} started again with its previous run's fields: {last:?}"
        );
    }
    stop_all(vec![svc], secs(30));
}

// ---------------------------------------------------------------------------
// Cluster-wide limits
// ---------------------------------------------------------------------------

/// Starts per second of the jobs started in the `secs` after the database
/// time `from`.
fn start_rate(db: &TestDb, from: &str, secs: f64) -> f64 {
    let n: u64 = db
        .conn()
        .exec_first(
            "SELECT COUNT(*) FROM jobs WHERE started_at >= ? \
             AND started_at < ? + INTERVAL ? MICROSECOND",
            (from, from, (secs * 1e6) as i64),
        )
        .unwrap()
        .unwrap();
    n as f64 / secs
}

/// Waits `d` of database time (the rate windows are read in it), failing
/// at once if a replica exits.
fn wait_db_time(db: &TestDb, services: &mut [&mut Service], from: &str, d: Duration) {
    let micros = d.as_micros() as i64;
    wait_running(
        db,
        services,
        d + secs(30),
        &format!("{d:?} after {from}"),
        |_| {
            let elapsed: i64 = db
                .conn()
                .exec_first("SELECT TIMESTAMPDIFF(MICROSECOND, ?, NOW(6))", (from,))
                .unwrap()
                .unwrap();
            elapsed >= micros
        },
        String::new,
    );
}

#[test]
fn rate_limit_is_shared_by_the_replicas_changes_live_and_forgets_the_dead() {
    let _serial = serial();
    let db = TestDb::new("shared_rate");
    db.exec("INSERT INTO queues (name, rate_limit) VALUES ('default', 60)");
    insert_many(&db, 4000, 0);
    // Each replica's own RATE_LIMIT (50) caps it still.
    let own = [("RATE_LIMIT", "50")];
    let mut r1 = start(&bin(), &db, "r1", "default", &own);
    let mut r2 = start(&bin(), &db, "r2", "default", &own);
    let mut r3 = start(&bin(), &db, "r3", "default", &own);
    let window = 4.0;
    let settle = secs(2);
    let phase = |services: &mut [&mut Service], what: &str, want: f64| -> f64 {
        let from = db_now(&db);
        let from: String = db
            .conn()
            .exec_first(
                "SELECT CAST(? + INTERVAL ? MICROSECOND AS CHAR)",
                (&from, settle.as_micros() as i64),
            )
            .unwrap()
            .unwrap();
        wait_db_time(&db, services, &from, Duration::from_secs_f64(window));
        let rate = start_rate(&db, &from, window);
        eprintln!("{what}: {rate:.1} starts/s (want {want})");
        rate
    };
    wait_running(
        &db,
        &mut [&mut r1, &mut r2, &mut r3],
        secs(30),
        "three replicas registered",
        |_| worker_rows(&db).len() == 3,
        String::new,
    );
    let mut results = Vec::new();
    let rate = phase(
        &mut [&mut r1, &mut r2, &mut r3],
        "rate_limit 60, 3 replicas",
        60.0,
    );
    results.push(("rate_limit 60 over 3 replicas", rate, 60.0));
    db.exec("UPDATE queues SET rate_limit = 90 WHERE name = 'default'");
    let rate = phase(
        &mut [&mut r1, &mut r2, &mut r3],
        "rate_limit 90, 3 replicas",
        90.0,
    );
    results.push(("rate_limit 90 over 3 replicas", rate, 90.0));
    r3.sigkill();
    let rate = phase(&mut [&mut r1, &mut r2], "rate_limit 90, 2 replicas", 90.0);
    results.push(("rate_limit 90 over the 2 replicas left", rate, 90.0));
    db.exec("UPDATE queues SET rate_limit = 300 WHERE name = 'default'");
    let rate = phase(
        &mut [&mut r1, &mut r2],
        "rate_limit 300, 2 x RATE_LIMIT 50",
        100.0,
    );
    results.push(("rate_limit 300, capped by 2 x RATE_LIMIT 50", rate, 100.0));
    for (what, rate, want) in &results {
        assert!(
            (want * 0.95..=want * 1.05).contains(rate),
            "{what}: {rate:.1} starts/s, want {want} +-5%\nall: {results:?}\n{}",
            context(&db, &[&r1, &r2])
        );
    }
    stop_all(vec![r1, r2], secs(30));
}

#[test]
fn max_running_holds_across_replicas_at_every_instant_as_they_start_and_die() {
    let _serial = serial();
    let db = TestDb::new("max_running");
    install_audit(&db);
    db.exec("INSERT INTO queues (name, max_running) VALUES ('default', 3)");
    let jobs = insert_many(&db, 150, 30 * MS);
    // Another queue's jobs are not held back by it.
    let free = insert(
        &db,
        20,
        "object_id, sleep, queue",
        &format!("9, {}, 'free'", 30 * MS),
    );
    let mut r1 = start(&bin(), &db, "m1", "default,free", &[]);
    let mut r2 = start(&bin(), &db, "m2", "default,free", &[]);
    let mut r3 = start(&bin(), &db, "m3", "default,free", &[]);
    wait_running(
        &db,
        &mut [&mut r1, &mut r2, &mut r3],
        secs(60),
        "a third of the jobs final, the free queue's done",
        |_| {
            count_in(&db, &jobs, "final_at IS NOT NULL") >= 50
                && count_in(&db, &free, "status = 'DONE!'") == 20
        },
        String::new,
    );
    // A replica dies with jobs running (whichever runs some: the starts go
    // to whoever asks first); another joins.
    let mut victim = None;
    wait_running(
        &db,
        &mut [&mut r1, &mut r2, &mut r3],
        secs(30),
        "a replica running a job of the queue",
        |_| {
            victim = ["m1", "m2", "m3"].into_iter().find(|m| {
                db.count(&format!(
                    "owner = '{m}' AND status = 'STARTED!' AND queue = 'default'"
                )) > 0
            });
            victim.is_some()
        },
        String::new,
    );
    let mut replicas = vec![r1, r2, r3];
    let i = ["m1", "m2", "m3"]
        .iter()
        .position(|m| Some(*m) == victim)
        .unwrap();
    replicas[i].sigkill();
    replicas.remove(i);
    replicas.push(start(&bin(), &db, "m4", "default,free", &[]));
    let mut refs: Vec<&mut Service> = replicas.iter_mut().collect();
    wait_running(
        &db,
        &mut refs,
        secs(120),
        "every job final",
        |_| count_in(&db, &jobs, "final_at IS NOT NULL") == 150,
        String::new,
    );
    stop_all(replicas, secs(30));
    assert_clean_after_stop(&db);

    // Replay every status change in the order it was made: never more than
    // three jobs of the queue STARTED! at once.
    let queue_of: std::collections::HashSet<u64> = jobs.iter().copied().collect();
    let (mut running, mut peak, mut starts) = (0i64, 0i64, 0u64);
    for change in audit(&db).iter().filter(|c| queue_of.contains(&c.job_id)) {
        if change.after() == STARTED {
            running += 1;
            starts += 1;
        }
        if change.before() == STARTED {
            running -= 1;
        }
        peak = peak.max(running);
    }
    eprintln!("max_running 3: peak {peak} running at once over {starts} starts");
    assert!(
        peak <= 3,
        "{peak} jobs of the queue ran at once (max_running 3)"
    );
    assert_eq!(peak, 3, "the limit, not something else, held them back");
    assert!(starts >= 150, "{starts} starts");
    assert_eq!(
        count_in(&db, &jobs, "status = 'CANCELLED!'"),
        db.count("status = 'CANCELLED!' AND error LIKE '%died%'"),
        "only the dead replica's runs were cancelled"
    );
    assert_audit_sound(&db);
}

#[test]
fn rows_whose_queue_or_kind_differ_in_case_run_as_the_names_they_match() {
    let db = TestDb::new("routing_case");
    // The columns compare case-insensitively and ignore trailing spaces:
    // these rows are the replica's queue and kind to the database.
    let odd = insert(&db, 1, "object_id, sleep, kind", "1, 0, 'Sleep'");
    let odd2 = insert(&db, 1, "object_id, sleep, queue", "2, 0, 'DEFAULT'");
    let odd3 = insert(&db, 1, "object_id, sleep, kind", "3, 0, 'sleep '");
    let all = [odd, odd2, odd3].concat();
    let mut svc = start(&bin(), &db, "w", "default", &[]);
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the three rows DONE!",
        |_| count_in(&db, &all, "status = 'DONE!'") == 3,
        String::new,
    );
    // A normal job after them is claimed too, and nothing was retried.
    let next = insert(&db, 1, "object_id, sleep", "4, 0")[0];
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the next job DONE!",
        |_| db.job(next).status() == DONE,
        String::new,
    );
    let log = svc.stderr();
    let warnings = warn_lines(&log);
    assert!(warnings.is_empty(), "{warnings:#?}");
    stop_all(vec![svc], secs(30));
}

#[test]
fn a_cancel_of_a_final_job_changes_nothing_not_even_a_later_re_run() {
    let db = TestDb::new("cancel_final");
    let mut svc = start(&bin(), &db, "w", "default", &[]);
    let id = insert(&db, 1, "object_id, sleep", "1, 0")[0];
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the job DONE!",
        |_| db.job(id).status() == DONE,
        String::new,
    );
    // The plain statement, without the status condition the CLI adds.
    db.exec(&format!(
        "UPDATE jobs SET cancel_requested_at = NOW(6) WHERE id = {id}"
    ));
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the late cancel forgotten",
        |_| db.count(&format!("id = {id} AND cancel_requested_at IS NULL")) == 1,
        String::new,
    );
    assert_eq!(db.job(id).status(), DONE, "the final row stays as it was");
    cli(&db, &["retry", &id.to_string()]);
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "the re-run DONE!",
        |_| db.count(&format!("id = {id} AND status = 'DONE!' AND attempts = 2")) == 1,
        String::new,
    );
    stop_all(vec![svc], secs(30));
}
