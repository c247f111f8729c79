//! End-to-end tests of the real `background-processing` binary against a
//! MariaDB/MySQL server: each test gets its own database and its own child
//! process(es); every wait has a deadline.

use crate::testdb::*;
use mysql::prelude::Queryable;
use std::time::{Duration, Instant};

const SEC: i64 = 1_000_000_000; // one second of `sleep`, in nanoseconds
const US: i64 = 1_000_000; // one second, in microseconds

/// Table dump plus service logs, for failure messages.
fn context(db: &TestDb, svc: &Service) -> String {
    format!("--- jobs:\n{}\n{}", db.dump(), svc.logs())
}

/// Waits up to `deadline` for `cond`; on timeout the failure shows the jobs
/// and the service's logs.
fn wait_or_dump(
    db: &TestDb,
    svc: &Service,
    deadline: Duration,
    what: &str,
    cond: impl FnMut() -> bool,
) {
    wait_until_or(deadline, what, cond, || context(db, svc));
}

// ---------------------------------------------------------------------------
// migrate
// ---------------------------------------------------------------------------

#[test]
fn migrate_twice_then_minimal_insert_works() {
    // TestDb::new has applied the schema once (and asserted exit 0).
    let db = TestDb::new("migrate_twice");
    let again = db.migrate();
    assert_eq!(
        again.code,
        Some(0),
        "second migrate failed:\n{}",
        again.describe()
    );

    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (10, 1000000000)");
    let jobs = db.jobs();
    assert_eq!(jobs.len(), 1, "{}", render_jobs(&jobs));
    let j = &jobs[0];
    assert_eq!(j.object_id, Some(10));
    assert_eq!(j.sleep, Some(SEC));
    assert_eq!(j.status, None, "a new row has status NULL");
    assert!(j.created_at.is_some(), "created_at is set by the database");
    assert!(j.queued_at.is_none() && j.started_at.is_none() && j.finished_at.is_none());
    assert!(j.cancelled_at.is_none() && j.error.is_none());
}

#[test]
fn migrate_creates_the_database_when_missing() {
    let db = TestDb::reserve("migrate_creates");
    assert!(!db.exists());
    for round in 1..=2 {
        let out = db.migrate();
        assert_eq!(
            out.code,
            Some(0),
            "migrate #{round} failed:\n{}",
            out.describe()
        );
    }
    assert!(db.exists(), "migrate did not create {}", db.name());
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (10, 1000000000)");
    assert_eq!(db.count("TRUE"), 1);
}

#[test]
fn run_without_jobs_table_exits_1_and_says_to_migrate() {
    let db = TestDb::empty("no_table");
    let out = Service::run(&db, &[("DB_CONNECT_TIMEOUT", "5s")]).finish(secs(20));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("migrate"),
        "stderr should tell to run `background-processing migrate`:\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------
// jobs and the canceller
// ---------------------------------------------------------------------------

#[test]
fn classic_table_done_and_cancelled() {
    let db = TestDb::new("classic");
    let ids = db.insert_jobs(&[
        (Some(10), Some(SEC)),
        (Some(10), None),
        (Some(10), Some(SEC)),
    ]);
    let svc = Service::run(&db, &[("JOB_TIMEOUT", "2s")]);

    wait_or_dump(&db, &svc, secs(30), "all three jobs final", || {
        all_final(&db)
    });

    let jobs = db.jobs();
    let table = render_jobs(&jobs);
    assert_eq!(jobs.len(), 3, "{table}");
    for j in &jobs {
        j.assert_timestamps_ordered();
        assert_eq!(j.object_id, Some(10));
        assert!(
            j.queued_at.is_some() && j.started_at.is_some() && j.finished_at.is_some(),
            "{table}"
        );
    }
    for id in [ids[0], ids[2]] {
        let j = db.job(id);
        assert_eq!(j.status(), DONE, "1 s job {id}:\n{table}");
        let run = j.run_us.unwrap();
        assert!(
            (US..=19 * US / 10).contains(&run),
            "1 s job {id} ran {run} us (finished_at - started_at), expected 1.0..1.9 s:\n{table}"
        );
        assert!(j.cancelled_at.is_none(), "{table}");
    }
    let stuck = db.job(ids[1]);
    assert_eq!(stuck.status(), CANCELLED, "stuck job:\n{table}");
    let run = stuck.run_us.unwrap();
    assert!(
        run >= 2 * US,
        "stuck job cancelled after {run} us, before JOB_TIMEOUT=2s:\n{table}"
    );
    assert!(
        run < 6 * US,
        "stuck job cancelled only after {run} us (JOB_TIMEOUT=2s):\n{table}"
    );
    assert!(stuck.cancelled_at.is_some(), "{table}");
    assert_eq!(
        stuck.finished_at, stuck.cancelled_at,
        "finished_at = cancelled_at:\n{table}"
    );
    let err = stuck.error_lower();
    assert!(
        err.contains("timeout") || err.contains("timed out"),
        "error should mention the timeout, got {:?}",
        stuck.error
    );
    assert_no_panic(&svc);
}

#[test]
fn stuck_jobs_do_not_exhaust_two_consumers() {
    let db = TestDb::new("two_consumers");
    let mut specs = vec![(Some(1), None); 6];
    specs.extend(vec![(Some(2), Some(10_000_000)); 10]);
    let ids = db.insert_jobs(&specs);
    let svc = Service::run(
        &db,
        &[
            ("JOB_CONSUMERS", "2"),
            ("JOB_TIMEOUT", "1s"),
            ("RATE_LIMIT", "0"),
        ],
    );

    wait_or_dump(&db, &svc, secs(60), "all sixteen jobs final", || {
        all_final(&db)
    });

    let table = db.dump();
    for (i, id) in ids.iter().enumerate() {
        let j = db.job(*id);
        j.assert_timestamps_ordered();
        let want = if i < 6 { CANCELLED } else { DONE };
        assert_eq!(j.status(), want, "job {id}:\n{table}");
    }
    assert_no_panic(&svc);
}

/// Runs `jobs` no-op jobs under `RATE_LIMIT=rate` and checks the start rate
/// between the first and the last start is within 10% of it.
fn rate_limit_holds(name: &str, rate: u32, jobs: usize) {
    let db = TestDb::new(name);
    // Inserted before the service starts, so the bucket starts empty with
    // work already waiting.
    db.insert_jobs(&vec![(Some(7), Some(0)); jobs]);
    let svc = Service::run(
        &db,
        &[("RATE_LIMIT", &rate.to_string()), ("JOB_CONSUMERS", "8")],
    );

    wait_or_dump(&db, &svc, secs(60), &format!("{jobs} jobs DONE!"), || {
        db.count_status(DONE) == jobs as u64
    });

    let (count, span_us): (u64, i64) = db
        .conn()
        .query_first::<(u64, i64), _>(
            "SELECT COUNT(*), TIMESTAMPDIFF(MICROSECOND, MIN(started_at), MAX(started_at)) \
             FROM jobs WHERE status = 'DONE!'",
        )
        .unwrap()
        .unwrap();
    assert_eq!(count, jobs as u64);
    // N starts span N - 1 intervals.
    let achieved = (count - 1) as f64 / (span_us as f64 / 1e6);
    eprintln!("rate limit {rate}: {count} starts over {span_us} us = {achieved:.2}/s");
    let rate = f64::from(rate);
    assert!(
        (rate * 0.9..=rate * 1.1).contains(&achieved),
        "achieved {achieved:.1} starts/s over {:.2} s, expected {rate}/s +-10%",
        span_us as f64 / 1e6
    );
    assert_no_panic(&svc);
}

#[test]
fn rate_limit_end_to_end() {
    rate_limit_holds("rate_limit", 50, 300);
}

/// A rate where consumers wait for tokens between short jobs: the starter
/// must not hold a batch for consumers that are waiting for tokens (the
/// mechanism itself is checked by the unit tests in `src/batch.rs`; this
/// checks the rate it gives).
#[test]
fn rate_limit_holds_at_a_thousand_starts_a_second() {
    rate_limit_holds("rate_limit_1000", 1000, 3000);
}

// ---------------------------------------------------------------------------
// shutdown
// ---------------------------------------------------------------------------

/// Ids of rows in `status`.
fn ids_in(db: &TestDb, status: &str) -> Vec<u64> {
    db.jobs_where(&format!("status = '{status}'"))
        .iter()
        .map(|j| j.id)
        .collect()
}

#[test]
fn sigterm_drains_running_and_puts_waiting_back() {
    let db = TestDb::new("sigterm_drain");
    let ids = db.insert_jobs(&vec![(Some(3), Some(2 * SEC)); 22]);
    let mut svc = Service::run(
        &db,
        &[
            ("JOB_CONSUMERS", "2"),
            ("RATE_LIMIT", "0"),
            ("SHUTDOWN_TIMEOUT", "20s"),
        ],
    );

    wait_or_dump(
        &db,
        &svc,
        secs(20),
        "two jobs STARTED! and some QUEUED!",
        || db.count_status(STARTED) == 2 && db.count_status(QUEUED) >= 1,
    );
    let running = ids_in(&db, STARTED);
    assert_eq!(running.len(), 2);

    let signalled = Instant::now();
    svc.sigterm();
    // Waiting jobs go back at once, not after the running ones finish.
    wait_until_or(
        ms(1500),
        "QUEUED! jobs put back within 1.5 s of SIGTERM",
        || db.count_status(QUEUED) == 0,
        || context(&db, &svc),
    );
    let status = svc.wait_exit(secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        context(&db, &svc)
    );
    assert!(
        signalled.elapsed() < secs(10),
        "shutdown took {:?}",
        signalled.elapsed()
    );

    let table = db.dump();
    for id in &ids {
        let j = db.job(*id);
        j.assert_timestamps_ordered();
        if running.contains(id) {
            assert_eq!(j.status(), DONE, "running job {id} should finish:\n{table}");
            assert!(
                j.run_us.unwrap() >= 2 * US,
                "job {id} was cut short:\n{table}"
            );
        } else {
            assert_eq!(
                j.status, None,
                "waiting job {id} should be back to NULL:\n{table}"
            );
            assert!(
                j.queued_at.is_none() && j.started_at.is_none() && j.finished_at.is_none(),
                "waiting job {id} should carry no timestamps:\n{table}"
            );
        }
    }
    assert_eq!(db.count("status IN ('QUEUED!', 'STARTED!')"), 0, "{table}");
    assert_no_panic(&svc);
}

#[test]
fn sigterm_past_shutdown_timeout_cancels_running_job() {
    let db = TestDb::new("sigterm_deadline");
    let id = db.insert_job(Some(4), None);
    let mut svc = Service::run(
        &db,
        &[("JOB_TIMEOUT", "60s"), ("SHUTDOWN_TIMEOUT", "500ms")],
    );

    wait_or_dump(&db, &svc, secs(20), "stuck job STARTED!", || {
        db.job(id).status() == STARTED
    });
    let signalled = Instant::now();
    svc.sigterm();
    let status = svc.wait_exit(secs(10));
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        context(&db, &svc)
    );
    assert!(
        took < secs(3),
        "exit took {took:?} with SHUTDOWN_TIMEOUT=500ms"
    );

    let j = db.job(id);
    let table = db.dump();
    assert_eq!(j.status(), CANCELLED, "{table}");
    assert!(j.cancelled_at.is_some(), "{table}");
    assert_eq!(
        j.finished_at, j.cancelled_at,
        "finished_at = cancelled_at:\n{table}"
    );
    j.assert_timestamps_ordered();
    let err = j.error_lower();
    assert!(
        err.contains("shutdown") || err.contains("shut down") || err.contains("shutting down"),
        "error should mention the shutdown, got {:?}",
        j.error
    );
    assert_no_panic(&svc);
}

#[test]
fn sigint_works_like_sigterm() {
    let db = TestDb::new("sigint");
    let ids = db.insert_jobs(&[(Some(5), Some(SEC)), (Some(5), Some(SEC))]);
    let mut svc = Service::run(
        &db,
        &[
            ("JOB_CONSUMERS", "1"),
            ("RATE_LIMIT", "0"),
            ("SHUTDOWN_TIMEOUT", "20s"),
        ],
    );
    wait_or_dump(
        &db,
        &svc,
        secs(20),
        "one job STARTED! and one QUEUED!",
        || db.count_status(STARTED) == 1 && db.count_status(QUEUED) == 1,
    );
    let running = ids_in(&db, STARTED)[0];
    svc.sigint();
    let status = svc.wait_exit(secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        context(&db, &svc)
    );

    let table = db.dump();
    for id in ids {
        let j = db.job(id);
        if id == running {
            assert_eq!(j.status(), DONE, "{table}");
        } else {
            assert_eq!(j.status, None, "{table}");
            assert!(j.queued_at.is_none(), "{table}");
        }
    }
    assert_no_panic(&svc);
}

#[test]
fn second_signal_exits_at_once() {
    let db = TestDb::new("second_signal");
    db.insert_jobs(&[(Some(6), None); 3]);
    let mut svc = Service::run(
        &db,
        &[
            ("JOB_CONSUMERS", "1"),
            ("RATE_LIMIT", "0"),
            ("JOB_TIMEOUT", "60s"),
            ("SHUTDOWN_TIMEOUT", "30s"),
        ],
    );
    wait_or_dump(
        &db,
        &svc,
        secs(20),
        "one job STARTED! and two QUEUED!",
        || db.count_status(STARTED) == 1 && db.count_status(QUEUED) == 2,
    );
    svc.sigterm();
    // The waiting jobs going back shows the first signal was handled.
    wait_or_dump(
        &db,
        &svc,
        secs(5),
        "QUEUED! jobs put back after SIGTERM",
        || db.count_status(QUEUED) == 0,
    );
    assert!(
        svc.is_running(),
        "exited before the stuck job was drained\n{}",
        svc.logs()
    );
    let signalled = Instant::now();
    svc.sigint();
    let status = svc.wait_exit(secs(10));
    assert!(
        signalled.elapsed() < secs(3),
        "second signal took {:?}",
        signalled.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(130),
        "exit status {status:?}\n{}",
        svc.logs()
    );
}

// ---------------------------------------------------------------------------
// replicas
// ---------------------------------------------------------------------------

#[test]
fn crashed_replica_loses_nothing() {
    let db = TestDb::new("crash");
    let overrides = [
        ("JOB_CONSUMERS", "1"),
        ("RATE_LIMIT", "0"),
        ("JOB_TIMEOUT", "3s"),
    ];
    let stuck = db.insert_job(Some(8), None);
    let mut a = Service::run(&db, &overrides);
    wait_or_dump(&db, &a, secs(20), "stuck job STARTED!", || {
        db.job(stuck).status() == STARTED
    });
    let quick = db.insert_jobs(&[(Some(8), Some(10_000_000)); 4]);
    wait_or_dump(&db, &a, secs(20), "replica A claims the quick jobs", || {
        db.count_status(QUEUED) == 4
    });
    let started_at = db.job(stuck).started_at;
    a.sigkill();

    let b = Service::run(&db, &overrides);
    wait_or_dump(
        &db,
        &b,
        secs(30),
        "claimed jobs rescued and run, started job cancelled",
        || all_final(&db),
    );
    let table = db.dump();
    for id in &quick {
        assert_eq!(db.job(*id).status(), DONE, "{table}");
    }
    let s = db.job(stuck);
    assert_eq!(s.status(), CANCELLED, "{table}");
    assert_eq!(
        s.started_at, started_at,
        "the started job must not start again:\n{table}"
    );
    assert_eq!(s.finished_at, s.cancelled_at, "{table}");
    assert_no_panic(&b);
}

#[test]
fn two_replicas_claim_each_job_once() {
    let db = TestDb::new("two_replicas");
    db.insert_jobs(&vec![(Some(9), Some(5_000_000)); 200]);
    let overrides = [
        ("JOB_CONSUMERS", "4"),
        ("RATE_LIMIT", "0"),
        ("CHANNEL_CAPACITY", "20"),
    ];
    let a = Service::run(&db, &overrides);
    let b = Service::run(&db, &overrides);
    wait_until_or(
        secs(60),
        "200 jobs DONE!",
        || db.count_status(DONE) == 200,
        || format!("{}\n--- replica A:\n{}", context(&db, &b), a.logs()),
    );
    let table = db.dump();
    // `lease` is +1 on every claim: exactly one claim per job.
    assert_eq!(
        db.count("lease <> 1"),
        0,
        "some job was claimed more than once:\n{table}"
    );
    for j in db.jobs() {
        j.assert_timestamps_ordered();
    }
    assert_no_panic(&a);
    assert_no_panic(&b);
}

// ---------------------------------------------------------------------------
// bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_rows_fail_or_are_left_alone() {
    let db = TestDb::new("bad_rows");
    let mine = db.insert_with_status(11, Some(0), "MINE");
    let negative = db.insert_job(Some(11), Some(-5));
    let normal = db.insert_job(Some(11), Some(10_000_000));
    let mut svc = Service::run(&db, &[]);

    wait_or_dump(
        &db,
        &svc,
        secs(20),
        "negative job FAILED! and normal job DONE!",
        || db.job(negative).is_final() && db.job(normal).is_final(),
    );
    let table = db.dump();
    let n = db.job(negative);
    assert_eq!(n.status(), FAILED, "{table}");
    let err = n.error_lower();
    assert!(
        err.contains("sleep"),
        "error should name the sleep: {:?}",
        n.error
    );
    assert!(
        err.contains("negative") || err.contains("-5"),
        "error should say the sleep is negative: {:?}",
        n.error
    );
    assert!(
        n.finished_at.is_some(),
        "a FAILED! row has finished_at:\n{table}"
    );
    n.assert_timestamps_ordered();
    assert_eq!(db.job(normal).status(), DONE, "{table}");

    let m = db.job(mine);
    assert_eq!(m.status(), "MINE", "{table}");
    assert!(
        m.queued_at.is_none()
            && m.started_at.is_none()
            && m.finished_at.is_none()
            && m.error.is_none(),
        "a row with an unknown status is left untouched:\n{table}"
    );
    assert!(svc.is_running(), "the service stopped:\n{}", svc.logs());
    assert_no_panic(&svc);
    svc.sigterm();
    assert_eq!(svc.wait_exit(secs(15)).code(), Some(0));
}

#[test]
fn bad_environment_variables_exit_2_before_database_work() {
    let cases: &[(&str, &str)] = &[
        ("JOB_CONSUMERS", "0"),
        ("JOB_CONSUMERS", "abc"),
        ("CANCELLER_CONSUMERS", "-2"),
        ("CHANNEL_CAPACITY", "0"),
        ("DB_POOL_SIZE", "many"),
        ("RATE_LIMIT", "-1"),
        ("JOBS_POLL_INTERVAL", "fast"),
        ("CANCELLER_POLL_INTERVAL", "0s"),
        ("JOB_TIMEOUT", "0s"),
        ("SHUTDOWN_TIMEOUT", "soon"),
        ("DB_CONNECT_TIMEOUT", "forever"),
        ("LOG_LEVEL", "loud"),
        ("DATABASE_URL", "notaurl"),
        // HEARTBEAT_INTERVAL is 100ms in service_env: 250ms < 3 x 100ms.
        ("WORKER_DEAD_AFTER", "250ms"),
    ];
    // All at once: each should be done in milliseconds.
    let running: Vec<_> = cases
        .iter()
        .map(|&(var, value)| {
            let env = service_env(CLOSED_PORT_URL, &[(var, value)]);
            (var, value, Service::spawn(&["run"], &env))
        })
        .collect();
    let mut failures = Vec::new();
    for (var, value, svc) in running {
        let out = svc.finish(secs(40));
        let ok = out.code == Some(2)
            && out.elapsed < secs(5)
            && out.stderr.contains(var)
            && out.stderr.contains(value);
        if !ok {
            failures.push(format!(
                "{var}={value}: expected exit 2 within 5 s naming {var} and {value:?}\n{}",
                out.describe()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn unreachable_database_exits_1_without_leaking_the_password() {
    let env = service_env(
        "mysql://root:secret@127.0.0.1:1/x",
        &[("DB_CONNECT_TIMEOUT", "1s"), ("LOG_LEVEL", "trace")],
    );
    let out = run_cmd(&["run"], &env, secs(20));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.elapsed < secs(8),
        "took {:?} with DB_CONNECT_TIMEOUT=1s",
        out.elapsed
    );
    assert!(
        out.elapsed >= ms(900),
        "gave up after {:?}, before DB_CONNECT_TIMEOUT=1s",
        out.elapsed
    );
    assert!(
        out.stderr.contains("127.0.0.1:1"),
        "stderr should say where it tried:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("secret"),
        "password leaked:\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("secret"),
        "password leaked:\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------
// command line
// ---------------------------------------------------------------------------

/// Every variable the service reads, with its fixed default (None: computed).
const DEFAULTS: &[(&str, Option<&str>)] = &[
    (
        "DATABASE_URL",
        Some("mysql://root@127.0.0.1:3306/background_processing"),
    ),
    ("JOBS_POLL_INTERVAL", Some("2s")),
    ("CANCELLER_POLL_INTERVAL", Some("2s")),
    ("JOB_TIMEOUT", Some("10s")),
    ("JOB_CONSUMERS", Some("32")),
    ("CANCELLER_CONSUMERS", Some("2")),
    ("RATE_LIMIT", Some("50")),
    ("CHANNEL_CAPACITY", Some("256")),
    ("DB_POOL_SIZE", None),
    ("SHUTDOWN_TIMEOUT", Some("25s")),
    ("DB_CONNECT_TIMEOUT", Some("30s")),
    ("LOG_LEVEL", Some("info")),
    ("WORKER_NAME", None),
    ("HEARTBEAT_INTERVAL", Some("2s")),
    ("WORKER_DEAD_AFTER", Some("10s")),
];

/// Byte offsets where `word` occurs delimited by non-identifier characters.
fn word_positions(text: &str, word: &str) -> Vec<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word)
        .filter(|(i, _)| {
            let before = text[..*i].chars().next_back();
            let after = text[i + word.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let env = [("DATABASE_URL", CLOSED_PORT_URL)];
    for flag in ["--help", "-h"] {
        let out = run_cmd(&[flag], &env, secs(10));
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let help = &out.stdout;
        // Every mention of every variable, in order, to cut the text into
        // per-variable sections.
        let mut marks: Vec<usize> = DEFAULTS
            .iter()
            .flat_map(|(var, _)| word_positions(help, var))
            .collect();
        marks.sort();
        for (var, default) in DEFAULTS {
            let at = word_positions(help, var);
            assert!(!at.is_empty(), "{flag} does not list {var}:\n{help}");
            if let Some(default) = default {
                let shown = at.iter().any(|&start| {
                    let end = marks
                        .iter()
                        .copied()
                        .find(|&m| m > start)
                        .unwrap_or(help.len());
                    !word_positions(&help[start + var.len()..end], default).is_empty()
                });
                assert!(
                    shown,
                    "{flag} does not show {var}'s default {default}:\n{help}"
                );
            }
        }
        for command in ["run", "migrate", "demo", "stats"] {
            assert!(
                !word_positions(help, command).is_empty(),
                "{flag} does not mention `{command}`"
            );
        }
    }
}

#[test]
fn version_flag_prints_the_version() {
    let env = [("DATABASE_URL", CLOSED_PORT_URL)];
    for flag in ["--version", "-V"] {
        let out = run_cmd(&[flag], &env, secs(10));
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert!(
            out.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn unknown_command_or_flag_exits_2() {
    let env = [("DATABASE_URL", CLOSED_PORT_URL)];
    for arg in ["frobnicate", "--frobnicate"] {
        let out = run_cmd(&[arg], &env, secs(10));
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(out.elapsed < secs(5), "{}", out.describe());
        assert!(
            out.stderr.contains(arg),
            "stderr should name {arg}:\n{}",
            out.describe()
        );
    }
}

#[test]
fn stats_prints_counts_by_status() {
    let db = TestDb::new("stats");
    // Distinct counts, so each number identifies its status.
    let groups: &[(Option<&str>, i64)] = &[
        (None, 11),
        (Some(QUEUED), 12),
        (Some(STARTED), 13),
        (Some(DONE), 14),
        (Some(CANCELLED), 15),
        (Some(FAILED), 16),
        (Some("MINE"), 17),
    ];
    {
        let mut conn = db.conn();
        for (status, n) in groups {
            for _ in 0..*n {
                conn.exec_drop(
                    "INSERT INTO jobs (object_id, sleep, status, queued_at, started_at, finished_at) \
                     VALUES (12, 0, ?, IF(? IN ('QUEUED!','STARTED!','DONE!','CANCELLED!','FAILED!'), NOW(6), NULL), \
                             IF(? IN ('STARTED!','DONE!','CANCELLED!','FAILED!'), NOW(6), NULL), \
                             IF(? IN ('DONE!','CANCELLED!','FAILED!'), NOW(6), NULL))",
                    (status, status, status, status),
                )
                .unwrap();
            }
        }
    }
    let env = service_env(db.url(), &[]);
    let out = run_cmd(&["stats"], &env, secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let text = &out.stdout;
    let line_has = |label: Option<&str>, n: i64| {
        text.lines().any(|line| {
            !word_positions(line, &n.to_string()).is_empty()
                && label.is_none_or(|l| line.to_lowercase().contains(&l.to_lowercase()))
        })
    };
    for (status, n) in groups {
        // Known statuses: a line naming the status (with or without the
        // '!') and its count. NULL and the client's own marker: the count.
        let label = status
            .filter(|s| *s != "MINE")
            .map(|s| s.trim_end_matches('!'));
        assert!(
            line_has(label, *n),
            "stats should show {n} for {}:\n{}",
            status.unwrap_or("NULL"),
            out.describe()
        );
    }
}

#[test]
fn stats_shows_jobs_scheduled_for_later_apart_from_those_due() {
    let db = TestDb::new("stats_scheduled");
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (1, 0), (2, 0)");
    db.exec(
        "INSERT INTO jobs (object_id, sleep, run_at) VALUES \
         (3, 0, NOW(6) + INTERVAL 1 DAY), (4, 0, NOW(6) + INTERVAL 1 DAY), \
         (5, 0, NOW(6) + INTERVAL 1 DAY)",
    );
    let out = run_cmd(&["stats"], &service_env(db.url(), &[]), secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout
            .contains("NULL (new)   5 (2 due now, 3 scheduled for later)"),
        "{}",
        out.describe()
    );
    // The oldest job due is the oldest of those due, not a scheduled one.
    let first_due: u64 = db.scalar("SELECT MIN(id) FROM jobs WHERE run_at IS NULL");
    assert!(
        out.stdout
            .contains(&format!("oldest job due now: id {first_due},")),
        "{}",
        out.describe()
    );
}

#[test]
fn demo_shows_done_and_cancelled_then_stops_on_sigterm() {
    let db = TestDb::new("demo");
    let mut svc = Service::demo(&db, &[("JOB_TIMEOUT", "2s"), ("SHUTDOWN_TIMEOUT", "3s")]);
    wait_until_or(
        secs(30),
        "demo table showing DONE! and CANCELLED! rows",
        || {
            let out = svc.stdout();
            out.contains(DONE) && out.contains(CANCELLED)
        },
        || context(&db, &svc),
    );
    let out = svc.stdout();
    assert!(
        out.lines()
            .any(|l| l.contains(DONE) && !word_positions(l, "10").is_empty()),
        "the table rows show object 10:\n{out}"
    );
    svc.sigterm();
    let status = svc.wait_exit(secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        svc.logs()
    );
    assert_no_panic(&svc);
}

/// Regression: a stop signal while start-up still waited for the database
/// was only acted on once start-up finished (up to `DB_CONNECT_TIMEOUT`
/// later), which can outlast Kubernetes' grace period.
#[test]
fn sigterm_during_start_up_exits_0_at_once() {
    let env = service_env(CLOSED_PORT_URL, &[("DB_CONNECT_TIMEOUT", "60s")]);
    let mut svc = Service::spawn(&["run"], &env);
    wait_until(
        Duration::from_secs(20),
        "start-up to begin waiting for the database",
        || svc.stderr().contains("task kinds"),
    );
    let began = std::time::Instant::now();
    svc.sigterm();
    let status = svc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", svc.stderr());
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "exited {:?} after the signal, not at once",
        began.elapsed()
    );
    assert!(svc.stderr().contains("during start-up"), "{}", svc.stderr());
}
