//! `appliance dev` supervises its children: the proxy and the simulator, SIGKILLed under load,
//! are started again on the same address and token; stores succeed again within seconds, every
//! answer in between is the stored payload or Barbican's clear 503, and every secret stored
//! before, during and after reads back. A tamper event that leaves the proxy unable to start
//! gives 503s and a slow, clearly logged retry, never a crash loop at full speed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{DevStack, HttpResponse, bin_dir, fetch_text, is_running, kill_hard, store_text};

/// The project every secret of this test belongs to.
const PROJECT: &str = "supervision";
/// Client threads storing and reading at once.
const THREADS: usize = 4;
/// Stores must succeed again this soon after a kill.
const RECOVERY: Duration = Duration::from_secs(5);

fn store(api: &str, payload: &str) -> HttpResponse {
    store_text(api, PROJECT, payload)
}

fn fetch(secret_ref: &str) -> HttpResponse {
    fetch_text(secret_ref, PROJECT)
}

/// `None` when `r` is Barbican's 503 with its JSON body; what is wrong with it otherwise.
fn not_a_clear_503(r: &HttpResponse) -> Option<String> {
    let text = String::from_utf8_lossy(&r.body).into_owned();
    if r.status != 503 {
        return Some(format!("status {}: {text}", r.status));
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
        return Some(format!("a 503 without a JSON body: {text}"));
    };
    let described = body["description"].as_str().is_some_and(|d| !d.is_empty());
    (body["code"] != 503 || !described).then(|| format!("not Barbican's error body: {text}"))
}

fn assert_clear_503(r: &HttpResponse) {
    if let Some(why) = not_a_clear_503(r) {
        panic!("expected a clear 503: {why}");
    }
}

/// One store as the load saw it.
struct Store {
    began: Instant,
    ok: bool,
}

/// What the client threads saw.
#[derive(Default)]
struct Seen {
    stores: Vec<Store>,
    /// Secrets answered 201, with their payloads.
    stored: Vec<(String, String)>,
    reads_ok: usize,
    reads_503: usize,
    /// Answers that were neither right nor a clear 503: must stay empty.
    wrong: Vec<String>,
}

/// Client threads that store a fresh payload and read back one of their own, over and over.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(api: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let threads = (0..THREADS)
            .map(|t| {
                let (api, stop, seen) = (api.to_owned(), stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut mine: Vec<(String, String)> = Vec::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let payload = format!("thread {t} secret {n}");
                        let began = Instant::now();
                        let r = store(&api, &payload);
                        let ok = r.status == 201;
                        let wrong = if ok { None } else { not_a_clear_503(&r) };
                        if ok {
                            let secret_ref = r.json()["secret_ref"].as_str().unwrap().to_owned();
                            mine.push((secret_ref.clone(), payload.clone()));
                            seen.lock().unwrap().stored.push((secret_ref, payload));
                        }
                        {
                            let mut seen = seen.lock().unwrap();
                            seen.stores.push(Store { began, ok });
                            if let Some(why) = wrong {
                                seen.wrong.push(format!("store: {why}"));
                            }
                        }
                        // Read one of this thread's secrets: the newest, then older ones.
                        if let Some((secret_ref, payload)) = mine.get(n * 7 % mine.len().max(1)) {
                            let r = fetch(secret_ref);
                            let mut seen = seen.lock().unwrap();
                            if r.status == 200 && r.body == payload.as_bytes() {
                                seen.reads_ok += 1;
                            } else if let Some(why) = not_a_clear_503(&r) {
                                seen.wrong.push(format!("read of {secret_ref}: {why}"));
                            } else {
                                seen.reads_503 += 1;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, seen, threads }
    }

    /// How long after `kill` stores succeeded for good: the start of the first successful store
    /// begun after the last failed one (zero when none failed). `None` while they still fail,
    /// or before one has succeeded since.
    fn recovered(&self, kill: Instant) -> Option<Duration> {
        let seen = self.seen.lock().unwrap();
        let after: Vec<&Store> = seen.stores.iter().filter(|s| s.began >= kill).collect();
        let last_failure = after.iter().filter(|s| !s.ok).map(|s| s.began).max();
        let first_ok = after
            .iter()
            .filter(|s| s.ok && last_failure.is_none_or(|f| s.began > f))
            .map(|s| s.began)
            .min()?;
        Some(last_failure.map_or(Duration::ZERO, |_| first_ok.duration_since(kill)))
    }

    /// Stores (succeeded, failed) begun after `since`.
    fn stores_since(&self, since: Instant) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        let after = seen.stores.iter().filter(|s| s.began >= since);
        let (ok, failed): (Vec<&Store>, Vec<&Store>) = after.partition(|s| s.ok);
        (ok.len(), failed.len())
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.seen).ok().unwrap().into_inner().unwrap()
    }
}

/// SIGKILLs the child at `pointer` in dev.json under the load, then waits for stores to succeed
/// again and keep succeeding; gives the recovery time.
fn kill_and_recover(stack: &DevStack, load: &Load, pointer: &str) -> Duration {
    let pid = stack.child_pid(pointer).unwrap();
    assert!(is_running(pid), "{pointer} {pid} is not running");
    let kill = Instant::now();
    kill_hard(pid);
    let new_pid = stack.wait_for_new_pid(pointer, pid, RECOVERY * 2);
    assert!(is_running(new_pid), "{pointer}: dev.json names {new_pid}, which does not run");
    while load.recovered(kill).is_none() {
        assert!(
            kill.elapsed() < RECOVERY * 3,
            "no store succeeded after the kill of {pointer}:\n{}",
            stack.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The load goes on a while: the recovery must hold.
    std::thread::sleep(Duration::from_millis(1500));
    let recovery = load.recovered(kill).unwrap_or(kill.elapsed());
    let (ok, failed) = load.stores_since(kill + recovery);
    assert_eq!(failed, 0, "stores failed again after recovering from the kill of {pointer}");
    assert!(ok >= THREADS, "only {ok} stores after recovering from the kill of {pointer}");
    eprintln!(
        "{pointer}: pid {pid} SIGKILLed, restarted as {new_pid}; stores succeed again {} ms \
         after the kill",
        recovery.as_millis()
    );
    recovery
}

#[test]
fn killed_proxy_and_simulator_are_restarted_under_load_and_no_answer_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();
    let proxy_address = stack.info["proxy"]["address"].as_str().unwrap().to_owned();
    let load = Load::start(&api);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(load.stores_since(Instant::now() - Duration::from_secs(2)).0 > 0, "no load");

    let proxy = kill_and_recover(&stack, &load, "/proxy/pid");
    let device = kill_and_recover(&stack, &load, "/hsm/device/pid");
    let seen = load.finish();

    assert!(seen.wrong.is_empty(), "{} wrong answers: {:#?}", seen.wrong.len(), seen.wrong);
    assert!(proxy <= RECOVERY, "stores failed for {} ms after the proxy's kill", proxy.as_millis());
    assert!(
        device <= RECOVERY,
        "stores failed for {} ms after the simulator's kill",
        device.as_millis()
    );
    let info = stack.current_info();
    assert_eq!(info["proxy"]["address"], proxy_address.as_str(), "the proxy moved: {info}");

    // Every secret answered 201, before or after either kill, reads back exactly: the
    // simulator came back with the token (master key) it had.
    for (secret_ref, payload) in &seen.stored {
        let r = fetch(secret_ref);
        assert_eq!(r.status, 200, "{secret_ref}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.body, payload.as_bytes(), "{secret_ref}");
    }
    let failed_stores = seen.stores.iter().filter(|s| !s.ok).count();
    eprintln!(
        "{} stores ({failed_stores} clear 503s), {} reads right, {} clear 503s, 0 wrong; \
         recovery: proxy {} ms, simulator {} ms",
        seen.stores.len(),
        seen.reads_ok,
        seen.reads_503,
        proxy.as_millis(),
        device.as_millis()
    );

    let log = stack.log();
    for name in ["hsm-proxy", "fwsim"] {
        assert!(log.contains(&format!("{name} died (signal: 9 (SIGKILL))")), "{log}");
        assert!(log.contains(&format!("{name} is running again")), "{log}");
    }
    // A stop stops the children for good: nothing is restarted.
    let pids =
        [stack.child_pid("/proxy/pid").unwrap(), stack.child_pid("/hsm/device/pid").unwrap()];
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    for pid in pids {
        assert!(!is_running(pid), "{pid} outlived the stack");
    }
    assert_eq!(log.matches("is running again").count(), 2, "{log}");
}

#[test]
fn a_tampered_token_gives_clear_503s_and_a_slow_clearly_logged_retry() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();
    let endpoint = stack.info["hsm"]["device"]["endpoint"].as_str().unwrap().to_owned();
    let r = store(&api, "before the tamper");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let secret_ref = r.json()["secret_ref"].as_str().unwrap().to_owned();

    let out = std::process::Command::new(bin_dir().join("fwsim"))
        .args(["tamper", "--device", &endpoint])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_clear_503(&fetch(&secret_ref));
    assert_clear_503(&store(&api, "after the tamper"));

    // The proxy dies now: it cannot start again without its master key. The supervisor
    // retries with a growing wait, says why once, and the API keeps answering 503.
    let pid = stack.child_pid("/proxy/pid").unwrap();
    let kill = Instant::now();
    kill_hard(pid);
    let window = Duration::from_secs(4);
    while kill.elapsed() < window {
        assert_clear_503(&fetch(&secret_ref));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stack.log();
    let attempts = log.matches("hsm-proxy failed to start").count();
    // 100, 200, 400, 800 and 1600 ms apart: five attempts in four seconds, not hundreds.
    assert!((2..=6).contains(&attempts), "{attempts} start attempts in {window:?}:\n{log}");
    let said = log.lines().filter(|l| l.contains("no master key")).count();
    assert_eq!(said, 1, "the reason is said once:\n{log}");
    assert!(log.contains("a tamper event zeroizes it"), "{log}");
    assert_eq!(stack.child_pid("/proxy/pid"), None, "dev.json names a dead proxy");
    let device = stack.child_pid("/hsm/device/pid").unwrap();
    assert!(is_running(device), "the simulator must stay up");
    eprintln!(
        "after the tamper: {attempts} proxy start attempts in {} ms, the reason logged once",
        kill.elapsed().as_millis()
    );

    // A stop in the middle of the backoff is prompt and clean.
    let stopping = Instant::now();
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
    assert!(stopping.elapsed() < Duration::from_secs(10), "{log}");
    assert!(!is_running(device), "the simulator outlived the stack");
    assert!(!log.contains("panicked"), "{log}");
}
