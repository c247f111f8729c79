//! `run` and `demo`: the service until a stop signal, then the drain.

use anyhow::Context;
use crossbeam_channel::{Receiver, bounded};

use super::demo;
use crate::config::{Config, VERSION};
use crate::db::Db;
use crate::runtime::threads::spawn;
use crate::service::Service;
use crate::task::Tasks;

/// Runs the service (with the demo's seeder and table when `with_demo`)
/// until SIGTERM or SIGINT, then shuts it down gracefully.
pub fn run(config: Config, tasks: Tasks, with_demo: bool) -> anyhow::Result<()> {
    log::info!("background-processing {VERSION} starting: {config:?}");
    let stop =
        crate::runtime::shutdown::install().context("installing the SIGTERM/SIGINT handler")?;
    if with_demo {
        super::migrate::run(&config, false)?;
    }
    let demo_db = Db::new(&config.database_url, 2)?;
    let demo_rows = demo::rows_to_show(&config);
    log::info!("task kinds: {}", tasks.kinds().join(", "));
    let service = Service::start(config, tasks)?;
    log::info!("started as worker {}", service.worker());
    let (stop_demo, stop_demo_rx) = bounded::<()>(0);
    let demo_threads = if with_demo {
        start_demo(demo_db, demo_rows, stop_demo_rx)
    } else {
        Vec::new()
    };
    let _ = stop.recv();
    drop(stop_demo);
    for t in demo_threads {
        let _ = t.join();
    }
    let report = service.shutdown();
    log::info!(
        "stopped: put back {} waiting jobs, interrupted {} at the deadline",
        report.released,
        report.interrupted
    );
    Ok(())
}

/// The demo's seeder and table printer, until `stop` closes.
fn start_demo(db: Db, rows: usize, stop: Receiver<()>) -> Vec<std::thread::JoinHandle<()>> {
    let (db2, stop2) = (db.clone(), stop.clone());
    vec![
        spawn("demo-seeder".into(), move || demo::seeder(db, stop)),
        spawn("demo-printer".into(), move || {
            demo::printer(db2, rows, stop2)
        }),
    ]
}
