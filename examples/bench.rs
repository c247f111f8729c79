//! The bench command behind `scripts/bench`: runs the real service binary on
//! a fresh database with N jobs waiting, and prints one JSON line of figures.
//!
//! ```text
//! bench [--jobs N] [--sleep NS] [--idle SECONDS] [--reference KIND] [--binary PATH] [KEY=VALUE ...]
//! ```
//!
//! `KEY=VALUE` pairs are the service's environment (e.g. `RATE_LIMIT=0`);
//! unset ones keep the service's defaults. The server comes from
//! `DATABASE_URL` (its database part is replaced by `bp_bench`).
//!
//! Figures (all read from the database and the server's status counters):
//! - `jobs_per_s`: N / (last `finished_at` - first `queued_at`);
//! - `start_rate_per_s`: starts per second between the first and last start
//!   (what `RATE_LIMIT` controls);
//! - `statements_per_job`: the server's `Questions` delta, less the bench's
//!   own statements, over N; `commits_per_job`: `Handler_commit` delta over
//!   N; `fsyncs_per_job`: `Innodb_data_fsyncs` delta over N;
//! - `queue_to_start_ms_p50` / `_p99`: `started_at - queued_at`;
//! - `rss_peak_mib`: the service's peak resident memory (`VmHWM`);
//! - `service_cpu_us_per_job`, `server_cpu_us_per_job`: CPU time (user +
//!   system, from `/proc`) the service and the database server (the local
//!   process named by the server's `pid_file`, else the one `mariadbd` or
//!   `mysqld` when there is exactly one) spent per job: on a
//!   shared machine these vary far less than rates do;
//! - with `--idle S`: no jobs, and `idle_statements_per_s` over S seconds;
//! - with `--reference KIND`: instead of the service, one of the reference
//!   designs the throughput target is set against, on the same table and
//!   server, so the service's figure can be read against the machine:
//!   `batched` (one claimer taking 500 jobs per transaction straight to
//!   `STARTED!`, four workers marking them `DONE!` with one `UPDATE ...
//!   WHERE id IN (...)` per batch, no owner, lease or task: the ceiling),
//!   `naive` (four threads, each claiming one job per transaction, then
//!   committing `STARTED!` and `DONE!` one by one) and `commits` (four
//!   threads of single-row autocommit updates, one per job: the server's
//!   commit rate).
//!
//! Counters are server-wide: run it on a server nothing else is using.

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};

struct Args {
    jobs: usize,
    sleep_ns: i64,
    idle: Option<u64>,
    reference: Option<reference::Kind>,
    binary: String,
    env: BTreeMap<String, String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        jobs: 20_000,
        sleep_ns: 0,
        idle: None,
        reference: None,
        binary: "target/release/background-processing".into(),
        env: BTreeMap::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--jobs" => {
                args.jobs = value("--jobs")?
                    .parse()
                    .map_err(|e| format!("--jobs: {e}"))?
            }
            "--sleep" => {
                args.sleep_ns = value("--sleep")?
                    .parse()
                    .map_err(|e| format!("--sleep: {e}"))?
            }
            "--idle" => {
                args.idle = Some(
                    value("--idle")?
                        .parse()
                        .map_err(|e| format!("--idle: {e}"))?,
                )
            }
            "--reference" => args.reference = Some(value("--reference")?.parse()?),
            "--binary" => args.binary = value("--binary")?,
            "-h" | "--help" => {
                return Err("usage: bench [--jobs N] [--sleep NS] [--idle SECONDS] [--reference batched|naive|commits] [--binary PATH] [KEY=VALUE ...]".into());
            }
            kv => match kv.split_once('=') {
                Some((k, v)) => {
                    args.env.insert(k.to_string(), v.to_string());
                }
                None => return Err(format!("unknown argument {kv:?}")),
            },
        }
    }
    if args.reference.is_some()
        && (args.idle.is_some() || args.sleep_ns != 0 || !args.env.is_empty())
    {
        return Err(
            "--reference runs no-op jobs without the service: it takes neither --idle, \
             --sleep nor settings"
                .into(),
        );
    }
    Ok(args)
}

fn server_url() -> String {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let rest = url.strip_prefix("mysql://").unwrap_or(&url);
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    format!("mysql://{authority}")
}

fn connect(url: &str) -> Result<Conn, String> {
    let opts = Opts::from_url(url).map_err(|e| format!("{url}: {e}"))?;
    Conn::new(OptsBuilder::from_opts(opts).prefer_socket(false))
        .map_err(|e| format!("connecting to {url}: {e}"))
}

/// The server counters the figures come from.
fn status(conn: &mut Conn) -> Result<BTreeMap<String, u64>, String> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('Questions', 'Handler_commit', 'Innodb_data_fsyncs')",
        )
        .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|(k, v)| (k, v.parse().unwrap_or(0)))
        .collect())
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    after
        .get(key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(key).copied().unwrap_or(0))
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
}

/// CPU seconds (user + system) process `pid` has used, from
/// `/proc/PID/stat` (fields 14 and 15, in clock ticks).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / ticks.max(1) as f64)
}

/// The local database server's pid: the one its `pid_file` names, if that
/// process runs here, else the one `mariadbd` or `mysqld` on this machine
/// if there is exactly one.
fn server_pid(conn: &mut Conn) -> Option<u32> {
    let named = conn
        .query_first::<String, _>("SELECT @@pid_file")
        .ok()
        .flatten()
        .and_then(|file| std::fs::read_to_string(file).ok())
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            matches!(comm.trim(), "mariadbd" | "mysqld")
        });
    if named.is_some() {
        return named;
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if matches!(comm.trim(), "mariadbd" | "mysqld") {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Some(*pid),
        _ => None,
    }
}

/// What works the jobs off: the service binary, or the reference design.
enum Runner {
    Service(Child),
    Reference(reference::Handle),
}

impl Runner {
    fn exited(&mut self) -> bool {
        match self {
            Runner::Service(child) => child.try_wait().map(|s| s.is_some()).unwrap_or(true),
            Runner::Reference(handle) => handle.exited(),
        }
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        match self {
            Runner::Service(child) => peak_rss_mib(child.id()),
            Runner::Reference(_) => None,
        }
    }

    fn cpu_secs(&self) -> Option<f64> {
        match self {
            Runner::Service(child) => cpu_secs(child.id()),
            Runner::Reference(_) => cpu_secs(std::process::id()),
        }
    }

    fn stop(&mut self) {
        match self {
            Runner::Service(child) => stop(child),
            Runner::Reference(handle) => handle.stop(),
        }
    }
}

/// The reference designs of the throughput target (see the module docs):
/// no owner, lease, retries or tasks.
mod reference {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use mysql::prelude::Queryable;
    use mysql::{Conn, TxOpts};

    const BATCH: usize = 500;
    const WORKERS: usize = 4;

    /// Which reference design runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Batched,
        Naive,
        Commits,
    }

    impl std::str::FromStr for Kind {
        type Err = String;

        fn from_str(s: &str) -> Result<Kind, String> {
            match s {
                "batched" => Ok(Kind::Batched),
                "naive" => Ok(Kind::Naive),
                "commits" => Ok(Kind::Commits),
                other => Err(format!(
                    "--reference {other:?}: expected batched, naive or commits"
                )),
            }
        }
    }

    impl Kind {
        pub fn name(self) -> &'static str {
            match self {
                Kind::Batched => "batched",
                Kind::Naive => "naive",
                Kind::Commits => "commits",
            }
        }
    }

    type Thread = JoinHandle<Result<(), String>>;

    pub struct Handle {
        stop: Arc<AtomicBool>,
        /// Threads that run until stopped.
        threads: Vec<Thread>,
        /// Threads that end when their share of the jobs is done.
        finite: Vec<Thread>,
    }

    fn report(thread: Thread) -> bool {
        match thread.join() {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                eprintln!("bench: reference: {e}");
                false
            }
            Err(_) => false,
        }
    }

    impl Handle {
        /// Whether a thread ended too early (or failed).
        pub fn exited(&mut self) -> bool {
            let (done, running): (Vec<Thread>, Vec<Thread>) =
                self.finite.drain(..).partition(|t| t.is_finished());
            self.finite = running;
            let failed = done.into_iter().map(report).any(|ok| !ok);
            failed || self.threads.iter().any(|t| t.is_finished())
        }

        pub fn stop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..).chain(self.finite.drain(..)) {
                report(t);
            }
        }
    }

    fn ids(batch: &[u64]) -> String {
        batch
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn claimer(
        mut conn: Conn,
        stop: Arc<AtomicBool>,
        tx: crossbeam_channel::Sender<Vec<u64>>,
    ) -> Result<(), String> {
        while !stop.load(Ordering::Relaxed) {
            let mut t = conn
                .start_transaction(TxOpts::default())
                .map_err(|e| e.to_string())?;
            let batch: Vec<u64> = t
                .query(format!(
                    "SELECT id FROM jobs FORCE INDEX (jobs_new) WHERE is_new = 1 \
                     AND run_at IS NULL ORDER BY priority DESC, id \
                     LIMIT {BATCH} FOR UPDATE SKIP LOCKED"
                ))
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                t.rollback().map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            t.query_drop(format!(
                "UPDATE jobs SET status = 'STARTED!', queued_at = NOW(6), \
                 started_at = NOW(6) WHERE id IN ({})",
                ids(&batch)
            ))
            .map_err(|e| e.to_string())?;
            t.commit().map_err(|e| e.to_string())?;
            for chunk in batch.chunks(BATCH / WORKERS) {
                if tx.send(chunk.to_vec()).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn worker(mut conn: Conn, rx: crossbeam_channel::Receiver<Vec<u64>>) -> Result<(), String> {
        for batch in rx {
            conn.query_drop(format!(
                "UPDATE jobs SET status = 'DONE!', finished_at = NOW(6) WHERE id IN ({})",
                ids(&batch)
            ))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A connection in `READ COMMITTED`, as the service's sessions are (in
    /// `REPEATABLE READ`, one-row claims deadlock on gap locks).
    fn connect(url: &str) -> Result<Conn, String> {
        let mut conn = super::connect(url)?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// One thread of the naive design: claims one job per transaction, then
    /// commits its `STARTED!` and its `DONE!` one by one.
    fn naive(mut conn: Conn, stop: Arc<AtomicBool>) -> Result<(), String> {
        while !stop.load(Ordering::Relaxed) {
            match naive_job(&mut conn) {
                Ok(true) => {}
                Ok(false) => std::thread::sleep(Duration::from_millis(10)),
                // A deadlock or lock wait: the claim is rolled back, try again.
                Err(mysql::Error::MySqlError(e)) if matches!(e.code, 1205 | 1213) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// One job through the naive design; `false` if none was waiting.
    fn naive_job(conn: &mut Conn) -> Result<bool, mysql::Error> {
        let mut t = conn.start_transaction(TxOpts::default())?;
        let id: Option<u64> = t.query_first(
            "SELECT id FROM jobs FORCE INDEX (jobs_new) WHERE is_new = 1 \
             AND run_at IS NULL ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )?;
        let Some(id) = id else {
            t.rollback()?;
            return Ok(false);
        };
        t.query_drop(format!(
            "UPDATE jobs SET status = 'QUEUED!', queued_at = NOW(6) WHERE id = {id}"
        ))?;
        t.commit()?;
        for write in [
            "status = 'STARTED!', started_at = NOW(6)",
            "status = 'DONE!', finished_at = NOW(6)",
        ] {
            conn.query_drop(format!("UPDATE jobs SET {write} WHERE id = {id}"))?;
        }
        Ok(true)
    }

    /// One thread of single-row autocommit updates: job `first`, then every
    /// `step`-th one, each finished by one commit.
    fn commits(mut conn: Conn, first: u64, step: u64, last: u64) -> Result<(), String> {
        let mut id = first;
        while id <= last {
            conn.query_drop(format!(
                "UPDATE jobs SET status = 'DONE!', queued_at = NOW(6), started_at = NOW(6), \
                 finished_at = NOW(6) WHERE id = {id}"
            ))
            .map_err(|e| e.to_string())?;
            id += step;
        }
        Ok(())
    }

    pub fn start(url: &str, kind: Kind) -> Result<Handle, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        match kind {
            Kind::Batched => {}
            Kind::Naive => {
                for _ in 0..WORKERS {
                    let (conn, s) = (connect(url)?, stop.clone());
                    threads.push(std::thread::spawn(move || naive(conn, s)));
                }
                return Ok(Handle {
                    stop,
                    threads,
                    finite: Vec::new(),
                });
            }
            Kind::Commits => {
                let mut conn = super::connect(url)?;
                let (first, last): (Option<u64>, Option<u64>) = conn
                    .query_first("SELECT MIN(id), MAX(id) FROM jobs")
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                let (first, last) = (first.unwrap_or(1), last.unwrap_or(0));
                for t in 0..WORKERS as u64 {
                    let conn = connect(url)?;
                    threads.push(std::thread::spawn(move || {
                        commits(conn, first + t, WORKERS as u64, last)
                    }));
                }
                // These threads end when their share is done.
                return Ok(Handle {
                    stop,
                    threads: Vec::new(),
                    finite: threads,
                });
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(WORKERS * 2);
        for _ in 0..WORKERS {
            let conn = connect(url)?;
            let rx = rx.clone();
            threads.push(std::thread::spawn(move || worker(conn, rx)));
        }
        let conn = connect(url)?;
        let s = stop.clone();
        threads.push(std::thread::spawn(move || claimer(conn, s, tx)));
        Ok(Handle {
            stop,
            threads,
            finite: Vec::new(),
        })
    }
}

fn stop(child: &mut Child) {
    // SAFETY-free signalling through the `kill` command keeps this example
    // free of libc.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn run() -> Result<String, String> {
    let args = parse_args()?;
    if !std::path::Path::new(&args.binary).exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release`",
            args.binary
        ));
    }
    let server = server_url();
    let db_url = format!("{server}/bp_bench");
    let mut admin = connect(&server)?;
    admin
        .query_drop("DROP DATABASE IF EXISTS bp_bench")
        .map_err(|e| e.to_string())?;
    let migrate = Command::new(&args.binary)
        .arg("migrate")
        .env("DATABASE_URL", &db_url)
        .env("LOG_LEVEL", "warn")
        .status()
        .map_err(|e| format!("running {}: {e}", args.binary))?;
    if !migrate.success() {
        return Err(format!("migrate failed: {migrate}"));
    }
    let mut conn = connect(&db_url)?;
    let n = if args.idle.is_some() { 0 } else { args.jobs };
    let chunk = 5000;
    let mut inserted = 0;
    while inserted < n {
        let rows = chunk.min(n - inserted);
        let values = vec![format!("(1, {})", args.sleep_ns); rows].join(",");
        conn.query_drop(format!(
            "INSERT INTO jobs (object_id, sleep) VALUES {values}"
        ))
        .map_err(|e| e.to_string())?;
        inserted += rows;
    }
    let version: String = conn
        .query_first("SELECT VERSION()")
        .map_err(|e| e.to_string())?
        .unwrap_or_default();

    let mut own_statements = 0u64;
    let server = server_pid(&mut conn);
    let server_cpu_before = server.and_then(cpu_secs);
    let own_cpu_before = cpu_secs(std::process::id());
    let before = status(&mut conn)?;
    own_statements += 1;
    let mut runner = if let Some(kind) = args.reference {
        Runner::Reference(reference::start(&db_url, kind)?)
    } else {
        Runner::Service(
            Command::new(&args.binary)
                .arg("run")
                .env("DATABASE_URL", &db_url)
                .env("WORKER_NAME", "bench")
                .envs(&args.env)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting {}: {e}", args.binary))?,
        )
    };
    let began = Instant::now();

    let mut fields: Vec<(String, String)> = Vec::new();
    if let Some(idle) = args.idle {
        // Let start-up settle, then count what an idle replica sends.
        std::thread::sleep(Duration::from_secs(3));
        let start = status(&mut conn)?;
        std::thread::sleep(Duration::from_secs(idle));
        let end = status(&mut conn)?;
        // One SHOW STATUS of ours falls inside the window.
        let q = delta(&start, &end, "Questions").saturating_sub(1);
        fields.push(("idle_seconds".into(), idle.to_string()));
        fields.push((
            "idle_statements_per_s".into(),
            format!("{:.2}", q as f64 / idle as f64),
        ));
    } else {
        let deadline = Instant::now() + Duration::from_secs(600);
        let count_finished = |conn: &mut Conn| -> Result<u64, String> {
            conn.query_first(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('DONE!', 'CANCELLED!', 'FAILED!')",
            )
            .map_err(|e| e.to_string())
            .map(Option::unwrap_or_default)
        };
        loop {
            // While work remains, look only at the first entry of the new
            // and held ranges: a COUNT over the whole table on every poll
            // would load the server being measured, more as the table grows.
            let left: Option<u8> = conn
                .query_first(
                    "(SELECT 1 FROM jobs WHERE is_new = 1 LIMIT 1) UNION ALL \
                     (SELECT 1 FROM jobs WHERE held_by IS NOT NULL LIMIT 1) LIMIT 1",
                )
                .map_err(|e| e.to_string())?;
            own_statements += 1;
            if left.is_none() {
                break;
            }
            if Instant::now() > deadline || runner.exited() {
                runner.stop();
                let finished = count_finished(&mut conn)?;
                return Err(format!("only {finished} of {n} jobs finished"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let finished = count_finished(&mut conn)?;
        own_statements += 1;
        if finished as usize != n {
            runner.stop();
            return Err(format!(
                "{finished} of {n} jobs finished, and none is left waiting or running"
            ));
        }
    }
    let after = status(&mut conn)?;
    let server_cpu = server
        .and_then(cpu_secs)
        .zip(server_cpu_before)
        .map(|(after, before)| after - before);
    let service_cpu = match &runner {
        // The reference designs run in this process, after its inserts.
        Runner::Reference(_) => runner.cpu_secs().zip(own_cpu_before).map(|(a, b)| a - b),
        Runner::Service(_) => runner.cpu_secs(),
    };
    let rss = runner.peak_rss_mib();
    let wall = began.elapsed();
    runner.stop();

    if n > 0 {
        let span: Option<(Option<i64>, Option<i64>)> = conn
            .query_first(
                "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(queued_at), MAX(finished_at)), \
                 TIMESTAMPDIFF(MICROSECOND, MIN(started_at), MAX(started_at)) FROM jobs",
            )
            .map_err(|e| e.to_string())?;
        let (span_us, start_span_us) = span.unwrap_or_default();
        let mut waits: Vec<f64> = conn
            .query::<i64, _>("SELECT TIMESTAMPDIFF(MICROSECOND, queued_at, started_at) FROM jobs")
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|us| us as f64 / 1000.0)
            .collect();
        waits.sort_by(|a, b| a.total_cmp(b));
        let per_job = |v: u64| format!("{:.3}", v as f64 / n as f64);
        let questions = delta(&before, &after, "Questions").saturating_sub(own_statements);
        fields.push(("jobs".into(), n.to_string()));
        fields.push((
            "jobs_per_s".into(),
            format!(
                "{:.0}",
                n as f64 / (span_us.unwrap_or(1).max(1) as f64 / 1e6)
            ),
        ));
        fields.push((
            "start_rate_per_s".into(),
            format!(
                "{:.2}",
                (n.saturating_sub(1)) as f64 / (start_span_us.unwrap_or(1).max(1) as f64 / 1e6)
            ),
        ));
        fields.push(("statements_per_job".into(), per_job(questions)));
        fields.push((
            "commits_per_job".into(),
            per_job(delta(&before, &after, "Handler_commit")),
        ));
        fields.push((
            "fsyncs_per_job".into(),
            per_job(delta(&before, &after, "Innodb_data_fsyncs")),
        ));
        let per_job_us = |cpu: Option<f64>| {
            cpu.map_or("null".to_string(), |c| format!("{:.1}", c * 1e6 / n as f64))
        };
        fields.push(("service_cpu_us_per_job".into(), per_job_us(service_cpu)));
        fields.push(("server_cpu_us_per_job".into(), per_job_us(server_cpu)));
        fields.push((
            "queue_to_start_ms_p50".into(),
            format!("{:.2}", percentile(&waits, 0.5)),
        ));
        fields.push((
            "queue_to_start_ms_p99".into(),
            format!("{:.2}", percentile(&waits, 0.99)),
        ));
    }
    fields.push(("wall_s".into(), format!("{:.2}", wall.as_secs_f64())));
    if let Some(rss) = rss {
        fields.push(("rss_peak_mib".into(), format!("{rss:.1}")));
    }
    if let Some(kind) = args.reference {
        fields.push(("reference".into(), format!("\"{}\"", kind.name())));
    }
    admin
        .query_drop("DROP DATABASE IF EXISTS bp_bench")
        .map_err(|e| e.to_string())?;

    let settings: Vec<String> = args
        .env
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    let mut json: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    json.push(format!("\"settings\":{{{}}}", settings.join(",")));
    json.push(format!("\"server\":\"{version}\""));
    json.push(format!(
        "\"cpus\":{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    ));
    Ok(format!("{{{}}}", json.join(",")))
}

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
