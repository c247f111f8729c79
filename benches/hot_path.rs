//! A job's three transitions at the default sizes, against MariaDB/MySQL:
//! a claim of 128 new rows (half the default channel of 256), their
//! `STARTED!` in four batches of 32 (the default consumers), and their
//! `DONE!` in one batch, as the publisher, the starter and the completer
//! write them. Two table layouts:
//!
//! - `held`: this version's indexes (a start moves no index entry; a job
//!   moves 4 in all);
//! - `with jobs_running`: the same plus the previous version's index of
//!   running jobs, as a table keeps it until `migrate --drop-replaced` (a
//!   job moves 6).
//!
//! Each iteration takes 128 of 100,000 waiting rows; the table is refilled
//! between measurements when they run out. The server comes from
//! `DATABASE_URL` (default `mysql://root@127.0.0.1:3306`); the bench uses its
//! own database, `bp_bench_hot`, and drops it at the end. Without a
//! reachable server it stops with a message saying so.

mod common;

use std::time::{Duration, Instant};

use background_processing::db::Connection;
use background_processing::db::claim::{Claim, Source, job_claim_many};
use background_processing::db::jobs::{Locks, job_finish_many, job_start_many};
use background_processing::db::migrate::migrate;
use background_processing::job::{Job, Run};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};

const CLAIM: usize = 128;
const START_BATCH: usize = 32;
const ROWS: usize = 100_000;
const TIMEOUT: Duration = Duration::from_secs(10);

fn connect(url: &str) -> Conn {
    common::connect(url, "hot_path")
}

/// A fresh table of `ROWS` new no-op jobs, with `extra` run on it first.
fn fill(server: &str, url: &str, extra: Option<&str>) -> Connection {
    connect(server)
        .query_drop("DROP DATABASE IF EXISTS bp_bench_hot")
        .expect("drop");
    migrate(url, false).expect("migrate");
    let mut conn = connect(url);
    if let Some(sql) = extra {
        conn.query_drop(sql).expect("layout");
    }
    for _ in 0..ROWS / 10_000 {
        let values = vec!["(1, 0)"; 10_000].join(",");
        conn.query_drop(format!(
            "INSERT INTO jobs (object_id, sleep) VALUES {values}"
        ))
        .expect("insert");
    }
    Connection::open(Opts::from_url(url).expect("url")).expect("connect")
}

/// Claims, starts and finishes `CLAIM` jobs; returns how many finished.
fn transitions(conn: &mut Connection) -> u64 {
    let sources = vec![Source::new("default", "sleep", CLAIM)];
    let claim = Claim {
        owner: "bench",
        sources: &sources,
        limit: CLAIM,
        continued: false,
    };
    let jobs = job_claim_many(conn, &claim)
        .map_err(|f| f.error)
        .expect("claim");
    let mut runs: Vec<Run> = jobs.iter().map(Job::run).collect();
    runs.sort();
    for batch in runs.chunks(START_BATCH) {
        job_start_many(conn, batch, TIMEOUT, Locks::Wait).expect("start");
    }
    job_finish_many(conn, &runs, Locks::Wait).expect("finish")
}

fn hot_path(c: &mut Criterion) {
    let server = common::server();
    drop(connect(&server));
    let url = format!("{server}/bp_bench_hot");
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(CLAIM as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    let layouts: [(&str, Option<&str>); 2] = [
        ("held, 128 jobs", None),
        (
            "with jobs_running, 128 jobs",
            Some("ALTER TABLE jobs ADD INDEX jobs_running (is_running, deadline_at, started_at)"),
        ),
    ];
    for (name, extra) in layouts {
        let mut conn = fill(&server, &url, extra);
        let mut left = ROWS;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if left < CLAIM {
                        conn = fill(&server, &url, extra);
                        left = ROWS;
                    }
                    let began = Instant::now();
                    let n = transitions(&mut conn);
                    spent += began.elapsed();
                    assert_eq!(n as usize, CLAIM, "{name}: finished {n} of {CLAIM}");
                    left -= CLAIM;
                }
                spent
            })
        });
    }
    group.finish();
    connect(&server)
        .query_drop("DROP DATABASE IF EXISTS bp_bench_hot")
        .expect("drop");
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
