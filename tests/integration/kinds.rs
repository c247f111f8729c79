//! Task kinds, retries, scheduling, priorities, per-job timeouts and
//! retention, in process: custom [`Task`]s registered through
//! [`Tasks`] and run by [`Service::start`] against a real database per test.

use std::time::{Duration, Instant};

use background_processing::cancel::Cancellation;
use background_processing::config::Config;
use background_processing::db::Db;
use background_processing::db::jobs::job_prune;
use background_processing::maintenance::pruner::{BATCH, Pruner, PrunerConfig};
use background_processing::service::Service;
use background_processing::task::{JobContext, Task, TaskError, Tasks};
use crossbeam_channel::bounded;
use mysql::prelude::{FromRow, Queryable};
use mysql::{Params, params};

use crate::testdb::{
    CANCELLED, DONE, FAILED, STARTED, TestDb, config_from, wait_until, wait_until_or,
};

/// Milliseconds intervals, unlimited rate, a short drain; `vars` override.
fn config(db: &TestDb, vars: &[(&str, &str)]) -> Config {
    config_from(
        &[
            ("DATABASE_URL", db.url()),
            ("WORKER_NAME", db.name()),
            ("JOBS_POLL_INTERVAL", "10ms"),
            ("CANCELLER_POLL_INTERVAL", "20ms"),
            ("HEARTBEAT_INTERVAL", "100ms"),
            ("WORKER_DEAD_AFTER", "1s"),
            ("RATE_LIMIT", "0"),
            ("SHUTDOWN_TIMEOUT", "500ms"),
            // In-process services of parallel tests must not all listen on 9090.
            ("METRICS_ADDR", ""),
        ],
        vars,
    )
}

fn start(db: &TestDb, vars: &[(&str, &str)], tasks: Tasks) -> Service {
    Service::start(config(db, vars), tasks).expect("service starts")
}

/// Runs `sql` from inside a task, on the service's own pool.
fn task_exec(job: &JobContext, sql: &str, params: impl Into<Params>) -> Result<(), TaskError> {
    let mut conn = job
        .db
        .conn()
        .map_err(|e| TaskError::Retryable(e.to_string()))?;
    conn.exec_drop(sql, params)
        .map_err(|e| TaskError::Retryable(e.to_string()))
}

/// The integer under `"key"` in a flat JSON object: enough for `{"n": 7}`.
fn json_int(payload: &str, key: &str) -> Option<i64> {
    let quoted = format!("\"{key}\"");
    let rest = &payload[payload.find(&quoted)? + quoted.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c == '-' || c.is_ascii_digit()))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn wait_status(db: &TestDb, id: u64, status: &str, timeout: Duration) {
    wait_until_or(
        timeout,
        &format!("job {id} to be {status}"),
        || db.job(id).status() == status,
        || db.dump(),
    );
}

/// Inserts a row with the given extra columns; returns its id.
fn insert(db: &TestDb, columns: &str, values: &str) -> u64 {
    let mut conn = db.conn();
    conn.query_drop(format!("INSERT INTO jobs ({columns}) VALUES ({values})"))
        .unwrap_or_else(|e| panic!("insert ({columns}) ({values}): {e}"));
    conn.last_insert_id()
}

/// The first row of `sql`, as a value or a tuple.
fn first<T: FromRow>(db: &TestDb, sql: &str) -> T {
    db.conn()
        .query_first::<T, _>(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// `exprs` of job `id`, as a value or a tuple.
fn col<T: FromRow>(db: &TestDb, id: u64, exprs: &str) -> T {
    first(db, &format!("SELECT {exprs} FROM jobs WHERE id = {id}"))
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

/// Reads `n` from the payload and writes `n * 6` into `results`.
struct Compute;

impl Task for Compute {
    fn run(&self, job: &JobContext, _cancel: &Cancellation) -> Result<(), TaskError> {
        let payload = job.payload.as_deref().unwrap_or("");
        let n = json_int(payload, "n")
            .ok_or_else(|| TaskError::Permanent(format!("payload {payload:?} has no integer n")))?;
        task_exec(
            job,
            "INSERT INTO results (job_id, object_id, kind, attempt, value) \
             VALUES (:id, :object_id, :kind, :attempt, :value)",
            params! {
                "id" => job.id,
                "object_id" => job.object_id,
                "kind" => &job.kind,
                "attempt" => job.attempt,
                "value" => n * 6,
            },
        )
    }
}

/// Notes which thread ran it in `threads`; panics if `panic` is set.
struct ThreadNote {
    panic: bool,
}

impl Task for ThreadNote {
    fn run(&self, job: &JobContext, _cancel: &Cancellation) -> Result<(), TaskError> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        task_exec(
            job,
            "INSERT INTO threads (job_id, thread) VALUES (?, ?)",
            (job.id, thread),
        )?;
        if self.panic {
            panic!("the widget {} is missing", job.id);
        }
        Ok(())
    }
}

/// Logs each attempt (its number, start time and the row's `run_at` at that
/// moment) in `attempts_log`, then fails retryably, unless this attempt is
/// `succeed_on`.
struct Flaky {
    succeed_on: Option<u32>,
}

impl Task for Flaky {
    fn run(&self, job: &JobContext, _cancel: &Cancellation) -> Result<(), TaskError> {
        task_exec(
            job,
            "INSERT INTO attempts_log (job_id, attempt, at, run_at) \
             SELECT id, :attempt, NOW(6), run_at FROM jobs WHERE id = :id",
            params! { "id" => job.id, "attempt" => job.attempt },
        )?;
        if self.succeed_on == Some(job.attempt) {
            Ok(())
        } else {
            Err(TaskError::Retryable(format!(
                "flaky dependency down (try #{})",
                job.attempt
            )))
        }
    }
}

/// Logs the order jobs ran in.
struct Order;

impl Task for Order {
    fn run(&self, job: &JobContext, _cancel: &Cancellation) -> Result<(), TaskError> {
        task_exec(job, "INSERT INTO run_log (job_id) VALUES (?)", (job.id,))
    }
}

/// The table `Compute` writes its results to.
fn create_results(db: &TestDb) {
    db.exec(
        "CREATE TABLE results (job_id BIGINT UNSIGNED PRIMARY KEY, object_id BIGINT NULL, \
         kind VARCHAR(64), attempt INT, value BIGINT)",
    );
}

/// The sleep task and `compute`.
fn compute_tasks() -> Tasks {
    let mut tasks = Tasks::with_sleep();
    tasks.register("compute", Compute);
    tasks
}

// ---------------------------------------------------------------------------
// 1. A custom kind
// ---------------------------------------------------------------------------

#[test]
fn a_custom_kind_runs_and_writes_its_result() {
    let db = TestDb::new("kind_custom");
    create_results(&db);
    let id = insert(
        &db,
        "object_id, sleep, kind, payload",
        r#"42, NULL, 'compute', '{"n": 7}'"#,
    );
    let service = start(&db, &[], compute_tasks());
    wait_status(&db, id, DONE, Duration::from_secs(10));
    service.shutdown();

    let row: Option<(Option<i64>, String, u32, i64)> = db
        .conn()
        .exec_first(
            "SELECT object_id, kind, attempt, value FROM results WHERE job_id = ?",
            (id,),
        )
        .unwrap();
    assert_eq!(
        row,
        Some((Some(42), "compute".to_string(), 1, 42)),
        "the task saw its job (object_id, kind, attempt 1) and wrote 7 * 6"
    );
    let results: u64 = db.scalar("SELECT COUNT(*) FROM results");
    assert_eq!(results, 1, "it ran exactly once");
    let job = db.job(id);
    job.assert_timestamps_ordered();
    assert!(job.started_at.is_some() && job.finished_at.is_some());
    assert_eq!(job.error, None);
    assert_eq!(col::<u32>(&db, id, "attempts"), 1);
}

#[test]
fn a_permanent_error_fails_at_once_despite_attempts_left() {
    let db = TestDb::new("kind_permanent");
    create_results(&db);
    let id = insert(
        &db,
        "kind, payload, max_attempts",
        r#"'compute', '{"m": 7}', 3"#,
    );
    let service = start(&db, &[], compute_tasks());
    wait_status(&db, id, FAILED, Duration::from_secs(10));
    service.shutdown();
    let job = db.job(id);
    assert!(
        job.error
            .as_deref()
            .unwrap_or("")
            .contains("has no integer n"),
        "{job:?}"
    );
    assert_eq!(col::<u32>(&db, id, "attempts"), 1, "no retry");
    let results: u64 = db.scalar("SELECT COUNT(*) FROM results");
    assert_eq!(results, 0);
}

// ---------------------------------------------------------------------------
// 2. Unknown kind, panic
// ---------------------------------------------------------------------------

#[test]
fn an_unknown_kind_stays_new_until_a_replica_runs_it() {
    let db = TestDb::new("kind_unknown");
    create_results(&db);
    let unknown = insert(&db, "kind, payload", r#"'compute', '{"n": 2}'"#);
    let known = insert(&db, "object_id, sleep", "1, 0");
    let service = start(&db, &[], Tasks::with_sleep());
    wait_status(&db, known, DONE, Duration::from_secs(10));
    // The claim that took `known` saw `unknown`, inserted before it, and
    // passed it by: it is neither claimed nor failed.
    let u = db.job(unknown);
    assert_eq!(u.status, None, "a kind no replica runs stays new: {u:?}");
    assert_eq!(u.queued_at, None, "{u:?}");
    assert_eq!(u.error, None, "{u:?}");
    let owner: Option<String> = col(&db, unknown, "owner");
    assert_eq!(owner, None, "nobody claimed it");
    service.shutdown();

    // A replica that runs the kind picks it up.
    let service = start(&db, &[], compute_tasks());
    wait_status(&db, unknown, DONE, Duration::from_secs(10));
    service.shutdown();
    let value: i64 = first(
        &db,
        &format!("SELECT value FROM results WHERE job_id = {unknown}"),
    );
    assert_eq!(value, 12);
    assert_eq!(col::<u32>(&db, unknown, "attempts"), 1);
}

#[test]
fn a_kind_the_claim_cannot_route_by_stops_start_up() {
    let db = TestDb::new("kind_bad_name");
    let mut tasks = Tasks::with_sleep();
    tasks.register("mail'; DROP TABLE jobs; --", Order);
    let err = match Service::start(config(&db, &[]), tasks) {
        Ok(_) => panic!("started with a kind that is not a name"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("task kind") && err.contains("DROP TABLE"),
        "{err}"
    );
    assert_eq!(db.count("1"), 0, "the jobs table is there and untouched");
}

#[test]
fn a_panic_fails_with_the_reason_and_the_thread_carries_on() {
    let db = TestDb::new("kind_panic");
    db.exec("CREATE TABLE threads (job_id BIGINT UNSIGNED PRIMARY KEY, thread VARCHAR(64))");
    let panics = insert(&db, "object_id, kind", "2, 'panics'");
    let next = insert(&db, "object_id, kind", "3, 'notes'");
    let mut tasks = Tasks::with_sleep();
    tasks.register("panics", ThreadNote { panic: true });
    tasks.register("notes", ThreadNote { panic: false });
    let service = start(&db, &[("JOB_CONSUMERS", "1")], tasks);
    wait_status(&db, next, DONE, Duration::from_secs(10));
    service.shutdown();

    let p = db.job(panics);
    assert_eq!(p.status(), FAILED, "{}", db.dump());
    assert!(
        p.error
            .as_deref()
            .unwrap_or("")
            .contains(&format!("the widget {panics} is missing")),
        "the panic message is in error: {p:?}"
    );
    assert!(p.started_at.is_some() && p.finished_at.is_some(), "{p:?}");
    p.assert_timestamps_ordered();

    let threads: Vec<(u64, String)> = db
        .conn()
        .query("SELECT job_id, thread FROM threads ORDER BY job_id")
        .unwrap();
    assert_eq!(
        threads,
        vec![
            (panics, "consumer-jobs-0".to_string()),
            (next, "consumer-jobs-0".to_string())
        ],
        "the only consumer ran the panicking job, then the next one"
    );
}

// ---------------------------------------------------------------------------
// 3. Retries
// ---------------------------------------------------------------------------

/// `(attempt, start in µs since the first attempt, run_at - previous start
/// in µs, start - run_at in µs)` for each logged attempt.
type Attempt = (u32, i64, Option<i64>, Option<i64>);

fn attempts_of(db: &TestDb, id: u64) -> Vec<Attempt> {
    db.conn()
        .exec(
            "SELECT a.attempt, \
               TIMESTAMPDIFF(MICROSECOND, (SELECT MIN(at) FROM attempts_log WHERE job_id = :id), a.at), \
               TIMESTAMPDIFF(MICROSECOND, (SELECT p.at FROM attempts_log p WHERE p.job_id = :id \
                 AND p.attempt = a.attempt - 1), a.run_at), \
               TIMESTAMPDIFF(MICROSECOND, a.run_at, a.at) \
             FROM attempts_log a WHERE a.job_id = :id ORDER BY a.seq",
            params! { id },
        )
        .unwrap()
}

const ATTEMPTS_LOG: &str = "CREATE TABLE attempts_log (seq BIGINT AUTO_INCREMENT PRIMARY KEY, \
     job_id BIGINT UNSIGNED, attempt INT UNSIGNED, at DATETIME(6), run_at DATETIME(6) NULL)";

#[test]
fn a_retryable_error_is_retried_with_growing_delays_then_fails() {
    let db = TestDb::new("kind_retries");
    db.exec(ATTEMPTS_LOG);
    let id = insert(&db, "object_id, kind, max_attempts", "1, 'flaky', 3");
    let mut tasks = Tasks::with_sleep();
    tasks.register("flaky", Flaky { succeed_on: None });
    let service = start(
        &db,
        &[("RETRY_BACKOFF", "200ms"), ("JOBS_POLL_INTERVAL", "5ms")],
        tasks,
    );
    wait_status(&db, id, FAILED, Duration::from_secs(10));
    service.shutdown();

    let log = attempts_of(&db, id);
    let numbers: Vec<u32> = log.iter().map(|a| a.0).collect();
    assert_eq!(numbers, [1, 2, 3], "three attempts, numbered: {log:?}");
    let base_us = 200_000i64;
    let mut gaps = Vec::new();
    for n in 1..log.len() {
        // Attempt n failed; attempt n + 1 was scheduled after delay n, which
        // is in [base * 2^(n-1) / 2, base * 2^(n-1)].
        let full = base_us << (n - 1);
        let (min, max) = (full / 2, full);
        let gap = log[n].1 - log[n - 1].1;
        let scheduled = log[n].2.expect("run_at was set by the retry");
        let late = log[n].3.expect("run_at was set by the retry");
        assert!(
            gap >= min,
            "attempt {} started {gap} µs after attempt {n}, before the minimum delay {min} µs: {log:?}",
            n + 1
        );
        assert!(
            scheduled >= min && scheduled <= max + 1_000_000,
            "attempt {} was scheduled {scheduled} µs after attempt {n} started; its delay should be in [{min}, {max}] µs (plus the attempt's own run): {log:?}",
            n + 1
        );
        assert!(
            late >= 0,
            "attempt {} started {} µs before its run_at: {log:?}",
            n + 1,
            -late
        );
        gaps.push(gap);
    }
    assert!(gaps[1] > gaps[0], "delays grow: gaps {gaps:?} µs: {log:?}");
    assert!(
        log[2].2 > log[1].2,
        "the scheduled delays grow too (run_at - previous start): {log:?}"
    );

    let job = db.job(id);
    assert_eq!(col::<u32>(&db, id, "attempts"), 3);
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.contains("try #3") && !error.contains("try #2"),
        "error holds the last error: {error:?}"
    );
    let errors: String = col::<Option<String>>(&db, id, "errors").unwrap_or_default();
    let lines: Vec<&str> = errors.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "one line per attempt: {errors:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains(&format!("try #{}", i + 1)), "{errors:?}");
    }
    assert!(
        job.started_at.is_some() && job.finished_at.is_some(),
        "{job:?}"
    );
    job.assert_timestamps_ordered();
}

#[test]
fn max_attempts_defaults_to_one_so_a_retryable_error_fails_at_once() {
    let db = TestDb::new("kind_max_attempts_default");
    db.exec(ATTEMPTS_LOG);
    let id = insert(&db, "object_id, kind", "1, 'flaky'");
    let mut tasks = Tasks::with_sleep();
    tasks.register("flaky", Flaky { succeed_on: None });
    let cfg = config(&db, &[("RETRY_BACKOFF", "10ms")]);
    assert_eq!(cfg.max_attempts, 1, "MAX_ATTEMPTS defaults to 1");
    let service = Service::start(cfg, tasks).expect("service starts");
    wait_status(&db, id, FAILED, Duration::from_secs(10));
    service.shutdown();
    assert_eq!(col::<Option<u32>>(&db, id, "max_attempts"), None);
    assert_eq!(col::<u32>(&db, id, "attempts"), 1);
    assert_eq!(attempts_of(&db, id).len(), 1, "never retried");
    assert!(
        db.job(id).error.unwrap_or_default().contains("try #1"),
        "{}",
        db.dump()
    );
}

#[test]
fn a_task_that_succeeds_on_its_second_attempt_ends_done() {
    let db = TestDb::new("kind_second_attempt");
    db.exec(ATTEMPTS_LOG);
    let id = insert(&db, "object_id, kind, max_attempts", "1, 'flaky', 3");
    let mut tasks = Tasks::with_sleep();
    tasks.register(
        "flaky",
        Flaky {
            succeed_on: Some(2),
        },
    );
    let service = start(&db, &[("RETRY_BACKOFF", "50ms")], tasks);
    wait_status(&db, id, DONE, Duration::from_secs(10));
    service.shutdown();
    let numbers: Vec<u32> = attempts_of(&db, id).iter().map(|a| a.0).collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(col::<u32>(&db, id, "attempts"), 2);
    let errors: String = col::<Option<String>>(&db, id, "errors").unwrap_or_default();
    assert_eq!(
        errors.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "the first attempt's error is kept: {errors:?}"
    );
    assert!(errors.contains("try #1"), "{errors:?}");
    assert_eq!(
        col::<Option<String>>(&db, id, "error"),
        None,
        "a DONE! row carries no error: the history is in `errors`"
    );
    db.job(id).assert_timestamps_ordered();
}

// ---------------------------------------------------------------------------
// 4. Scheduling
// ---------------------------------------------------------------------------

#[test]
fn a_scheduled_job_does_not_run_early() {
    let db = TestDb::new("kind_scheduled");
    let service = start(&db, &[], Tasks::with_sleep());
    let scheduled = insert(
        &db,
        "object_id, sleep, run_at",
        "1, 0, NOW(6) + INTERVAL 2 SECOND",
    );
    let now = insert(&db, "object_id, sleep", "2, 0");
    // The service is claiming: a job due now runs while the scheduled one waits.
    wait_status(&db, now, DONE, Duration::from_secs(10));
    let mut checks = 0;
    loop {
        // Checked only while well before run_at, so a claim racing the read
        // cannot be mistaken for an early one.
        let (untouched, early): (bool, bool) = first(
            &db,
            &format!(
                "SELECT status IS NULL AND queued_at IS NULL AND started_at IS NULL, \
             NOW(6) < run_at - INTERVAL 100000 MICROSECOND FROM jobs WHERE id = {scheduled}"
            ),
        );
        if !early {
            break;
        }
        assert!(
            untouched,
            "job {scheduled} was claimed before its run_at\n{}",
            db.dump()
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(checks >= 10, "checked only {checks} times before run_at");
    wait_status(&db, scheduled, DONE, Duration::from_secs(10));
    service.shutdown();
    let (queued_late, started_late): (bool, bool) = first(
        &db,
        &format!(
            "SELECT queued_at >= run_at, started_at >= run_at FROM jobs WHERE id = {scheduled}"
        ),
    );
    assert!(queued_late && started_late, "{}", db.dump());
    db.job(scheduled).assert_timestamps_ordered();
}

// ---------------------------------------------------------------------------
// 5. Priorities
// ---------------------------------------------------------------------------

#[test]
fn priorities_order_the_claims() {
    let db = TestDb::new("kind_priorities");
    db.exec("CREATE TABLE run_log (seq BIGINT AUTO_INCREMENT PRIMARY KEY, job_id BIGINT UNSIGNED)");
    let ids: Vec<u64> = [0, 10, -5, 10, 3]
        .iter()
        .map(|p| {
            insert(
                &db,
                "object_id, kind, priority",
                &format!("1, 'order', {p}"),
            )
        })
        .collect();
    // Highest of all, but not due: never claimed.
    let later = insert(
        &db,
        "object_id, kind, priority, run_at",
        "2, 'order', 100, NOW(6) + INTERVAL 1 HOUR",
    );
    let mut tasks = Tasks::with_sleep();
    tasks.register("order", Order);
    let service = start(
        &db,
        &[
            ("RATE_LIMIT", "0"),
            ("JOB_CONSUMERS", "1"),
            ("CHANNEL_CAPACITY", "1"),
        ],
        tasks,
    );
    wait_until_or(
        Duration::from_secs(10),
        "the five due jobs to be DONE!",
        || db.count_status(DONE) == 5,
        || db.dump(),
    );
    service.shutdown();
    let expected = vec![ids[1], ids[3], ids[4], ids[0], ids[2]];
    let ran: Vec<u64> = db
        .conn()
        .query("SELECT job_id FROM run_log ORDER BY seq")
        .unwrap();
    assert_eq!(
        ran,
        expected,
        "priority descending, then id ascending\n{}",
        db.dump()
    );
    let by_start: Vec<u64> = db
        .conn()
        .query("SELECT id FROM jobs WHERE started_at IS NOT NULL ORDER BY started_at, id")
        .unwrap();
    assert_eq!(by_start, expected, "started_at follows the same order");
    let by_queue: Vec<u64> = db
        .conn()
        .query("SELECT id FROM jobs WHERE queued_at IS NOT NULL ORDER BY queued_at, id")
        .unwrap();
    assert_eq!(by_queue, expected, "and so does queued_at");
    assert_eq!(db.job(later).status, None, "not due, never claimed");
}

// ---------------------------------------------------------------------------
// 6. Per-job timeout
// ---------------------------------------------------------------------------

#[test]
fn a_per_job_timeout_cancels_sooner_than_the_global_one() {
    let db = TestDb::new("kind_timeout");
    let service = start(
        &db,
        &[
            ("JOB_TIMEOUT", "1h"),
            ("JOB_CONSUMERS", "2"),
            ("SHUTDOWN_TIMEOUT", "300ms"),
        ],
        Tasks::with_sleep(),
    );
    let began = Instant::now();
    let short = insert(&db, "object_id, sleep, timeout", "1, NULL, 300");
    let global = insert(&db, "object_id, sleep", "2, NULL");
    wait_status(&db, short, CANCELLED, Duration::from_secs(5));
    let took = began.elapsed();
    wait_status(&db, global, STARTED, Duration::from_secs(5));
    // The cancelled task's thread is freed: only the global-timeout job runs.
    wait_until(
        Duration::from_secs(5),
        "the cancelled task to be interrupted",
        || service.registry().len() == 1,
    );
    let next = insert(&db, "object_id, sleep", "3, 0");
    wait_status(&db, next, DONE, Duration::from_secs(5));
    assert_eq!(
        db.job(global).status(),
        STARTED,
        "a job without its own timeout keeps the global 1h"
    );
    service.shutdown();

    let job = db.job(short);
    assert!(took < Duration::from_secs(5), "cancelled after {took:?}");
    assert_eq!(job.finished_at, job.cancelled_at, "{job:?}");
    assert!(job.cancelled_at.is_some());
    let deadline_us: i64 = col(
        &db,
        short,
        "TIMESTAMPDIFF(MICROSECOND, started_at, deadline_at)",
    );
    assert_eq!(deadline_us, 300_000, "deadline_at - started_at = timeout");
    let ran_us = job.run_us.expect("run time");
    assert!(
        (300_000..3_000_000).contains(&ran_us),
        "cancelled {ran_us} µs after it started"
    );
    let global_deadline_us: i64 = col(
        &db,
        global,
        "TIMESTAMPDIFF(MICROSECOND, started_at, deadline_at)",
    );
    assert_eq!(global_deadline_us, 3_600_000_000, "JOB_TIMEOUT when NULL");
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.to_lowercase().contains("cancel"),
        "the reason is in error: {error:?}"
    );
    assert!(
        error.contains("300ms") && !error.contains("1h"),
        "the reason names the job's own timeout (300ms), not JOB_TIMEOUT (1h): {error:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. Retention
// ---------------------------------------------------------------------------

const DAY: Duration = Duration::from_secs(24 * 3600);

fn insert_many(db: &TestDb, n: usize, columns: &str, values: &str) {
    let mut conn = db.conn();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let rows = vec![format!("({values})"); chunk.len()].join(",");
        conn.query_drop(format!("INSERT INTO jobs ({columns}) VALUES {rows}"))
            .unwrap();
    }
}

fn ids_where(db: &TestDb, cond: &str) -> Vec<u64> {
    db.conn()
        .query(format!("SELECT id FROM jobs WHERE {cond} ORDER BY id"))
        .unwrap()
}

#[test]
fn the_pruner_deletes_only_old_final_rows_in_batches() {
    let db = TestDb::new("kind_pruner");
    let cfg = config(&db, &[("RETENTION", "1d")]);
    let pool = Db::new(&cfg.database_url, cfg.db_pool_size).expect("pool");
    let old = "NOW(6) - INTERVAL 2 DAY";
    let mut gone = Vec::new();
    let mut kept = Vec::new();
    for status in [DONE, CANCELLED, FAILED] {
        gone.push(insert(
            &db,
            "object_id, status, finished_at",
            &format!("1, '{status}', {old}"),
        ));
        kept.push(insert(
            &db,
            "object_id, status, finished_at",
            &format!("2, '{status}', NOW(6)"),
        ));
        kept.push(insert(
            &db,
            "object_id, status, finished_at",
            &format!("2, '{status}', NOW(6) - INTERVAL 23 HOUR"),
        ));
    }
    kept.push(insert(&db, "object_id, finished_at", &format!("3, {old}")));
    for status in ["QUEUED!", STARTED, "MINE"] {
        kept.push(insert(
            &db,
            "object_id, status, finished_at",
            &format!("3, '{status}', {old}"),
        ));
    }
    kept.push(insert(&db, "object_id, status", &format!("3, '{DONE}'")));

    let (_stop_tx, stop) = bounded::<()>(0);
    let pruner = Pruner::new(
        PrunerConfig {
            retention: DAY,
            interval: cfg.prune_interval,
        },
        pool.clone(),
    );
    assert_eq!(pruner.run_once(&stop).unwrap(), 3, "{}", db.dump());
    kept.sort_unstable();
    assert_eq!(
        ids_where(&db, "TRUE"),
        kept,
        "exactly the old final rows went"
    );
    assert!(gone.iter().all(|id| !ids_where(&db, "TRUE").contains(id)));
    assert_eq!(pruner.run_once(&stop).unwrap(), 0, "nothing left to prune");

    // Many rows: batch after batch until none is left.
    insert_many(
        &db,
        2500,
        "object_id, status, finished_at",
        &format!("4, ELT(1 + FLOOR(RAND() * 3), 'DONE!', 'CANCELLED!', 'FAILED!'), {old}"),
    );
    assert_eq!(db.count("object_id = 4"), 2500);
    assert_eq!(pruner.run_once(&stop).unwrap(), 2500);
    assert_eq!(db.count("object_id = 4"), 0);
    assert_eq!(ids_where(&db, "TRUE"), kept, "the other rows are untouched");

    // One statement deletes at most a batch.
    const { assert!(BATCH <= 1000) };
    insert_many(
        &db,
        BATCH + 500,
        "object_id, status, finished_at",
        &format!("5, 'DONE!', {old}"),
    );
    let one = job_prune(&mut pool.conn().unwrap(), DAY, BATCH).unwrap();
    assert_eq!(one, BATCH as u64, "one statement is bounded by its batch");
    assert_eq!(pruner.run_once(&stop).unwrap(), 500);
    assert_eq!(ids_where(&db, "TRUE"), kept);
}

#[test]
fn retention_zero_runs_no_pruner() {
    let keep_db = TestDb::new("kind_retention_zero");
    let prune_db = TestDb::new("kind_retention_1d");
    let cfg = config(&keep_db, &[("RETENTION", "0"), ("PRUNE_INTERVAL", "10ms")]);
    assert_eq!(cfg.retention, None, "RETENTION=0 keeps everything");
    let old = "1, 'DONE!', NOW(6) - INTERVAL 30 DAY";
    let keep_id = insert(&keep_db, "object_id, status, finished_at", old);
    let prune_id = insert(&prune_db, "object_id, status, finished_at", old);
    // The one without a pruner starts first, so it has at least as long.
    let keeper = Service::start(cfg, Tasks::with_sleep()).expect("service starts");
    let pruning = start(
        &prune_db,
        &[("RETENTION", "1d"), ("PRUNE_INTERVAL", "10ms")],
        Tasks::with_sleep(),
    );
    wait_until_or(
        Duration::from_secs(10),
        "the service with RETENTION=1d to prune its old row",
        || prune_db.count(&format!("id = {prune_id}")) == 0,
        || prune_db.dump(),
    );
    // Both services are alive and working.
    let a = keep_db.insert_job(Some(2), Some(0));
    let b = prune_db.insert_job(Some(2), Some(0));
    wait_status(&keep_db, a, DONE, Duration::from_secs(10));
    wait_status(&prune_db, b, DONE, Duration::from_secs(10));
    pruning.shutdown();
    keeper.shutdown();
    assert_eq!(
        keep_db.count(&format!("id = {keep_id}")),
        1,
        "RETENTION=0: the old row is kept"
    );
}

// ---------------------------------------------------------------------------
// 8. The original minimal insert
// ---------------------------------------------------------------------------

#[test]
fn the_original_minimal_insert_still_ends_done() {
    let db = TestDb::new("kind_minimal_insert");
    let service = start(&db, &[], Tasks::with_sleep());
    let id = {
        let mut conn = db.conn();
        conn.query_drop("INSERT INTO jobs (object_id, sleep) VALUES (10, 1000000)")
            .unwrap();
        conn.last_insert_id()
    };
    wait_status(&db, id, DONE, Duration::from_secs(10));
    service.shutdown();
    let job = db.job(id);
    job.assert_timestamps_ordered();
    assert_eq!(job.error, None);
    assert!(job.run_us.unwrap() >= 1_000, "slept 1 ms: {job:?}");
    let (kind, attempts, max_attempts, priority, payload): (
        String,
        u32,
        Option<u32>,
        i32,
        Option<String>,
    ) = col(&db, id, "kind, attempts, max_attempts, priority, payload");
    assert_eq!(
        (kind.as_str(), attempts, max_attempts, priority, payload),
        ("sleep", 1, None, 0, None)
    );
    let (run_at, timeout, errors): (Option<String>, Option<u64>, Option<String>) =
        col(&db, id, "CAST(run_at AS CHAR), timeout, errors");
    assert_eq!((run_at, timeout, errors), (None, None, None));
}

#[test]
fn json_int_reads_a_flat_object() {
    assert_eq!(json_int(r#"{"n": 7}"#, "n"), Some(7));
    assert_eq!(json_int(r#"{"m":1,"n":-12}"#, "n"), Some(-12));
    assert_eq!(json_int(r#"{"m": 7}"#, "n"), None);
    assert_eq!(json_int(r#"{"n": "x"}"#, "n"), None);
}

/// Regression: a row with a value the database refuses to compute with (a
/// `timeout` or `attempts` at the end of its range) once failed the whole
/// start batch, retried for ever, and held up every start on the replica;
/// a `lease` at the end of its range did the same to claims.
#[test]
fn values_at_the_end_of_their_range_fail_their_row_alone() {
    let db = TestDb::new("kind_range_ends");
    let huge_timeout = insert(
        &db,
        "object_id, sleep, timeout",
        "1, 0, 18446744073709551615",
    );
    let huge_attempts = insert(&db, "object_id, sleep, attempts", "2, 0, 4294967295");
    let max_lease = insert(&db, "object_id, sleep, lease", "3, 0, 18446744073709551615");
    let normal: Vec<u64> = (0..20)
        .map(|_| insert(&db, "object_id, sleep", "4, 0"))
        .collect();
    let service = start(&db, &[("JOB_CONSUMERS", "4")], Tasks::with_sleep());
    for id in &normal {
        wait_status(&db, *id, DONE, Duration::from_secs(20));
    }
    wait_status(&db, huge_timeout, FAILED, Duration::from_secs(20));
    wait_status(&db, huge_attempts, FAILED, Duration::from_secs(20));
    wait_status(&db, max_lease, DONE, Duration::from_secs(20));
    service.shutdown();
    for id in [huge_timeout, huge_attempts] {
        let job = db.job(id);
        assert!(job.error_lower().contains("cannot start"), "{job:?}");
        assert_eq!(job.started_at, None, "never started: {job:?}");
    }
    let lease: u64 = col(&db, max_lease, "lease");
    assert_eq!(lease, 1, "the lease wraps instead of overflowing");
}
