//! The chaos suite with short windows: each case loads its own stack, injects one fault,
//! clears it, and checks that no answer was wrong, every error was Barbican's, every secret
//! answered 201 reads back, and the service recovered. `bench/chaos` runs the same cases with
//! long windows (`CHAOS_DURATION`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use e2e::chaos::{self, Options, SimFault};

fn report_fault_ms() -> u64 {
    u64::try_from(Options::from_env().fault.as_millis()).unwrap()
}

#[test]
fn postgres_restarted_under_load() {
    let Some(report) = chaos::postgres_restart(&Options::from_env()) else { return };
    report.assert_sound();
    let (so, sf, ro, rf) = report.during_fault;
    // Requests either fail clearly while the database is down or wait for it.
    assert!(sf + rf > 0 || report.max_latency_ms * 2 >= report_fault_ms(), "not felt: {so} {ro}");
}

#[test]
fn appliance_killed_mid_write() {
    let report = chaos::appliance_sigkill(&Options::from_env());
    report.assert_sound();
}

#[test]
fn sqlite_volume_full() {
    let report = match chaos::sqlite_full(&Options::from_env()) {
        Ok(report) => report,
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("\n*** SKIPPING the full-volume chaos case: {why} (it needs root) ***\n");
            return;
        }
        Err(why) => panic!("the full-volume chaos case cannot mount its tmpfs: {why}"),
    };
    report.assert_sound();
    let (stores_ok, stores_failed, _, reads_failed) = report.during_fault;
    assert!(stores_failed > 0, "no store failed on the full volume: {stores_ok} succeeded");
    assert_eq!(reads_failed, 0, "reads failed on the full volume: {}", report.line());
    assert!(report.statuses.keys().all(|s| *s >= 500), "{:?}", report.statuses);
}

#[test]
fn keystone_down_under_load() {
    let Some(report) = chaos::keystone_down(&Options::from_env()) else { return };
    report.assert_sound();
    assert_eq!(report.errors + report.dropped, 0, "cached tokens failed: {}", report.line());
}

#[test]
fn simulator_device_errors_and_dropped_sessions() {
    chaos::simulator_faults(&Options::from_env(), SimFault::DeviceErrors).assert_sound();
}

#[test]
fn simulator_stall() {
    chaos::simulator_faults(&Options::from_env(), SimFault::Stall).assert_sound();
}

#[test]
fn simulator_slow() {
    let report = chaos::simulator_faults(&Options::from_env(), SimFault::Slow);
    report.assert_sound();
    assert_eq!(
        report.errors + report.dropped,
        0,
        "a slow device failed requests: {}",
        report.line()
    );
}

#[test]
fn simulator_tamper() {
    chaos::assert_tamper_sound(&chaos::simulator_faults(&Options::from_env(), SimFault::Tamper));
}

#[test]
fn proxy_killed_under_load() {
    let report = chaos::proxy_sigkill(&Options::from_env());
    report.assert_sound();
    let recovery = report.recovery_ms.unwrap();
    assert!(recovery <= 5_000, "stores came back only after {recovery} ms");
}

#[test]
fn appliance_dev_killed_and_started_again() {
    let (report, left) = chaos::dev_sigkill(&Options::from_env());
    report.assert_sound();
    assert!(left.is_empty(), "SIGKILL of appliance dev left its children running: {left:?}");
}
