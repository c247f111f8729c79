//! `cancel`, `retry`, `pause`, `resume` and `queues`: the operator's
//! commands. Each of the first four runs one SQL statement
//! ([`crate::db::steer`]) and says what it changed, and what it did not
//! change and why; `--sql` prints the statement instead.

use anyhow::Context;

use crate::config::{Config, is_name};
use crate::db::steer::{
    FailedFilter, JobState, QueueRow, cancel_sql, job_failed_with_held_keys, job_holding_key,
    job_statuses, pause_sql, queue_rows, resume_sql, retry_failed_sql, retry_sql, steer,
};
use crate::maintenance::backlog::read_backlog;
use crate::queues::Backlog;

/// One operator's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Cancel these jobs.
    Cancel(Vec<u64>),
    /// Run these final jobs once more.
    Retry(Vec<u64>),
    /// Run every failed job (of a queue, of a kind) once more.
    RetryFailed(FailedFilter),
    /// Stop claiming from a queue.
    Pause(String),
    /// Claim from it again.
    Resume(String),
}

impl Action {
    /// The one statement it runs.
    pub fn sql(&self) -> String {
        match self {
            Action::Cancel(ids) => cancel_sql(ids),
            Action::Retry(ids) => retry_sql(ids),
            Action::RetryFailed(filter) => retry_failed_sql(filter),
            Action::Pause(q) => pause_sql(q),
            Action::Resume(q) => resume_sql(q),
        }
    }
}

/// The arguments of `command` (`cancel`, `retry`, `pause`, `resume`),
/// `--sql` already taken out.
pub fn parse(command: &str, args: &[&str]) -> Result<Action, String> {
    match command {
        "cancel" => Ok(Action::Cancel(ids(command, args)?)),
        "retry" if args.first() == Some(&"--failed") => {
            Ok(Action::RetryFailed(filter(&args[1..])?))
        }
        "retry" => Ok(Action::Retry(ids(command, args)?)),
        "pause" => Ok(Action::Pause(queue(command, args)?)),
        _ => Ok(Action::Resume(queue(command, args)?)),
    }
}

fn ids(command: &str, args: &[&str]) -> Result<Vec<u64>, String> {
    if args.is_empty() {
        return Err(format!("{command} needs at least one job id"));
    }
    let mut ids: Vec<u64> =
        args.iter()
            .map(|a| {
                a.parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                    format!("{command}: {a:?} is not a job id (a whole number from 1)")
                })
            })
            .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn queue(command: &str, args: &[&str]) -> Result<String, String> {
    match args {
        [q] if is_name(q) => Ok(q.to_string()),
        [q] => Err(format!(
            "{command}: {q:?} is not a queue name (at most 64 letters, digits and . _ - : @)"
        )),
        _ => Err(format!("{command} takes one queue name")),
    }
}

fn filter(args: &[&str]) -> Result<FailedFilter, String> {
    let mut filter = FailedFilter::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().filter(|v| is_name(v));
        match (*flag, value) {
            ("--queue", Some(v)) => filter.queue = Some(v.to_string()),
            ("--kind", Some(v)) => filter.kind = Some(v.to_string()),
            ("--queue" | "--kind", None) => {
                return Err(format!("retry --failed: {flag} needs a queue or kind name"));
            }
            _ => {
                return Err(format!(
                    "retry --failed takes --queue and --kind, not {flag:?}"
                ));
            }
        }
    }
    Ok(filter)
}

/// Runs (or, with `print_sql`, prints) `action`, and says what it changed.
pub fn run(config: &Config, action: &Action, print_sql: bool) -> anyhow::Result<()> {
    let sql = action.sql();
    if print_sql {
        println!("{sql};");
        return Ok(());
    }
    let db = super::connect::connect(config)?;
    let mut conn = db.conn()?;
    let changed = match action {
        Action::Cancel(ids) | Action::Retry(ids) => {
            // The rows are locked while the statement runs, so what they
            // were before it is what it acted on.
            conn.query_drop("START TRANSACTION")?;
            let before = job_statuses(&mut conn, ids, true)?;
            let changed = steer(&mut conn, &sql).with_context(|| format!("running {sql}"))?;
            let after = job_statuses(&mut conn, ids, false)?;
            let mut held = Vec::new();
            for (b, a) in before.iter().zip(&after) {
                if let (true, Some(key)) = (b.status == a.status, &a.unique_key) {
                    if let Some(holder) = job_holding_key(&mut conn, key)? {
                        held.push((a.id, key.clone(), holder));
                    }
                }
            }
            conn.query_drop("COMMIT")?;
            report_jobs(action, ids, changed, &before, &held);
            return Ok(());
        }
        _ => steer(&mut conn, &sql).with_context(|| format!("running {sql}"))?,
    };
    match action {
        Action::Cancel(_) | Action::Retry(_) => {}
        Action::RetryFailed(filter) => {
            println!("{changed} failed jobs are new again");
            let held = job_failed_with_held_keys(&mut conn, filter)?;
            if held > 0 {
                println!(
                    "{held} failed jobs stay FAILED!: another job that is not final holds \
                     their unique_key"
                );
            }
        }
        Action::Pause(q) => match changed {
            0 => println!("queue {q} was paused already: nothing changed"),
            _ => println!(
                "queue {q} paused: no replica claims from it (running and queued jobs go on)"
            ),
        },
        Action::Resume(q) => match changed {
            0 => println!("queue {q} was not paused: nothing changed"),
            _ => println!("queue {q} resumed"),
        },
    }
    Ok(())
}

/// What a cancel or a retry did to each job, from what the rows were
/// before it; `held`: jobs a retry left as they were because another job
/// holds their `unique_key` (job, key, holder).
fn report_jobs(
    action: &Action,
    ids: &[u64],
    changed: u64,
    before: &[JobState],
    held: &[(u64, String, u64)],
) {
    let (done, applies) = match action {
        Action::Cancel(_) => (
            "cancel requested",
            "only a new, queued or running job can be cancelled",
        ),
        _ => (
            "new again",
            "only a FAILED!, CANCELLED! or DONE! job can run again",
        ),
    };
    println!("{changed} of {} jobs changed", ids.len());
    for id in ids {
        match before.iter().find(|j| j.id == *id) {
            None => println!("  job {id}: no such job"),
            Some(job) => {
                let status = job.status.as_deref().unwrap_or("new");
                if let Some((_, key, holder)) = held.iter().find(|(j, _, _)| j == id) {
                    println!(
                        "  job {id}: {status}, nothing changed (job {holder}, not final, \
                         holds its unique_key {key:?})"
                    );
                    continue;
                }
                let hit = match action {
                    Action::Cancel(_) => ["new", "QUEUED!", "STARTED!"].contains(&status),
                    _ => ["FAILED!", "CANCELLED!", "DONE!"].contains(&status),
                };
                if hit {
                    println!("  job {id}: {done} (was {status})");
                } else {
                    println!("  job {id}: {status}, nothing changed ({applies})");
                }
            }
        }
    }
}

/// `queues`: each queue with what waits in it, what runs, and its steering.
pub fn queues(config: &Config) -> anyhow::Result<()> {
    let db = super::connect::connect(config)?;
    let rows = queue_rows(&mut *db.conn()?).context("reading queues")?;
    let backlog = read_backlog(&db, config.worker_dead_after).context("reading the backlog")?;
    let mut names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    names.extend(backlog.iter().map(|b| b.queue.clone()));
    names.sort();
    names.dedup();
    println!(
        "{:<20} {:>9} {:>9} {:>8} {:>6} {:>10} {:>11} {:>12}",
        "queue", "waiting", "scheduled", "running", "paused", "rate_limit", "max_running", "oldest"
    );
    for name in &names {
        let row = rows
            .iter()
            .find(|r| &r.name == name)
            .cloned()
            .unwrap_or(QueueRow {
                name: name.clone(),
                ..QueueRow::default()
            });
        print_queue(&row, backlog.iter().filter(|b| &b.queue == name));
    }
    let unserved: Vec<&Backlog> = backlog
        .iter()
        .filter(|b| !b.served && b.waiting > 0)
        .collect();
    for b in unserved {
        println!(
            "  {} jobs in queue {} of kind {} wait for a replica that serves both",
            b.waiting, b.queue, b.kind
        );
    }
    Ok(())
}

fn print_queue<'a>(row: &QueueRow, backlog: impl Iterator<Item = &'a Backlog>) {
    let (mut waiting, mut scheduled, mut oldest) = (0, 0, None::<f64>);
    for b in backlog {
        waiting += b.waiting;
        scheduled += b.scheduled;
        if let Some(age) = b.oldest {
            oldest = Some(oldest.map_or(age.as_secs_f64(), |o: f64| o.max(age.as_secs_f64())));
        }
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "{:<20} {:>9} {:>9} {:>8} {:>6} {:>10} {:>11} {:>12}",
        row.name,
        waiting,
        scheduled,
        row.running,
        if row.paused { "yes" } else { "no" },
        opt(row.rate_limit.map(|r| format!("{r}/s"))),
        opt(row.max_running.map(|m| m.to_string())),
        opt(oldest.map(|s| format!("{s:.1}s"))),
    );
}
