//! The `background-processing` binary: the service with the built-in `sleep`
//! task kind. Everything else lives in the library
//! ([`background_processing::runner`]).

use std::process::ExitCode;

use background_processing::runner::Runner;

fn main() -> ExitCode {
    Runner::new().main()
}
