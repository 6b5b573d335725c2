//! Log output: lines as text or JSON on standard error, and the per-request access log with its
//! level and sampling (`[logging]`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{AccessLogLevel, LoggingConfig};

pub use ops::logging::init;

/// The access log: one line per request answered (method, path, status, milliseconds), at the
/// configured level, for one request in `access_log_sample`; an answer 5xx is always logged, at
/// INFO at least, unless the log is off.
#[derive(Clone, Debug)]
pub(crate) struct AccessLog {
    level: AccessLogLevel,
    sample: u64,
    /// Requests answered below 5xx; the first of each `sample` is logged. A counter rather than
    /// a draw, so that one request in `sample` is logged exactly, at any load.
    counted: Arc<AtomicU64>,
}

impl AccessLog {
    /// The access log `[logging]` asks for.
    pub(crate) fn new(config: &LoggingConfig) -> AccessLog {
        AccessLog {
            level: config.access_log,
            sample: config.access_log_sample.max(1),
            counted: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Logs a request answered with `status` after `elapsed`, if it is one to log.
    pub(crate) fn record(&self, method: &str, path: &str, status: u16, elapsed: Duration) {
        if self.level == AccessLogLevel::Off {
            return;
        }
        let error = status >= 500;
        if !error && self.sample > 1 {
            let n = self.counted.fetch_add(1, Ordering::Relaxed);
            if !n.is_multiple_of(self.sample) {
                return;
            }
        }
        // u64, which JSON lines write as a number (u128 would be a string).
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if self.level == AccessLogLevel::Debug && !error {
            tracing::debug!(target: "appliance::access", method = %method, path = %path, status, ms, "request");
        } else {
            tracing::info!(target: "appliance::access", method = %method, path = %path, status, ms, "request");
        }
    }
}
