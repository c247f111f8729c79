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
//! commands, starts the same threads and shuts down the same way as the
//! `background-processing` binary, which is itself `Runner::new().main()`.
//! The command line itself lives in [`crate::cli`].

use std::process::ExitCode;

use crate::task::{Task, Tasks};

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
        crate::cli::main_with(args, self.tasks)
    }
}
