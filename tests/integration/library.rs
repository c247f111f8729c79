//! In-process tests of the library: each publisher's `run_once` and the
//! statements behind it, against a real database per test.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use background_processing::cancel::Registry;
use background_processing::config::Config;
use background_processing::consumer::canceller::Canceller;
use background_processing::db::Db;
use background_processing::db::claim::{
    Source, claim_scheduled_sql, claim_select_sql, claimable_sql,
};
use background_processing::db::jobs::{
    Dead, Locks, dead_select_sql, find_lost_sql, job_finish, job_start, job_start_many, prune_sql,
    start_many_skip_locked_sql, start_many_sql,
};
use background_processing::db::migrate::migrate;
use background_processing::db::owners::{
    CANCEL_OWNED_SQL, OWNERS_ACTIVE_SQL, RELEASE_QUEUED_SQL, RELEASE_UNOWNED_SQL,
    job_release_queued, rescue_queued_sql,
};
use background_processing::job::{Job, Run};
use background_processing::maintenance::heartbeat::{Heartbeat, HeartbeatConfig};
use background_processing::maintenance::rescuer::Rescuer;
use background_processing::maintenance::watcher::Watcher;
use background_processing::publisher::canceller::CancellerPublisher;
use background_processing::publisher::jobs::{JobsPublisher, JobsPublisherConfig};
use background_processing::runtime::liveness::Liveness;
use background_processing::service::Service;
use background_processing::task::Tasks;
use crossbeam_channel::{RecvTimeoutError, bounded};
use mysql::prelude::Queryable;
use mysql::{Row, params};

use crate::testdb::{
    CANCELLED, DONE, ORIGINAL_JOBS_TABLE, QUEUED, STARTED, TestDb, config_from, wait_until,
};

fn config(db: &TestDb, worker: &str, vars: &[(&str, &str)]) -> Config {
    config_from(
        &[
            ("DATABASE_URL", db.url()),
            ("WORKER_NAME", worker),
            ("JOBS_POLL_INTERVAL", "50ms"),
            ("CANCELLER_POLL_INTERVAL", "50ms"),
            ("HEARTBEAT_INTERVAL", "100ms"),
            ("WORKER_DEAD_AFTER", "1s"),
            ("RATE_LIMIT", "0"),
            ("METRICS_ADDR", ""),
        ],
        vars,
    )
}

/// What the loops of one replica share, as the service builds it.
struct Parts {
    config: Config,
    db: Db,
    liveness: Arc<Liveness>,
    registry: Arc<Registry>,
}

fn shared(db: &TestDb, worker: &str, vars: &[(&str, &str)]) -> Arc<Parts> {
    let config = config(db, worker, vars);
    let db = Db::new(&config.database_url, config.db_pool_size).expect("pool");
    Arc::new(Parts {
        config,
        db,
        liveness: Arc::default(),
        registry: Arc::default(),
    })
}

fn publisher(p: &Parts, tx: crossbeam_channel::Sender<Job>) -> JobsPublisher {
    JobsPublisher::new(
        JobsPublisherConfig::new(&p.config, &["sleep"]),
        p.db.clone(),
        Arc::default(),
        tx,
    )
}

/// What the binary claims from: the default queue, the sleep kind.
fn sleep_jobs(limit: usize) -> Vec<Source> {
    vec![Source::new("default", "sleep", limit)]
}

fn insert_rows(db: &TestDb, n: usize, columns: &str, values: &str) {
    let mut conn = db.conn();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let rows = vec![format!("({values})"); chunk.len()].join(",");
        conn.query_drop(format!("INSERT INTO jobs ({columns}) VALUES {rows}"))
            .unwrap();
    }
}

#[test]
fn two_publishers_never_claim_the_same_job() {
    let db = TestDb::new("two_publishers");
    insert_rows(&db, 3000, "object_id, sleep", "1, 0");
    let claim_all = |worker: &'static str| {
        let shared = shared(&db, worker, &[("CHANNEL_CAPACITY", "50")]);
        let (tx, rx) = bounded(50);
        let publisher = publisher(&shared, tx);
        move || {
            let mut ids = Vec::new();
            loop {
                let claimed = publisher.run_once().expect("claim");
                ids.extend(rx.try_iter().map(|j| j.id));
                if claimed.claimed == 0 {
                    return ids;
                }
            }
        }
    };
    let (a, b) = (claim_all("a"), claim_all("b"));
    let (ids_a, ids_b) = std::thread::scope(|s| {
        let a = s.spawn(a);
        let b = s.spawn(b);
        (a.join().unwrap(), b.join().unwrap())
    });
    let set_a: HashSet<u64> = ids_a.iter().copied().collect();
    let set_b: HashSet<u64> = ids_b.iter().copied().collect();
    assert_eq!(set_a.len(), ids_a.len(), "publisher a got a job twice");
    assert_eq!(set_b.len(), ids_b.len(), "publisher b got a job twice");
    assert!(
        set_a.is_disjoint(&set_b),
        "a job was claimed by both publishers"
    );
    assert_eq!(set_a.len() + set_b.len(), 3000, "every job claimed once");
    assert!(
        !ids_a.is_empty() && !ids_b.is_empty(),
        "both publishers took part"
    );
    assert_eq!(db.count_status(QUEUED), 3000);
    let owned_a: u64 = db.scalar("SELECT COUNT(*) FROM jobs WHERE owner = 'a' AND lease = 1");
    assert_eq!(
        owned_a as usize,
        set_a.len(),
        "rows carry their claimer and lease"
    );
}

#[test]
fn a_claim_takes_no_more_than_the_free_room() {
    let db = TestDb::new("claim_room");
    insert_rows(&db, 30, "object_id, sleep", "1, 0");
    let shared = shared(&db, "w", &[]);
    let (tx, rx) = bounded(10);
    tx.send(Job::default()).unwrap();
    let publisher = publisher(&shared, tx);
    let claimed = publisher.run_once().unwrap();
    assert_eq!((claimed.room, claimed.claimed), (9, 9));
    assert!(claimed.filled());
    assert_eq!(rx.len(), 10);
    assert_eq!(
        publisher.run_once().unwrap().claimed,
        0,
        "full channel: nothing claimed"
    );
    assert_eq!(db.count_status(QUEUED), 9);
}

/// Rows in every status, so the planner has real choices to make.
fn fill_every_status(db: &TestDb, per_status: usize) {
    insert_rows(db, per_status, "object_id, sleep", "1, 0");
    // New rows of every shape the claim must skip or order: scheduled for
    // later, scheduled in the past, of higher and lower priority.
    insert_rows(
        db,
        per_status,
        "object_id, sleep, run_at, priority",
        "1, 0, NOW(6) + INTERVAL 1 DAY, 5",
    );
    insert_rows(
        db,
        per_status,
        "object_id, sleep, run_at, priority",
        "1, 0, NOW(6) - INTERVAL 1 DAY, -5",
    );
    for status in [
        "QUEUED!",
        "STARTED!",
        "DONE!",
        "CANCELLED!",
        "FAILED!",
        "MINE",
    ] {
        insert_rows(
            db,
            per_status,
            "object_id, sleep, status, queued_at, started_at, finished_at, owner, lease, deadline_at",
            &format!(
                "1, 0, '{status}', NOW(6), NOW(6), NOW(6), 'w{}', 1, NOW(6) + INTERVAL 1 HOUR",
                per_status % 7
            ),
        );
    }
    db.exec("ANALYZE TABLE jobs");
}

fn explain(db: &TestDb, sql: &str, params: mysql::Params) -> Vec<(String, String, String, String)> {
    let rows: Vec<Row> = db.conn().exec(format!("EXPLAIN {sql}"), params).unwrap();
    rows.into_iter()
        .map(|mut r| {
            let get = |r: &mut Row, c: &str| -> String {
                r.take_opt::<Option<String>, _>(c)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or_default()
            };
            (
                get(&mut r, "table"),
                get(&mut r, "type"),
                get(&mut r, "key"),
                get(&mut r, "Extra"),
            )
        })
        .collect()
}

#[test]
fn every_claim_and_scan_query_uses_an_index_range() {
    let db = TestDb::new("explain");
    fill_every_status(&db, 3000);
    let runs = [Run { id: 1, lease: 1 }, Run { id: 5, lease: 1 }];
    let owner = || params! { "owner" => "w1" };
    let queries: Vec<(&str, String, mysql::Params)> = vec![
        (
            "claim",
            claim_select_sql(&sleep_jobs(100)),
            mysql::Params::Empty,
        ),
        (
            "claim continued",
            claim_select_sql(&[Source {
                after: Some((0, 2500)),
                ..Source::new("default", "sleep", 100)
            }]),
            mysql::Params::Empty,
        ),
        (
            "claimable probe",
            claimable_sql(&sleep_jobs(1)),
            mysql::Params::Empty,
        ),
        (
            "claim scheduled",
            claim_scheduled_sql(&sleep_jobs(100)),
            mysql::Params::Empty,
        ),
        (
            "start batch",
            start_many_sql(2),
            mysql::Params::Positional(vec![
                10_000u64.into(),
                1u64.into(),
                2u64.into(),
                1u64.into(),
                1u64.into(),
                2u64.into(),
                1u64.into(),
            ]),
        ),
        (
            "start batch skipping locked rows",
            start_many_skip_locked_sql(2),
            mysql::Params::Positional(vec![
                1u64.into(),
                2u64.into(),
                10_000u64.into(),
                1u64.into(),
                1u64.into(),
                2u64.into(),
                1u64.into(),
            ]),
        ),
        (
            "canceller",
            dead_select_sql(Duration::from_secs(10), 100, "w1"),
            mysql::Params::Empty,
        ),
        (
            "rescuer owners",
            OWNERS_ACTIVE_SQL.into(),
            mysql::Params::Empty,
        ),
        ("release queued", RELEASE_QUEUED_SQL.into(), owner()),
        (
            "rescue queued",
            rescue_queued_sql(Duration::from_secs(10)),
            owner(),
        ),
        (
            "cancel owned",
            CANCEL_OWNED_SQL.into(),
            params! { "owner" => "w1", "reason" => "r" },
        ),
        (
            "release unowned",
            RELEASE_UNOWNED_SQL.into(),
            mysql::Params::Empty,
        ),
        ("watcher", find_lost_sql(&runs), mysql::Params::Empty),
        (
            "pruner",
            prune_sql(Duration::from_secs(60), 1000),
            mysql::Params::Empty,
        ),
    ];
    for (what, sql, params) in queries {
        let plan = explain(&db, &sql, params);
        assert!(!plan.is_empty(), "{what}: no plan");
        for (table, kind, key, extra) in &plan {
            if table.starts_with("<union") || table.starts_with("<derived") {
                // The result of UNION ALL's index ranges, and the rows a
                // skip-locked write found free (read by its own row here),
                // not tables.
                continue;
            }
            assert_ne!(kind, "ALL", "{what}: full table scan\n{sql}\n{plan:?}");
            assert!(
                !extra.contains("filesort"),
                "{what}: filesort\n{sql}\n{plan:?}"
            );
            assert!(
                key.starts_with("jobs_") || key == "PRIMARY" || kind.is_empty(),
                "{what}: no index used\n{sql}\n{plan:?}"
            );
        }
    }
}

/// `(table, type, key, rows, Extra)` of each line of the plan of `sql`.
fn plan_rows(db: &TestDb, sql: &str) -> Vec<(String, String, String, u64, String)> {
    let rows: Vec<Row> = db.conn().query(format!("EXPLAIN {sql}")).unwrap();
    rows.into_iter()
        .map(|mut r| {
            let text = |r: &mut Row, c: &str| -> String {
                r.take_opt::<Option<String>, _>(c)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or_default()
            };
            let rows = r
                .take_opt::<Option<u64>, _>("rows")
                .and_then(Result::ok)
                .flatten()
                .unwrap_or(0);
            (
                text(&mut r, "table"),
                text(&mut r, "type"),
                text(&mut r, "key"),
                rows,
                text(&mut r, "Extra"),
            )
        })
        .collect()
}

#[test]
fn claims_read_only_their_own_queue_and_kind_beside_a_million_rows_of_others() {
    let db = TestDb::new("explain_routed");
    // A million new rows of another queue (paused), a million of another
    // kind in this queue, and the few this replica would claim.
    db.exec(
        "INSERT INTO jobs (object_id, sleep, queue) SELECT seq, 0, 'bulk' FROM seq_1_to_1000000",
    );
    db.exec(
        "INSERT INTO jobs (object_id, sleep, kind) SELECT seq, 0, 'render' FROM seq_1_to_1000000",
    );
    db.exec("INSERT INTO jobs (object_id, sleep) SELECT seq, 0 FROM seq_1_to_500");
    db.exec(
        "INSERT INTO jobs (object_id, sleep, queue, kind, run_at) \
         SELECT seq, 0, 'mail', 'tally', NOW(6) - INTERVAL seq SECOND FROM seq_1_to_500",
    );
    db.exec("INSERT INTO queues (name, paused) VALUES ('bulk', 1)");
    db.exec("ANALYZE TABLE jobs");
    let mine = [
        Source::new("default", "sleep", 100),
        Source::new("default", "tally", 100),
        Source::new("mail", "sleep", 100),
        Source::new("mail", "tally", 100),
    ];
    let continued = [Source {
        after: Some((0, 250)),
        ..Source::new("default", "sleep", 100)
    }];
    let paused = [Source::new("bulk", "sleep", 100)];
    let shapes: Vec<(&str, String)> = vec![
        ("claim", claim_select_sql(&mine)),
        ("claim continued", claim_select_sql(&continued)),
        ("claim scheduled", claim_scheduled_sql(&mine)),
        ("claimable probe", claimable_sql(&mine)),
        ("claim of a paused queue", claim_select_sql(&paused)),
        ("claimable probe of a paused queue", claimable_sql(&paused)),
    ];
    for (what, sql) in shapes {
        let plan = plan_rows(&db, &sql);
        assert!(
            what.contains("paused") || plan.iter().any(|p| p.0 == "jobs"),
            "{what}: no plan reading jobs: {plan:?}"
        );
        for (table, kind, key, rows, extra) in &plan {
            if table != "jobs" {
                // The UNION's result, the queues lookup, or a paused
                // queue's part, which the optimizer drops ("Impossible
                // WHERE"): no row of jobs is read.
                continue;
            }
            assert_ne!(kind, "ALL", "{what}: full table scan\n{sql}\n{plan:?}");
            assert!(
                !extra.contains("filesort"),
                "{what}: filesort\n{sql}\n{plan:?}"
            );
            assert_eq!(key, "jobs_new_routed", "{what}\n{sql}\n{plan:?}");
            assert!(
                *rows <= 10_000,
                "{what}: estimated {rows} rows read, the other queue's and kind's among them\n\
                 {sql}\n{plan:?}"
            );
        }
    }
    // The paused queue's rows are not read at all.
    let plan = plan_rows(&db, &claim_select_sql(&paused));
    assert!(
        plan.iter().all(|p| p.0 != "jobs") && plan.iter().any(|p| p.4.contains("Impossible WHERE")),
        "a paused queue's claim reads nothing: {plan:?}"
    );
}

/// A publisher claims exactly one job, the one new row (sleep 1000).
fn claims_the_one_new_job(db: &TestDb) {
    let (tx, rx) = bounded(10);
    let claimed = publisher(&shared(db, "w", &[]), tx).run_once().unwrap();
    assert_eq!(claimed.claimed, 1);
    assert_eq!(rx.recv().unwrap().sleep, Some(1000));
}

#[test]
fn migrate_upgrades_a_table_made_by_the_original_service() {
    let db = TestDb::empty("upgrade");
    db.exec(ORIGINAL_JOBS_TABLE);
    db.exec(
        "INSERT INTO jobs (object_id, sleep, status) VALUES (10, 1, 'DONE!'), (10, 1000, NULL)",
    );
    let report = migrate(db.url(), false).expect("migrate");
    assert_eq!(
        report.added_columns,
        [
            "error",
            "owner",
            "lease",
            "kind",
            "payload",
            "priority",
            "run_at",
            "attempts",
            "max_attempts",
            "timeout",
            "deadline_at",
            "errors",
            "is_new",
            "is_running",
            "held_by",
            "final_at",
            "queue",
            "cancel_requested_at",
            "cancel_pending",
            "unique_key",
            "unique_live",
        ]
    );
    assert_eq!(report.added_indexes.len(), 5);
    let again = migrate(db.url(), false).expect("migrate twice");
    assert!(again.added_columns.is_empty() && again.added_indexes.is_empty());
    // The old rows are intact and the new one is claimable.
    assert_eq!(db.count_status(DONE), 1);
    claims_the_one_new_job(&db);
}

#[test]
fn migrate_replaces_the_status_indexes_of_the_previous_version_in_two_steps() {
    let db = TestDb::new("upgrade_indexes");
    // The indexes of earlier versions: those beginning with status,
    // jobs_new, which did not route by queue and kind, and jobs_running,
    // which the held jobs' index took over.
    db.exec(
        "ALTER TABLE jobs DROP INDEX jobs_held_by, \
         DROP INDEX jobs_final_at, ADD INDEX jobs_claim_due (status, run_at, priority DESC, id), \
         ADD INDEX jobs_deadline (status, deadline_at, started_at), \
         ADD INDEX jobs_status_owner (status, owner), \
         ADD INDEX jobs_status_finished_at (status, finished_at), \
         ADD INDEX jobs_new (is_new, run_at, priority DESC, id), \
         ADD INDEX jobs_running (is_running, deadline_at, started_at)",
    );
    let previous = [
        "jobs_claim_due",
        "jobs_deadline",
        "jobs_status_owner",
        "jobs_status_finished_at",
        "jobs_new",
        "jobs_running",
    ];
    // (jobs_new_routed, jobs_cancel and jobs_unique stay, as if the previous
    // version's table had them too: the test reads the drops, not those adds.)
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (10, 1000)");
    let indexes = || -> u64 {
        db.scalar(
            "SELECT COUNT(DISTINCT INDEX_NAME) FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs' AND INDEX_NAME <> 'PRIMARY'",
        )
    };

    // During a rolling update: this version's indexes are added, the
    // previous version's stay for its replicas.
    let report = migrate(db.url(), false).expect("migrate");
    assert_eq!(report.added_indexes, ["jobs_held_by", "jobs_final_at"]);
    assert!(report.dropped_indexes.is_empty());
    assert_eq!(report.kept_replaced, previous);
    assert_eq!(indexes(), 11);
    claims_the_one_new_job(&db);

    // Once every replica runs this version.
    let report = migrate(db.url(), true).expect("migrate --drop-replaced");
    assert!(report.added_indexes.is_empty());
    assert_eq!(report.dropped_indexes, previous);
    assert!(report.kept_replaced.is_empty());
    assert_eq!(indexes(), 5, "only the five current indexes remain");
}

#[test]
fn the_service_refuses_to_start_without_the_index_its_claim_names() {
    let db = TestDb::new("missing_index");
    db.exec("ALTER TABLE jobs DROP INDEX jobs_new_routed");
    let err = match Service::start(config(&db, "w", &[]), Tasks::with_sleep()) {
        Ok(_) => panic!("started without jobs_new_routed"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("index jobs.jobs_new_routed is missing") && err.contains("migrate"),
        "{err}"
    );
}

#[test]
fn the_canceller_cancels_a_dead_job_once() {
    let db = TestDb::new("canceller_once");
    db.exec(
        "INSERT INTO jobs (object_id, sleep, status, queued_at, started_at, owner, lease) VALUES \
         (1, NULL, 'STARTED!', NOW(6) - INTERVAL 2 SECOND, NOW(6) - INTERVAL 2 SECOND, 'x', 3), \
         (2, NULL, 'STARTED!', NOW(6), NOW(6), 'x', 1)",
    );
    let shared = shared(&db, "w", &[("JOB_TIMEOUT", "1s")]);
    let (tx, rx) = bounded(10);
    let publisher = CancellerPublisher::new((&shared.config).into(), shared.db.clone(), tx);
    assert_eq!(
        publisher.run_once().unwrap(),
        1,
        "only the job past its timeout"
    );
    let dead = rx.try_recv().unwrap();
    assert_eq!(
        dead,
        Dead {
            run: Run { id: 1, lease: 3 },
            timeout_ms: None,
            requested: None,
        }
    );
    let (_keep, stop) = bounded::<()>(0);
    let canceller = Canceller::new(
        (&shared.config).into(),
        shared.db.clone(),
        Arc::clone(&shared.registry),
        Arc::clone(&shared.liveness),
    );
    assert_eq!(canceller.cancel_one(dead.clone(), &stop), Some(true));
    assert_eq!(
        canceller.cancel_one(dead, &stop),
        Some(false),
        "second cancel changes nothing"
    );
    let job = db.job(1);
    assert_eq!(job.status(), CANCELLED);
    assert_eq!(job.finished_at, job.cancelled_at);
    assert!(job.error_lower().contains("job_timeout"), "{:?}", job.error);
    assert_eq!(db.job(2).status(), STARTED);
}

#[test]
fn a_write_under_a_lost_lease_changes_nothing() {
    let db = TestDb::new("fencing");
    db.insert_job(Some(1), Some(0));
    let (a, b) = (shared(&db, "a", &[]), shared(&db, "b", &[]));
    let (tx_a, rx_a) = bounded(10);
    publisher(&a, tx_a).run_once().unwrap();
    let job_a = rx_a.recv().unwrap();
    // Replica a loses the job (its queue was released), b claims it.
    assert_eq!(
        job_release_queued(&mut a.db.conn().unwrap(), "a").unwrap(),
        1
    );
    let (tx_b, rx_b) = bounded(10);
    publisher(&b, tx_b).run_once().unwrap();
    let job_b = rx_b.recv().unwrap();
    assert_eq!(job_b.id, job_a.id);
    assert_eq!(job_b.lease, job_a.lease + 1);
    let mut conn = a.db.conn().unwrap();
    assert!(
        !job_start(&mut conn, job_a.run(), Duration::from_secs(10)).unwrap(),
        "a's late start refused"
    );
    assert!(job_start(&mut conn, job_b.run(), Duration::from_secs(10)).unwrap());
    assert!(
        !job_finish(&mut conn, job_a.run()).unwrap(),
        "a's late finish refused"
    );
    assert_eq!(db.job(job_a.id).status(), STARTED);
    assert!(job_finish(&mut conn, job_b.run()).unwrap());
    assert_eq!(db.job(job_a.id).status(), DONE);
    let owner: String = db.scalar(&format!("SELECT owner FROM jobs WHERE id = {}", job_a.id));
    assert_eq!(owner, "b");
}

#[test]
fn the_rescuer_gives_back_the_jobs_of_dead_workers_only() {
    let db = TestDb::new("rescuer");
    db.exec(
        "INSERT INTO workers (name, host, pid, version, heartbeat_at) VALUES \
         ('dead', 'h', 1, 'v', NOW(6) - INTERVAL 1 HOUR), ('live', 'h', 2, 'v', NOW(6))",
    );
    let cols = "object_id, sleep, status, queued_at, started_at, owner, lease";
    insert_rows(&db, 3, cols, "1, 0, 'QUEUED!', NOW(6), NULL, 'dead', 1");
    insert_rows(
        &db,
        2,
        cols,
        "2, NULL, 'STARTED!', NOW(6), NOW(6), 'dead', 1",
    );
    insert_rows(&db, 4, cols, "3, 0, 'QUEUED!', NOW(6), NULL, 'live', 1");
    insert_rows(
        &db,
        1,
        cols,
        "4, NULL, 'STARTED!', NOW(6), NOW(6), 'live', 1",
    );
    insert_rows(&db, 2, cols, "5, 0, 'QUEUED!', NOW(6), NULL, 'gone', 1");
    insert_rows(&db, 1, "object_id, sleep, status", "6, 0, 'QUEUED!'");
    let me = shared(&db, "me", &[]);
    let rescuer = Rescuer::new((&me.config).into(), me.db.clone(), Arc::clone(&me.liveness));
    // It judges no one until its own heartbeat has landed steadily for
    // WORKER_DEAD_AFTER (1 s here).
    assert_eq!(rescuer.run_once().unwrap(), Default::default());
    let heartbeat = Heartbeat::new(
        HeartbeatConfig::new(&me.config, &["sleep"]),
        me.db.clone(),
        Arc::clone(&me.liveness),
    );
    heartbeat.register().unwrap();
    wait_until(Duration::from_secs(10), "a steady heartbeat", || {
        heartbeat.run_once().unwrap();
        me.liveness.steady_for(me.config.heartbeat_interval) >= me.config.worker_dead_after
    });
    db.exec("UPDATE workers SET heartbeat_at = NOW(6) WHERE name = 'live'");
    let out = rescuer.run_once().unwrap();
    assert_eq!(out.dead_owners, ["dead", "gone"]);
    assert_eq!(out.released, 3 + 2 + 1);
    assert_eq!(out.cancelled, 2);
    assert_eq!(out.removed_workers, 1);
    assert_eq!(
        db.count("status IS NULL AND owner IS NULL AND queued_at IS NULL"),
        6
    );
    let cancelled = db.jobs_where("status = 'CANCELLED!'");
    assert_eq!(cancelled.len(), 2);
    for job in &cancelled {
        assert!(job.error_lower().contains("dead"), "{:?}", job.error);
        assert_eq!(job.finished_at, job.cancelled_at);
    }
    assert_eq!(
        db.count("owner = 'live'"),
        5,
        "a live worker's jobs are untouched"
    );
    let workers: Vec<String> = db
        .conn()
        .query("SELECT name FROM workers ORDER BY name")
        .unwrap();
    assert_eq!(workers, ["live", "me"]);
    let again = rescuer.run_once().unwrap();
    assert_eq!((again.released, again.cancelled), (0, 0));
}

#[test]
fn a_task_cancelled_by_another_replica_is_interrupted_and_its_thread_moves_on() {
    let db = TestDb::new("cross_cancel");
    let stuck = db.insert_job(Some(1), None);
    let service = Service::start(
        config(
            &db,
            "here",
            &[("JOB_CONSUMERS", "1"), ("JOB_TIMEOUT", "1h")],
        ),
        Tasks::with_sleep(),
    )
    .expect("service starts");
    wait_until(Duration::from_secs(20), "the stuck job to start", || {
        db.job(stuck).status() == STARTED
    });
    // Another replica's canceller cancels it.
    db.exec(&format!(
        "UPDATE jobs SET status = 'CANCELLED!', cancelled_at = NOW(6), finished_at = NOW(6), \
         error = 'elsewhere' WHERE id = {stuck}"
    ));
    wait_until(
        Duration::from_secs(10),
        "the task to be interrupted",
        || service.registry().is_empty(),
    );
    let next = db.insert_job(Some(2), Some(0));
    wait_until(
        Duration::from_secs(20),
        "the only consumer to run the next job",
        || db.job(next).status() == DONE,
    );
    let report = service.shutdown();
    assert_eq!(report.stragglers, 0);
    assert_eq!(
        db.job(stuck).error.as_deref(),
        Some("elsewhere"),
        "the row is not rewritten"
    );
    assert_eq!(
        db.count("owner = 'here' AND status IN ('QUEUED!', 'STARTED!')"),
        0
    );
    let workers: u64 = db.scalar("SELECT COUNT(*) FROM workers");
    assert_eq!(workers, 0, "a clean shutdown removes the worker's row");
}

#[test]
fn the_watcher_sends_nothing_while_nothing_runs() {
    let db = TestDb::new("watcher_idle");
    let p = shared(&db, "w", &[]);
    let watcher = Watcher::new(p.db.clone(), Arc::clone(&p.registry));
    assert_eq!(watcher.run_once().unwrap(), 0);
}

#[test]
fn a_restarted_replica_clears_what_its_previous_life_held() {
    let db = TestDb::new("restart_same_name");
    db.exec("INSERT INTO workers (name, host, pid, version, heartbeat_at) VALUES ('pod-1', 'pod', 1, 'v', NOW(6) - INTERVAL 1 HOUR)");
    let cols = "object_id, sleep, status, queued_at, started_at, owner, lease";
    insert_rows(
        &db,
        2,
        cols,
        "1, 1000000000000, 'QUEUED!', NOW(6), NULL, 'pod-1', 1",
    );
    insert_rows(
        &db,
        1,
        cols,
        "2, NULL, 'STARTED!', NOW(6), NOW(6), 'pod-1', 1",
    );
    // Consumers busy elsewhere would hide the release: give it none to run.
    let service = Service::start(
        config(
            &db,
            "pod-1",
            &[("RATE_LIMIT", "1"), ("JOBS_POLL_INTERVAL", "1h")],
        ),
        Tasks::with_sleep(),
    )
    .expect("starts under the dead name");
    let cancelled = db.jobs_where("status = 'CANCELLED!'");
    assert_eq!(cancelled.len(), 1);
    assert!(
        cancelled[0].error_lower().contains("restarted"),
        "{:?}",
        cancelled[0].error
    );
    assert_eq!(
        db.count("object_id = 1 AND (status IS NULL OR lease = 2)"),
        2,
        "queued jobs went back"
    );
    service.shutdown();
}

#[test]
fn a_name_held_by_a_live_replica_is_refused() {
    let db = TestDb::new("name_in_use");
    db.exec("INSERT INTO workers (name, host, pid, version) VALUES ('busy', 'h', 1, 'v')");
    let (stop_beating, stopped) = bounded::<()>(0);
    let beater = {
        let mut conn = db.conn();
        std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(50))
            {
                conn.query_drop("UPDATE workers SET heartbeat_at = NOW(6) WHERE name = 'busy'")
                    .unwrap();
            }
        })
    };
    let err = Service::start(config(&db, "busy", &[]), Tasks::with_sleep())
        .err()
        .expect("start must fail while the name is live");
    drop(stop_beating);
    beater.join().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("WORKER_NAME=busy"), "{msg}");
}

/// Rows scheduled for later once sat in the claim's index range: every claim
/// and every idle probe read past all of them. Counted with the server's
/// own row-read counters, not timed.
#[test]
fn rows_scheduled_for_later_are_not_read_by_claims() {
    let db = TestDb::new("scheduled_not_read");
    insert_rows(
        &db,
        5000,
        "object_id, sleep, run_at",
        "1, 0, NOW(6) + INTERVAL 1 DAY",
    );
    insert_rows(&db, 10, "object_id, sleep", "2, 0");
    insert_rows(
        &db,
        10,
        "object_id, sleep, run_at",
        "3, 0, NOW(6) - INTERVAL 1 MINUTE",
    );
    db.exec("ANALYZE TABLE jobs");
    let mut conn = db.conn();
    let reads = |conn: &mut mysql::PooledConn| -> u64 {
        let rows: Vec<(String, u64)> = conn
            .query("SHOW SESSION STATUS WHERE Variable_name LIKE 'Handler_read%'")
            .unwrap();
        rows.iter().map(|(_, n)| n).sum()
    };
    for (what, sql) in [
        ("claim", claim_select_sql(&sleep_jobs(100))),
        ("claim scheduled", claim_scheduled_sql(&sleep_jobs(100))),
        ("probe", claimable_sql(&sleep_jobs(1))),
    ] {
        let before = reads(&mut conn);
        conn.query_drop("START TRANSACTION").unwrap();
        let found: Vec<mysql::Row> = conn.query(&sql).unwrap();
        conn.query_drop("COMMIT").unwrap();
        // The SHOW itself reads a few rows of its own.
        let read = reads(&mut conn) - before;
        assert!(!found.is_empty(), "{what} found nothing");
        assert!(
            read < 200,
            "{what} read {read} index entries past 5,000 rows scheduled for tomorrow"
        );
    }
    // And the service claims the 20 due rows, none of the others.
    let (tx, rx) = bounded(1000);
    let claimed = publisher(&shared(&db, "w", &[]), tx).run_once().unwrap();
    assert_eq!(claimed.claimed, 20);
    assert!(rx.try_iter().all(|j| j.object_id != Some(1)));
}

#[test]
fn a_start_batch_starts_exactly_the_jobs_whose_lease_holds() {
    let db = TestDb::new("start_batch");
    // Five claimed jobs under lease 1, and a sixth whose claim moved on.
    db.exec(
        "INSERT INTO jobs (object_id, sleep, status, queued_at, owner, lease) VALUES \
         (1, 0, 'QUEUED!', NOW(6), 'w', 1), (2, 0, 'QUEUED!', NOW(6), 'w', 1), \
         (3, 0, 'QUEUED!', NOW(6), 'w', 1), (4, 0, 'QUEUED!', NOW(6), 'w', 1), \
         (5, 0, 'QUEUED!', NOW(6), 'w', 1), (6, 0, 'QUEUED!', NOW(6), 'w', 2)",
    );
    let mut conn = shared(&db, "w", &[]).db.conn().unwrap();
    // Three jobs (padded to a statement for four), then five plus the lost
    // one (padded to eight).
    let runs = |pairs: &[(u64, u64)]| -> Vec<Run> {
        pairs.iter().map(|&(id, lease)| Run { id, lease }).collect()
    };
    let started = job_start_many(
        &mut conn,
        &runs(&[(1, 1), (2, 1), (3, 1)]),
        Duration::from_secs(10),
        Locks::Wait,
    )
    .unwrap();
    assert_eq!(started, 3);
    let started = job_start_many(
        &mut conn,
        &runs(&[(1, 1), (4, 1), (5, 1), (6, 1)]),
        Duration::from_secs(10),
        Locks::Wait,
    )
    .unwrap();
    assert_eq!(started, 2, "job 1 was started already, job 6's lease is 2");
    assert_eq!(db.count_status(STARTED), 5);
    let attempts: u64 = db.scalar("SELECT SUM(attempts) FROM jobs");
    assert_eq!(attempts, 5, "each started once");
    let deadlines: u64 =
        db.scalar("SELECT COUNT(*) FROM jobs WHERE deadline_at = started_at + INTERVAL 10 SECOND");
    assert_eq!(deadlines, 5);
}
