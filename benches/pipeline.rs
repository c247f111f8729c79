//! The framework's own cost per job, without a database: a publisher feeding
//! a bounded channel, a fixed pool of consumers behind the token bucket,
//! each registering its run for cancellation, running the `sleep` task with
//! `sleep = 0`, and handing the job to a completion channel (as the
//! completer's queue does). Reports elements (jobs) per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use background_processing::bucket::Bucket;
use background_processing::cancel::Registry;
use background_processing::db::Db;
use background_processing::job::Run;
use background_processing::task::{JobContext, SleepTask, Task};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::bounded;

const JOBS: u64 = 20_000;
const CONSUMERS: usize = 8;
const CAPACITY: usize = 100;

fn run_pipeline(jobs: u64) -> Duration {
    let bucket = Arc::new(Bucket::new(0));
    let registry = Arc::new(Registry::default());
    // Never connected: the sleep task does not use it.
    let db = Db::new("mysql://root@127.0.0.1:1/unused", 1).expect("a valid URL");
    let (tx, rx) = bounded::<u64>(CAPACITY);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<u64>();
    let (_stop_tx, stop) = bounded::<()>(0);
    let began = Instant::now();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (rx, done_tx, stop) = (rx.clone(), done_tx.clone(), stop.clone());
            let (bucket, registry, db) = (Arc::clone(&bucket), Arc::clone(&registry), db.clone());
            std::thread::spawn(move || {
                while let Ok(id) = rx.recv() {
                    assert!(bucket.take(&stop));
                    let ctx = JobContext {
                        id,
                        object_id: Some(1),
                        sleep: Some(0),
                        kind: "sleep".into(),
                        payload: None,
                        attempt: 1,
                        max_attempts: 1,
                        db: db.clone(),
                    };
                    let cancel = registry.start(Run { id, lease: 1 });
                    SleepTask.validate(&ctx).expect("valid");
                    SleepTask.run(&ctx, &cancel).expect("no-op task succeeds");
                    let run = Run { id, lease: 1 };
                    registry.returned(run);
                    registry.forget(run);
                    done_tx.send(id).expect("collector alive");
                }
            })
        })
        .collect();
    drop(done_tx);
    for id in 0..jobs {
        tx.send(id).expect("consumers alive");
    }
    drop(tx);
    let finished = done_rx.iter().count() as u64;
    let elapsed = began.elapsed();
    for c in consumers {
        c.join().expect("consumer");
    }
    assert_eq!(finished, jobs);
    elapsed
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(JOBS));
    group.sample_size(10);
    group.bench_function("20k no-op jobs, 8 consumers, unlimited bucket", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_pipeline(JOBS)).sum())
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
