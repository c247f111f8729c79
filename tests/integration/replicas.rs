//! Replicas, crashes and outages with the real binary: several replicas on
//! one table, a replica killed (-9), a replica frozen (SIGSTOP) and resumed,
//! and a database outage put between the service and MariaDB by a proxy the
//! test controls.
//!
//! Every status change of every job is recorded by an `AFTER UPDATE` trigger
//! into an `audit` table the test creates, so "started at most once" and
//! "nothing changes a final row" are checked on the full history, not on a
//! snapshot.
//!
//! These tests start several processes each and check timing promises
//! (`JOB_TIMEOUT` plus a few seconds, `WORKER_DEAD_AFTER`), so they take a
//! module-wide lock and run one at a time: on a 2-core machine two of them
//! side by side would mostly measure each other.

use crate::audit::*;
use crate::fleet::*;
use crate::proxy::Proxy;
use crate::testdb::*;
use mysql::prelude::Queryable;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Three replicas, thousands of jobs
// ---------------------------------------------------------------------------

#[test]
fn three_replicas_start_each_job_exactly_once() {
    let _serial = serial();
    const JOBS: usize = 3000;
    let db = TestDb::new("replicas_three");
    install_audit(&db);
    let ids = insert_many(&db, JOBS, 0);

    let names = ["replica-a", "replica-b", "replica-c"];
    let started = Instant::now();
    let mut services: Vec<Service> = names
        .iter()
        .map(|name| Service::run(&db, &replica(name, "4", "16", "30s")))
        .collect();

    {
        let mut refs: Vec<&mut Service> = services.iter_mut().collect();
        wait_running(
            &db,
            &mut refs,
            secs(90),
            "every job DONE!",
            |_| db.count_status(DONE) == JOBS as u64,
            String::new,
        );
    }
    let elapsed = started.elapsed();
    eprintln!("three replicas: {JOBS} jobs DONE! in {elapsed:?}");

    let jobs = db.jobs();
    assert_eq!(jobs.len(), JOBS);
    for j in &jobs {
        assert_eq!(j.status(), DONE, "{j:?}");
        j.assert_timestamps_ordered();
    }

    // Each job STARTED! exactly once, by the replica that owns it now.
    let h = assert_audit_sound(&db);
    let owners: BTreeMap<u64, Option<String>> = db
        .conn()
        .query::<(u64, Option<String>), _>("SELECT id, owner FROM jobs")
        .unwrap()
        .into_iter()
        .collect();
    let mut per_owner: BTreeMap<String, u64> = BTreeMap::new();
    for id in &ids {
        let s = starts(&h, *id);
        assert_eq!(
            s.len(),
            1,
            "job {id} went to STARTED! {} times:\n{}",
            s.len(),
            render_history(*id, h.get(id).map(Vec::as_slice).unwrap_or(&[]))
        );
        let owner = owners[id].clone().unwrap_or_default();
        assert_eq!(
            s[0].owner(),
            owner,
            "job {id} was started by {} but is owned by {owner}",
            s[0].owner()
        );
        *per_owner.entry(owner).or_default() += 1;
    }
    let took_part: BTreeSet<&str> = per_owner.keys().map(String::as_str).collect();
    assert_eq!(
        took_part,
        names.iter().copied().collect::<BTreeSet<_>>(),
        "not every replica took part (jobs per owner: {per_owner:?})"
    );
    eprintln!("three replicas: jobs per owner {per_owner:?}");

    assert_eq!(
        worker_rows(&db),
        names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "all three replicas are registered while running"
    );
    stop_all(services, secs(30));
    assert_clean_after_stop(&db);
    assert_eq!(db.count_status(DONE), JOBS as u64);
}

// ---------------------------------------------------------------------------
// kill -9 of one replica
// ---------------------------------------------------------------------------

#[test]
fn kill_9_of_a_replica_loses_nothing_and_starts_nothing_twice() {
    let _serial = serial();
    const JOBS: usize = 60;
    const JOB_TIMEOUT: Duration = Duration::from_secs(3);
    let db = TestDb::new("replicas_kill9");
    install_audit(&db);
    let ids = insert_many(&db, JOBS, 300 * MS);

    let env = |name| replica(name, "4", "4", "3s");
    let (victim_name, survivor_name) = ("victim", "survivor");
    let mut victim = Service::run(&db, &env(victim_name));
    let mut survivor = Service::run(&db, &env(survivor_name));

    // Both busy; the victim holds jobs it started and jobs it only claimed.
    wait_running(
        &db,
        &mut [&mut victim, &mut survivor],
        secs(20),
        "the victim holding STARTED! and QUEUED! jobs while the survivor runs some",
        |_| {
            owned(&db, victim_name, STARTED) >= 1
                && owned(&db, victim_name, QUEUED) >= 1
                && owned(&db, survivor_name, STARTED) >= 1
        },
        String::new,
    );
    victim.sigkill();
    let killed_at = Instant::now();
    let at_kill = counts(&db);

    let deadline = JOB_TIMEOUT + secs(5);
    wait_running(
        &db,
        &mut [&mut survivor],
        deadline,
        "every job final after the kill (JOB_TIMEOUT plus a few seconds)",
        |_| all_final(&db),
        || format!("--- at kill: {at_kill}\n"),
    );
    let settled = killed_at.elapsed();
    eprintln!("kill -9: every job final {settled:?} after the kill (at kill: {at_kill})");

    let h = assert_audit_sound(&db);
    let jobs: BTreeMap<u64, Job> = db.jobs().into_iter().map(|j| (j.id, j)).collect();
    let owners: BTreeMap<u64, Option<String>> = db
        .conn()
        .query::<(u64, Option<String>), _>("SELECT id, owner FROM jobs")
        .unwrap()
        .into_iter()
        .collect();
    let show = |id: u64| {
        format!(
            "{}\n{:?}",
            render_history(id, h.get(&id).map(Vec::as_slice).unwrap_or(&[])),
            jobs[&id]
        )
    };

    // The victim's runs cut short by the kill: CANCELLED! with a reason, no
    // later than their timeout (plus a tick or two).
    let mut cancelled_runs = Vec::new();
    // Jobs it had claimed but not started: put back, then run by the survivor.
    let mut rescued_claims = Vec::new();
    for id in &ids {
        let changes = h.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let job = &jobs[id];
        let started_by_victim = changes
            .iter()
            .any(|c| c.after() == STARTED && c.owner() == victim_name);
        if started_by_victim && job.status() != DONE {
            assert_eq!(job.status(), CANCELLED, "{}", show(*id));
            assert!(
                !job.error_lower().trim().is_empty(),
                "cancelled without a reason in error: {}",
                show(*id)
            );
            let run = Duration::from_micros(job.run_us.unwrap_or(i64::MAX).max(0) as u64);
            assert!(
                run <= JOB_TIMEOUT + secs(1),
                "the dead replica's job was cancelled {run:?} after it started, later than JOB_TIMEOUT: {}",
                show(*id)
            );
            cancelled_runs.push(*id);
        }
        let released_from_victim = changes.windows(2).any(|w| {
            w[0].after() == QUEUED && w[0].owner() == victim_name && w[1].after() == "NULL"
        });
        if released_from_victim {
            assert_eq!(
                job.status(),
                DONE,
                "a rescued claim was not run: {}",
                show(*id)
            );
            assert_eq!(
                owners[id].as_deref(),
                Some(survivor_name),
                "a rescued claim was run by someone else: {}",
                show(*id)
            );
            assert_eq!(starts(&h, *id).len(), 1, "{}", show(*id));
            rescued_claims.push(*id);
        }
        // Every job is final; only the victim's interrupted runs are not DONE!.
        if !cancelled_runs.contains(id) {
            assert_eq!(job.status(), DONE, "{}", show(*id));
        }
        job.assert_timestamps_ordered();
    }
    assert!(
        !cancelled_runs.is_empty(),
        "the victim had STARTED! jobs at the kill, but none was cancelled: {at_kill}"
    );
    assert!(
        !rescued_claims.is_empty(),
        "the victim had QUEUED! jobs at the kill, but none was put back and rerun: {at_kill}"
    );
    eprintln!(
        "kill -9: {} runs cancelled ({cancelled_runs:?}), {} claims rescued and rerun ({rescued_claims:?})",
        cancelled_runs.len(),
        rescued_claims.len()
    );

    assert_no_panic(&survivor);
    stop_all(vec![survivor], secs(15));
    assert_clean_after_stop(&db);
}

// ---------------------------------------------------------------------------
// SIGSTOP / SIGCONT of one replica
// ---------------------------------------------------------------------------

#[test]
fn frozen_replica_is_rescued_and_its_late_writes_change_nothing() {
    let _serial = serial();
    const JOBS: usize = 16;
    let db = TestDb::new("replicas_sigstop");
    install_audit(&db);
    let first = insert_many(&db, JOBS, 500 * MS);

    let env = |name| replica(name, "2", "2", "30s");
    let (frozen_name, other_name) = ("frozen", "other");
    let mut frozen = Service::run(&db, &env(frozen_name));
    let mut other = Service::run(&db, &env(other_name));

    wait_running(
        &db,
        &mut [&mut frozen, &mut other],
        secs(20),
        "the replica to freeze holding STARTED! and QUEUED! jobs",
        |_| owned(&db, frozen_name, STARTED) >= 1 && owned(&db, frozen_name, QUEUED) >= 1,
        String::new,
    );
    frozen.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let at_stop = counts(&db);

    // The other replica declares it dead, cancels its runs, takes back its
    // claims and runs them.
    wait_running(
        &db,
        &mut [&mut frozen, &mut other],
        secs(20),
        "the other replica to rescue the frozen one's jobs and finish everything",
        |_| {
            !worker_rows(&db).iter().any(|n| n == frozen_name)
                && db.count(&format!(
                    "owner = '{frozen_name}' AND status IN ('QUEUED!', 'STARTED!')"
                )) == 0
                && all_final(&db)
        },
        || format!("--- at stop: {at_stop}\n"),
    );
    let frozen_for = stopped_at.elapsed();
    assert!(frozen_for > secs(1), "frozen only {frozen_for:?}");
    let before_thaw: BTreeMap<u64, (String, Option<String>)> = db
        .conn()
        .query::<(u64, Option<String>, Option<String>), _>("SELECT id, status, owner FROM jobs")
        .unwrap()
        .into_iter()
        .map(|(id, s, o)| (id, (s.unwrap_or_default(), o)))
        .collect();
    let h = assert_audit_sound(&db);
    let cancelled: Vec<u64> = first
        .iter()
        .copied()
        .filter(|id| before_thaw[id].0 == CANCELLED)
        .collect();
    let released: Vec<u64> = first
        .iter()
        .copied()
        .filter(|id| {
            h.get(id).is_some_and(|cs| {
                cs.windows(2).any(|w| {
                    w[0].after() == QUEUED && w[0].owner() == frozen_name && w[1].after() == "NULL"
                })
            })
        })
        .collect();
    for id in &cancelled {
        let job = db.job(*id);
        let s = starts(&h, *id);
        assert!(
            s.len() == 1 && s[0].owner() == frozen_name,
            "only the frozen replica's runs should be cancelled: {}",
            render_history(*id, &h[id])
        );
        assert!(
            !job.error_lower().trim().is_empty(),
            "cancelled without a reason: {job:?}"
        );
    }
    for id in &released {
        assert_eq!(
            before_thaw[id],
            (DONE.to_string(), Some(other_name.to_string())),
            "a rescued claim must be run by the other replica: {}",
            render_history(*id, &h[id])
        );
    }
    assert!(
        !cancelled.is_empty() && !released.is_empty(),
        "the frozen replica held STARTED! and QUEUED! jobs ({at_stop}) but cancelled {cancelled:?}, released {released:?}"
    );

    let thawed_at_db = db_now(&db);
    frozen.signal(libc::SIGCONT);

    // It notices, registers again and carries on.
    wait_running(
        &db,
        &mut [&mut frozen, &mut other],
        secs(15),
        "the thawed replica to register again and say it was declared dead or refused",
        |s| {
            let err = s[0].stderr();
            worker_rows(&db).iter().any(|n| n == frozen_name)
                && (err.contains("declared dead") || err.contains("refused"))
        },
        String::new,
    );

    // Its late writes changed nothing: every row that was final before the
    // thaw is exactly as it was (the audit also shows no change left a final
    // status and nothing started twice).
    let after_thaw = assert_audit_sound(&db);
    for (id, (status, owner)) in &before_thaw {
        let job = db.job(*id);
        assert_eq!(
            (job.status(), &owner_of(&db, *id)),
            (status.as_str(), owner),
            "row changed after the thaw: {}",
            render_history(*id, &after_thaw[id])
        );
    }
    let late: Vec<&Change> = after_thaw
        .values()
        .flatten()
        .filter(|c| c.at >= thawed_at_db && first.contains(&c.job_id))
        .collect();
    assert!(
        late.is_empty(),
        "changes to old jobs after the thaw: {late:?}"
    );

    // It can run new work.
    let second = insert_many(&db, 20, 100 * MS);
    wait_running(
        &db,
        &mut [&mut frozen, &mut other],
        secs(20),
        "the new jobs DONE!",
        |_| all_final(&db),
        String::new,
    );
    let h = assert_audit_sound(&db);
    let mut by_frozen = 0;
    for id in &second {
        let job = db.job(*id);
        assert_eq!(job.status(), DONE, "{job:?}");
        assert_eq!(starts(&h, *id).len(), 1);
        if owner_of(&db, *id).as_deref() == Some(frozen_name) {
            by_frozen += 1;
        }
    }
    assert!(
        by_frozen > 0,
        "the thawed replica ran none of the new jobs: {}\n{}",
        counts(&db),
        frozen.logs()
    );
    eprintln!(
        "sigstop: frozen {frozen_for:?}; cancelled {cancelled:?}, rescued {released:?}; \
         it ran {by_frozen}/20 new jobs after the thaw"
    );

    stop_all(vec![frozen, other], secs(15));
    assert_clean_after_stop(&db);
}

fn owner_of(db: &TestDb, id: u64) -> Option<String> {
    db.conn()
        .exec_first::<Option<String>, _, _>("SELECT owner FROM jobs WHERE id = ?", (id,))
        .unwrap()
        .flatten()
}

// ---------------------------------------------------------------------------
// Database outage
// ---------------------------------------------------------------------------

#[test]
fn database_outage_is_survived_without_loss_or_rerun_in_a_few_log_lines() {
    let _serial = serial();
    const JOBS: usize = 600;
    const OUTAGE: Duration = Duration::from_secs(4);
    let db = TestDb::new("replicas_outage");
    install_audit(&db);

    let proxy = Proxy::start(&host_port(db.url()));
    let service_url = via(db.url(), proxy.addr());

    let names = ["outage-a", "outage-b"];
    let mut services: Vec<Service> = names
        .iter()
        .map(|name| {
            // JOB_TIMEOUT at its default.
            let env = service_env(&service_url, &replica(name, "4", "8", "10s"));
            Service::spawn(&["run"], &env)
        })
        .collect();
    let mut refs: Vec<&mut Service> = services.iter_mut().collect();
    let both = &mut refs[..];
    wait_running(
        &db,
        both,
        secs(20),
        "both replicas registered through the proxy",
        |_| worker_rows(&db).len() == 2,
        String::new,
    );
    insert_many(&db, JOBS, 50 * MS);

    wait_running(
        &db,
        both,
        secs(20),
        "the run under way (some jobs DONE!)",
        |_| db.count_status(DONE) >= 60,
        String::new,
    );
    let accepted_before = proxy.accepted();
    let closed = proxy.cut();
    let cut_at = Instant::now();
    let cut_clock = clock();
    let at_cut = counts(&db);
    assert!(
        closed > 0,
        "the service had no connection through the proxy (accepted {accepted_before}, refused {})",
        proxy.refused()
    );
    let said = |s: &[&mut Service], what: &str| s.iter().all(|s| s.stderr().contains(what));
    // The outage itself: the service must stay up all along.
    wait_running(
        &db,
        both,
        OUTAGE + secs(1),
        "the outage to last",
        |_| cut_at.elapsed() >= OUTAGE,
        String::new,
    );
    let during = counts(&db);
    // What each replica had said while the database was still away:
    // (warned it was unavailable, claimed it was back).
    let said_during: Vec<(bool, bool)> = both
        .iter()
        .map(|s| {
            let err = s.stderr();
            (
                err.contains("database unavailable"),
                err.contains("database is back"),
            )
        })
        .collect();
    proxy.restore();
    let restored_at = Instant::now();
    let restore_clock = clock();

    wait_running(
        &db,
        both,
        secs(40),
        "every job final after the outage",
        |_| all_final(&db),
        || format!("--- at cut: {at_cut}\n"),
    );
    let settled = restored_at.elapsed();
    wait_running(
        &db,
        both,
        secs(10),
        "both replicas to say the database is back",
        |s| said(s, "database is back"),
        String::new,
    );
    assert!(
        proxy.accepted() > accepted_before,
        "the service did not reconnect through the proxy"
    );
    eprintln!(
        "outage: cut at {cut_clock}, restored at {restore_clock} (UTC); cut {OUTAGE:?} (at cut: {at_cut}; at restore: {during}); \
         every job final {settled:?} after the restore; proxy refused {} connections",
        proxy.refused()
    );
    drop(refs);

    // Every promise is checked and every broken one reported together: the
    // rows first, then the log.
    let mut problems: Vec<String> = Vec::new();

    // Nothing lost, nothing cancelled, nothing started twice.
    let h = assert_audit_sound(&db);
    let jobs = db.jobs();
    let not_done: Vec<Job> = jobs
        .iter()
        .filter(|j| j.status() != DONE)
        .cloned()
        .collect();
    if !not_done.is_empty() {
        problems.push(format!(
            "{} jobs did not end DONE! after the outage (replicas cut off by an outage are not \
             dead; their work must not be cancelled):\n{}",
            not_done.len(),
            render_jobs(&not_done)
        ));
    }
    for j in &jobs {
        assert_eq!(
            starts(&h, j.id).len(),
            1,
            "{}",
            render_history(j.id, &h[&j.id])
        );
        j.assert_timestamps_ordered();
    }

    // The log tells the story in a few lines.
    for ((s, name), (warned_during, back_during)) in services.iter().zip(names).zip(said_during) {
        let err = s.stderr();
        let warns = warn_lines(&err);
        let story: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("[DEBUG]") && !l.contains("[TRACE]"))
            .filter(|l| l.contains("database") || l.contains("[WARN]") || l.contains("[ERROR]"))
            .collect();
        let story = story.join("\n  ");
        eprintln!("outage: the log tells:\n  {story}");
        if warns.len() > 10 {
            problems.push(format!(
                "{} WARN/ERROR lines for one outage ({name}):\n  {}",
                warns.len(),
                warns.join("\n  ")
            ));
        }
        if !warns.iter().any(|l| l.contains("database unavailable")) {
            problems.push(format!(
                "no \"database unavailable\" warning ({name}):\n  {story}"
            ));
        } else if !warned_during {
            problems.push(format!(
                "the \"database unavailable\" warning came only after the database was back \
                 (cut at {cut_clock}, restored at {restore_clock} UTC; {name}):\n  {story}"
            ));
        }
        let backs = err
            .lines()
            .filter(|l| l.contains("[INFO]") && l.contains("database is back"))
            .count();
        if backs == 0 {
            problems.push(format!(
                "no \"database is back\" info line ({name}):\n  {story}"
            ));
        }
        if back_during {
            problems.push(format!(
                "\"database is back\" was logged while the database was still cut off \
                 (cut at {cut_clock}, restored at {restore_clock} UTC; {name}):\n  {story}"
            ));
        }
        let unavailable = warns
            .iter()
            .filter(|l| l.contains("database unavailable"))
            .count();
        if unavailable > 1 || backs > 1 {
            problems.push(format!(
                "one outage was told as {unavailable} \"database unavailable\" warnings and {backs} \
                 \"database is back\" lines, not one of each ({name}):\n  {story}"
            ));
        }
        assert_no_panic(s);
    }
    assert!(
        problems.is_empty(),
        "{} broken promises across a {OUTAGE:?} outage (cut at {cut_clock}, restored at \
         {restore_clock} UTC):\n\n{}\n\n{}",
        problems.len(),
        problems.join("\n\n"),
        context(&db, &services.iter().collect::<Vec<_>>())
    );

    stop_all(services, secs(20));
    assert_clean_after_stop(&db);
    drop(proxy);
}

// ---------------------------------------------------------------------------
// The proxy itself
// ---------------------------------------------------------------------------

/// The outage test's tool does what it says: forwards, cuts open and new
/// connections, forwards again after a restore, and ends every thread when
/// dropped, even with connections open.
#[test]
fn proxy_forwards_cuts_restores_and_stops() {
    let db = TestDb::empty("replicas_proxy");
    let proxy = Proxy::start(&host_port(db.url()));
    let opts = || {
        let opts = mysql::Opts::from_url(&via(db.url(), proxy.addr())).expect("proxy URL");
        mysql::OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(secs(5)))
            .read_timeout(Some(secs(5)))
            .write_timeout(Some(secs(5)))
    };
    let one = |conn: &mut mysql::Conn| conn.query_first::<u8, _>("SELECT 1");

    let mut first = mysql::Conn::new(opts()).expect("connect through the proxy");
    assert_eq!(one(&mut first).expect("query through the proxy"), Some(1));
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.open(), 1);

    assert_eq!(proxy.cut(), 1, "cut closes the open connection");
    assert!(one(&mut first).is_err(), "a cut connection must fail");
    assert!(
        mysql::Conn::new(opts()).is_err(),
        "a new connection must fail while cut"
    );
    assert!(proxy.refused() >= 1);
    wait_until(secs(5), "the cut pair's threads to end", || {
        proxy.open() == 0
    });

    proxy.restore();
    let mut second = mysql::Conn::new(opts()).expect("connect after the restore");
    assert_eq!(one(&mut second).expect("query after the restore"), Some(1));

    // Dropping the proxy with a connection open joins every thread.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(proxy);
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(secs(5))
        .expect("dropping the proxy must end its threads");
    assert!(one(&mut second).is_err(), "the proxy is gone");
}
