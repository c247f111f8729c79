//! The command line, shared by the binary and by programs that embed the
//! library with task kinds of their own.
//!
//! ```no_run
//! use background_processing::runner::Runner;
//! use background_processing::task::{JobContext, Task, TaskError};
//! use background_processing::cancel::Cancellation;
//!
//! struct Hello;
//! impl Task for Hello {
//!     fn run(&self, job: &JobContext, _cancel: &Cancellation) -> Result<(), TaskError> {
//!         println!("hello from job {}", job.id);
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Runner::new().register("hello", Hello).main()
//! }
//! ```
//!
//! [`Runner::main`] reads the same environment variables, offers the same
//! commands (`run`, `migrate`, `demo`, `stats`), starts the same threads and
//! shuts down the same way as the `background-processing` binary, which is
//! itself `Runner::new().main()`. This is the one place besides `main.rs`
//! that uses `anyhow`: it is the program's top level.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{Config, VARS};
use crate::db::Db;
use crate::db::migrate::{MigrateReport, migrate};
use crate::db::stats::stats_snapshot;
use crate::service::Service;
use crate::task::{Task, Tasks};
use crate::{VERSION, demo, shutdown};
use crossbeam_channel::bounded;
use simplelog::{ConfigBuilder, LevelFilter, ThreadLogMode, WriteLogger};

/// Exit code for bad configuration or usage.
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Run,
    /// With `--drop-replaced`: also drop the indexes this version replaced.
    Migrate {
        drop_replaced: bool,
    },
    Demo,
    Stats,
}

fn usage() -> String {
    let mut s = format!(
        "background-processing {VERSION}\n\
         A background-jobs service whose only interface is a MySQL table.\n\n\
         Usage: background-processing [COMMAND]\n\n\
         Commands:\n  \
           run      run the service (the default)\n  \
           migrate  create or upgrade the jobs and workers tables (schema.sql, embedded);\n           \
                    keeps the indexes this version replaced, for replicas of the\n           \
                    previous version still running\n  \
           migrate --drop-replaced\n           \
                    the same, and drops those indexes (once every replica runs this version)\n  \
           demo     run the service, insert the original demo's jobs and print the table\n  \
           stats    print counts by status, the oldest waiting job and recent throughput\n\n\
         Options:\n  \
           -h, --help     print this help\n  \
           -V, --version  print the version\n\n\
         Environment (default):\n"
    );
    for v in VARS {
        s.push_str(&format!(
            "  {:<24} {} (default: {})\n",
            v.name, v.help, v.default
        ));
    }
    s.push_str(
        "\nExit codes: 0 done (also after a graceful SIGTERM/SIGINT), 1 runtime failure,\n\
         2 bad configuration or usage; a second signal during shutdown exits 130.\n",
    );
    s
}

fn parse_args(args: &[String]) -> Result<Option<Command>, String> {
    match args {
        [] => Ok(Some(Command::Run)),
        [one] => match one.as_str() {
            "run" => Ok(Some(Command::Run)),
            "migrate" => Ok(Some(Command::Migrate {
                drop_replaced: false,
            })),
            "demo" => Ok(Some(Command::Demo)),
            "stats" => Ok(Some(Command::Stats)),
            "-h" | "--help" | "help" => {
                print!("{}", usage());
                Ok(None)
            }
            "-V" | "--version" => {
                println!("background-processing {VERSION}");
                Ok(None)
            }
            other => Err(format!("unknown command or option {other:?}")),
        },
        [migrate, flag] if migrate == "migrate" && flag == "--drop-replaced" => {
            Ok(Some(Command::Migrate {
                drop_replaced: true,
            }))
        }
        _ => Err(format!(
            "expected at most one command, got {:?}",
            args.join(" ")
        )),
    }
}

fn init_logging(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_thread_level(LevelFilter::Error)
        .set_thread_mode(ThreadLogMode::Names)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    // Only fails if a logger is already set, which cannot happen here.
    let _ = WriteLogger::init(level, config, std::io::stderr());
}

/// The service with a set of task kinds, run from the command line.
#[derive(Clone)]
pub struct Runner {
    tasks: Tasks,
}

impl Default for Runner {
    fn default() -> Runner {
        Runner::new()
    }
}

impl Runner {
    /// A runner with the built-in `sleep` kind.
    pub fn new() -> Runner {
        Runner {
            tasks: Tasks::with_sleep(),
        }
    }

    /// Registers `task` to run the jobs whose `kind` is `kind`.
    pub fn register(mut self, kind: &str, task: impl Task + 'static) -> Runner {
        self.tasks.register(kind, task);
        self
    }

    /// The registered kinds.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Parses the command line and the environment, runs the command, and
    /// returns the process's exit code: 0 done, 1 runtime failure, 2 bad
    /// configuration or usage.
    pub fn main(self) -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        self.main_with_args(&args)
    }

    /// [`Runner::main`] with the arguments given.
    pub fn main_with_args(self, args: &[String]) -> ExitCode {
        main_with(args, self.tasks)
    }
}

fn main_with(args: &[String], tasks: Tasks) -> ExitCode {
    let command = match parse_args(args) {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}\n\nRun `background-processing --help` for usage.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(config.log_level);
    let result = match command {
        Command::Run => run(config, tasks, false),
        Command::Demo => run(config, tasks, true),
        Command::Migrate { drop_replaced } => run_migrate(&config, drop_replaced).map(|_| ()),
        Command::Stats => stats(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Applies the schema, waiting up to `DB_CONNECT_TIMEOUT` for the server.
fn run_migrate(config: &Config, drop_replaced: bool) -> anyhow::Result<MigrateReport> {
    let deadline = Instant::now() + config.db_connect_timeout;
    let url = config.redacted_url();
    loop {
        match migrate(&config.database_url, drop_replaced) {
            Ok(report) => {
                log::info!("schema applied to {url}: {report:?}");
                if !report.kept_replaced.is_empty() {
                    log::warn!(
                        "kept the indexes this version replaced ({}) for replicas of the \
                         previous version; once every replica runs this version, run \
                         `background-processing migrate --drop-replaced`",
                        report.kept_replaced.join(", ")
                    );
                }
                return Ok(report);
            }
            // A server that answered with an error will not change its mind.
            Err(e @ crate::db::DbError::Mysql(mysql::Error::MySqlError(_))) => {
                return Err(e).with_context(|| format!("applying schema.sql to {url}"));
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "applying schema.sql: database at {url} not reachable within DB_CONNECT_TIMEOUT ({})",
                        humantime::format_duration(config.db_connect_timeout)
                    )
                });
            }
            Err(e) => {
                log::debug!("waiting for the database: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

fn run(config: Config, tasks: Tasks, with_demo: bool) -> anyhow::Result<()> {
    log::info!("background-processing {VERSION} starting: {config:?}");
    let stop = shutdown::install().context("installing the SIGTERM/SIGINT handler")?;
    if with_demo {
        run_migrate(&config, false)?;
    }
    let demo_db = Db::new(&config.database_url, 2)?;
    let demo_rows = demo::rows_to_show(&config);
    log::info!("task kinds: {}", tasks.kinds().join(", "));
    let service = Service::start(config, tasks)?;
    log::info!("started as worker {}", service.shared().worker);
    let (stop_demo, stop_demo_rx) = bounded::<()>(0);
    let demo_threads = if with_demo {
        let (db1, db2, s1, s2) = (demo_db.clone(), demo_db, stop_demo_rx.clone(), stop_demo_rx);
        vec![
            std::thread::Builder::new()
                .name("demo-seeder".into())
                .spawn(move || demo::seeder(db1, s1))?,
            std::thread::Builder::new()
                .name("demo-printer".into())
                .spawn(move || demo::printer(db2, demo_rows, s2))?,
        ]
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

fn stats(config: &Config) -> anyhow::Result<()> {
    let db = Db::new(&config.database_url, 1)?;
    db.wait_ready(config.db_connect_timeout)
        .with_context(|| format!("connecting to {}", config.redacted_url()))?;
    let mut conn = db.conn()?;
    let s = stats_snapshot(&mut conn).context("reading stats")?;
    println!("jobs by status:");
    let mut unknown = 0;
    for (status, n) in &s.by_status {
        let known = status
            .as_deref()
            .is_none_or(|st| crate::db::jobs::status::KNOWN.contains(&st));
        let label = status.as_deref().unwrap_or("NULL (new)");
        if known {
            println!("  {label:<12} {n}");
        } else {
            unknown += n;
        }
    }
    println!("  {:<12} {unknown}", "other (not the service's statuses)");
    match s.oldest_waiting {
        Some((id, age)) => println!("oldest waiting job: id {id}, waiting {age:.1}s"),
        None => println!("oldest waiting job: none"),
    }
    let finished: u64 = s.last_minute.iter().map(|(_, n)| n).sum();
    println!(
        "last minute: {finished} finished ({:.1}/s)",
        finished as f64 / 60.0
    );
    for (status, n) in &s.last_minute {
        println!("  {status:<12} {n}");
    }
    println!("workers: {}", s.workers.len());
    for (name, age) in &s.workers {
        println!("  {name} (heartbeat {age:.1}s ago)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        let p = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&[]), Ok(Some(Command::Run)));
        assert_eq!(
            p(&["migrate"]),
            Ok(Some(Command::Migrate {
                drop_replaced: false
            }))
        );
        assert_eq!(
            p(&["migrate", "--drop-replaced"]),
            Ok(Some(Command::Migrate {
                drop_replaced: true
            }))
        );
        assert!(p(&["migrate", "--drop"]).is_err());
        assert_eq!(p(&["demo"]), Ok(Some(Command::Demo)));
        assert_eq!(p(&["stats"]), Ok(Some(Command::Stats)));
        assert!(p(&["frobnicate"]).is_err());
        assert!(p(&["run", "extra"]).is_err());
    }

    #[test]
    fn help_lists_every_variable() {
        let help = usage();
        for v in VARS {
            assert!(help.contains(v.name), "{} missing from --help", v.name);
        }
    }
}
