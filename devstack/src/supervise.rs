//! Keeps `appliance dev`'s children running: a simulator or proxy that dies is logged with its
//! exit status and started again, on the same address and state, after an exponential backoff.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::watch;

use crate::{DevJson, Error, HsmStack, NO_MKEK_HINT};

/// The wait before the first restart; it doubles with each failure in a row.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait: a daemon that cannot stay up costs one start attempt this often.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A daemon up this long has recovered: its next death waits `FIRST_DELAY` again.
const STABLE: Duration = Duration::from_secs(10);
/// Once a daemon fails the same way at `MAX_DELAY`, one failure in this many is logged.
const REMIND_EVERY: u32 = 12;

/// A supervised child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Daemon {
    Device,
    Proxy,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::Device => "fwsim",
            Daemon::Proxy => "hsm-proxy",
        }
    }
}

/// One child's supervision.
#[derive(Debug)]
struct Watch {
    daemon: Daemon,
    /// Its process id and start, while it runs.
    running: Option<(Option<u32>, Instant)>,
    /// Deaths soon after a start, and failed starts, in a row.
    failures: u32,
    /// When the next start is due, while it is down.
    retry_at: Option<Instant>,
    /// Why the last start failed, so that a reason that repeats is said once.
    last_reason: Option<String>,
    /// Starts that failed for `last_reason` since it was last logged.
    repeats: u32,
    /// Starts that failed since the child last ran.
    failed_starts: u32,
}

impl Watch {
    fn new(daemon: Daemon, pid: Option<u32>) -> Watch {
        Watch {
            daemon,
            running: Some((pid, Instant::now())),
            failures: 0,
            retry_at: None,
            last_reason: None,
            repeats: 0,
            failed_starts: 0,
        }
    }

    /// The wait before the next start, counting one more failure.
    fn back_off(&mut self, now: Instant) -> Duration {
        let delay = FIRST_DELAY.saturating_mul(1 << self.failures.min(8)).min(MAX_DELAY);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + delay);
        delay
    }

    /// The child exited: logs it and schedules its start.
    fn died(&mut self, status: std::io::Result<ExitStatus>) {
        let now = Instant::now();
        let (pid, since) = self.running.take().unwrap_or((None, now));
        let up = now.duration_since(since);
        if up >= STABLE {
            self.failures = 0;
            self.last_reason = None;
        }
        let delay = self.back_off(now);
        let status = match status {
            Ok(status) => status.to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        tracing::error!(
            pid,
            up_ms = millis(up),
            restart_in_ms = millis(delay),
            failures_in_a_row = self.failures,
            "{} died ({status}); starting it again",
            self.daemon.name()
        );
    }

    /// The child was started again.
    fn started(&mut self, pid: Option<u32>, down_since: Instant) {
        self.running = Some((pid, Instant::now()));
        self.retry_at = None;
        self.last_reason = None;
        self.repeats = 0;
        tracing::info!(
            pid,
            down_ms = millis(down_since.elapsed()),
            failed_starts = self.failed_starts,
            "{} is running again",
            self.daemon.name()
        );
        self.failed_starts = 0;
    }

    /// A start failed: logs why (once for a reason that repeats) and schedules the next.
    fn failed(&mut self, error: &Error) {
        let delay = self.back_off(Instant::now());
        self.failed_starts += 1;
        let reason = reason(error);
        let name = self.daemon.name();
        if self.last_reason.as_deref() != Some(reason.as_str()) {
            tracing::error!(
                retry_in_ms = millis(delay),
                failures_in_a_row = self.failures,
                "{name} failed to start: {reason}"
            );
            self.last_reason = Some(reason);
            self.repeats = 0;
            return;
        }
        self.repeats += 1;
        if delay < MAX_DELAY {
            tracing::warn!(retry_in_ms = millis(delay), "{name} failed to start again, as before");
        } else if self.repeats % REMIND_EVERY == 1 {
            tracing::error!(
                failures_in_a_row = self.failures,
                "{name} keeps failing to start ({reason}); trying again every {} s, and \
                 saying so once a minute",
                MAX_DELAY.as_secs()
            );
        } else {
            tracing::debug!(failures_in_a_row = self.failures, "{name} failed to start again");
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.running.is_none() && self.retry_at.is_some_and(|at| at <= now)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One line from a failed start: what happened, and the daemon's last word on why.
fn reason(error: &Error) -> String {
    let text = match error {
        Error::Dev(text) => text.clone(),
        other => other.to_string(),
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let head = lines.next().unwrap_or_default().trim_end_matches(':').to_owned();
    let rest: Vec<&str> = lines.filter(|l| *l != NO_MKEK_HINT).collect();
    // Each daemon's main says why it exits last: `hsm-proxy: ...`, or anyhow's `Error: ...`.
    let cause = rest
        .iter()
        .rev()
        .find(|l| l.starts_with("hsm-proxy:") || l.starts_with("Error:"))
        .or(rest.last());
    let mut out = match cause {
        Some(cause) => format!("{head}: {cause}"),
        None => head,
    };
    if text.contains("no master key") {
        out.push_str("; ");
        out.push_str(NO_MKEK_HINT);
    }
    out
}

async fn exited(child: Option<&mut Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

enum Event {
    Stop,
    Died(Daemon, std::io::Result<ExitStatus>),
    Due,
}

/// Watches the stack's children until `stop` turns true, then hands the stack back to be
/// stopped. A child that dies is started again on the same address and state, after a wait
/// that starts at `FIRST_DELAY`, doubles with each failure in a row up to `MAX_DELAY`, and
/// starts over once it has stayed up `STABLE`. The proxy waits for the simulator, whose
/// token it logs in to. `dev.json` is rewritten with each change of process id.
pub async fn supervise(
    mut stack: HsmStack,
    dev_json: DevJson,
    mut stop: watch::Receiver<bool>,
) -> HsmStack {
    let mut device =
        Watch::new(Daemon::Device, stack.token.device.as_ref().and_then(|d| d.child.id()));
    let mut proxy = Watch::new(Daemon::Proxy, stack.proxy_pid());
    let mut down_since = [Instant::now(); 2];
    loop {
        if *stop.borrow() {
            break;
        }
        let due = [device.retry_at, proxy.retry_at].into_iter().flatten().min();
        let event = {
            let device_child = match (&device.running, stack.token.device.as_mut()) {
                (Some(_), Some(d)) => Some(&mut d.child),
                _ => None,
            };
            let proxy_child = match (&proxy.running, stack.proxy.as_mut()) {
                (Some(_), Some(p)) => Some(&mut p.child),
                _ => None,
            };
            tokio::select! {
                biased;
                _ = stop.changed() => Event::Stop,
                status = exited(device_child) => Event::Died(Daemon::Device, status),
                status = exited(proxy_child) => Event::Died(Daemon::Proxy, status),
                () = sleep_until(due) => Event::Due,
            }
        };
        match event {
            Event::Stop => break,
            Event::Died(..) if *stop.borrow() => break,
            Event::Died(daemon, status) => {
                let (watch, index) = match daemon {
                    Daemon::Device => (&mut device, 0),
                    Daemon::Proxy => (&mut proxy, 1),
                };
                watch.died(status);
                down_since[index] = Instant::now();
                write(&dev_json, &stack);
            }
            Event::Due => {
                let now = Instant::now();
                let daemon = if device.due(now) {
                    Daemon::Device
                } else if proxy.due(now) {
                    if device.running.is_none() {
                        // Its token is not there yet: it starts once the simulator is back.
                        proxy.retry_at = device.retry_at;
                        continue;
                    }
                    Daemon::Proxy
                } else {
                    continue;
                };
                let started = tokio::select! {
                    _ = stop.changed() => break,
                    started = async {
                        match daemon {
                            Daemon::Device => stack.respawn_device().await,
                            Daemon::Proxy => stack.respawn_proxy().await,
                        }
                    } => started,
                };
                let (watch, index, pid) = match daemon {
                    Daemon::Device => {
                        (&mut device, 0, stack.token.device.as_ref().and_then(|d| d.child.id()))
                    }
                    Daemon::Proxy => (&mut proxy, 1, stack.proxy_pid()),
                };
                match started {
                    Ok(()) => {
                        watch.started(pid, down_since[index]);
                        write(&dev_json, &stack);
                    }
                    Err(e) => watch.failed(&e),
                }
            }
        }
    }
    stack
}

fn write(dev_json: &DevJson, stack: &HsmStack) {
    if let Err(e) = dev_json.write(stack) {
        tracing::warn!(error = %e, "cannot rewrite dev.json");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    #[test]
    fn the_wait_doubles_to_its_cap_and_starts_over_after_a_stable_run() {
        let mut watch = Watch::new(Daemon::Proxy, Some(1));
        let now = Instant::now();
        let waits: Vec<u64> = (0..8).map(|_| millis(watch.back_off(now))).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // Up long enough: the next death waits the first delay again.
        watch.running = Some((Some(2), Instant::now() - STABLE));
        watch.died(Ok(std::os::unix::process::ExitStatusExt::from_raw(9)));
        assert_eq!(watch.failures, 1);
        assert!(watch.retry_at.unwrap() <= Instant::now() + FIRST_DELAY);
        // Dead again soon after its start: the wait grows.
        watch.started(Some(3), Instant::now());
        watch.died(Ok(std::os::unix::process::ExitStatusExt::from_raw(9)));
        assert_eq!(watch.failures, 2);
        assert!(watch.retry_at.unwrap() > Instant::now() + FIRST_DELAY);
    }

    #[test]
    fn a_failed_start_is_told_by_the_daemons_last_word() {
        let error = Error::Dev(format!(
            "hsm-proxy exited (exit status: 1):\n2026-01-01T00:00:00Z ERROR hsm_proxy: no master \
             key labelled \"mkek\"\nhsm-proxy: no master key labelled \"mkek\"\n{NO_MKEK_HINT}"
        ));
        let text = reason(&error);
        assert!(
            text.starts_with(
                "hsm-proxy exited (exit status: 1): hsm-proxy: no master key labelled \"mkek\"; "
            ),
            "{text}"
        );
        assert!(text.ends_with(NO_MKEK_HINT), "{text}");
        let error = Error::Dev("fwsim exited (exit status: 1):\nError: bad profile".into());
        assert_eq!(reason(&error), "fwsim exited (exit status: 1): Error: bad profile");
        let error = Error::Dev("hsm-proxy did not start; see proxy.log".into());
        assert_eq!(reason(&error), "hsm-proxy did not start; see proxy.log");
    }
}
