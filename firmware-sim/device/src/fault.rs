//! Fault injection, changed at run time by an admin command or a watched file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, file_error};

/// The faults to inject, as an operator writes them (`fwsim fault ...` or the fault file).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Probability that a command fails with `CKR_DEVICE_ERROR`, changing nothing.
    #[serde(default)]
    pub device_error_rate: f64,
    /// Probability that a session command finds its session dropped by the device
    /// (`CKR_SESSION_HANDLE_INVALID`; the session is gone).
    #[serde(default)]
    pub drop_session_rate: f64,
    /// Every command waits until this many milliseconds after the spec is applied.
    #[serde(default)]
    pub stall_ms: u64,
    /// Multiplies every service time (a slow or overheating device).
    #[serde(default = "one")]
    pub slow_factor: f64,
    /// Added to every command's response time, in microseconds.
    #[serde(default)]
    pub extra_latency_us: u64,
}

fn one() -> f64 {
    1.0
}

impl FaultSpec {
    /// No faults.
    pub fn none() -> FaultSpec {
        FaultSpec { slow_factor: 1.0, ..FaultSpec::default() }
    }

    /// Checks the values.
    pub fn check(&self) -> Result<()> {
        let rate = |r: f64| (0.0..=1.0).contains(&r);
        if !rate(self.device_error_rate) || !rate(self.drop_session_rate) {
            return Err(Error::Config("fault rates must be between 0 and 1".into()));
        }
        if !(self.slow_factor >= 0.0 && self.slow_factor.is_finite()) {
            return Err(Error::Config("slow_factor must be a non-negative number".into()));
        }
        Ok(())
    }

    /// Parses a fault file (TOML).
    pub fn parse(text: &str) -> Result<FaultSpec> {
        let spec: FaultSpec = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }
}

/// Counts of injected faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Commands answered with `CKR_DEVICE_ERROR`.
    pub device_errors: u64,
    /// Sessions dropped.
    pub dropped_sessions: u64,
    /// Commands delayed by a stall.
    pub stalled: u64,
    /// Tamper events.
    pub tampers: u64,
}

/// The live fault state.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<Active>,
    /// Whether any fault is set: the common case, none, costs every command one load.
    active: AtomicBool,
    rng: AtomicU64,
    pub(crate) device_errors: AtomicU64,
    pub(crate) dropped_sessions: AtomicU64,
    pub(crate) stalled: AtomicU64,
    pub(crate) tampers: AtomicU64,
}

#[derive(Debug)]
struct Active {
    spec: FaultSpec,
    stall_until: Option<Instant>,
}

/// What to do to one command.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Decision {
    pub(crate) device_error: bool,
    pub(crate) drop_session: bool,
    pub(crate) stall_until: Option<Instant>,
    pub(crate) slow_factor: f64,
    pub(crate) extra: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::new()
    }
}

impl Faults {
    /// No faults.
    pub fn new() -> Faults {
        let mut seed = [0u8; 8];
        // Fault draws need no cryptographic quality; the OS seed only keeps runs independent.
        let _ = getrandom::fill(&mut seed);
        Faults {
            state: Mutex::new(Active { spec: FaultSpec::none(), stall_until: None }),
            active: AtomicBool::new(false),
            rng: AtomicU64::new(u64::from_le_bytes(seed) | 1),
            device_errors: AtomicU64::new(0),
            dropped_sessions: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            tampers: AtomicU64::new(0),
        }
    }

    /// Applies `spec` from now on.
    pub fn set(&self, spec: FaultSpec) {
        let stall_until =
            (spec.stall_ms > 0).then(|| Instant::now() + Duration::from_millis(spec.stall_ms));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.active.store(spec != FaultSpec::none(), Ordering::Relaxed);
        *state = Active { spec, stall_until };
    }

    /// The spec in force.
    pub fn spec(&self) -> FaultSpec {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).spec.clone()
    }

    /// Counts so far.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            device_errors: self.device_errors.load(Ordering::Relaxed),
            dropped_sessions: self.dropped_sessions.load(Ordering::Relaxed),
            stalled: self.stalled.load(Ordering::Relaxed),
            tampers: self.tampers.load(Ordering::Relaxed),
        }
    }

    /// A uniform draw in [0, 1) (xorshift; shared, lock-free).
    pub(crate) fn uniform(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn decide(&self, has_session: bool) -> Decision {
        if !self.active.load(Ordering::Relaxed) {
            return Decision { slow_factor: 1.0, ..Decision::default() };
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let spec = &state.spec;
        let device_error = spec.device_error_rate > 0.0 && self.uniform() < spec.device_error_rate;
        let drop_session = has_session
            && !device_error
            && spec.drop_session_rate > 0.0
            && self.uniform() < spec.drop_session_rate;
        Decision {
            device_error,
            drop_session,
            stall_until: state.stall_until.filter(|t| *t > Instant::now()),
            slow_factor: spec.slow_factor,
            extra: Duration::from_micros(spec.extra_latency_us),
        }
    }
}

/// Watches a fault file and applies it whenever it changes.
#[derive(Debug)]
pub struct FaultFile {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl FaultFile {
    /// A watcher for `path` (which need not exist yet).
    pub fn new(path: &Path) -> FaultFile {
        FaultFile { path: path.to_owned(), seen: None }
    }

    /// Re-reads the file if it changed; a removed file clears the faults.
    pub fn poll(&mut self, faults: &Faults) -> Result<Option<FaultSpec>> {
        let modified = match std::fs::metadata(&self.path) {
            Ok(m) => m.modified().map_err(file_error(&self.path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.seen.take().is_some() {
                    faults.set(FaultSpec::none());
                    return Ok(Some(FaultSpec::none()));
                }
                return Ok(None);
            }
            Err(e) => return Err(file_error(&self.path)(e)),
        };
        if self.seen == Some(modified) {
            return Ok(None);
        }
        self.seen = Some(modified);
        let text = std::fs::read_to_string(&self.path).map_err(file_error(&self.path))?;
        let spec = FaultSpec::parse(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", self.path.display())))?;
        faults.set(spec.clone());
        Ok(Some(spec))
    }
}
