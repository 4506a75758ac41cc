//! The `runner` command: parse, run, print the error chain, exit 2 on error.

use std::process::ExitCode;

fn main() -> ExitCode {
    runner::ops::tune_allocator();
    match runner::ops::on_pool(runner::cli::main) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, `outer: inner`, leaving out a cause whose text the message
/// already ends with (some libraries' errors print their source themselves: the image
/// crate's gave "Invalid PNG signature.: Invalid PNG signature.").
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
