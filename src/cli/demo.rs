//! `demo`: the original service's demonstration.
//!
//! Runs the service, plus a seeder that inserts three jobs for object 10
//! every few seconds (1 s, stuck, 1 s), and prints the classic table of the
//! latest jobs whenever it changes, so `DONE!`, `CANCELLED!`, `DONE!` appear
//! as they happen.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crossbeam_channel::{Receiver, select, tick};

use crate::config::Config;
use crate::db::Db;
use crate::db::error::DbResult;
use crate::db::row::col;

/// How often the seeder inserts a batch.
pub const SEED_INTERVAL: Duration = Duration::from_secs(3);
/// How often the table is read.
pub const PRINT_INTERVAL: Duration = Duration::from_millis(500);
/// How many of the latest jobs the table shows: enough batches to cover
/// a stuck job's whole life (claim, `JOB_TIMEOUT`, the canceller's tick), so
/// its `CANCELLED!` is still on screen when it happens.
pub fn rows_to_show(config: &Config) -> usize {
    let life = config.jobs_poll_interval + config.job_timeout + config.canceller_poll_interval;
    let batches = life.as_millis().div_ceil(SEED_INTERVAL.as_millis()) as usize + 1;
    3 * batches.clamp(3, 20)
}

/// Inserts one batch: object 10, sleeps of 1 s, NULL (stuck), 1 s.
pub fn seed_once(db: &Db) -> DbResult<()> {
    db.conn()?.query_drop(
        "INSERT INTO jobs (object_id, sleep) VALUES (10, 1000000000), (10, NULL), (10, 1000000000)",
    )
}

/// The classic table's columns, in order: three numbers, then the status
/// and the timestamps.
const COLUMNS: [&str; 9] = [
    "id",
    "object_id",
    "sleep",
    "status",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "cancelled_at",
];

/// The classic table of the latest jobs, as text.
pub fn table(db: &Db, rows: usize) -> DbResult<String> {
    let times: Vec<String> = COLUMNS[4..]
        .iter()
        .map(|c| format!("DATE_FORMAT({c}, '%Y-%m-%d %H:%i:%s') AS {c}"))
        .collect();
    let sql = format!(
        "SELECT id, object_id, sleep, status, {} FROM jobs ORDER BY id DESC LIMIT {rows}",
        times.join(", ")
    );
    let mut cells: Vec<Vec<String>> = db.conn()?.query_rows(sql, |mut row| {
        let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_else(|| "NULL".into());
        let mut cells = vec![
            col::<u64>(&mut row, "id")?.to_string(),
            num(col(&mut row, "object_id")?),
            num(col(&mut row, "sleep")?),
        ];
        for c in &COLUMNS[3..] {
            cells.push(col::<Option<String>>(&mut row, c)?.unwrap_or_else(|| "NULL".into()));
        }
        Ok(cells)
    })?;
    cells.reverse();
    Ok(render(&cells))
}

/// The classic table's text for `cells` (one row of strings each).
fn render(cells: &[Vec<String>]) -> String {
    let header = COLUMNS;
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric = [true, true, true, false, false, false, false, false, false];
    let line = |row: Vec<String>| {
        let mut s = String::from("|");
        for (i, cell) in row.iter().enumerate() {
            if numeric[i] {
                s.push_str(&format!(" {cell:>w$} |", w = widths[i]));
            } else {
                s.push_str(&format!(" {cell:<w$} |", w = widths[i]));
            }
        }
        s
    };
    let rule: String = widths.iter().fold(String::from("+"), |mut s, w| {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
        s
    });
    let mut out = vec![
        rule.clone(),
        line(header.iter().map(|h| h.to_string()).collect()),
        rule.clone(),
    ];
    out.extend(cells.iter().cloned().map(line));
    out.push(rule);
    out.join("\n")
}

/// Seeds every [`SEED_INTERVAL`] until `stop` closes.
pub fn seeder(db: Db, stop: Receiver<()>) {
    let ticker = tick(SEED_INTERVAL);
    loop {
        if let Err(e) = seed_once(&db) {
            log::warn!("demo: inserting jobs: {e}");
        }
        select! {
            recv(stop) -> _ => return,
            recv(ticker) -> _ => {},
        }
    }
}

/// Prints the table of the latest `rows` jobs to stdout whenever it
/// changes, until `stop` closes. On a terminal the table is redrawn in
/// place (at the top of a cleared screen; log lines show below it until
/// the next change); elsewhere each version follows the last.
pub fn printer(db: Db, rows: usize, stop: Receiver<()>) {
    let ticker = tick(PRINT_INTERVAL);
    let mut last = String::new();
    let in_place = std::io::stdout().is_terminal();
    loop {
        match table(&db, rows) {
            Ok(t) if t != last => {
                let mut out = std::io::stdout().lock();
                // Home the cursor and clear the screen: ANSI, as every
                // terminal emulator reads it.
                let _ = if in_place {
                    writeln!(out, "\x1b[H\x1b[2J{t}")
                } else {
                    writeln!(out, "\n{t}")
                };
                let _ = out.flush();
                last = t;
            }
            Ok(_) => {}
            Err(e) => log::debug!("demo: reading jobs: {e}"),
        }
        select! {
            recv(stop) -> _ => return,
            recv(ticker) -> _ => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_a_stuck_job_until_it_is_cancelled() {
        let config = Config::from_lookup(|_| None).unwrap();
        // 2 s claim + 10 s timeout + 2 s canceller tick = 14 s: five batches
        // of three, plus the one inserted meanwhile.
        assert_eq!(rows_to_show(&config), 18);
    }
}
