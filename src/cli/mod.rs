//! The command line: parsing the arguments, `--help`, logging, and the
//! commands (`run`, `migrate`, `demo`, `stats`). Shared by the binary and by
//! programs that embed the library ([`crate::runner::Runner`]). This is the
//! program's top level, and with `main.rs` the only place that uses
//! `anyhow`.

mod connect;
mod dashboard;
mod demo;
mod migrate;
mod run;
mod schedules;
mod stats;
mod steer;

use std::process::ExitCode;

use simplelog::{ConfigBuilder, LevelFilter, ThreadLogMode, WriteLogger};

use crate::config::{Config, VARS, VERSION};
use crate::task::Tasks;
use steer::Action;

/// Exit code for bad configuration or usage.
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Run,
    /// With `--drop-replaced`: also drop the indexes this version replaced.
    Migrate {
        drop_replaced: bool,
    },
    Demo,
    Dashboard,
    Stats,
    Queues,
    Schedules,
    /// An operator's statement (`--sql`: print it instead of running it).
    Steer {
        action: Action,
        print_sql: bool,
    },
}

fn usage() -> String {
    let mut s = format!(
        "background-processing {VERSION}\n\
         A background-jobs service whose only interface is a MySQL table.\n\n\
         Usage: background-processing [COMMAND]\n\n\
         Commands:\n  \
           run      run the service (the default)\n  \
           migrate  create or upgrade the tables (schema.sql, embedded); keeps the\n           \
                    indexes this version replaced, for replicas of earlier versions\n           \
                    still running\n  \
           migrate --drop-replaced\n           \
                    the same, and drops those indexes (once every replica runs this version)\n  \
           demo     run the service, insert the original demo's jobs and print the table\n  \
           dashboard\n           \
                    serve the web dashboard on DASHBOARD_ADDR (read-only without DASHBOARD_TOKEN)\n  \
           stats    print counts by status, what waits (and what no replica serves),\n           \
                    the oldest waiting job and recent throughput\n  \
           queues   print each queue: waiting, scheduled, running, paused, limits\n  \
           schedules\n           \
                    print each schedule: next fire time, last job and its status\n  \
           cancel ID...\n           \
                    cancel jobs: new or queued ones never start, running ones are interrupted\n  \
           retry ID...\n           \
                    run final jobs (FAILED!, CANCELLED!, DONE!) once more\n  \
           retry --failed [--queue QUEUE] [--kind KIND]\n           \
                    run every FAILED! job (of that queue and kind) once more\n  \
           pause QUEUE\n           \
                    stop claiming from a queue (running and queued jobs go on)\n  \
           resume QUEUE\n           \
                    claim from it again\n\n\
         cancel, retry, pause and resume each run one SQL statement and say what it\n\
         changed; with --sql they print the statement instead of running it.\n\n\
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
    let Some((first, rest)) = args.split_first() else {
        return Ok(Some(Command::Run));
    };
    let alone = |command: Command| match rest {
        [] => Ok(Some(command)),
        _ => Err(format!(
            "{first} takes no arguments, got {:?}",
            rest.join(" ")
        )),
    };
    match first.as_str() {
        "run" => alone(Command::Run),
        "demo" => alone(Command::Demo),
        "dashboard" => alone(Command::Dashboard),
        "stats" => alone(Command::Stats),
        "queues" => alone(Command::Queues),
        "schedules" => alone(Command::Schedules),
        "migrate" => match rest {
            [] => Ok(Some(Command::Migrate {
                drop_replaced: false,
            })),
            [flag] if flag == "--drop-replaced" => Ok(Some(Command::Migrate {
                drop_replaced: true,
            })),
            _ => Err(format!(
                "migrate takes only --drop-replaced, got {:?}",
                rest.join(" ")
            )),
        },
        "cancel" | "retry" | "pause" | "resume" => {
            let print_sql = rest.iter().any(|a| a == "--sql");
            let rest: Vec<&str> = rest
                .iter()
                .map(String::as_str)
                .filter(|a| *a != "--sql")
                .collect();
            let action = steer::parse(first, &rest)?;
            Ok(Some(Command::Steer { action, print_sql }))
        }
        "-h" | "--help" | "help" if rest.is_empty() => {
            print!("{}", usage());
            Ok(None)
        }
        "-V" | "--version" if rest.is_empty() => {
            println!("background-processing {VERSION}");
            Ok(None)
        }
        other if rest.is_empty() => Err(format!("unknown command or option {other:?}")),
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
        // rustls' debug lines are its handshake's internals, in Debug
        // form; its failures reach the log as the connection's error.
        .add_filter_ignore_str("rustls")
        .build();
    // Only fails if a logger is already set, which cannot happen here.
    let _ = WriteLogger::init(level, config, std::io::stderr());
}

/// Runs the command `args` name with the registered `tasks`; returns the
/// process's exit code.
pub fn main_with(args: &[String], tasks: Tasks) -> ExitCode {
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
        Command::Run => run::run(config, tasks, false),
        Command::Demo => run::run(config, tasks, true),
        Command::Dashboard => dashboard::run(&config),
        Command::Migrate { drop_replaced } => migrate::run(&config, drop_replaced).map(drop),
        Command::Stats => stats::run(&config),
        Command::Queues => steer::queues(&config),
        Command::Schedules => schedules::run(&config),
        Command::Steer { action, print_sql } => steer::run(&config, &action, print_sql),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::steer::FailedFilter;

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
        assert_eq!(p(&["dashboard"]), Ok(Some(Command::Dashboard)));
        assert_eq!(p(&["stats"]), Ok(Some(Command::Stats)));
        assert_eq!(p(&["queues"]), Ok(Some(Command::Queues)));
        assert_eq!(p(&["schedules"]), Ok(Some(Command::Schedules)));
        assert_eq!(
            p(&["cancel", "9", "--sql", "3", "9"]),
            Ok(Some(Command::Steer {
                action: Action::Cancel(vec![3, 9]),
                print_sql: true
            }))
        );
        assert_eq!(
            p(&["retry", "--failed", "--kind", "tally"]),
            Ok(Some(Command::Steer {
                action: Action::RetryFailed(FailedFilter {
                    queue: None,
                    kind: Some("tally".into())
                }),
                print_sql: false
            }))
        );
        assert_eq!(
            p(&["pause", "mail"]),
            Ok(Some(Command::Steer {
                action: Action::Pause("mail".into()),
                print_sql: false
            }))
        );
        assert!(p(&["pause", "mail", "more"]).is_err());
        assert!(p(&["cancel", "-1"]).is_err());
        assert!(p(&["queues", "mail"]).is_err());
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
