//! Faults just outside the ones the guarantee tests cover, each pinned by a
//! test that reproduces it with the real binary and real MariaDB (a proxy
//! the test controls, or a private `mariadbd`, where the server must stall,
//! stop or change): nothing lost, nothing mislabelled, nothing killed.
//!
//! Each test names the fault it pins. They take [`serial`]: several start
//! more than one process and check timing promises.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

use crate::audit::*;
use crate::fleet::*;
use crate::http::{get, http_addr};
use crate::mariadb::PrivateServer;
use crate::proxy::Proxy;
use crate::testdb::*;

/// The running totals of a replica's last summary line (the one it logs at
/// shutdown): `(claimed, done, lost)`.
fn totals(log: &str) -> Option<(u64, u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("totals: "))?;
    let totals = &line[line.find("totals: ")? + 8..];
    let get = |name: &str| -> Option<u64> {
        totals
            .split(", ")
            .find_map(|part| part.strip_prefix(name)?.trim().parse().ok())
    };
    Some((get("claimed ")?, get("done ")?, get("lost ")?))
}

/// SIGTERM, exit 0 within 30 s; returns the whole stderr (with the summary
/// it logs at shutdown).
fn stopped(mut svc: Service) -> String {
    svc.sigterm();
    let out = svc.finish(secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    out.stderr
}

/// A replica's runs that another replica rescued while it was cut off:
/// started by it and then cancelled by someone else's rescue, or claimed by
/// it and put back.
fn rescued_runs(h: &Histories, owner: &str) -> usize {
    h.values()
        .map(|changes| {
            changes
                .windows(2)
                .filter(|w| {
                    w[0].owner() == owner
                        && ((w[0].after() == STARTED && w[1].after() == CANCELLED)
                            || (w[0].after() == QUEUED && w[1].after() == "NULL"))
                })
                .count()
        })
        .sum()
}

// ---------------------------------------------------------------------------
// 1. A connection reused after its statement timed out mid-reply
// ---------------------------------------------------------------------------

/// Regression: one replica cut off for longer than its statements may take
/// (a proxy holding its bytes, 35 s against the 30 s statement timeout).
/// Connections whose statement timed out went back to the pool: "Packets
/// out of sync", the rescuer thread died on a row it did not expect, DONE!
/// writes went into a transaction that was never committed, and `lost`
/// counted rows that were DONE!.
#[test]
fn a_connection_cut_off_mid_statement_is_never_used_again() {
    let _serial = serial();
    const STALL: Duration = Duration::from_secs(35);
    let db = TestDb::new("fault_stall");
    install_audit(&db);
    let proxy = Proxy::start(&host_port(db.url()));
    let cut_url = via(db.url(), proxy.addr());
    let env = |name| replica(name, "4", "8", "120s");
    let mut cut = Service::spawn(&["run"], &service_env(&cut_url, &env("cut-off")));
    let mut direct = Service::run(&db, &env("direct"));
    let both = &mut [&mut cut, &mut direct];
    wait_running(
        &db,
        both,
        secs(20),
        "both registered",
        |_| worker_rows(&db).len() == 2,
        String::new,
    );
    insert_many(&db, 600, 50 * MS);
    wait_running(
        &db,
        both,
        secs(20),
        "the cut-off replica holding jobs",
        |_| owned(&db, "cut-off", STARTED) >= 1 && owned(&db, "cut-off", QUEUED) >= 1,
        String::new,
    );
    proxy.stall();
    let stalled_at = Instant::now();
    wait_running(
        &db,
        both,
        STALL + secs(5),
        "the stall to last",
        |_| stalled_at.elapsed() >= STALL,
        String::new,
    );
    proxy.resume();
    wait_running(
        &db,
        both,
        secs(90),
        "every job final after the stall",
        |_| all_final(&db),
        String::new,
    );
    let (cut_log, direct_log) = (stopped(cut), stopped(direct));

    let h = assert_audit_sound(&db);
    assert_clean_after_stop(&db);
    for log in [&cut_log, &direct_log] {
        assert!(
            !log.contains("out of sync"),
            "a connection was reused out of sync:\n{}",
            tail(log, 60)
        );
        assert!(
            !log.contains("panicked"),
            "a thread panicked:\n{}",
            tail(log, 60)
        );
    }
    // Every job is DONE!, but for the cut-off replica's runs that the other
    // one rescued while it was cut off (cancelled, "died").
    let not_done = db.jobs_where("status <> 'DONE!'");
    for job in &not_done {
        assert!(
            job.status() == CANCELLED && job.error_lower().contains("died"),
            "only rescued runs may end other than DONE!: {job:?}"
        );
    }
    // `lost` counts only writes that really were refused.
    let rescued = rescued_runs(&h, "cut-off");
    let (_, _, lost) = totals(&cut_log).expect("a summary line at shutdown");
    eprintln!(
        "stall: {} jobs, {} not DONE! (rescued), cut-off replica lost {lost} writes for {rescued} rescued runs",
        db.count("TRUE"),
        not_done.len()
    );
    assert!(
        lost as usize <= rescued,
        "lost {lost} writes, but only {rescued} of its runs were taken from it\n{}",
        tail(&cut_log, 60)
    );
}

// ---------------------------------------------------------------------------
// 2. One row lock stalled every completion
// ---------------------------------------------------------------------------

/// Regression: another client holding a row lock on one STARTED! job for
/// 20-30 s: no DONE! landed for any job meanwhile (the whole batch waited
/// on lock wait timeouts), and healthy jobs ended CANCELLED! afterwards.
#[test]
fn one_locked_row_delays_only_its_own_job() {
    let _serial = serial();
    const HOLD: Duration = Duration::from_secs(8);
    let db = TestDb::new("fault_row_lock");
    install_audit(&db);
    insert_many(&db, 400, 100 * MS);
    let mut svc = Service::run(
        &db,
        &[
            ("JOB_CONSUMERS", "8"),
            ("RATE_LIMIT", "0"),
            ("JOB_TIMEOUT", "3s"),
            ("CHANNEL_CAPACITY", "16"),
        ],
    );
    wait_running(
        &db,
        &mut [&mut svc],
        secs(20),
        "a job running",
        |_| db.count_status(STARTED) >= 1,
        String::new,
    );
    let locked: u64 = db.scalar("SELECT MIN(id) FROM jobs WHERE status = 'STARTED!'");
    let mut locker = db.conn();
    locker.query_drop("BEGIN").unwrap();
    locker
        .query_drop(format!(
            "UPDATE jobs SET payload = '{{}}' WHERE id = {locked}"
        ))
        .unwrap();
    let (locked_at, done_before) = (Instant::now(), db.count_status(DONE));
    let held_since = db_now(&db);
    wait_running(
        &db,
        &mut [&mut svc],
        HOLD + secs(5),
        "the lock to be held",
        |_| locked_at.elapsed() >= HOLD,
        String::new,
    );
    let done_during = db.count_status(DONE) - done_before;
    let held_until = db_now(&db);
    locker.query_drop("COMMIT").unwrap();
    wait_running(
        &db,
        &mut [&mut svc],
        secs(60),
        "every job final",
        |_| all_final(&db),
        String::new,
    );
    stop_all(vec![svc], secs(20));

    assert_audit_sound(&db);
    assert_eq!(
        db.job(locked).status(),
        DONE,
        "the locked job's DONE! landed after the lock: {:?}",
        db.job(locked)
    );
    let cancelled = db.jobs_where("status = 'CANCELLED!'");
    assert!(
        cancelled.is_empty(),
        "healthy jobs cancelled:\n{}",
        render_jobs(&cancelled)
    );
    // The other jobs that ran while the row was locked finished as usual.
    let worst_us: i64 = db.scalar(&format!(
        "SELECT COALESCE(MAX(TIMESTAMPDIFF(MICROSECOND, started_at, finished_at)), 0) FROM jobs \
         WHERE id <> {locked} AND started_at BETWEEN '{held_since}' AND '{held_until}'"
    ));
    eprintln!(
        "row lock: held {HOLD:?}; {done_during} other jobs DONE! meanwhile; the slowest of them \
         took {:.0} ms from start to DONE! (its task: 100 ms)",
        worst_us as f64 / 1000.0
    );
    assert!(
        done_during >= 20,
        "only {done_during} jobs finished while one row was locked"
    );
    assert!(
        worst_us < 2_000_000,
        "a job that ran while another's row was locked took {worst_us} µs to finish"
    );
}

// ---------------------------------------------------------------------------
// 3. Finished jobs cancelled after an outage
// ---------------------------------------------------------------------------

/// Regression: the database gone for longer than JOB_TIMEOUT while short
/// jobs finished: their DONE! waited for it, and a canceller (the peer's,
/// or their own replica's) cancelled them first.
#[test]
fn jobs_that_finished_during_an_outage_are_not_cancelled() {
    let _serial = serial();
    const OUTAGE: Duration = Duration::from_secs(4);
    let db = TestDb::new("fault_outage_finished");
    install_audit(&db);
    let names = ["finish-a", "finish-b"];
    let proxies = [
        Proxy::start(&host_port(db.url())),
        Proxy::start(&host_port(db.url())),
    ];
    let mut services: Vec<Service> = names
        .iter()
        .zip(&proxies)
        .map(|(name, proxy)| {
            let mut env = replica(name, "4", "4", "2s");
            env.push(("CANCELLER_POLL_INTERVAL", "50ms"));
            let url = via(db.url(), proxy.addr());
            Service::spawn(&["run"], &service_env(&url, &env))
        })
        .collect();
    let mut refs: Vec<&mut Service> = services.iter_mut().collect();
    wait_running(
        &db,
        &mut refs,
        secs(20),
        "both registered",
        |_| worker_rows(&db).len() == 2,
        String::new,
    );
    insert_many(&db, 160, 1000 * MS);
    wait_running(
        &db,
        &mut refs,
        secs(20),
        "jobs running on both",
        |_| owned(&db, names[0], STARTED) >= 2 && owned(&db, names[1], STARTED) >= 2,
        String::new,
    );
    for p in &proxies {
        p.cut();
    }
    let cut_at = Instant::now();
    wait_running(
        &db,
        &mut refs,
        OUTAGE + secs(2),
        "the outage to last",
        |_| cut_at.elapsed() >= OUTAGE,
        String::new,
    );
    // b comes back first; a, a moment later (less than WORKER_DEAD_AFTER):
    // a's finished tasks' DONE! still waits while b's canceller looks at
    // a's runs past their deadline.
    proxies[1].restore();
    std::thread::sleep(ms(700));
    proxies[0].restore();
    wait_running(
        &db,
        &mut refs,
        secs(120),
        "every job final",
        |_| all_final(&db),
        String::new,
    );
    drop(refs);
    stop_all(services, secs(30));

    assert_audit_sound(&db);
    let not_done = db.jobs_where("status <> 'DONE!'");
    assert!(
        not_done.is_empty(),
        "{} jobs whose 1 s tasks finished did not end DONE! after a {OUTAGE:?} outage:\n{}",
        not_done.len(),
        render_jobs(&not_done)
    );
}

// ---------------------------------------------------------------------------
// 4. Statuses compared case-insensitively
// ---------------------------------------------------------------------------

/// Regression: the table's collation made 'queued!' = 'QUEUED!': a client's
/// own 'queued!' rows were put back and run, 'started!' was cancelled, an
/// old 'done!' was deleted by the pruner, and `stats` counted DONE! rows as
/// "other".
#[test]
fn a_clients_own_statuses_are_left_alone_whatever_their_case() {
    let db = TestDb::new("fault_case");
    let markers = ["queued!", "Queued!", "started!", "done!", "Failed!"];
    let ids: Vec<u64> = markers
        .iter()
        .map(|m| {
            db.exec(&format!(
                "INSERT INTO jobs (object_id, sleep, status, queued_at, started_at, finished_at) \
                 VALUES (1, 0, '{m}', NOW(6) - INTERVAL 30 DAY, NOW(6) - INTERVAL 30 DAY, \
                 NOW(6) - INTERVAL 30 DAY)"
            ));
            db.scalar("SELECT MAX(id) FROM jobs")
        })
        .collect();
    let real = db.insert_jobs(&[(Some(2), Some(0)); 5]);
    let before: Vec<Job> = ids.iter().map(|id| db.job(*id)).collect();
    let mut svc = Service::run(
        &db,
        &[
            ("RETENTION", "1d"),
            ("PRUNE_INTERVAL", "50ms"),
            ("JOB_TIMEOUT", "1s"),
        ],
    );
    wait_until_or(
        secs(20),
        "the real jobs DONE!",
        || real.iter().all(|id| db.job(*id).status() == DONE),
        || svc.logs(),
    );
    // Long enough for the canceller (1 s timeout), the rescuer and the
    // pruner to have looked many times.
    wait_until(secs(10), "a few seconds of the service running", || {
        svc.age() > secs(4)
    });
    assert!(svc.is_running(), "{}", svc.logs());
    for (id, was) in ids.iter().zip(&before) {
        assert_eq!(
            db.count(&format!("id = {id}")),
            1,
            "a client's row was deleted: {was:?}"
        );
        let now = db.job(*id);
        assert_eq!(
            (now.status.as_deref(), &now.queued_at, &now.finished_at),
            (was.status.as_deref(), &was.queued_at, &was.finished_at),
            "a client's row was changed"
        );
    }
    let stats = run_cmd(&["stats"], &[("DATABASE_URL", db.url())], secs(30));
    assert_eq!(stats.code, Some(0), "{}", stats.describe());
    let line = |label: &str| {
        stats
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("DONE!").ends_with(" 5"), "stats:\n{}", stats.stdout);
    assert!(line("other").ends_with(" 5"), "stats:\n{}", stats.stdout);
    drop(svc);
}

// ---------------------------------------------------------------------------
// 5. One HTTP request aborted the process
// ---------------------------------------------------------------------------

/// Regression: `GET /healthz` with `Content-Length: 99999999999` made the
/// HTTP library allocate that much: the process aborted.
#[test]
fn any_request_to_the_health_port_gets_an_answer_or_a_closed_connection() {
    let db = TestDb::new("fault_http");
    let mut svc = Service::run(&db, &[("METRICS_ADDR", "127.0.0.1:0")]);
    let addr = http_addr(&mut svc);
    let send = |raw: &[u8]| -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(secs(10))).unwrap();
        let _ = s.write_all(raw);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let huge = send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n");
    assert!(huge.is_empty() || huge.starts_with("HTTP/1.1 4"), "{huge}");
    let long_head = format!("GET /healthz?{} HTTP/1.1\r\n\r\n", "x".repeat(1 << 20));
    let long = send(long_head.as_bytes());
    assert!(
        long.is_empty() || long.starts_with("HTTP/1.1 4"),
        "{}",
        &long[..long.len().min(200)]
    );
    for raw in [
        &b"POST /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n"[..],
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    ] {
        let answer = send(raw);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }
    assert!(svc.is_running(), "the service died:\n{}", svc.logs());
    assert_eq!(get(addr, "/healthz").expect("healthz").status, 200);
    assert_no_panic(&svc);
}

// ---------------------------------------------------------------------------
// 6. Settings accepted that could not work
// ---------------------------------------------------------------------------

/// Regression: `DB_POOL_SIZE=1` ran no job and `=3` starved the heartbeat;
/// `JOB_TIMEOUT=1000000y` (or a row's timeout of 10^15 ms) failed every job
/// with a raw ERROR 1690/1441.
#[test]
fn settings_that_cannot_work_are_refused_and_huge_timeouts_fail_clearly() {
    let db = TestDb::new("fault_settings");
    for (var, value, says) in [
        ("DB_POOL_SIZE", "1", "at least 8"),
        ("DB_POOL_SIZE", "3", "at least 8"),
        ("JOB_TIMEOUT", "1000000y", "100 years"),
        ("RETENTION", "1000000y", "100 years"),
        ("SHUTDOWN_TIMEOUT", "100000y", "100 years"),
        ("DB_STATEMENT_TIMEOUT", "1s", "at least 2s"),
    ] {
        let out = run_cmd(&["run"], &service_env(db.url(), &[(var, value)]), secs(20));
        assert_eq!(out.code, Some(2), "{var}={value}:\n{}", out.describe());
        assert!(
            out.stderr.contains(var) && out.stderr.contains(says),
            "{var}={value} should name the limit ({says}):\n{}",
            out.describe()
        );
    }
    // The smallest pool the service's own threads need runs jobs, with a
    // heartbeat nobody starves.
    db.exec("INSERT INTO jobs (object_id, sleep, timeout) VALUES (1, 0, 1000000000000000)");
    let huge: u64 = db.scalar("SELECT MAX(id) FROM jobs");
    let fine = db.insert_jobs(&[(Some(2), Some(50 * MS)); 40]);
    let svc = Service::run(&db, &[("DB_POOL_SIZE", "8"), ("JOB_CONSUMERS", "8")]);
    wait_until_or(
        secs(30),
        "every job final",
        || all_final(&db),
        || svc.logs(),
    );
    for id in &fine {
        assert_eq!(db.job(*id).status(), DONE, "{}", svc.logs());
    }
    let job = db.job(huge);
    assert_eq!(job.status(), FAILED, "{job:?}");
    assert!(job.error_lower().contains("100 years"), "{job:?}");
    assert!(
        !job.error_lower().contains("error 1"),
        "a raw server error: {job:?}"
    );
    assert!(!svc.stderr().contains("declared dead"), "{}", svc.logs());
}

// ---------------------------------------------------------------------------
// 7. Lock waits reported as outages
// ---------------------------------------------------------------------------

/// Regression: an `ALTER TABLE` queued behind a client's open transaction
/// (a metadata-lock wait) stalled everything, was logged as "database
/// unavailable (... os error 11)", and left server threads piling up, more
/// than the pool holds.
#[test]
fn a_metadata_lock_wait_is_named_and_leaves_no_sessions_behind() {
    let _serial = serial();
    const HOLD: Duration = Duration::from_secs(10);
    let server = PrivateServer::start("mdl", &[]);
    let db = TestDb::new_on(server.server(), "fault_mdl");
    server.create_user("bp_mdl", "pw", db.name());
    insert_many(&db, 2000, 20 * MS);
    let url = server.url_as("bp_mdl", "pw", db.name());
    let pool = 12;
    let env = service_env(
        &url,
        &[
            ("DB_POOL_SIZE", "12"),
            ("DB_STATEMENT_TIMEOUT", "4s"),
            ("JOB_CONSUMERS", "4"),
            ("RATE_LIMIT", "0"),
        ],
    );
    let mut svc = Service::spawn(&["run"], &env);
    wait_until_or(
        secs(20),
        "jobs running",
        || db.count_status(DONE) >= 10,
        || svc.logs(),
    );
    // A client's transaction holds the table; an ALTER TABLE queues behind
    // it, and every new statement on the table queues behind the ALTER.
    let mut reader = server.admin();
    reader.query_drop(format!("USE `{}`", db.name())).unwrap();
    reader.query_drop("BEGIN").unwrap();
    reader.query_drop("SELECT id FROM jobs LIMIT 1").unwrap();
    let alter_db = db.name().to_string();
    let alter_server = server.admin();
    let alter = std::thread::spawn(move || {
        let mut c = alter_server;
        c.query_drop(format!(
            "ALTER TABLE `{alter_db}`.jobs ADD COLUMN fault_mdl INT NULL"
        ))
    });
    let held_at = Instant::now();
    let mut most = 0;
    while held_at.elapsed() < HOLD {
        let sessions: u64 = server
            .admin()
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'bp_mdl'",
            )
            .unwrap()
            .unwrap();
        most = most.max(sessions);
        assert!(svc.is_running(), "{}", svc.logs());
        std::thread::sleep(ms(100));
    }
    reader.query_drop("COMMIT").unwrap();
    alter.join().unwrap().expect("the ALTER TABLE completes");
    wait_until_or(
        secs(60),
        "every job final",
        || all_final(&db),
        || svc.logs(),
    );
    let log = svc.stderr();
    svc.sigterm();
    assert_eq!(svc.wait_exit(secs(30)).code(), Some(0), "{}", svc.logs());

    eprintln!(
        "metadata lock: held {HOLD:?}; at most {most} server sessions of the service (pool {pool} + 3 of its own)"
    );
    assert!(
        log.contains("lock wait"),
        "the wait is not named:\n{}",
        tail(&log, 60)
    );
    assert!(
        !log.contains("database unavailable"),
        "a lock wait was told as an outage:\n{}",
        tail(&log, 60)
    );
    assert!(
        most <= pool + 3,
        "{most} server sessions for a pool of {pool} (plus the heartbeat's, the starter's and the finisher's)"
    );
    assert_eq!(db.count_status(DONE), 2000);
}

// ---------------------------------------------------------------------------
// 8. Smaller ones
// ---------------------------------------------------------------------------

/// Regression: `/readyz` stayed 200 after `DROP TABLE jobs`.
#[test]
fn readyz_fails_while_the_jobs_table_is_gone() {
    let db = TestDb::new("fault_dropped");
    let mut svc = Service::run(&db, &[("METRICS_ADDR", "127.0.0.1:0")]);
    let addr = http_addr(&mut svc);
    wait_until_or(
        secs(20),
        "ready",
        || get(addr, "/readyz").is_ok_and(|a| a.status == 200),
        || svc.logs(),
    );
    db.exec("DROP TABLE jobs");
    wait_until_or(
        secs(20),
        "/readyz to fail",
        || get(addr, "/readyz").is_ok_and(|a| a.status == 503 && a.body.contains("jobs")),
        || svc.logs(),
    );
    assert_eq!(
        get(addr, "/healthz").unwrap().status,
        200,
        "alive: a restart would not help"
    );
    assert_eq!(db.migrate().code, Some(0));
    wait_until_or(
        secs(20),
        "ready again",
        || get(addr, "/readyz").is_ok_and(|a| a.status == 200),
        || svc.logs(),
    );
    assert_no_panic(&svc);
}

/// Regression: the first `run` after upgrading a table of the original
/// service deleted its old final rows without a word.
#[test]
fn an_upgrade_says_that_old_rows_will_be_pruned() {
    let db = TestDb::empty("fault_upgrade_prune");
    db.exec(ORIGINAL_JOBS_TABLE);
    db.exec(
        "INSERT INTO jobs (object_id, sleep, status, finished_at) VALUES \
         (10, 1, 'DONE!', NOW(6) - INTERVAL 30 DAY), (10, 1, 'DONE!', NOW(6) - INTERVAL 20 DAY)",
    );
    let out = db.migrate();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("2 of its final jobs") && out.stderr.contains("RETENTION"),
        "migrate should say what run will delete:\n{}",
        out.describe()
    );
    let svc = Service::run(&db, &[("PRUNE_INTERVAL", "100ms")]);
    wait_until_or(
        secs(20),
        "the old rows pruned",
        || db.count("TRUE") == 0,
        || svc.logs(),
    );
    assert!(
        svc.stderr().contains("will delete 2 final jobs"),
        "{}",
        svc.logs()
    );
}

/// Regression: a STARTED! row without `started_at` (written by an older
/// service) was never cancelled.
#[test]
fn a_started_row_without_started_at_is_cancelled() {
    let db = TestDb::new("fault_no_started_at");
    db.exec(
        "INSERT INTO jobs (object_id, sleep, status, queued_at) \
         VALUES (1, NULL, 'STARTED!', NOW(6) - INTERVAL 1 MINUTE)",
    );
    let id: u64 = db.scalar("SELECT MAX(id) FROM jobs");
    let svc = Service::run(&db, &[("JOB_TIMEOUT", "1s")]);
    wait_until_or(
        secs(20),
        "the row cancelled",
        || db.job(id).status() == CANCELLED,
        || svc.logs(),
    );
    let job = db.job(id);
    assert_eq!(job.finished_at, job.cancelled_at);
    assert!(job.error_lower().contains("job_timeout"), "{job:?}");
}

/// Regression: `migrate` needed the CREATE privilege even when nothing was
/// to change, so an account that may only read and write could not run
/// the init container.
#[test]
fn migrate_runs_with_an_account_that_may_only_read_and_write() {
    let server = PrivateServer::start("dml", &[]);
    let db = TestDb::new_on(server.server(), "fault_dml");
    server.exec("CREATE USER 'bp_dml'@'%' IDENTIFIED BY 'pw'");
    server.exec(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON `{}`.* TO 'bp_dml'@'%'",
        db.name()
    ));
    let url = server.url_as("bp_dml", "pw", db.name());
    let out = run_cmd(&["migrate"], &[("DATABASE_URL", url.as_str())], secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("already up to date"),
        "{}",
        out.describe()
    );
}

/// Regression: two stop signals within a moment (coreutils `timeout`
/// signals the child and then its process group) exited at once instead of
/// draining.
#[test]
fn one_stop_signal_sent_twice_still_drains() {
    let db = TestDb::new("fault_double_signal");
    let running = db.insert_job(Some(1), Some(1_500 * MS));
    let waiting = db.insert_jobs(&[(Some(2), Some(0)); 3]);
    let mut svc = Service::run(&db, &[("JOB_CONSUMERS", "1"), ("RATE_LIMIT", "0")]);
    wait_until_or(
        secs(20),
        "the long job started",
        || db.job(running).status() == STARTED,
        || svc.logs(),
    );
    // The second a few milliseconds after the first (sent together, two
    // signals may merge into one before they are delivered).
    svc.sigterm();
    std::thread::sleep(ms(5));
    svc.sigterm();
    let status = svc.wait_exit(secs(20));
    assert_eq!(status.code(), Some(0), "{}", svc.logs());
    assert_eq!(
        db.job(running).status(),
        DONE,
        "drained: {:?}",
        db.job(running)
    );
    for id in waiting {
        assert!(
            matches!(db.job(id).status(), "NULL" | DONE),
            "{:?}",
            db.job(id)
        );
    }
}

// ---------------------------------------------------------------------------
// 9. Errors classified by what they say
// ---------------------------------------------------------------------------

/// Regression: errors about the server's state failed or cancelled jobs (on
/// Galera: "cannot start: the database refused it (... 1180 ...)", "the
/// database refused its DONE!"). Here the server turns read-only (1290) for
/// a few seconds: an outage, waited out.
#[test]
fn a_server_that_turns_read_only_is_waited_out() {
    let _serial = serial();
    let server = PrivateServer::start("read_only", &[]);
    let db = TestDb::new_on(server.server(), "fault_read_only");
    server.create_user("bp_ro", "pw", db.name());
    install_audit(&db);
    insert_many(&db, 600, 20 * MS);
    let url = server.url_as("bp_ro", "pw", db.name());
    let mut svc = Service::spawn(
        &["run"],
        &service_env(
            &url,
            &[
                ("JOB_CONSUMERS", "4"),
                ("RATE_LIMIT", "0"),
                ("JOB_TIMEOUT", "3s"),
            ],
        ),
    );
    wait_until_or(
        secs(20),
        "jobs running",
        || db.count_status(DONE) >= 20,
        || svc.logs(),
    );
    server.exec("SET GLOBAL read_only = 1");
    std::thread::sleep(secs(4));
    server.exec("SET GLOBAL read_only = 0");
    wait_until_or(
        secs(60),
        "every job final",
        || all_final(&db),
        || svc.logs(),
    );
    svc.sigterm();
    assert_eq!(svc.wait_exit(secs(30)).code(), Some(0), "{}", svc.logs());
    assert_audit_sound(&db);
    let not_done = db.jobs_where("status <> 'DONE!'");
    assert!(
        not_done.is_empty(),
        "a read-only server failed or cancelled jobs:\n{}",
        render_jobs(&not_done)
    );
}
