//! Stop signals, for every command that runs something (a run, a resume, a sweep): the
//! first Ctrl-C or SIGTERM asks for a clean stop at the next batch, a second leaves at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set by the first Ctrl-C (SIGINT) or SIGTERM: finish cleanly at the next batch. A second
/// one leaves at once (exit 130 / 143); the tables are written whole or not at all, so no
/// half-written file stays behind. The signals go to a thread of their own (signal-hook),
/// which may print and exit.
pub fn stop_flag() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            let flag = stop.clone();
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    if sig == SIGTERM {
                        TERM_SEEN.store(true, Ordering::SeqCst);
                    }
                    if flag.swap(true, Ordering::SeqCst) {
                        std::process::exit(128 + sig);
                    }
                    let again = if sig == SIGINT { "Ctrl-C" } else { "SIGTERM" };
                    eprintln!("\nstopping after this batch ({again} again to quit at once)");
                }
            });
        }
        Err(e) => tracing::warn!("cannot catch Ctrl-C and SIGTERM ({e}): a signal stops the run at once"),
    }
    // A file-size limit (`ulimit -f`) would kill the process with SIGXFSZ in the middle of
    // a write; caught, the write fails with "File too large" instead, and the run ends as
    // failed with its earlier files whole.
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, Arc::new(AtomicBool::new(false))) {
        tracing::debug!("cannot catch SIGXFSZ ({e}): a file-size limit kills the process");
    }
    stop
}

/// A SIGTERM arrived: an interrupted run then exits with 143 (128 + 15), as the signal's own.
static TERM_SEEN: AtomicBool = AtomicBool::new(false);

/// Whether a SIGTERM has arrived (an interrupted run then exits with 143; a sweep passes it
/// on to the point it is running).
pub fn term_seen() -> bool {
    TERM_SEEN.load(Ordering::SeqCst)
}
