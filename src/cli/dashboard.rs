//! `dashboard`: the web pages over the tables, until SIGTERM or SIGINT.

use anyhow::Context;

use crate::config::{Config, VERSION};
use crate::dashboard::Dashboard;
use crate::db::{Db, DbConfig};

/// Connections the dashboard's pages share (one per answering thread).
const POOL: u32 = 4;

/// Serves the dashboard on `DASHBOARD_ADDR` until a stop signal.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let stop =
        crate::runtime::shutdown::install().context("installing the SIGTERM/SIGINT handler")?;
    let db_cfg = DbConfig {
        pool_size: POOL,
        ..DbConfig::from(config)
    };
    let db = Db::connect(&db_cfg, Default::default())?;
    let server = Dashboard::new(config.into(), db)
        .serve()
        .with_context(|| format!("cannot listen on DASHBOARD_ADDR={}", config.dashboard_addr))?;
    log::info!(
        "background-processing {VERSION} dashboard on http://{} for {} ({})",
        server.addr(),
        config.redacted_url(),
        if config.dashboard_token.is_some() {
            "actions need a session opened with DASHBOARD_TOKEN"
        } else {
            "read-only: DASHBOARD_TOKEN is not set"
        }
    );
    let _ = stop.recv();
    server.stop();
    log::info!("dashboard stopped");
    Ok(())
}
