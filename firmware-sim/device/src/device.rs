//! The device: the firmware behind N crypto engines, with the latency model, fault injection
//! and the state file around it.
//!
//! Time is modelled on a schedule rather than by busy engines: each command reserves the
//! earliest-free engine for its sampled service time, and the caller sleeps until its reply
//! is due (half the link, queueing, service, the other half). Sleeps end at absolute instants,
//! so oversleeping never accumulates, and a saturated device delivers engines / service time
//! operations per second however the host's threads are scheduled. The firmware's own
//! cryptography runs inside that window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use firmware_sim_core::{Command, Error as Ckr, Firmware, Policy, Response};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fault::{FaultCounts, FaultSpec, Faults};
use crate::profile::{OpClass, Profile};
use crate::state::StateFile;

/// How a device is set up.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// The latency model and limits.
    pub profile: Profile,
    /// Where token objects persist; `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
    /// What the firmware enforces beyond PKCS#11 (`fips`: what FIPS-mode HSMs enforce).
    pub policy: Policy,
}

/// An operator's request to the device, outside PKCS#11.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Admin {
    /// Report the device's state.
    Status,
    /// Replace the injected faults.
    SetFaults(FaultSpec),
    /// A tamper event: every key is zeroized.
    Tamper,
}

/// The device's state, as `fwsim status` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The profile's name.
    pub profile: String,
    /// The policy the firmware enforces.
    pub policy: Policy,
    /// Crypto engines.
    pub engines: usize,
    /// Link round trip in microseconds.
    pub link_rtt_us: f64,
    /// Sessions open.
    pub sessions: usize,
    /// Objects held.
    pub objects: usize,
    /// Commands executed since start.
    pub commands: u64,
    /// Applications connected.
    pub applications: usize,
    /// Faults in force.
    pub faults: FaultSpec,
    /// Faults injected so far.
    pub injected: FaultCounts,
    /// Milliseconds since start.
    pub uptime_ms: u64,
}

/// A simulated HSM.
pub struct Device {
    firmware: Mutex<Firmware<OsRng>>,
    profile: Profile,
    engines: Mutex<Vec<Instant>>,
    queued: AtomicUsize,
    faults: Faults,
    state: Option<StateFile>,
    apps: Mutex<HashMap<u64, usize>>,
    commands: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("profile", &self.profile.name).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sleep_until(deadline: Instant) {
    thread_local! {
        static PRECISE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    // Linux lets a sleeping thread oversleep by its timer slack, 50 µs by default: a tenth of
    // a fast profile's service time. One microsecond keeps the model's times honest.
    if !PRECISE.get() {
        let _ = nix::sys::prctl::set_timerslack(1_000);
        PRECISE.set(true);
    }
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

impl Device {
    /// Starts a device, restoring its token from the state file if there is one.
    pub fn open(options: DeviceOptions) -> Result<Arc<Device>> {
        options.profile.check()?;
        let limits = options.profile.limits();
        let state = options.state_file.as_deref().map(StateFile::open).transpose()?;
        let firmware = match state.as_ref().map(StateFile::load).transpose()?.flatten() {
            Some(image) => Firmware::restore(OsRng, limits, image)?,
            None => Firmware::new(OsRng, limits),
        }
        .with_policy(options.policy);
        let now = Instant::now();
        Ok(Arc::new(Device {
            firmware: Mutex::new(firmware),
            engines: Mutex::new(vec![now; options.profile.engines]),
            profile: options.profile,
            queued: AtomicUsize::new(0),
            faults: Faults::new(),
            state,
            apps: Mutex::new(HashMap::new()),
            commands: AtomicU64::new(0),
            started: now,
        }))
    }

    /// The profile in use.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The fault controls.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// An application connected (one more transport connection or library instance).
    pub fn attach(&self, app: u64) {
        *lock(&self.apps).entry(app).or_insert(0) += 1;
    }

    /// An application's connection ended; its last one ends its sessions and login.
    pub fn detach(&self, app: u64) {
        let last = {
            let mut apps = lock(&self.apps);
            match apps.get_mut(&app) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    apps.remove(&app);
                    true
                }
                None => false,
            }
        };
        if last {
            lock(&self.firmware).release(app);
        }
    }

    /// Runs one command for `app`, taking the time the profile says it takes.
    pub fn execute(&self, app: u64, command: Command) -> Result<Response, Ckr> {
        let arrival = Instant::now();
        let class = OpClass::of(&command);
        let session = command.session();
        let decision = self.faults.decide(session.is_some());
        let mut start = arrival;
        if let Some(until) = decision.stall_until {
            self.faults.stalled.fetch_add(1, Ordering::Relaxed);
            start = until;
        }
        let half = self.profile.half_link();
        let at_device = start + half;
        let (done, queued) = if class.uses_engine() {
            let service = self
                .profile
                .service(class)
                .sample(self.faults.uniform(), self.faults.uniform())
                .mul_f64(decision.slow_factor);
            self.reserve(at_device, service)?
        } else {
            (at_device, false)
        };
        let reply_at = done + half + decision.extra;
        let result = if decision.device_error {
            self.faults.device_errors.fetch_add(1, Ordering::Relaxed);
            Err(Ckr::DeviceError)
        } else if decision.drop_session {
            let dropped = session.is_some_and(|s| lock(&self.firmware).drop_session(s));
            if dropped {
                self.faults.dropped_sessions.fetch_add(1, Ordering::Relaxed);
            }
            Err(Ckr::SessionHandleInvalid)
        } else {
            self.run(app, command)
        };
        self.commands.fetch_add(1, Ordering::Relaxed);
        sleep_until(reply_at);
        if queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    /// Reserves the earliest-free engine from `at` for `service`; gives the instant it is done
    /// and whether the command waited in the queue.
    fn reserve(&self, at: Instant, service: Duration) -> Result<(Instant, bool), Ckr> {
        let mut engines = lock(&self.engines);
        let (index, free) = engines
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, t)| (i, *t))
            .ok_or(Ckr::DeviceError)?;
        let waits = free > at;
        if waits {
            let limit = self.profile.queue_limit;
            if limit > 0 && self.queued.load(Ordering::Relaxed) >= limit {
                // A bounded queue: the device answers busy rather than queueing without end.
                return Err(Ckr::DeviceMemory);
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        let begin = free.max(at);
        let done = begin + service;
        engines[index] = done;
        Ok((done, waits))
    }

    fn run(&self, app: u64, command: Command) -> Result<Response, Ckr> {
        let mut firmware = lock(&self.firmware);
        let result = firmware.execute(app, command);
        if firmware.take_dirty()
            && let Some(state) = &self.state
            && let Err(e) = state.save(&firmware.image())
        {
            tracing::error!(error = %e, "cannot save the token state; it will be retried");
            // Kept dirty so that the next command writes everything again. The change stands
            // in memory; the caller is told the device failed, as a real one would.
            firmware.mark_dirty();
            return Err(Ckr::DeviceError);
        }
        result
    }

    /// Handles an operator request.
    pub fn admin(&self, request: Admin) -> Result<Status, Ckr> {
        match request {
            Admin::Status => {}
            Admin::SetFaults(spec) => {
                spec.check().map_err(|_| Ckr::ArgumentsBad)?;
                tracing::warn!(?spec, "fault injection changed");
                self.faults.set(spec);
            }
            Admin::Tamper => {
                tracing::warn!("tamper event: zeroizing every key");
                let mut firmware = lock(&self.firmware);
                firmware.tamper();
                self.faults.tampers.fetch_add(1, Ordering::Relaxed);
                if firmware.take_dirty()
                    && let Some(state) = &self.state
                {
                    state.save(&firmware.image()).map_err(|_| Ckr::DeviceError)?;
                }
            }
        }
        Ok(self.status())
    }

    /// The device's state.
    pub fn status(&self) -> Status {
        let (sessions, objects, policy) = {
            let firmware = lock(&self.firmware);
            (firmware.session_count(), firmware.object_count(), firmware.policy())
        };
        Status {
            profile: self.profile.name.clone(),
            policy,
            engines: self.profile.engines,
            link_rtt_us: self.profile.link_rtt_us,
            sessions,
            objects,
            commands: self.commands.load(Ordering::Relaxed),
            applications: lock(&self.apps).len(),
            faults: self.faults.spec(),
            injected: self.faults.counts(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}
