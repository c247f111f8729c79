//! `migrate`: applies the embedded schema, waiting up to
//! `DB_CONNECT_TIMEOUT` (default 30s) for a server that is not up yet.

use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::db::jobs::job_count_prunable;
use crate::db::migrate::{MigrateReport, migrate};
use crate::db::retry::Retry;
use crate::db::{DbHealth, ErrorKind};

/// Applies the schema (see [`crate::db::migrate`]); with `drop_replaced`,
/// also drops the indexes this version replaced.
pub fn run(config: &Config, drop_replaced: bool) -> anyhow::Result<MigrateReport> {
    let deadline = Instant::now() + config.db_connect_timeout;
    let url = config.redacted_url();
    let quiet = DbHealth::quiet();
    let mut told = false;
    let applied = Retry::new("applying the schema", &quiet)
        .give_up_on_fatal()
        .until(deadline)
        .run(|| {
            migrate(&config.database_url, drop_replaced).inspect_err(|e| {
                if e.kind() == ErrorKind::Outage && !told {
                    told = true;
                    log::warn!(
                        "database at {url} not reachable yet ({e}); waiting up to {} for it \
                         (DB_CONNECT_TIMEOUT)",
                        crate::config::show_duration(config.db_connect_timeout)
                    );
                } else {
                    log::debug!("waiting for the database: {e}");
                }
            })
        });
    let report = match applied {
        Ok(report) => report,
        // A server that answered with an error will not change its mind.
        Err(e) => {
            return Err(super::connect::refused_or_unreachable(
                config,
                &e.into_error(),
            ))
            .context("applying schema.sql");
        }
    };
    log::info!("schema applied to {url}: {report}");
    if !report.kept_replaced.is_empty() {
        log::warn!(
            "kept the indexes this version replaced ({}) for replicas of the previous version; \
             once every replica runs this version, run \
             `background-processing migrate --drop-replaced`",
            report.kept_replaced.join(", ")
        );
    }
    if report.added_columns.iter().any(|c| c == "lease") {
        warn_of_pruning(config);
    }
    Ok(report)
}

/// After an upgrade from the original service: its final rows are as old
/// as they are, and `run` deletes those older than `RETENTION`.
fn warn_of_pruning(config: &Config) {
    let Some(retention) = config.retention else {
        return;
    };
    let old = crate::db::Db::new(&config.database_url, 1)
        .and_then(|db| job_count_prunable(&mut *db.conn()?, retention, u64::MAX));
    match old {
        Ok(0) => {}
        Ok(n) => log::warn!(
            "this table was made by an earlier service: {n} of its final jobs finished more \
             than RETENTION ({}) ago, and `run` deletes them at start; set RETENTION=0 (or a \
             longer one) before `run` to keep them",
            crate::config::show_duration(retention)
        ),
        Err(e) => log::debug!("counting old final jobs: {e}"),
    }
}
