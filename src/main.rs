//! The `runner` command: parse, run, print the error chain, exit 2 on error.

use std::process::ExitCode;

fn main() -> ExitCode {
    runner::ops::tune_allocator();
    match runner::ops::on_pool(runner::cli::main) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
