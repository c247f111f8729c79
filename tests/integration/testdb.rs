//! Fixtures for the integration tests: a throwaway database per test, rows read
//! back from the `jobs` table, polling with deadlines, and the real binary run
//! as a child process.
//!
//! Every database created here is named `bp_test_<name>_<pid>_<n>` and dropped
//! again when its [`TestDb`] goes out of scope; nothing else on the server is
//! touched. Every child process is killed when its [`Service`] is dropped.

#![allow(dead_code)]

use background_processing::config::Config;
use mysql::prelude::{FromValue, Queryable};
use mysql::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn, Row};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_background-processing");

/// The binary the tests run: `BP_TEST_BINARY` when set (to run the suite
/// against a release build, or an earlier version to see a regression
/// test fail), else [`BIN`].
pub fn bin() -> String {
    std::env::var("BP_TEST_BINARY")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| BIN.to_string())
}

/// The `tally` example (`examples/tally.rs`): the service with a second
/// task kind, built by `cargo build --examples` (scripts/test runs it)
/// next to the binary.
pub fn tally_bin() -> String {
    let path = std::path::Path::new(BIN)
        .parent()
        .map(|dir| dir.join("examples").join("tally"))
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "the tally example is missing at {}: build it with `cargo build --examples` \
         (scripts/test does)",
        path.display()
    );
    path.display().to_string()
}

/// The `jobs` table as the original service made it: the classic columns
/// only.
pub const ORIGINAL_JOBS_TABLE: &str = "CREATE TABLE jobs (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
     object_id BIGINT NULL, sleep BIGINT NULL, status VARCHAR(32) NULL, \
     created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), queued_at DATETIME(6) NULL, \
     started_at DATETIME(6) NULL, finished_at DATETIME(6) NULL, cancelled_at DATETIME(6) NULL)";

/// Server used when `DATABASE_URL` is not set (only its server part is used).
const DEFAULT_SERVER: &str = "mysql://root@127.0.0.1:3306";

/// A URL that no database listens on: port 1 on loopback refuses at once.
pub const CLOSED_PORT_URL: &str = "mysql://root@127.0.0.1:1/x";

/// Statuses, spelled as the service spells them.
pub const QUEUED: &str = "QUEUED!";
pub const STARTED: &str = "STARTED!";
pub const DONE: &str = "DONE!";
pub const CANCELLED: &str = "CANCELLED!";
pub const FAILED: &str = "FAILED!";

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::SeqCst)
}

// ---------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------

/// The server part of `DATABASE_URL`: `user[:password]@host:port` plus any
/// query string, without the database name.
#[derive(Clone, Debug)]
pub struct Server {
    authority: String,
    query: Option<String>,
}

impl Server {
    /// A server by its `user[:password]@host:port` and query string.
    pub fn at(authority: &str, query: Option<&str>) -> Server {
        Server {
            authority: authority.to_string(),
            query: query.map(str::to_string),
        }
    }

    pub fn from_env() -> Server {
        let raw = std::env::var("DATABASE_URL")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let rest = raw.strip_prefix("mysql://").unwrap_or_else(|| {
            panic!(
                "DATABASE_URL must look like mysql://user@host:port (got {})",
                redact(&raw)
            )
        });
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q.to_string())),
            None => (rest, None),
        };
        let authority = before_query
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Server { authority, query }
    }

    /// URL of database `db` on this server (or of the server alone).
    pub fn url(&self, db: Option<&str>) -> String {
        let mut url = format!("mysql://{}/{}", self.authority, db.unwrap_or(""));
        if let Some(q) = &self.query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    /// The server URL with any password masked, for messages.
    pub fn display(&self) -> String {
        redact(&self.url(None))
    }
}

/// Masks the password of a `mysql://user:password@host/...` URL.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn connect(url: &str, what: &Server) -> Conn {
    let opts =
        Opts::from_url(url).unwrap_or_else(|e| panic!("bad DATABASE_URL {}: {e}", what.display()));
    let opts = OptsBuilder::from_opts(opts).tcp_connect_timeout(Some(Duration::from_secs(5)));
    Conn::new(opts).unwrap_or_else(|e| {
        panic!(
            "no MariaDB at {}: start one with scripts/mariadb or set DATABASE_URL ({e})",
            what.display()
        )
    })
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

/// One row of `jobs`, timestamps as `YYYY-MM-DD HH:MM:SS.ffffff` strings
/// (fixed width, so they compare correctly as strings), plus durations the
/// database computed in microseconds.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: u64,
    pub object_id: Option<i64>,
    pub sleep: Option<i64>,
    pub status: Option<String>,
    pub created_at: Option<String>,
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub cancelled_at: Option<String>,
    pub error: Option<String>,
    /// `finished_at - started_at` in microseconds.
    pub run_us: Option<i64>,
}

const JOB_COLUMNS: &str = "id, object_id, sleep, status, \
    CAST(created_at AS CHAR) AS created_at, \
    CAST(queued_at AS CHAR) AS queued_at, \
    CAST(started_at AS CHAR) AS started_at, \
    CAST(finished_at AS CHAR) AS finished_at, \
    CAST(cancelled_at AS CHAR) AS cancelled_at, \
    error, \
    TIMESTAMPDIFF(MICROSECOND, started_at, finished_at) AS run_us";

impl Job {
    fn from_row(mut row: Row) -> Job {
        fn col<T: FromValue>(row: &mut Row, name: &str) -> T {
            row.take_opt::<T, _>(name)
                .unwrap_or_else(|| panic!("column {name} missing"))
                .unwrap_or_else(|e| panic!("column {name}: {e}"))
        }
        Job {
            id: col(&mut row, "id"),
            object_id: col(&mut row, "object_id"),
            sleep: col(&mut row, "sleep"),
            status: col(&mut row, "status"),
            created_at: col(&mut row, "created_at"),
            queued_at: col(&mut row, "queued_at"),
            started_at: col(&mut row, "started_at"),
            finished_at: col(&mut row, "finished_at"),
            cancelled_at: col(&mut row, "cancelled_at"),
            error: col(&mut row, "error"),
            run_us: col(&mut row, "run_us"),
        }
    }

    pub fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("NULL")
    }

    pub fn error_lower(&self) -> String {
        self.error.as_deref().unwrap_or("").to_lowercase()
    }

    pub fn is_final(&self) -> bool {
        matches!(self.status(), DONE | CANCELLED | FAILED)
    }

    /// `created_at <= queued_at <= started_at <= finished_at` over the
    /// timestamps that are set; panics naming the row otherwise.
    pub fn assert_timestamps_ordered(&self) {
        let chain = [
            ("created_at", &self.created_at),
            ("queued_at", &self.queued_at),
            ("started_at", &self.started_at),
            ("finished_at", &self.finished_at),
        ];
        assert!(
            self.created_at.is_some(),
            "job {} has no created_at: {self:?}",
            self.id
        );
        let mut prev: Option<(&str, &String)> = None;
        for (name, value) in chain {
            if let Some(v) = value {
                if let Some((pname, pv)) = prev {
                    assert!(
                        pv <= v,
                        "job {}: {pname} {pv} is after {name} {v}: {self:?}",
                        self.id
                    );
                }
                prev = Some((name, v));
            }
        }
    }
}

/// A compact rendering of rows, for failure messages.
pub fn render_jobs(jobs: &[Job]) -> String {
    let mut out = String::from(
        "id | object_id | sleep | status | created_at | queued_at | started_at | finished_at | cancelled_at | run_us | error\n",
    );
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
    for j in jobs {
        let _ = writeln!(
            out,
            "{} | {:?} | {:?} | {} | {} | {} | {} | {} | {} | {:?} | {}",
            j.id,
            j.object_id,
            j.sleep,
            j.status(),
            o(&j.created_at),
            o(&j.queued_at),
            o(&j.started_at),
            o(&j.finished_at),
            o(&j.cancelled_at),
            j.run_us,
            o(&j.error)
        );
    }
    out
}

// ---------------------------------------------------------------------------
// TestDb
// ---------------------------------------------------------------------------

/// A fresh database for one test, dropped on Drop.
pub struct TestDb {
    server: Server,
    name: String,
    url: String,
    pool: Pool,
}

impl TestDb {
    /// A fresh database with the schema applied by `background-processing migrate`.
    pub fn new(name: &str) -> TestDb {
        TestDb::new_on(Server::from_env(), name)
    }

    /// [`TestDb::new`] on another server (a private `mariadbd`).
    pub fn new_on(server: Server, name: &str) -> TestDb {
        let db = TestDb::empty_on(server, name);
        let out = db.migrate();
        assert_eq!(
            out.code,
            Some(0),
            "migrate on a fresh database failed:\n{}",
            out.describe()
        );
        db
    }

    /// A fresh database without any table.
    pub fn empty(name: &str) -> TestDb {
        TestDb::empty_on(Server::from_env(), name)
    }

    /// [`TestDb::empty`] on another server.
    pub fn empty_on(server: Server, name: &str) -> TestDb {
        let db = TestDb::reserve_on(server, name);
        let mut admin = connect(&db.server.url(None), &db.server);
        admin
            .query_drop(format!("CREATE DATABASE `{}`", db.name))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {}: {e}", db.name));
        db
    }

    /// A name (and URL) for a database that does not exist yet; it is dropped
    /// on Drop if something created it meanwhile.
    pub fn reserve(name: &str) -> TestDb {
        TestDb::reserve_on(Server::from_env(), name)
    }

    /// [`TestDb::reserve`] on another server.
    pub fn reserve_on(server: Server, name: &str) -> TestDb {
        // Fail early, with a clear message, when no server is there.
        drop(connect(&server.url(None), &server));
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("bp_test_{clean}_{}_{}", std::process::id(), next_seq());
        assert!(name.len() <= 64, "database name too long: {name}");
        let url = server.url(Some(&name));
        let opts = OptsBuilder::from_opts(Opts::from_url(&url).expect("test database URL"))
            .tcp_connect_timeout(Some(Duration::from_secs(5)))
            .pool_opts(PoolOpts::default().with_constraints(PoolConstraints::new(0, 8).unwrap()));
        let pool = Pool::new(opts).unwrap_or_else(|e| panic!("pool for {name}: {e}"));
        TestDb {
            server,
            name,
            url,
            pool,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `mysql://.../bp_test_...`, the value to give the service as DATABASE_URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server this database is on.
    pub fn server(&self) -> &Server {
        &self.server
    }

    pub fn conn(&self) -> PooledConn {
        self.pool
            .get_conn()
            .unwrap_or_else(|e| panic!("connection to {}: {e}", self.name))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `background-processing migrate` against this database.
    pub fn migrate(&self) -> Outcome {
        run_cmd(
            &["migrate"],
            &[("DATABASE_URL", self.url()), ("LOG_LEVEL", "debug")],
            Duration::from_secs(60),
        )
    }

    pub fn exists(&self) -> bool {
        let mut admin = connect(&self.server.url(None), &self.server);
        let n: u64 = admin
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (&self.name,),
            )
            .unwrap()
            .unwrap();
        n == 1
    }

    pub fn exec(&self, sql: &str) {
        self.conn()
            .query_drop(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub fn scalar<T: FromValue>(&self, sql: &str) -> T {
        self.conn()
            .query_first::<T, _>(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: no row"))
    }

    /// `SELECT COUNT(*) FROM jobs WHERE <cond>`.
    pub fn count(&self, cond: &str) -> u64 {
        self.scalar(&format!("SELECT COUNT(*) FROM jobs WHERE {cond}"))
    }

    pub fn count_status(&self, status: &str) -> u64 {
        self.conn()
            .exec_first("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,))
            .unwrap()
            .unwrap()
    }

    /// Inserts one job the way a minimal client does; returns its id.
    pub fn insert_job(&self, object_id: Option<i64>, sleep: Option<i64>) -> u64 {
        let mut conn = self.conn();
        conn.exec_drop(
            "INSERT INTO jobs (object_id, sleep) VALUES (?, ?)",
            (object_id, sleep),
        )
        .unwrap_or_else(|e| panic!("insert job: {e}"));
        conn.last_insert_id()
    }

    /// Inserts jobs `(object_id, sleep)` in one transaction; returns their ids in order.
    pub fn insert_jobs(&self, jobs: &[(Option<i64>, Option<i64>)]) -> Vec<u64> {
        let mut conn = self.conn();
        let mut tx = conn.start_transaction(mysql::TxOpts::default()).unwrap();
        let mut ids = Vec::with_capacity(jobs.len());
        for (object_id, sleep) in jobs {
            tx.exec_drop(
                "INSERT INTO jobs (object_id, sleep) VALUES (?, ?)",
                (object_id, sleep),
            )
            .unwrap_or_else(|e| panic!("insert job: {e}"));
            ids.push(tx.last_insert_id().expect("insert id"));
        }
        tx.commit().unwrap();
        ids
    }

    /// Inserts a job with a status already set (a client's own marker, or a
    /// row in some state for `stats`); returns its id.
    pub fn insert_with_status(&self, object_id: i64, sleep: Option<i64>, status: &str) -> u64 {
        let mut conn = self.conn();
        conn.exec_drop(
            "INSERT INTO jobs (object_id, sleep, status) VALUES (?, ?, ?)",
            (object_id, sleep, status),
        )
        .unwrap_or_else(|e| panic!("insert job: {e}"));
        conn.last_insert_id()
    }

    pub fn job(&self, id: u64) -> Job {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        let row: Row = self
            .conn()
            .exec_first(sql, (id,))
            .unwrap_or_else(|e| panic!("read job {id}: {e}"))
            .unwrap_or_else(|| panic!("job {id} not found"));
        Job::from_row(row)
    }

    /// All jobs, by id.
    pub fn jobs(&self) -> Vec<Job> {
        self.jobs_where("TRUE")
    }

    pub fn jobs_where(&self, cond: &str) -> Vec<Job> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {cond} ORDER BY id");
        let rows: Vec<Row> = self
            .conn()
            .query(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter().map(Job::from_row).collect()
    }

    /// The whole table, rendered, for failure messages.
    pub fn dump(&self) -> String {
        match self.pool.get_conn() {
            Ok(_) => render_jobs(&self.jobs()),
            Err(e) => format!("(cannot read jobs: {e})"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Never panic here: this may run while a test is already failing.
        let url = self.server.url(None);
        let opts = match Opts::from_url(&url) {
            Ok(o) => OptsBuilder::from_opts(o).tcp_connect_timeout(Some(Duration::from_secs(5))),
            Err(_) => return,
        };
        match Conn::new(opts) {
            Ok(mut admin) => {
                if let Err(e) = admin.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name))
                {
                    eprintln!("warning: could not drop test database {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("warning: could not drop test database {}: {e}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// No row is new or in flight: every one is final (or a client's own
/// status).
pub fn all_final(db: &TestDb) -> bool {
    db.count("status IS NULL OR status NOT IN ('DONE!', 'CANCELLED!', 'FAILED!')") == 0
}

/// Fails the test if the service's log shows a panic.
pub fn assert_no_panic(svc: &Service) {
    assert!(
        !svc.stderr().contains("panicked"),
        "the service panicked:\n{}",
        svc.logs()
    );
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    wait_until_or(timeout, what, cond, String::new);
}

/// Like [`wait_until`], adding `context()` (table dump, logs) to the panic.
pub fn wait_until_or(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------

/// Environment for `run` in tests: the given database, debug logs, short
/// intervals; `overrides` replace or add variables.
pub fn service_env(database_url: &str, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    merged_env(
        &[
            ("DATABASE_URL", database_url),
            ("LOG_LEVEL", "debug"),
            ("JOBS_POLL_INTERVAL", "100ms"),
            ("CANCELLER_POLL_INTERVAL", "100ms"),
            ("HEARTBEAT_INTERVAL", "100ms"),
            ("WORKER_DEAD_AFTER", "1s"),
            // Off unless a test asks: parallel replicas cannot share one port.
            ("METRICS_ADDR", ""),
        ],
        overrides,
    )
}

/// `base` with `overrides` replacing or adding variables, in order.
pub fn merged_env(base: &[(&str, &str)], overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in overrides {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    env
}

/// The in-process service's configuration: `base` with `overrides`.
pub fn config_from(base: &[(&str, &str)], overrides: &[(&str, &str)]) -> Config {
    let env = merged_env(base, overrides);
    Config::from_lookup(|k| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone()))
        .expect("test configuration is valid")
}

/// A running `background-processing` child. Its stdout and stderr go to files
/// in a temporary directory. Killed (SIGKILL) on Drop if still running.
pub struct Service {
    child: Child,
    exited: Option<ExitStatus>,
    dir: PathBuf,
    spawned_at: Instant,
    what: String,
}

impl Service {
    /// `background-processing run` against `db` with [`service_env`].
    pub fn run(db: &TestDb, overrides: &[(&str, &str)]) -> Service {
        Service::spawn(&["run"], &service_env(db.url(), overrides))
    }

    /// `background-processing demo` against `db` with [`service_env`].
    pub fn demo(db: &TestDb, overrides: &[(&str, &str)]) -> Service {
        Service::spawn(&["demo"], &service_env(db.url(), overrides))
    }

    /// Spawns the binary with exactly `env` on top of the inherited
    /// environment minus every contract variable.
    pub fn spawn<K: AsRef<str>, V: AsRef<str>>(args: &[&str], env: &[(K, V)]) -> Service {
        Service::spawn_program(&bin(), args, env)
    }

    /// Like [`Service::spawn`], for another program built on the library
    /// (an example such as `tally`).
    pub fn spawn_program<K: AsRef<str>, V: AsRef<str>>(
        bin: &str,
        args: &[&str],
        env: &[(K, V)],
    ) -> Service {
        let dir =
            std::env::temp_dir().join(format!("bp-tests-{}-{}", std::process::id(), next_seq()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let stdout = File::create(dir.join("stdout")).unwrap();
        let stderr = File::create(dir.join("stderr")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // Children never inherit the service's variables from the test
        // runner's environment: each test sets what it means.
        for var in background_processing::config::VARS {
            cmd.env_remove(var.name);
        }
        for (k, v) in env {
            cmd.env(k.as_ref(), v.as_ref());
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let shown: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{}={}", k.as_ref(), redact(v.as_ref())))
            .collect();
        Service {
            child,
            exited: None,
            dir,
            spawned_at: Instant::now(),
            what: format!("{} {}", shown.join(" "), args.join(" ")),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the child (only while it has not been reaped).
    pub fn signal(&mut self, sig: libc::c_int) {
        assert!(
            self.try_exit().is_none(),
            "cannot signal: the service already exited ({:?})\n{}",
            self.exited,
            self.logs()
        );
        // SAFETY: plain kill(2) on the pid of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&mut self) {
        self.signal(libc::SIGINT);
    }

    /// kill -9, then reap.
    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    /// Exit status if the child has exited (reaping it), else None.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the child to exit; panics (with its logs) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "service did not exit within {timeout:?} ({})\n{}",
                    self.what,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Time since spawn.
    pub fn age(&self) -> Duration {
        self.spawned_at.elapsed()
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.dir.join("stdout"))
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.dir.join("stderr"))
    }

    /// The last lines of stdout and stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- command: {}\n--- stdout (tail):\n{}\n--- stderr (tail):\n{}",
            self.what,
            tail(&self.stdout(), 40),
            tail(&self.stderr(), 80)
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("(service output kept in {})", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A finished one-shot run of the binary.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub what: String,
}

impl Outcome {
    pub fn describe(&self) -> String {
        format!(
            "--- command: {}\n--- exit code: {:?} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what,
            self.code,
            self.elapsed,
            tail(&self.stdout, 60),
            tail(&self.stderr, 60)
        )
    }
}

impl Service {
    /// Waits for exit and collects the outcome.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let status = self.wait_exit(timeout);
        Outcome {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed: self.age(),
            what: self.what.clone(),
        }
    }
}

/// Runs the binary to completion with exactly `env` (see [`Service::spawn`]).
pub fn run_cmd<K: AsRef<str>, V: AsRef<str>>(
    args: &[&str],
    env: &[(K, V)],
    timeout: Duration,
) -> Outcome {
    Service::spawn(args, env).finish(timeout)
}
