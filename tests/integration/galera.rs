//! A MariaDB Galera cluster: three throwaway nodes on this machine
//! ([`GaleraCluster`]), two replicas of the real binary writing through
//! different nodes, then one of those nodes killed (-9).
//!
//! Each replica reaches the cluster through a proxy the test controls, as
//! it would through MaxScale, ProxySQL, HAProxy or a Kubernetes Service in
//! front of the nodes: its proxy forwards new connections to the first of
//! its nodes that accepts them. Replica A's proxy has node 1 then node 3,
//! replica B's node 2 then node 3; the test itself reads and writes through
//! node 3, which it never kills.
//!
//! What it shows: every job `DONE!`, none started twice (the audit trigger,
//! created once and replicated to every node, records every status change
//! wherever it was made); the certification conflicts between the two
//! nodes' claims (error 1213) retried and counted, never logged as
//! warnings; while node 2 is cut off from the others (and answers 1047),
//! replica B waiting it out; and after node 1 dies, replica A working again
//! through node 3. Nothing is lost: no job failed or cancelled. The figures
//! (jobs per second, conflicts, the time from the kill to replica A's next
//! finished job) are printed.
//!
//! Needs Debian's `galera-4`, `rsync` and `iproute2` (`.ci/run` installs
//! them); without them the test fails saying what to install.

use crate::audit::*;
use crate::fleet::*;
use crate::http::{http_addr, sample};
use crate::mariadb::GaleraCluster;
use crate::proxy::Proxy;
use crate::testdb::*;
use mysql::prelude::Queryable;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Jobs of the first part: no-op jobs, as many as the two replicas take.
const JOBS: usize = 5000;

/// Jobs of the second part, during which node 2 is cut off from the
/// others: short ones, so that replica B is busy when it happens.
const CUT_JOBS: usize = 2000;

/// Jobs of the third part, during which node 1 is killed: short ones, so
/// that replica A has some running, some claimed and some finishing when
/// its node dies.
const KILL_JOBS: usize = 3000;

/// `url` (a database on node 3) pointed at `proxy` instead.
fn through(url: &str, proxy: &Proxy) -> String {
    let (scheme, user, _, tail) = url_parts(url);
    let user = user.map(|u| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{user}{}{tail}", proxy.addr())
}

/// A replica as this test runs it: 8 consumers, a channel of 100, no rate
/// limit, the default `JOB_TIMEOUT`, and a `WORKER_DEAD_AFTER` above the
/// 12-15 s that node 2 is out of the cluster here (cut off, noticed, back
/// in): a replica cut off longer than that is taken for dead, by design.
/// A node's death costs less (about 6 s): the default 10 s would do.
fn galera_replica(name: &'static str, url: &str) -> Service {
    let mut env = replica(name, "8", "100", "10s");
    env.extend([
        ("WORKER_DEAD_AFTER", "30s"),
        ("HEARTBEAT_INTERVAL", "1s"),
        ("LOG_LEVEL", "info"),
        ("METRICS_ADDR", "127.0.0.1:0"),
    ]);
    Service::spawn(&["run"], &service_env(url, &env))
}

/// A counter of a replica's `/metrics` (without the prefix and `_total`).
fn counter(addr: SocketAddr, short: &str) -> u64 {
    let name = format!("background_processing_{short}_total");
    let answer = crate::http::get(addr, "/metrics")
        .unwrap_or_else(|e| panic!("GET /metrics on {addr}: {e}"));
    sample(&answer.body, &name).unwrap_or_else(|| panic!("no {name} in:\n{}", answer.body)) as u64
}

/// Seconds from the first start to the last finish among `cond`'s rows, as
/// the database recorded them.
fn span_secs(db: &TestDb, cond: &str) -> f64 {
    let us: i64 = db.scalar(&format!(
        "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(started_at), MAX(finished_at)) FROM jobs \
         WHERE {cond}"
    ));
    us as f64 / 1e6
}

/// A job not `DONE!`: id, status, error, started_at, finished_at.
type NotDone = (
    u64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The warnings and errors of a replica's log that speak of a conflict.
fn conflict_warnings(log: &str) -> Vec<String> {
    warn_lines(log)
        .into_iter()
        .filter(|l| l.contains("1213") || l.to_ascii_lowercase().contains("deadlock"))
        .map(str::to_string)
        .collect()
}

#[test]
fn galera_two_replicas_on_two_nodes_then_a_node_killed_lose_nothing() {
    let _serial = serial();
    let began = Instant::now();
    let mut cluster = GaleraCluster::start("galera", 3);
    eprintln!("galera: 3 nodes synced in {:.1?}", began.elapsed());
    let node = |i: usize| format!("127.0.0.1:{}", cluster.node(i).port());

    let db = TestDb::new_on(cluster.node(2).server(), "galera");
    install_audit(&db);
    // The trigger's DDL was replicated: every node records the changes
    // made through it.
    for i in 0..3 {
        let on_node: u64 = cluster
            .node(i)
            .admin()
            .query_first(format!(
                "SELECT COUNT(*) FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = '{}' AND TRIGGER_NAME = 'jobs_audit'",
                db.name()
            ))
            .expect("read triggers")
            .unwrap_or(0);
        assert_eq!(on_node, 1, "the audit trigger is on node {}", i + 1);
    }
    let ids = insert_many(&db, JOBS, 0);

    let proxy_a = Proxy::start_failover(&[&node(0), &node(2)]);
    let proxy_b = Proxy::start_failover(&[&node(1), &node(2)]);
    let started = Instant::now();
    let mut a = galera_replica("replica-a", &through(db.url(), &proxy_a));
    let mut b = galera_replica("replica-b", &through(db.url(), &proxy_b));
    let (metrics_a, metrics_b) = (http_addr(&mut a), http_addr(&mut b));

    // Part one: the two replicas, through two nodes, share the jobs.
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(90),
        &format!("all {JOBS} jobs DONE!"),
        |_| db.count_status(DONE) == JOBS as u64,
        String::new,
    );
    let elapsed = started.elapsed();
    let first = ids[0];
    let last = ids[JOBS - 1];
    let span = span_secs(&db, &format!("id BETWEEN {first} AND {last}"));
    let per_owner: BTreeMap<String, u64> = db
        .conn()
        .query::<(String, u64), _>(format!(
            "SELECT owner, COUNT(*) FROM jobs WHERE id BETWEEN {first} AND {last} GROUP BY owner"
        ))
        .expect("jobs per owner")
        .into_iter()
        .collect();
    let conflicts = |addr| counter(addr, "database_conflicts_retried");
    let (conflicts_a, conflicts_b) = (conflicts(metrics_a), conflicts(metrics_b));
    let cert_failures: u64 = (0..3)
        .map(|i| cluster.status(i, "wsrep_local_cert_failures"))
        .sum();
    let bf_aborts: u64 = (0..3)
        .map(|i| cluster.status(i, "wsrep_local_bf_aborts"))
        .sum();
    eprintln!(
        "galera: {JOBS} jobs DONE! in {elapsed:.1?} from the replicas' start, {span:.2}s from \
         the first start to the last finish: {:.0} jobs/s; jobs per replica {per_owner:?}; \
         conflicts retried: replica-a {conflicts_a}, replica-b {conflicts_b} (the nodes \
         counted {cert_failures} certification failures and {bf_aborts} brute-force aborts)",
        JOBS as f64 / span
    );

    let h = assert_audit_sound(&db);
    for id in &ids {
        assert_eq!(
            starts(&h, *id).len(),
            1,
            "job {id} did not go to STARTED! exactly once:\n{}",
            render_history(*id, h.get(id).map(Vec::as_slice).unwrap_or(&[]))
        );
    }
    assert_eq!(per_owner.len(), 2, "both replicas took part: {per_owner:?}");
    assert!(
        conflicts_a + conflicts_b > 0,
        "two replicas claiming through two nodes met no certification conflict: the test \
         does not test what it means to (the nodes counted {cert_failures} certification \
         failures, {bf_aborts} brute-force aborts)"
    );
    for (name, svc, addr) in [("replica-a", &a, metrics_a), ("replica-b", &b, metrics_b)] {
        let warned = conflict_warnings(&svc.stderr());
        assert!(
            warned.is_empty(),
            "{name} logged conflicts as warnings:\n{}",
            warned.join("\n")
        );
        assert_eq!(counter(addr, "jobs_failed"), 0, "{name}: {}", svc.logs());
        assert_eq!(counter(addr, "jobs_cancelled"), 0, "{name}: {}", svc.logs());
        // A claim that lost its certification was rolled back: nothing to
        // put back, and putting "it" back would take the rows from the
        // replica whose claim won, under the same lease.
        let log = svc.stderr();
        let settled: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("settled a claim whose commit failed"))
            .collect();
        assert!(
            settled.is_empty(),
            "{name} settled claims in doubt without any outage:\n{}",
            settled.join("\n")
        );
        assert_eq!(counter(addr, "jobs_lost"), 0, "{name}: {}", svc.logs());
    }

    // Part two: node 2, replica B's, cut off from the others for a moment
    // (`gmcast.isolate`): alone it is no longer the primary component, so
    // it answers 1047 while the other two carry on. B's proxy still
    // reaches node 2, so B waits it out until node 2 is back in the
    // cluster; nothing of B's is failed, cancelled or taken from it.
    let cut_ids = insert_many(&db, CUT_JOBS, 2 * MS);
    let (first, last) = (cut_ids[0], cut_ids[CUT_JOBS - 1]);
    let of_part_two = format!("id BETWEEN {first} AND {last}");
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(60),
        "replica B busy with the second part's jobs",
        |_| {
            db.count(&format!(
                "{of_part_two} AND owner = 'replica-b' AND status = 'DONE!'"
            )) >= 100
        },
        String::new,
    );
    let isolate = |on: u8| {
        cluster.node(1).exec(&format!(
            "SET GLOBAL wsrep_provider_options = 'gmcast.isolate={on}'"
        ))
    };
    let outages_before = b.stderr().matches("database unavailable").count();
    isolate(1);
    let cut = Instant::now();
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(30),
        "node 2 out of the primary component, and replica B waiting for it",
        |s| {
            cluster.status_text(1, "wsrep_cluster_status").as_deref() == Some("non-Primary")
                && s[1].stderr().matches("database unavailable").count() > outages_before
        },
        || {
            format!(
                "node 2's error log:\n{}",
                tail(&cluster.node(1).error_log(), 20)
            )
        },
    );
    let refused_after = cut.elapsed();
    // What node 2 answers now, as B's statements get it.
    let refusal = cluster
        .node(1)
        .admin()
        .query_drop(format!("SELECT COUNT(*) FROM `{}`.jobs", db.name()))
        .expect_err("a node outside the primary component refuses statements");
    isolate(0);
    cluster.wait_synced(1, 3, secs(60));
    let rejoined_after = cut.elapsed();
    // B is working again when its heartbeat lands again and the jobs it
    // held through the cut (claimed, running, finished) are all written:
    // A may have done the rest of the part's jobs meanwhile.
    let rejoined_at: String = db.scalar("SELECT CAST(NOW(6) AS CHAR)");
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(30),
        "replica B working again once node 2 is back",
        |_| {
            db.scalar::<u64>(&format!(
                "SELECT COUNT(*) FROM workers WHERE name = 'replica-b' \
                 AND heartbeat_at > '{rejoined_at}'"
            )) == 1
                && db.count("owner = 'replica-b' AND status IN ('QUEUED!', 'STARTED!')") == 0
        },
        String::new,
    );
    let working_after = cut.elapsed();
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(60),
        "every job of the second part DONE!",
        |_| all_final(&db),
        String::new,
    );
    eprintln!(
        "galera: node 2 cut off: out of the primary component and replica B waiting after \
         {refused_after:.1?} (node 2 answering {refusal}), node 2 synced again after \
         {rejoined_after:.1?}, B working again after {working_after:.1?}; B said: {:?}",
        b.stderr()
            .lines()
            .filter(|l| l.contains("database unavailable") || l.contains("database is back"))
            .collect::<Vec<_>>()
    );
    let not_done: Vec<NotDone> = db
        .conn()
        .query(format!(
            "SELECT id, status, error, CAST(started_at AS CHAR), CAST(finished_at AS CHAR) \
             FROM jobs WHERE {of_part_two} AND status <> 'DONE!' LIMIT 10"
        ))
        .expect("the jobs not done");
    assert!(
        not_done.is_empty(),
        "every job of the second part DONE!: {}; not done: {not_done:?}\nB's log:\n{}",
        counts(&db),
        tail(&b.stderr(), 60)
    );

    // Part three: node 1, replica A's, is killed while A is busy.
    let kill_ids = insert_many(&db, KILL_JOBS, 2 * MS);
    let (first, last) = (kill_ids[0], kill_ids[KILL_JOBS - 1]);
    let of_part_three = format!("id BETWEEN {first} AND {last}");
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(60),
        "replica A busy with the third part's jobs",
        |_| {
            db.count(&format!(
                "{of_part_three} AND owner = 'replica-a' AND status = 'DONE!'"
            )) >= 200
        },
        String::new,
    );
    let killed_at: String = db.scalar("SELECT CAST(NOW(6) AS CHAR)");
    let killed = Instant::now();
    cluster.node_mut(0).kill();
    let done_by_a_after_kill = || {
        db.count(&format!(
            "{of_part_three} AND owner = 'replica-a' AND status = 'DONE!' \
             AND finished_at > '{killed_at}'"
        ))
    };
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(60),
        "replica A finishing jobs again after node 1 was killed",
        |_| done_by_a_after_kill() > 0,
        || {
            format!(
                "proxy A's connections per node: {:?}\n",
                proxy_a.accepted_by_upstream()
            )
        },
    );
    let back_after = killed.elapsed();
    // The row's finished_at is when the statement ran on node 3; it
    // committed only once the surviving nodes had evicted node 1 (Galera's
    // evs.suspect_timeout, 5 s by default), which is what the test saw.
    let first_done_after: f64 = db.scalar::<i64>(&format!(
        "SELECT TIMESTAMPDIFF(MICROSECOND, '{killed_at}', MIN(finished_at)) FROM jobs \
         WHERE {of_part_three} AND owner = 'replica-a' AND finished_at > '{killed_at}'"
    )) as f64
        / 1e6;
    wait_running(
        &db,
        &mut [&mut a, &mut b],
        secs(60),
        "every job of the third part DONE!",
        |_| all_final(&db),
        String::new,
    );
    let reconnected = proxy_a.accepted_by_upstream();
    eprintln!(
        "galera: node 1 killed; replica A working again (its next DONE! committed, through \
         node 3) {back_after:.1?} after the kill (the statement ran {first_done_after:.2}s \
         after it, and waited for the cluster to evict node 1); proxy A's connections per \
         node (1, 3): {reconnected:?}; replica A said: {:?}",
        a.stderr()
            .lines()
            .filter(|l| l.contains("database unavailable") || l.contains("database is back"))
            .collect::<Vec<_>>()
    );
    assert!(
        reconnected[1] > 0,
        "replica A never connected through node 3: {reconnected:?}\n{}",
        a.logs()
    );

    // Nothing lost, nothing run twice, nothing failed or cancelled.
    let total = (JOBS + CUT_JOBS + KILL_JOBS) as u64;
    assert_eq!(
        db.count_status(DONE),
        total,
        "every job DONE!: {}",
        counts(&db)
    );
    let h = assert_audit_sound(&db);
    for id in cut_ids.iter().chain(&kill_ids) {
        assert_eq!(
            starts(&h, *id).len(),
            1,
            "job {id} did not go to STARTED! exactly once:\n{}",
            render_history(*id, h.get(id).map(Vec::as_slice).unwrap_or(&[]))
        );
    }
    for (name, svc, addr) in [("replica-a", &a, metrics_a), ("replica-b", &b, metrics_b)] {
        assert_eq!(counter(addr, "jobs_failed"), 0, "{name}: {}", svc.logs());
        assert_eq!(counter(addr, "jobs_cancelled"), 0, "{name}: {}", svc.logs());
        let warned = conflict_warnings(&svc.stderr());
        assert!(
            warned.is_empty(),
            "{name} logged conflicts as warnings:\n{}",
            warned.join("\n")
        );
    }
    eprintln!(
        "galera: conflicts retried in all: replica-a {}, replica-b {}; double starts: 0; \
         whole test {:.1?}",
        conflicts(metrics_a),
        conflicts(metrics_b),
        began.elapsed()
    );
    stop_all(vec![a, b], secs(30));
    assert_clean_after_stop(&db);
}
