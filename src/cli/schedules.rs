//! `schedules`: every row of `schedules` with its next fire time, its last
//! job and that job's status, and why it is disabled or what its jobs wait
//! for.

use anyhow::Context;

use crate::config::Config;
use crate::db::schedules::schedule_list;

/// Prints the schedules to stdout.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let db = super::connect::connect(config)?;
    let rows = schedule_list(&mut *db.conn()?).context("reading schedules")?;
    if rows.is_empty() {
        println!("no schedules (rows of the schedules table)");
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:<16} {:<8} {:<28} last job",
        "name", "cron", "kind@queue", "enabled", "next fire (server time)"
    );
    for r in rows {
        let last = match &r.last_job {
            Some((id, status)) => format!("{id} ({status})"),
            None => "-".to_string(),
        };
        println!(
            "{:<24} {:<20} {:<16} {:<8} {:<28} {last}",
            r.name,
            r.cron,
            format!("{}@{}", r.kind, r.queue),
            if r.enabled { "yes" } else { "no" },
            r.next_run_at.as_deref().unwrap_or("-"),
        );
        if let Some(error) = &r.error {
            println!("  {error}");
        }
    }
    Ok(())
}
