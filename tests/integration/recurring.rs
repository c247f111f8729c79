//! Unique jobs and recurring schedules with the real binary: `unique_key`
//! keeps one job that is not final per key (whatever the clients race), and
//! `schedules` enqueues one job per fire time across replicas that start,
//! die and come back.
//!
//! Tests that start several processes or follow fire times take
//! [`serial`].

use crate::fleet::*;
use crate::http::{get, http_addr};
use crate::testdb::*;
use mysql::prelude::Queryable;
use std::collections::BTreeSet;

/// A replica named `name` with `extra` on top of [`replica`]'s settings.
fn start(db: &TestDb, name: &'static str, extra: &[(&str, &str)]) -> Service {
    let mut vars = replica(name, "4", "20", "120s");
    vars.push(("SCHEDULER_INTERVAL", "1s"));
    vars.extend_from_slice(extra);
    Service::run(db, &vars)
}

/// Runs a CLI command against `db`; it must exit 0.
fn cli(db: &TestDb, args: &[&str]) -> String {
    let out = run_cmd(args, &[("DATABASE_URL", db.url())], secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    out.stdout
}

// ---------------------------------------------------------------------------
// Unique jobs
// ---------------------------------------------------------------------------

#[test]
fn unique_keys_keep_one_live_job_per_key_until_it_is_final() {
    let _serial = serial();
    let db = TestDb::new("unique");
    // 4 clients, 2,500 inserts each, of 100 keys: 100 jobs.
    std::thread::scope(|s| {
        for t in 0..4 {
            let db = &db;
            s.spawn(move || {
                let mut conn = db.conn();
                for i in 0..2500 {
                    conn.exec_drop(
                        "INSERT IGNORE INTO jobs (object_id, sleep, unique_key) VALUES (?, 0, ?)",
                        (t, format!("key-{}", (i * 7 + t) % 100)),
                    )
                    .expect("insert ignore");
                }
            });
        }
    });
    assert_eq!(db.count("unique_key IS NOT NULL"), 100, "{}", counts(&db));
    let distinct: u64 = db.scalar("SELECT COUNT(DISTINCT unique_key) FROM jobs");
    assert_eq!(distinct, 100);
    // A plain INSERT of a held key fails with 1062; rows without a key are
    // not concerned.
    let err = db
        .conn()
        .query_drop("INSERT INTO jobs (object_id, sleep, unique_key) VALUES (1, 0, 'key-5')")
        .expect_err("a second live job with key-5");
    assert!(err.to_string().contains("1062"), "{err}");
    db.insert_jobs(&[(Some(1), Some(0)); 50]);

    let mut svc = start(&db, "u", &[]);
    wait_running(
        &db,
        &mut [&mut svc],
        secs(60),
        "every job DONE!",
        |_| db.count_status(DONE) == 150,
        String::new,
    );
    // Final jobs free their keys: the same 100 keys enqueue again.
    let mut conn = db.conn();
    for i in 0..100 {
        conn.exec_drop(
            "INSERT IGNORE INTO jobs (object_id, sleep, unique_key) VALUES (2, 0, ?)",
            (format!("key-{i}"),),
        )
        .unwrap();
    }
    assert_eq!(db.count("unique_key IS NOT NULL"), 200);
    wait_running(
        &db,
        &mut [&mut svc],
        secs(60),
        "the second round DONE!",
        |_| db.count_status(DONE) == 250,
        String::new,
    );

    // A retry takes its key back, unless a live job holds it.
    cli(&db, &["pause", "default"]);
    let done_k1: u64 =
        db.scalar("SELECT MIN(id) FROM jobs WHERE unique_key = 'key-1' AND status = 'DONE!'");
    let done_k2: u64 =
        db.scalar("SELECT MIN(id) FROM jobs WHERE unique_key = 'key-2' AND status = 'DONE!'");
    db.exec("INSERT INTO jobs (object_id, sleep, unique_key) VALUES (3, 0, 'key-1')");
    let holder: u64 = db.scalar("SELECT MAX(id) FROM jobs WHERE unique_key = 'key-1'");
    let out = cli(&db, &["retry", &done_k1.to_string(), &done_k2.to_string()]);
    for line in [
        "1 of 2 jobs changed".to_string(),
        format!(
            "job {done_k1}: DONE!, nothing changed (job {holder}, not final, holds its \
             unique_key \"key-1\")"
        ),
        format!("job {done_k2}: new again (was DONE!)"),
    ] {
        assert!(out.contains(&line), "no {line:?} in:\n{out}");
    }
    assert_eq!(db.job(done_k1).status(), DONE);
    assert_eq!(db.job(done_k2).status, None);
    let err = db
        .conn()
        .query_drop(format!(
            "UPDATE jobs SET status = NULL, run_at = NULL WHERE id = {done_k1} \
             AND status IN ('FAILED!', 'CANCELLED!', 'DONE!')"
        ))
        .expect_err("the plain statement fails on a held key");
    assert!(err.to_string().contains("1062"), "{err}");
    // A failed job (a negative sleep) whose key is held stays failed.
    cli(&db, &["resume", "default"]);
    db.exec("INSERT INTO jobs (object_id, sleep, unique_key) VALUES (4, -1, 'key-bad')");
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "the bad row FAILED!",
        |_| db.count_status(FAILED) == 1,
        String::new,
    );
    cli(&db, &["pause", "default"]);
    db.exec("INSERT INTO jobs (object_id, sleep, unique_key) VALUES (4, 0, 'key-bad')");
    let out = cli(&db, &["retry", "--failed"]);
    assert!(
        out.contains("0 failed jobs are new again")
            && out.contains("1 failed jobs stay FAILED!: another job that is not final holds"),
        "{out}"
    );
    stop_all(vec![svc], secs(30));
}

// ---------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------

/// The fire time in a fired job's key (`name@2026-12-01T12:00:00Z`), in
/// seconds since the epoch.
fn key_time(key: &str) -> i64 {
    let at = key.rsplit('@').next().unwrap_or_default();
    chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%SZ")
        .unwrap_or_else(|e| panic!("key {key:?}: {e}"))
        .and_utc()
        .timestamp()
}

/// The fire times (seconds since the epoch, UTC) of the jobs of schedule
/// `name`, from their keys, each with how many jobs carry it.
fn fires(db: &TestDb, name: &str) -> Vec<(i64, u64)> {
    let keys: Vec<(String, u64)> = db
        .conn()
        .exec(
            "SELECT unique_key, COUNT(*) FROM jobs WHERE unique_key LIKE CONCAT(?, '@%') \
             GROUP BY unique_key",
            (name,),
        )
        .unwrap();
    let mut fired: Vec<(i64, u64)> = keys.iter().map(|(k, n)| (key_time(k), *n)).collect();
    fired.sort_unstable();
    fired
}

/// Seconds the server's time (`NOW()`) is ahead of UTC.
fn server_offset(db: &TestDb) -> i64 {
    db.scalar("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())")
}

/// `run_at` of each job of schedule `name`, in seconds since the epoch
/// (UTC), by key (`None`: NULL).
fn run_ats(db: &TestDb, name: &str) -> Vec<(String, Option<i64>)> {
    let offset = server_offset(db);
    let rows: Vec<(String, Option<chrono::NaiveDateTime>)> = db
        .conn()
        .exec(
            "SELECT unique_key, run_at FROM jobs WHERE unique_key LIKE CONCAT(?, '@%') \
             ORDER BY unique_key",
            (name,),
        )
        .unwrap();
    rows.into_iter()
        .map(|(k, at)| (k, at.map(|t| t.and_utc().timestamp() - offset)))
        .collect()
}

/// Fire times from the first to the last with none missing or doubled.
fn assert_every_second_once(fired: &[(i64, u64)]) {
    let doubled: Vec<_> = fired.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        doubled.is_empty(),
        "fire times with more than one job: {doubled:?}"
    );
    let times: BTreeSet<i64> = fired.iter().map(|(t, _)| *t).collect();
    let (first, last) = (*times.first().unwrap(), *times.last().unwrap());
    let missing: Vec<i64> = (first..=last).filter(|t| !times.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "fire times without a job between {first} and {last}: {missing:?}"
    );
}

#[test]
fn a_schedule_fires_once_a_second_across_replicas_even_when_the_firing_one_dies() {
    let _serial = serial();
    let db = TestDb::new("schedule_fleet");
    db.exec("INSERT INTO schedules (name, cron, sleep) VALUES ('tick', '*/1 * * * * *', 0)");
    let mut r1 = start(&db, "s1", &[]);
    let mut r2 = start(&db, "s2", &[]);
    let mut r3 = start(&db, "s3", &[]);
    wait_running(
        &db,
        &mut [&mut r1, &mut r2, &mut r3],
        secs(30),
        "8 fires",
        |_| fires(&db, "tick").len() >= 8,
        String::new,
    );
    // The replica that fired most dies with kill -9.
    let fired_by = |s: &Service| s.stderr().matches("scheduler enqueued").count();
    let mut replicas = vec![r1, r2, r3];
    let firing = (0..3).max_by_key(|i| fired_by(&replicas[*i])).unwrap();
    eprintln!(
        "fires so far per replica: {:?}; killing s{}",
        replicas.iter().map(fired_by).collect::<Vec<_>>(),
        firing + 1
    );
    replicas[firing].sigkill();
    replicas.remove(firing);
    let before_kill = fires(&db, "tick").len();
    let mut refs: Vec<&mut Service> = replicas.iter_mut().collect();
    wait_running(
        &db,
        &mut refs,
        secs(40),
        "12 more fires after the kill",
        |_| fires(&db, "tick").len() >= before_kill + 12,
        String::new,
    );
    stop_all(replicas, secs(30));
    let fired = fires(&db, "tick");
    eprintln!("{} fire times, each once", fired.len());
    assert_every_second_once(&fired);
    // Each job was enqueued for its fire time: run_at is the time in its key.
    let off: Vec<_> = run_ats(&db, "tick")
        .into_iter()
        .filter(|(k, at)| *at != Some(key_time(k)))
        .collect();
    assert!(
        off.is_empty(),
        "jobs whose run_at is not their fire time: {off:?}"
    );
    let (last_job, next): (Option<u64>, Option<String>) = db
        .conn()
        .query_first("SELECT last_job_id, CAST(next_run_at AS CHAR) FROM schedules")
        .unwrap()
        .unwrap();
    assert!(last_job.is_some() && next.is_some());
}

#[test]
fn after_a_downtime_a_schedule_fires_once_to_catch_up() {
    let _serial = serial();
    let db = TestDb::new("schedule_downtime");
    db.exec("INSERT INTO schedules (name, cron, sleep) VALUES ('tick', '*/1 * * * * *', 0)");
    let mut svc = start(&db, "d1", &[]);
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "3 fires",
        |_| fires(&db, "tick").len() >= 3,
        String::new,
    );
    stop_all(vec![svc], secs(30));
    let before = fires(&db, "tick");
    // Down for more than five periods, by the server's clock.
    let down_from = db_now(&db);
    wait_until(secs(30), "six seconds of downtime", || {
        let gone: i64 = db
            .conn()
            .exec_first(
                "SELECT TIMESTAMPDIFF(MICROSECOND, ?, NOW(6))",
                (&down_from,),
            )
            .unwrap()
            .unwrap();
        gone >= 6_000_000
    });
    let mut svc = start(&db, "d2", &[]);
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "the catch-up fire and two more",
        |_| fires(&db, "tick").len() >= before.len() + 3,
        String::new,
    );
    stop_all(vec![svc], secs(30));
    let after = fires(&db, "tick");
    let last_before = before.last().unwrap().0;
    let new: Vec<i64> = after
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t > last_before)
        .collect();
    // The catch-up stands for every missed time: its key is the last one
    // missed, at least five periods after the last fire before the stop,
    // and no job has a missed time between them.
    assert!(
        new[0] - last_before >= 5,
        "the first fire after the downtime, {} s after the last before it, is not a catch-up: \
         {new:?}",
        new[0] - last_before
    );
    assert_every_second_once(&after[before.len()..]);
    let catch_up = run_ats(&db, "tick")
        .into_iter()
        .find(|(k, _)| key_time(k) == new[0])
        .unwrap();
    assert_eq!(
        catch_up.1, None,
        "the catch-up fire runs at once (run_at NULL): {catch_up:?}"
    );
    assert!(
        after.iter().all(|(_, n)| *n == 1),
        "a fire time with two jobs: {after:?}"
    );
}

#[test]
fn bad_rows_are_disabled_with_the_reason_and_edits_take_effect_while_running() {
    let _serial = serial();
    let db = TestDb::new("schedule_bad");
    db.exec(
        "INSERT INTO schedules (name, cron, kind, sleep) VALUES \
         ('words', 'every day at noon', 'sleep', 0), \
         ('feb31', '0 0 31 2 *', 'sleep', 0), \
         ('badkind', '* * * * *', 'no such kind!', 0), \
         ('tally', '*/1 * * * * *', 'tally', NULL), \
         ('good', '*/1 * * * * *', 'sleep', 0)",
    );
    let mut svc = start(&db, "b1", &[("METRICS_ADDR", "127.0.0.1:0")]);
    let addr = http_addr(&mut svc);
    let row = |name: &str| -> (i64, Option<String>) {
        db.conn()
            .exec_first(
                "SELECT enabled, error FROM schedules WHERE name = ?",
                (name,),
            )
            .unwrap()
            .unwrap()
    };
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "the good schedule and the tally one fired twice",
        |_| fires(&db, "good").len() >= 2 && fires(&db, "tally").len() >= 2,
        String::new,
    );
    for (name, reason) in [
        ("words", "does not parse"),
        ("feb31", "never fires"),
        ("badkind", "not a kind name"),
    ] {
        let (enabled, error) = row(name);
        assert_eq!(enabled, 0, "{name} is disabled");
        assert!(
            error.as_deref().unwrap_or("").contains(reason),
            "{name}: {error:?}"
        );
    }
    let (enabled, error) = row("tally");
    assert_eq!(enabled, 1, "a kind no replica runs keeps firing");
    assert!(
        error
            .as_deref()
            .unwrap_or("")
            .contains("no live replica serves queue default and runs kind tally"),
        "{error:?}"
    );
    assert_eq!(row("good"), (1, None));
    let listing = cli(&db, &["schedules"]);
    for part in ["*/1 * * * * *", "every day at noon", "does not parse"] {
        assert!(listing.contains(part), "no {part:?} in:\n{listing}");
    }
    // The good row: enabled, its next fire time, its last job and status.
    let good = listing
        .lines()
        .find(|l| l.starts_with("good "))
        .unwrap_or_else(|| panic!("no line for good in:\n{listing}"));
    let (head, status) = good.rsplit_once(" (").unwrap_or_default();
    let job_id = head.rsplit(' ').next().unwrap_or_default();
    assert!(
        good.contains("sleep@default")
            && good.contains(" yes ")
            && job_id.parse::<u64>().is_ok()
            && ["new)", "QUEUED!)", "STARTED!)", "DONE!)"].contains(&status),
        "{good}"
    );
    let body = get(addr, "/metrics").expect("GET /metrics").body;
    assert!(
        body.contains("background_processing_schedules_disabled_total 3"),
        "{body}"
    );
    assert!(
        body.contains("background_processing_schedules_fired_total "),
        "{body}"
    );

    // Edited while running: `good` to once a year stops firing; `words`
    // fixed and enabled again fires.
    db.exec("UPDATE schedules SET cron = '0 0 1 1 *' WHERE name = 'good'");
    db.exec("UPDATE schedules SET cron = '*/1 * * * * *', enabled = 1 WHERE name = 'words'");
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "the fixed row fired twice, the edited one moved to January",
        |_| {
            let next: Option<String> = db
                .conn()
                .query_first(
                    "SELECT CAST(next_run_at AS CHAR) FROM schedules WHERE name = 'good' \
                     AND cron_seen = cron",
                )
                .unwrap()
                .flatten();
            fires(&db, "words").len() >= 2
                && next.is_some_and(|n| n.contains("-01-01 ") || n.contains("-12-31 "))
        },
        String::new,
    );
    let good_fires = fires(&db, "good").len();
    let words_fires = fires(&db, "words").len();
    wait_running(
        &db,
        &mut [&mut svc],
        secs(30),
        "two more fires of the fixed row",
        |_| fires(&db, "words").len() >= words_fires + 2,
        String::new,
    );
    assert_eq!(
        fires(&db, "good").len(),
        good_fires,
        "the edited row fires no more"
    );
    assert_eq!(row("words"), (1, None));
    stop_all(vec![svc], secs(30));
}
