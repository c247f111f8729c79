//! N no-op jobs through the real service against MariaDB/MySQL: the jobs are
//! inserted first, then a replica with the default settings except
//! `RATE_LIMIT=0` runs them; the time is until every row is `DONE!`.
//! Reports elements (jobs) per second.
//!
//! The server comes from `DATABASE_URL` (default
//! `mysql://root@127.0.0.1:3306`); the bench uses its own database,
//! `bp_bench_e2e`, and drops it afterwards. Without a reachable server it
//! stops with a message saying so. `scripts/bench` gives the fuller figures
//! (statements per job, latency, memory) with the release binary.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use background_processing::config::Config;
use background_processing::db::migrate::migrate;
use background_processing::service::Service;
use background_processing::task::Tasks;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mysql::Conn;
use mysql::prelude::Queryable;

const JOBS: usize = 5_000;

fn connect(url: &str) -> Conn {
    common::connect(url, "end_to_end")
}

fn run_once(server: &str, jobs: usize) -> Duration {
    let url = format!("{server}/bp_bench_e2e");
    connect(server)
        .query_drop("DROP DATABASE IF EXISTS bp_bench_e2e")
        .expect("drop");
    migrate(&url, false).expect("migrate");
    let mut conn = connect(&url);
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(5000) {
        let values = vec!["(1, 0)"; chunk.len()].join(",");
        conn.query_drop(format!(
            "INSERT INTO jobs (object_id, sleep) VALUES {values}"
        ))
        .expect("insert");
    }
    let vars: HashMap<&str, String> = [
        ("DATABASE_URL", url.clone()),
        ("RATE_LIMIT", "0".into()),
        ("WORKER_NAME", "bench".into()),
        ("METRICS_ADDR", String::new()),
    ]
    .into_iter()
    .collect();
    let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("config");
    let began = Instant::now();
    let service = Service::start(config, Tasks::with_sleep()).expect("service starts");
    let deadline = began + Duration::from_secs(300);
    loop {
        let done: u64 = conn
            .query_first("SELECT COUNT(*) FROM jobs WHERE status = 'DONE!'")
            .expect("count")
            .unwrap_or(0);
        if done as usize >= jobs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {jobs} jobs done in 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = began.elapsed();
    service.shutdown();
    connect(server)
        .query_drop("DROP DATABASE IF EXISTS bp_bench_e2e")
        .expect("drop");
    elapsed
}

fn end_to_end(c: &mut Criterion) {
    let server = common::server();
    drop(connect(&server));
    let mut group = c.benchmark_group("end_to_end");
    group.throughput(Throughput::Elements(JOBS as u64));
    group.sample_size(10);
    group.bench_function("5k no-op jobs, defaults, RATE_LIMIT=0", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_once(&server, JOBS)).sum())
    });
    group.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
