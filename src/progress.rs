//! Logging and progress bars: tracing logs on stderr, with indicatif bars under them when
//! stderr is a terminal; plain log lines otherwise (CI, files, pipes).

use std::io::IsTerminal;

use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// `verbosity`: -1 quiet (warnings and errors), 0 info, 1 debug, 2 trace. `RUST_LOG` wins.
pub fn init_logging(verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("runner={level},warn")));
    let terminal = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer().with_target(false).with_ansi(terminal);
    if terminal && verbosity >= 0 {
        let bars = IndicatifLayer::new();
        let fmt = fmt.with_writer(bars.get_stderr_writer());
        let _ = tracing_subscriber::registry().with(filter).with(fmt).with(bars).try_init();
    } else {
        let fmt = fmt.with_writer(std::io::stderr);
        let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
    }
}

/// Whether progress is drawn as bars (a terminal) rather than logged as lines.
pub fn bars_enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar tied to a tracing span; it draws nothing when bars are off.
pub struct Bar {
    span: Span,
}

impl Bar {
    pub fn new(len: Option<u64>, template: &str, message: &str) -> Bar {
        let span = tracing::info_span!("progress");
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            span.pb_set_style(&style.progress_chars("=> "));
        }
        if let Some(len) = len {
            span.pb_set_length(len);
        }
        span.pb_set_message(message);
        span.pb_start();
        Bar { span }
    }
    pub fn set_position(&self, pos: u64) {
        self.span.pb_set_position(pos);
    }
    pub fn inc(&self, n: u64) {
        self.span.pb_inc(n);
    }
    pub fn set_message(&self, msg: &str) {
        self.span.pb_set_message(msg);
    }
    pub fn finish_and_clear(self) {}
}

pub fn bytes_bar(total: Option<u64>, label: &str) -> Bar {
    Bar::new(total, "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}", label)
}

pub fn batch_bar(batches: usize, label: &str) -> Bar {
    Bar::new(Some(batches as u64), "{msg} [{bar:30}] {pos}/{len} ETA {eta}", label)
}
