//! `stats`: counts by status, the oldest waiting job and recent throughput,
//! read from the database (an operator's command: it reads whole indexes).

use anyhow::Context;

use crate::config::Config;
use crate::db::stats::stats_snapshot;
use crate::job::status;
use crate::maintenance::backlog::read_backlog;

/// Prints the snapshot to stdout.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let db = super::connect::connect(config)?;
    let s = stats_snapshot(&mut *db.conn()?)
        .map_err(|e| anyhow::anyhow!("reading stats: {}", e.with_hint()))?;
    let backlog = read_backlog(&db, config.worker_dead_after).context("reading the backlog")?;
    let waiting: u64 = backlog.iter().map(|b| b.waiting).sum();
    let scheduled: u64 = backlog.iter().map(|b| b.scheduled).sum();
    println!("jobs by status:");
    let mut unknown = 0;
    for (st, n) in &s.by_status {
        let known = st.as_deref().is_none_or(|st| status::KNOWN.contains(&st));
        match st.as_deref() {
            // New jobs: those due now apart from those scheduled for later
            // (run_at in the future), which wait by design.
            None => println!(
                "  {:<12} {n} ({waiting} due now, {scheduled} scheduled for later)",
                "NULL (new)"
            ),
            Some(label) if known => println!("  {label:<12} {n}"),
            Some(_) => unknown += n,
        }
    }
    println!("  {:<12} {unknown}", "other (not the service's statuses)");
    println!("new jobs: {waiting} due now, {scheduled} scheduled for later");
    for b in backlog.iter().filter(|b| b.waiting > 0 || b.scheduled > 0) {
        println!(
            "  queue {:<16} kind {:<16} {} due, {} later{}",
            b.queue,
            b.kind,
            b.waiting,
            b.scheduled,
            if b.served {
                ""
            } else {
                "  (no live replica serves this queue and kind)"
            }
        );
    }
    match s.oldest_waiting {
        Some((id, age)) => println!("oldest job due now: id {id}, waiting {age:.1}s"),
        None => println!("oldest job due now: none"),
    }
    let finished: u64 = s.last_minute.iter().map(|(_, n)| n).sum();
    println!(
        "last minute: {finished} finished ({:.1}/s)",
        finished as f64 / 60.0
    );
    for (st, n) in &s.last_minute {
        println!("  {st:<12} {n}");
    }
    println!("workers: {}", s.workers.len());
    for (name, age) in &s.workers {
        println!("  {name} (heartbeat {age:.1}s ago)");
    }
    Ok(())
}
