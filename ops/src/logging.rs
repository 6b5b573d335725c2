//! Log lines on standard error, as text or as JSON, filtered by `RUST_LOG` or a configured
//! level.

use serde::Deserialize;

/// `[logging] format`, and `--log-format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields.
    Json,
}

/// The log options of both daemons' command lines.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log lines as text or JSON; default: the configuration's `[logging] format`, else text.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

impl LogArgs {
    /// Installs the subscriber these options ask for; without `--log-format`, in the format
    /// `configured` reads from the configuration file (text when it gives none).
    pub fn init(&self, configured: impl FnOnce() -> Option<LogFormat>) {
        init(self.log_format.or_else(configured).unwrap_or_default(), &self.log_level);
    }
}

/// Installs the process's subscriber: `format` lines on standard error, filtered by `RUST_LOG`
/// when set, else by `level` (a level or a tracing directive; `info` when it does not parse).
pub fn init(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init();
        }
        // One object per line with the event's fields beside `message`, as log pipelines
        // index them; spans carry nothing here that the fields do not.
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init()
        }
    }
}
