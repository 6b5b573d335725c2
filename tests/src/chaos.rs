//! The chaos suite's driver and cases: client threads store and read secrets against a running
//! stack while one fault is injected and cleared, every answer checked byte for byte.
//!
//! A case starts its own stack, loads it, injects its fault for a window, clears it, keeps
//! loading, and finally reads back every secret that was answered 201. Its [`Report`] counts
//! requests sent, right answers, errors (each must carry Barbican's JSON error body), answers
//! that never came, wrong answers (which must be 0), and the recovery time from the fault's end
//! to the first success and to a whole window of successes.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devstack::testing::{Daemon, OnDrop, PgCluster, fwsim};

use crate::{DevStack, HttpResponse, bin_dir, keystone_venv};

/// How long a case loads before, during and after its fault, and with how many clients.
#[derive(Clone, Debug)]
pub struct Options {
    /// Client threads.
    pub threads: usize,
    /// Load before the fault.
    pub warmup: Duration,
    /// The fault's window.
    pub fault: Duration,
    /// Load after the fault is cleared.
    pub after: Duration,
    /// The run of successes that counts as recovered.
    pub window: Duration,
}

impl Options {
    /// Short windows, for CI: a case takes about ten seconds.
    pub fn ci() -> Options {
        Options {
            threads: 4,
            warmup: Duration::from_millis(1500),
            fault: Duration::from_secs(3),
            after: Duration::from_secs(4),
            window: Duration::from_secs(1),
        }
    }

    /// [`Options::ci`], or long windows when `CHAOS_DURATION` (seconds of fault) is set, as
    /// `bench/chaos --duration` does; `CHAOS_THREADS` sets the client threads.
    pub fn from_env() -> Options {
        let mut o = Options::ci();
        if let Some(secs) = env_number("CHAOS_DURATION") {
            let secs = secs.max(1);
            o.fault = Duration::from_secs(secs);
            o.warmup = Duration::from_secs((secs / 4).max(2));
            o.after = Duration::from_secs(secs.max(5));
            o.window = Duration::from_secs(2);
        }
        if let Some(threads) = env_number("CHAOS_THREADS") {
            o.threads = usize::try_from(threads.max(1)).unwrap();
        }
        o
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

/// What one case saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The case's name.
    pub case: String,
    /// Requests sent by the load.
    pub sent: u64,
    /// Right answers.
    pub ok: u64,
    /// Answers that were errors (non-2xx other than a lost secret's 404).
    pub errors: u64,
    /// Requests that got no answer (refused or cut connections, timeouts).
    pub dropped: u64,
    /// Errors without Barbican's JSON error body.
    pub bad_bodies: u64,
    /// Wrong answers: a 2xx with other bytes, or a secret answered 201 that is not there.
    pub wrong: u64,
    /// Error statuses, and how often each came.
    pub statuses: BTreeMap<u16, u64>,
    /// From the fault's end to the first right answer.
    pub first_ok_ms: Option<u64>,
    /// From the fault's end to the start of the first whole window of right answers.
    pub recovery_ms: Option<u64>,
    /// Secrets answered 201 and read back at the end.
    pub verified: u64,
    /// The longest any request waited for its answer (or for its failure).
    pub max_latency_ms: u64,
    /// Secrets answered 201 whose final read was an error (neither right nor wrong).
    pub unverified: u64,
    /// Stores and reads answered during the fault: (stores right, stores failed, reads right,
    /// reads failed).
    pub during_fault: (u64, u64, u64, u64),
    /// Case-specific findings.
    pub notes: Vec<String>,
    /// The first few wrong answers and bad error bodies, described.
    pub problems: Vec<String>,
}

impl Report {
    /// The report as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let (so, sf, ro, rf) = self.during_fault;
        serde_json::json!({
            "case": self.case,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "dropped": self.dropped,
            "bad_bodies": self.bad_bodies,
            "wrong": self.wrong,
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
            "first_ok_ms": self.first_ok_ms,
            "recovery_ms": self.recovery_ms,
            "verified": self.verified,
            "max_latency_ms": self.max_latency_ms,
            "unverified": self.unverified,
            "during_fault": {"stores_ok": so, "stores_failed": sf, "reads_ok": ro, "reads_failed": rf},
            "notes": self.notes,
            "problems": self.problems,
        })
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("never".to_owned(), |v| format!("{v} ms"));
        format!(
            "chaos {:<24} sent {:>7}  ok {:>7}  errors {:>6}  dropped {:>5}  wrong {}  bad bodies {}  \
             first ok {}  recovery {}  verified {}/{}",
            self.case,
            self.sent,
            self.ok,
            self.errors,
            self.dropped,
            self.wrong,
            self.bad_bodies,
            ms(self.first_ok_ms),
            ms(self.recovery_ms),
            self.verified,
            self.verified + self.unverified,
        )
    }

    /// Prints the line and the JSON to stderr, and appends the JSON to `$CHAOS_REPORT` if set.
    pub fn publish(&self) {
        eprintln!("{}\n{}", self.line(), self.json());
        if let Some(path) = std::env::var_os("CHAOS_REPORT") {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            writeln!(f, "{}", self.json()).unwrap();
        }
    }

    /// What every case must show: no wrong answer, every error in Barbican's shape, every
    /// secret answered 201 read back, and a recovery.
    pub fn assert_sound(&self) {
        self.publish();
        assert_eq!(self.wrong, 0, "wrong answers: {:#?}", self.problems);
        assert_eq!(self.bad_bodies, 0, "errors without Barbican's body: {:#?}", self.problems);
        assert_eq!(
            self.unverified,
            0,
            "secrets answered 201 unreadable at the end: {}",
            self.line()
        );
        assert!(self.ok > 0 && self.verified > 0, "no load got through: {}", self.line());
        assert!(self.recovery_ms.is_some(), "the service did not recover: {}", self.line());
    }
}

// --- The load --------------------------------------------------------------------------------

/// Who the clients are.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Barbican's no-auth headers; with `rotate_projects`, each client moves to a new project
    /// every few stores, so new project KEKs are made all along.
    NoAuth {
        /// Move to a new project every eight stores.
        rotate_projects: bool,
    },
    /// A Keystone token.
    Token(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Store,
    Read,
}

#[derive(Debug)]
struct Event {
    at: Duration,
    kind: Kind,
    ok: bool,
}

#[derive(Debug)]
struct Acked {
    path: String,
    payload: String,
    project: String,
}

#[derive(Debug, Default)]
struct Tally {
    report: Report,
    events: Vec<Event>,
}

#[derive(Debug)]
struct Shared {
    /// The API's `host:port` and base URL; a restarted stack may listen elsewhere.
    target: Mutex<(String, String)>,
    auth: Auth,
    start: Instant,
    stop: AtomicBool,
    acked: Mutex<Vec<Arc<Acked>>>,
    unanswered: Mutex<HashSet<String>>,
    tally: Mutex<Tally>,
    fault: Mutex<(Option<Duration>, Option<Duration>)>,
}

impl Shared {
    fn target(&self) -> (String, String) {
        self.target.lock().unwrap().clone()
    }
}

/// Client threads loading a stack: a third stores, the rest read back what was stored.
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    window: Duration,
}

/// Percentage of operations that are stores (once something is stored).
const STORE_SHARE: u64 = 30;
/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

impl Load {
    /// Starts `options.threads` clients against `api` (`http://host:port`).
    pub fn start(api: &str, auth: Auth, options: &Options) -> Load {
        let addr = api.strip_prefix("http://").unwrap().trim_end_matches('/').to_owned();
        let shared = Arc::new(Shared {
            target: Mutex::new((addr, api.trim_end_matches('/').to_owned())),
            auth,
            start: Instant::now(),
            stop: AtomicBool::new(false),
            acked: Mutex::new(Vec::new()),
            unanswered: Mutex::new(HashSet::new()),
            tally: Mutex::new(Tally::default()),
            fault: Mutex::new((None, None)),
        });
        let threads = (0..options.threads)
            .map(|id| {
                let shared = shared.clone();
                std::thread::spawn(move || worker(&shared, id))
            })
            .collect();
        Load { shared, threads, window: options.window }
    }

    /// Points the clients at a restarted stack's API; kept connections move at their next
    /// failure.
    pub fn retarget(&self, api: &str) {
        let addr = api.strip_prefix("http://").unwrap().trim_end_matches('/').to_owned();
        *self.shared.target.lock().unwrap() = (addr, api.trim_end_matches('/').to_owned());
    }

    /// Marks the fault's start.
    pub fn fault_started(&self) {
        self.shared.fault.lock().unwrap().0 = Some(self.shared.start.elapsed());
    }

    /// Marks the fault's end: recovery is measured from here.
    pub fn fault_ended(&self) {
        self.shared.fault.lock().unwrap().1 = Some(self.shared.start.elapsed());
    }

    /// Secrets answered 201 so far.
    pub fn acked(&self) -> usize {
        self.shared.acked.lock().unwrap().len()
    }

    /// Right answers so far.
    pub fn ok(&self) -> u64 {
        self.shared.tally.lock().unwrap().report.ok
    }

    /// Payloads of stores that got no answer: such a secret may or may not exist.
    pub fn unanswered(&self) -> HashSet<String> {
        self.shared.unanswered.lock().unwrap().clone()
    }

    /// Every payload of a secret answered 201, with its project, by secret id.
    pub fn acked_by_id(&self) -> BTreeMap<String, (String, String)> {
        self.shared
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|a| {
                let id = a.path.rsplit('/').next().unwrap().to_owned();
                (id, (a.payload.clone(), a.project.clone()))
            })
            .collect()
    }

    /// Stops the clients and computes the report, without the final read-back.
    fn stop(&mut self, case: &str) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let (fault_start, fault_end) = *self.shared.fault.lock().unwrap();
        let mut tally = self.shared.tally.lock().unwrap();
        tally.events.sort_by_key(|e| e.at);
        let mut report = tally.report.clone();
        report.case = case.to_owned();
        if let (Some(start), Some(end)) = (fault_start, fault_end) {
            let mut d = (0, 0, 0, 0);
            for e in tally.events.iter().filter(|e| e.at >= start && e.at <= end) {
                match (e.kind, e.ok) {
                    (Kind::Store, true) => d.0 += 1,
                    (Kind::Store, false) => d.1 += 1,
                    (Kind::Read, true) => d.2 += 1,
                    (Kind::Read, false) => d.3 += 1,
                }
            }
            report.during_fault = d;
        }
        if let Some(end) = fault_end {
            let (first, recovered) = recovery(&tally.events, end, self.window);
            report.first_ok_ms = first.map(|d| u64::try_from(d.as_millis()).unwrap());
            report.recovery_ms = recovered.map(|d| u64::try_from(d.as_millis()).unwrap());
        }
        report
    }

    /// Stops the clients, reads back every secret answered 201, and reports.
    pub fn finish(&mut self, case: &str) -> Report {
        let mut report = self.stop(case);
        let acked: Vec<Arc<Acked>> = self.shared.acked.lock().unwrap().clone();
        let mut conn = None;
        for a in &acked {
            let headers = headers_for(&self.shared.auth, &a.project);
            let mut h: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            h.push(("Accept", "text/plain"));
            let path = format!("{}/payload", a.path);
            // A read-back that meets a transient error tries again a few times: only what it
            // finally gets counts.
            let mut outcome = None;
            // Once many fail (a tamper made them unreadable for good), one try each.
            let tries = if report.unverified > 10 { 1 } else { 5 };
            for attempt in 0..tries {
                if attempt > 0 {
                    sleep(Duration::from_millis(100));
                }
                let (addr, _) = self.shared.target();
                match send(&mut conn, &addr, "GET", &path, &h, b"") {
                    Ok(r) if r.status == 200 || r.status == 404 => {
                        outcome = Some(r);
                        break;
                    }
                    Ok(r) => outcome = Some(r),
                    Err(_) => outcome = None,
                }
            }
            match outcome {
                Some(r) if r.status == 200 && r.body == a.payload.as_bytes() => {
                    report.verified += 1;
                }
                Some(r) if (200..300).contains(&r.status) || r.status == 404 => {
                    report.wrong += 1;
                    note_problem(
                        &mut report.problems,
                        format!(
                            "final read of {}: {} {:?}, stored {:?}",
                            a.path,
                            r.status,
                            String::from_utf8_lossy(&r.body),
                            a.payload
                        ),
                    );
                }
                _ => report.unverified += 1,
            }
        }
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// From `end`: the first success, and the first success that starts a whole `window` of
/// successes (one the load ran long enough to see).
fn recovery(
    events: &[Event],
    end: Duration,
    window: Duration,
) -> (Option<Duration>, Option<Duration>) {
    let after: Vec<&Event> = events.iter().filter(|e| e.at >= end).collect();
    let first = after.iter().find(|e| e.ok).map(|e| e.at - end);
    let last = after.last().map(|e| e.at);
    let mut recovered = None;
    let mut i = 0;
    while i < after.len() {
        if !after[i].ok {
            i += 1;
            continue;
        }
        let from = after[i].at;
        if last.is_none_or(|l| l < from + window) {
            break;
        }
        match after[i..].iter().take_while(|e| e.at <= from + window).position(|e| !e.ok) {
            None => {
                recovered = Some(from - end);
                break;
            }
            Some(bad) => i += bad + 1,
        }
    }
    (first, recovered)
}

fn headers_for(auth: &Auth, project: &str) -> Vec<(String, String)> {
    match auth {
        Auth::NoAuth { .. } => vec![
            ("X-Project-Id".into(), project.into()),
            ("X-Roles".into(), "member,reader".into()),
            ("X-User-Id".into(), "chaos".into()),
        ],
        Auth::Token(token) => vec![("X-Auth-Token".into(), token.clone())],
    }
}

fn note_problem(problems: &mut Vec<String>, what: String) {
    if problems.len() < 20 {
        problems.push(what);
    }
}

/// Whether `r` is Barbican's error: JSON with its own status as `code`, a title and a
/// description.
fn barbican_error(r: &HttpResponse) -> bool {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body) else { return false };
    body["code"].as_u64() == Some(u64::from(r.status))
        && body["title"].as_str().is_some_and(|t| !t.is_empty())
        && body["description"].as_str().is_some_and(|d| !d.is_empty())
}

fn worker(shared: &Shared, id: usize) {
    let mut rng = Rng::new();
    let mut conn: Option<Conn> = None;
    let mut stores = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let read = {
            let acked = shared.acked.lock().unwrap();
            if acked.is_empty() || rng.below(100) < STORE_SHARE {
                None
            } else {
                Some(acked[usize::try_from(rng.below(acked.len() as u64)).unwrap()].clone())
            }
        };
        match read {
            Some(a) => read_one(shared, &mut conn, &a),
            None => {
                store_one(shared, &mut conn, &mut rng, id, stores);
                stores += 1;
            }
        }
    }
}

fn store_one(shared: &Shared, conn: &mut Option<Conn>, rng: &mut Rng, id: usize, n: u64) {
    let project = match shared.auth {
        Auth::NoAuth { rotate_projects: true } => format!("chaos-{id}-{}", n / 8),
        _ => "chaos".to_owned(),
    };
    let len = 8 + rng.below(88);
    let payload = format!("{id}-{n}-{}", rng.text(usize::try_from(len).unwrap()));
    let body = serde_json::json!({"payload": payload, "payload_content_type": "text/plain"});
    let headers = headers_for(&shared.auth, &project);
    let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    h.push(("Content-Type", "application/json"));
    let sent = Instant::now();
    let (addr, api) = shared.target();
    let answer = send(conn, &addr, "POST", "/v1/secrets", &h, body.to_string().as_bytes());
    let took = sent.elapsed();
    if answer.is_err() {
        // A refused connection comes back at once: a client would pause before trying again.
        sleep(Duration::from_millis(10));
    }
    let at = shared.start.elapsed();
    let mut tally = shared.tally.lock().unwrap();
    tally.report.sent += 1;
    let took_ms = u64::try_from(took.as_millis()).unwrap();
    tally.report.max_latency_ms = tally.report.max_latency_ms.max(took_ms);
    let ok = match answer {
        Err(_) => {
            tally.report.dropped += 1;
            shared.unanswered.lock().unwrap().insert(payload);
            false
        }
        Ok(r) if r.status == 201 => {
            let secret_ref = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["secret_ref"].as_str().map(str::to_owned));
            match secret_ref.as_deref().and_then(|s| s.strip_prefix(api.as_str())) {
                Some(path) => {
                    tally.report.ok += 1;
                    shared.acked.lock().unwrap().push(Arc::new(Acked {
                        path: path.to_owned(),
                        payload,
                        project,
                    }));
                    true
                }
                None => {
                    tally.report.wrong += 1;
                    let what = format!(
                        "201 without a usable secret_ref: {:?}",
                        String::from_utf8_lossy(&r.body)
                    );
                    note_problem(&mut tally.report.problems, what);
                    false
                }
            }
        }
        Ok(r) if (200..300).contains(&r.status) => {
            tally.report.wrong += 1;
            note_problem(&mut tally.report.problems, format!("store answered {}", r.status));
            false
        }
        Ok(r) => {
            count_error(&mut tally.report, &r, "store");
            false
        }
    };
    tally.events.push(Event { at, kind: Kind::Store, ok });
}

fn read_one(shared: &Shared, conn: &mut Option<Conn>, a: &Acked) {
    let headers = headers_for(&shared.auth, &a.project);
    let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    h.push(("Accept", "text/plain"));
    let sent = Instant::now();
    let (addr, _) = shared.target();
    let answer = send(conn, &addr, "GET", &format!("{}/payload", a.path), &h, b"");
    let took = sent.elapsed();
    if answer.is_err() {
        sleep(Duration::from_millis(10));
    }
    let at = shared.start.elapsed();
    let mut tally = shared.tally.lock().unwrap();
    tally.report.sent += 1;
    let took_ms = u64::try_from(took.as_millis()).unwrap();
    tally.report.max_latency_ms = tally.report.max_latency_ms.max(took_ms);
    let ok = match answer {
        Err(_) => {
            tally.report.dropped += 1;
            false
        }
        Ok(r) if r.status == 200 && r.body == a.payload.as_bytes() => {
            tally.report.ok += 1;
            true
        }
        Ok(r) if (200..300).contains(&r.status) || r.status == 404 => {
            tally.report.wrong += 1;
            let what = format!(
                "read of {}: {} {:?}, stored {:?}",
                a.path,
                r.status,
                String::from_utf8_lossy(&r.body),
                a.payload
            );
            note_problem(&mut tally.report.problems, what);
            false
        }
        Ok(r) => {
            count_error(&mut tally.report, &r, "read");
            false
        }
    };
    tally.events.push(Event { at, kind: Kind::Read, ok });
}

fn count_error(report: &mut Report, r: &HttpResponse, what: &str) {
    report.errors += 1;
    *report.statuses.entry(r.status).or_default() += 1;
    if !barbican_error(r) {
        report.bad_bodies += 1;
        let text = format!("{what}: {} {:?}", r.status, String::from_utf8_lossy(&r.body));
        note_problem(&mut report.problems, text);
    }
}

/// A small random source, seeded by the standard library's per-process randomness.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng(RandomState::new().hash_one(std::thread::current().id()) | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn text(&mut self, len: usize) -> String {
        const CHARS: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?-_";
        (0..len)
            .map(|_| char::from(CHARS[usize::try_from(self.below(CHARS.len() as u64)).unwrap()]))
            .collect()
    }
}

// --- A keep-alive HTTP/1.1 client that reports failures instead of panicking ------------------

/// A kept connection, and whether it has carried a request already.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    used: bool,
}

/// One request on the kept connection (opened if there is none). A kept connection that fails
/// before any byte of the answer (the server closed it while idle) is replaced once.
pub fn send(
    conn: &mut Option<Conn>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    for _ in 0..2 {
        if conn.is_none() {
            let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
            let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
                .map_err(|e| format!("connecting: {e}"))?;
            stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            *conn = Some(Conn { reader: BufReader::new(stream), used: false });
        }
        let Some(c) = conn.as_mut() else { unreachable!("just opened") };
        let reused = c.used;
        c.used = true;
        match exchange(c, addr, method, path, headers, body) {
            Ok((r, keep)) => {
                if !keep {
                    *conn = None;
                }
                return Ok(r);
            }
            Err((e, answered)) => {
                *conn = None;
                if !reused || answered {
                    return Err(e);
                }
            }
        }
    }
    Err("the connection failed twice".into())
}

/// Writes a request and reads its answer; the error says whether any answer byte came.
fn exchange(
    c: &mut Conn,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(HttpResponse, bool), (String, bool)> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut out = request.into_bytes();
    out.extend_from_slice(body);
    c.reader.get_mut().write_all(&out).map_err(|e| (format!("sending: {e}"), false))?;
    let mut line = String::new();
    let n = c.reader.read_line(&mut line).map_err(|e| (format!("reading: {e}"), false))?;
    if n == 0 {
        return Err(("closed before an answer".into(), false));
    }
    let bad = |e: std::io::Error| (format!("reading: {e}"), true);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (format!("bad status line {line:?}"), true))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if c.reader.read_line(&mut h).map_err(bad)? == 0 {
            return Err(("closed in the header".into(), true));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    };
    let mut keep = !find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            c.reader.read_line(&mut size).map_err(bad)?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| (format!("bad chunk size {size:?}"), true))?;
            if size == 0 {
                let mut end = String::new();
                while c.reader.read_line(&mut end).map_err(bad)? > 2 {
                    end.clear();
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            c.reader.read_exact(&mut chunk).map_err(bad)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| (format!("bad length {len:?}"), true))?;
        body.resize(len, 0);
        c.reader.read_exact(&mut body).map_err(bad)?;
    } else if status >= 200 && status != 204 && status != 304 && method != "HEAD" {
        c.reader.read_to_end(&mut body).map_err(bad)?;
        keep = false;
    }
    Ok((HttpResponse { status, headers, body }, keep))
}

/// One request on a fresh connection, `Err` instead of a panic when no answer comes.
pub fn try_http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http URL: {url}"))?;
    let (addr, path) =
        rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    send(&mut None, addr, method, &path, headers, body)
}

// --- Pieces of a stack -----------------------------------------------------------------------

/// `appliance serve` on a fixed free port, using a dev stack's proxy and a database of the
/// case's choice; restartable on the same port and database; killed when dropped.
#[derive(Debug)]
pub struct Serve {
    daemon: Option<Daemon>,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    starts: u32,
}

impl Serve {
    /// Writes a configuration under `dir` and starts the appliance.
    pub fn start(dir: &Path, dev: &DevStack, database_url: &str) -> Serve {
        let mut settings = crate::ServeConfig::on(dev, database_url);
        settings.database_extra = "max_connections = 4".into();
        let config = settings.write(&dir.join("serve.toml"));
        let port = settings.port;
        let mut serve = Serve { daemon: None, config, log: dir.join("serve.log"), port, starts: 0 };
        serve.restart();
        serve
    }

    /// Starts the appliance (again), its log appended to.
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "the appliance is running");
        let mut serve = Command::new(bin_dir().join("appliance"));
        serve.args(["serve", "--config"]).arg(&self.config).env_remove("RUST_LOG");
        let mut daemon = Daemon::spawn("appliance serve", &mut serve, &self.log, OnDrop::Kill);
        daemon.wait_for_port(self.port, Duration::from_secs(60));
        self.daemon = Some(daemon);
        self.starts += 1;
    }

    /// SIGKILL, and the wait for the process to be gone.
    pub fn kill9(&mut self) {
        drop(self.daemon.take());
    }

    /// SIGTERM, and the exit status; `None` when it was not running.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon.take().map(|daemon| daemon.terminate().0)
    }

    /// The API's base URL.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the appliance logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A small tmpfs mounted for the case, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts `size_mb` of tmpfs at `dir`; `Err` says why it could not (not root, or no
    /// permission to mount).
    pub fn mount(dir: &Path, size_mb: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir: dir.to_owned() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes into `path` until the file system is full; the bytes written.
pub fn fill_disk(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last partial blocks.
    let small = [0x5a_u8; 512];
    while let Ok(n) = f.write(&small) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    written
}

/// One SQL query on a SQLite file: each row's first column, one line per row.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut statement = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows = statement
        .query_map([], |row| {
            Ok(match row.get::<_, rusqlite::types::Value>(0)? {
                rusqlite::types::Value::Null => "NULL".to_owned(),
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Real(f) => f.to_string(),
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Blob(b) => format!("{b:?}"),
            })
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let lines: Vec<String> = rows.map(|r| r.unwrap()).collect();
    lines.join("\n")
}

fn sleep(d: Duration) {
    std::thread::sleep(d);
}

// --- The cases -------------------------------------------------------------------------------

/// PostgreSQL restarted under load: the appliance on a throwaway cluster of its own; the
/// cluster is stopped (fast) for the fault window and started again; the appliance serves again
/// without a restart of its own. `None` when PostgreSQL is not installed.
pub fn postgres_restart(o: &Options) -> Option<Report> {
    let pg = PgCluster::start()?;
    let database = pg.create_database("chaos");
    let dir = tempfile::tempdir().unwrap();
    let dev = DevStack::start(&dir.path().join("data"));
    let serve = Serve::start(dir.path(), &dev, &database);
    let mut load = Load::start(&serve.api_url(), Auth::NoAuth { rotate_projects: true }, o);
    sleep(o.warmup);
    load.fault_started();
    pg.stop_server();
    sleep(o.fault);
    pg.start_server();
    load.fault_ended();
    sleep(o.after);
    let mut report = load.finish("postgres-restart");
    let log = serve.log();
    report.notes.push(format!("appliance panics: {}", log.matches("panicked").count()));
    Some(report)
}

/// The appliance (`appliance serve`, on SQLite) SIGKILLed mid-write and started again on the
/// same database. Afterwards: `PRAGMA integrity_check` is ok; every secret row has its whole
/// payload (KEK, ciphertext, IV, tag, content type) and its KEK; no KEK is unreferenced except
/// a project's active one (made for a first store the kill cut off, and used by the next);
/// every row that was never answered decrypts to a payload that was sent.
pub fn appliance_sigkill(o: &Options) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevStack::start(&dir.path().join("data"));
    let db = dir.path().join("appliance.db");
    let mut serve = Serve::start(dir.path(), &dev, &format!("sqlite://{}", db.display()));
    let mut load = Load::start(&serve.api_url(), Auth::NoAuth { rotate_projects: true }, o);
    sleep(o.warmup);
    // Several kills in a long run, one in CI: each lands among writes in flight.
    let kills = (o.fault.as_secs() / 10).max(1);
    let between = o.fault / u32::try_from(kills).unwrap();
    load.fault_started();
    let mut restarts = Vec::new();
    for _ in 0..kills {
        serve.kill9();
        let killed = Instant::now();
        sleep(Duration::from_millis(300));
        serve.restart();
        restarts.push(killed.elapsed().as_millis());
        sleep(between.saturating_sub(Duration::from_millis(300)));
    }
    // Recovery counts from the last restart's kill.
    load.fault_ended();
    sleep(o.after);
    let mut report = load.finish("appliance-sigkill");
    let unanswered = load.unanswered();
    let acked = load.acked_by_id();
    report
        .notes
        .push(format!("kills: {kills}, from each kill to listening again (ms): {restarts:?}"));

    // Every row the database holds that was never answered 201: it must be whole, and decrypt
    // to a payload some store sent.
    let rows = sqlite(&db, "SELECT id || ' ' || project_id FROM secrets");
    let mut extra = 0;
    for line in rows.lines() {
        let (id, project) = line.split_once(' ').unwrap();
        if acked.contains_key(id) {
            continue;
        }
        extra += 1;
        let headers = headers_for(&Auth::NoAuth { rotate_projects: true }, project);
        let mut h: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        h.push(("Accept", "text/plain"));
        let url = format!("{}/v1/secrets/{id}/payload", serve.api_url());
        match try_http("GET", &url, &h, b"") {
            Ok(r)
                if r.status == 200
                    && unanswered.contains(String::from_utf8_lossy(&r.body).as_ref()) => {}
            Ok(r) if r.status == 200 && acked.values().any(|(p, _)| p.as_bytes() == r.body) => {}
            Ok(r) => {
                report.wrong += 1;
                note_problem(
                    &mut report.problems,
                    format!(
                        "unanswered row {id}: {} {:?}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ),
                );
            }
            Err(e) => {
                report.unverified += 1;
                note_problem(&mut report.problems, format!("unanswered row {id}: {e}"));
            }
        }
    }
    report.notes.push(format!(
        "rows {}, answered 201 {}, stores unanswered {}, rows never answered {extra}",
        rows.lines().count(),
        acked.len(),
        unanswered.len()
    ));
    let status = serve.stop();
    report
        .notes
        .push(format!("clean stop after the restarts: {}", status.is_some_and(|s| s.success())));
    db_checks(&db, &mut report, o.threads);
    report
}

/// `appliance dev` itself SIGKILLed under load, then started again on the same data directory.
/// Also returns the children (`hsm-proxy`, `fwsim`) the kill left running: they hold the
/// simulator's socket, so a new stack cannot start until they are gone (the case ends them
/// itself, to go on).
pub fn dev_sigkill(o: &Options) -> (Report, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = DevStack::start(&data);
    let pid = |pointer: &str| {
        let pid = dev.info.pointer(pointer).and_then(serde_json::Value::as_u64);
        u32::try_from(pid.unwrap_or_else(|| panic!("dev.json has no {pointer}"))).unwrap()
    };
    let children = [("hsm-proxy", pid("/proxy/pid")), ("fwsim", pid("/hsm/device/pid"))];
    // `appliance dev` is the children's parent.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", children[0].1)).unwrap();
    let parent: u32 =
        stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut load = Load::start(&dev.api_url(), Auth::NoAuth { rotate_projects: true }, o);
    sleep(o.warmup);
    load.fault_started();
    crate::kill_hard(parent);
    sleep(Duration::from_millis(500));
    let mut left = Vec::new();
    for (name, pid) in children {
        if crate::is_running(pid) {
            left.push(format!("{name} (pid {pid})"));
            crate::kill_hard(pid);
            let deadline = Instant::now() + Duration::from_secs(10);
            while crate::is_running(pid) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
        }
    }
    drop(dev);
    sleep(o.fault.saturating_sub(Duration::from_millis(500)));
    let dev = DevStack::start(&data);
    load.retarget(&dev.api_url());
    load.fault_ended();
    sleep(o.after);
    let mut report = load.finish("dev-sigkill");
    report.notes.push(format!("children left running by the kill: {left:?}"));
    let (status, _) = dev.stop();
    report.notes.push(format!("clean stop after the restart: {}", status.success()));
    db_checks(&data.join("appliance.db"), &mut report, o.threads);
    (report, left)
}

/// The SQLite checks shared by the kill and disk-full cases; failures count as wrong.
fn db_checks(db: &Path, report: &mut Report, threads: usize) {
    let mut check = |what: &str, sql: &str, want: &str| {
        let got = sqlite(db, sql);
        if got != want {
            report.wrong += 1;
            note_problem(&mut report.problems, format!("{what}: {got:?}, want {want:?}"));
        }
    };
    check("integrity", "PRAGMA integrity_check", "ok");
    check(
        "rows with a partial payload",
        "SELECT COUNT(*) FROM secrets WHERE kek_id IS NULL OR ciphertext IS NULL OR iv IS NULL \
         OR tag IS NULL OR content_type IS NULL OR length(ciphertext) = 0",
        "0",
    );
    check(
        "rows whose KEK is missing",
        "SELECT COUNT(*) FROM secrets s WHERE NOT EXISTS (SELECT 1 FROM project_keks k WHERE k.id = s.kek_id)",
        "0",
    );
    check(
        "retired KEKs no secret uses",
        "SELECT COUNT(*) FROM project_keks k WHERE active = 0 AND NOT EXISTS \
         (SELECT 1 FROM secrets s WHERE s.kek_id = k.id)",
        "0",
    );
    check(
        "projects with more than one active KEK",
        "SELECT COUNT(*) FROM (SELECT project_id FROM project_keks WHERE active = 1 \
         GROUP BY project_id HAVING COUNT(*) > 1)",
        "0",
    );
    let unused: usize = sqlite(
        db,
        "SELECT COUNT(*) FROM project_keks k WHERE NOT EXISTS (SELECT 1 FROM secrets s WHERE s.kek_id = k.id)",
    )
    .parse()
    .unwrap();
    report.notes.push(format!("active KEKs without a secret yet: {unused}"));
    // Each one is a first store cut off between its KEK's commit and its own: at most one per
    // client thread per kill.
    if unused > threads * 8 {
        report.wrong += 1;
        note_problem(&mut report.problems, format!("{unused} KEKs without a secret"));
    }
}

/// The SQLite volume full: the database on a small tmpfs, filled by a filler file for the fault
/// window. Stores get Barbican's 5xx, reads keep working, the database stays sound, and stores
/// succeed again once the filler is deleted. `Err` when a tmpfs cannot be mounted here.
pub fn sqlite_full(o: &Options) -> Result<Report, String> {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevStack::start(&dir.path().join("data"));
    let total = (o.warmup + o.fault + o.after).as_secs();
    let volume = Tmpfs::mount(&dir.path().join("volume"), 24 + total / 2)?;
    let db = volume.dir.join("appliance.db");
    let mut serve = Serve::start(dir.path(), &dev, &format!("sqlite://{}", db.display()));
    let mut load = Load::start(&serve.api_url(), Auth::NoAuth { rotate_projects: false }, o);
    sleep(o.warmup);
    load.fault_started();
    let filler = volume.dir.join("filler");
    let filled = fill_disk(&filler);
    sleep(o.fault);
    std::fs::remove_file(&filler).unwrap();
    load.fault_ended();
    sleep(o.after);
    let mut report = load.finish("sqlite-full");
    report.notes.push(format!("filler {} KiB", filled / 1024));
    let log = serve.log();
    report.notes.push(format!("appliance panics: {}", log.matches("panicked").count()));
    serve.stop();
    db_checks(&db, &mut report, o.threads);
    drop(serve);
    drop(volume);
    Ok(report)
}

/// firmware-sim misbehaving under load, through `appliance dev`'s fault file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// 10 % device errors and 5 % dropped sessions.
    DeviceErrors,
    /// Every command stalls until the fault window's end.
    Stall,
    /// Every service time twenty times longer, and 2 ms more per command.
    Slow,
    /// A tamper event: the token's keys are zeroized, for good.
    Tamper,
}

fn fwsim_status(endpoint: &str) -> serde_json::Value {
    serde_json::from_str(&fwsim(&["status", "--device", endpoint])).unwrap()
}

fn wait_for_fault_spec(endpoint: &str, field: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fwsim_status(endpoint)["faults"][field].as_f64() != Some(value) {
        assert!(Instant::now() < deadline, "the fault file was not applied ({field} = {value})");
        sleep(Duration::from_millis(20));
    }
}

/// The simulator faults under load. For a tamper, secrets cannot be read afterwards (their
/// master key is gone): the report's `unverified` counts them, and every answer after the
/// tamper must be Barbican's 503.
pub fn simulator_faults(o: &Options, fault: SimFault) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevStack::start(&dir.path().join("data"));
    let endpoint = dev.info["hsm"]["device"]["endpoint"].as_str().unwrap().to_owned();
    let fault_file = PathBuf::from(dev.info["hsm"]["device"]["fault_file"].as_str().unwrap());
    let mut load = Load::start(&dev.api_url(), Auth::NoAuth { rotate_projects: false }, o);
    sleep(o.warmup);
    let name = match fault {
        SimFault::DeviceErrors => "sim-device-errors",
        SimFault::Stall => "sim-stall",
        SimFault::Slow => "sim-slow",
        SimFault::Tamper => "sim-tamper",
    };
    load.fault_started();
    match fault {
        SimFault::DeviceErrors => {
            std::fs::write(&fault_file, "device_error_rate = 0.1\ndrop_session_rate = 0.05\n")
                .unwrap();
            wait_for_fault_spec(&endpoint, "device_error_rate", 0.1);
        }
        SimFault::Stall => {
            let ms = o.fault.as_millis();
            std::fs::write(&fault_file, format!("stall_ms = {ms}\n")).unwrap();
            wait_for_fault_spec(&endpoint, "stall_ms", ms as f64);
        }
        SimFault::Slow => {
            std::fs::write(&fault_file, "slow_factor = 20.0\nextra_latency_us = 2000\n").unwrap();
            wait_for_fault_spec(&endpoint, "slow_factor", 20.0);
        }
        SimFault::Tamper => {
            fwsim(&["tamper", "--device", &endpoint]);
        }
    }
    sleep(o.fault);
    let status = fwsim_status(&endpoint);
    if fault != SimFault::Tamper {
        std::fs::remove_file(&fault_file).unwrap();
        wait_for_fault_spec(&endpoint, "slow_factor", 1.0);
        wait_for_fault_spec(&endpoint, "device_error_rate", 0.0);
    }
    load.fault_ended();
    sleep(o.after);
    let mut report = load.finish(name);
    report.notes.push(format!("injected: {}", status["injected"]));
    let after = fwsim_status(&endpoint);
    report.notes.push(format!("device sessions open at the end: {}", after["sessions"]));
    let log = dev.log();
    report.notes.push(format!("appliance panics: {}", log.matches("panicked").count()));
    let proxy_log = std::fs::read_to_string(dir.path().join("data/proxy.log")).unwrap_or_default();
    report.notes.push(format!("proxy panics: {}", proxy_log.matches("panicked").count()));
    if fault == SimFault::Tamper {
        let tamper_lines = proxy_log.lines().chain(log.lines()).filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("tamper") || l.contains("zeroiz") || l.contains("master key")
        });
        report.notes.push(format!("log lines naming the tamper: {}", tamper_lines.count()));
    }
    report
}

/// What a tamper case must show: no wrong answer, only Barbican's 503s after it, nothing
/// readable, and the appliance still answering.
pub fn assert_tamper_sound(r: &Report) {
    r.publish();
    assert_eq!(r.wrong, 0, "wrong answers: {:#?}", r.problems);
    assert_eq!(r.bad_bodies, 0, "errors without Barbican's body: {:#?}", r.problems);
    assert!(r.statuses.keys().all(|s| *s == 503), "errors other than 503: {:?}", r.statuses);
    assert_eq!(r.dropped, 0, "requests without an answer: {}", r.line());
    assert!(r.ok > 0, "no load got through before the tamper: {}", r.line());
    assert_eq!(r.verified, 0, "a secret was readable after its master key was zeroized");
    assert!(
        r.notes.iter().any(|n| n == "appliance panics: 0")
            && r.notes.iter().any(|n| n == "proxy panics: 0"),
        "{:?}",
        r.notes
    );
}

/// The proxy SIGKILLed under load (`appliance dev` must restart it): recovery counts from the
/// kill. The proxy's process id comes from `dev.json`.
pub fn proxy_sigkill(o: &Options) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevStack::start(&dir.path().join("data"));
    let pid = dev.info["proxy"]["pid"].as_i64().expect("dev.json names the proxy's pid");
    let mut load = Load::start(&dev.api_url(), Auth::NoAuth { rotate_projects: false }, o);
    sleep(o.warmup);
    load.fault_started();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    load.fault_ended();
    sleep(o.fault + o.after);
    let mut report = load.finish("proxy-sigkill");
    let text = std::fs::read_to_string(dir.path().join("data/dev.json")).unwrap_or_default();
    let now: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    report.notes.push(format!("proxy pid before {pid}, in dev.json after {}", now["proxy"]["pid"]));
    report
}

/// Keystone stopped under load and started again: requests with tokens the appliance has
/// validated keep working; a token it has not seen gets Barbican's 503; after Keystone returns
/// that token works. `None` (said loudly) without the Keystone virtualenv, unless
/// `REQUIRE_KEYSTONE` is set.
pub fn keystone_down(o: &Options) -> Option<Report> {
    let venv = keystone_venv()?;
    let dir = tempfile::tempdir().unwrap();
    let ks = Keystone::start(&venv, &dir.path().join("keystone"));
    let password_file = dir.path().join("barbican-password");
    std::fs::write(&password_file, "barbican-password\n").unwrap();
    let dev = DevStack::start_with(
        &dir.path().join("data"),
        &[
            "--keystone-url",
            &ks.auth_url(),
            "--keystone-user",
            "barbican",
            "--keystone-password-file",
            password_file.to_str().unwrap(),
        ],
    );
    let alice = ks.token("alice");
    // A token of another user, not shown to the appliance before the outage.
    let bob = ks.token("bob");
    let list = format!("{}/v1/secrets", dev.api_url());
    let mut load = Load::start(&dev.api_url(), Auth::Token(alice), o);
    sleep(o.warmup);
    load.fault_started();
    ks.stop();
    let probe = try_http("GET", &list, &[("X-Auth-Token", bob.as_str())], b"");
    let mut probes = Vec::new();
    let mut bad_probe = None;
    match &probe {
        Ok(r) if r.status == 503 && barbican_error(r) => probes.push(503),
        Ok(r) => bad_probe = Some(format!("{} {:?}", r.status, String::from_utf8_lossy(&r.body))),
        Err(e) => bad_probe = Some(e.clone()),
    }
    sleep(o.fault);
    ks.restart();
    load.fault_ended();
    let back = Instant::now();
    let mut new_token_ms = None;
    while back.elapsed() < o.after {
        if try_http("GET", &list, &[("X-Auth-Token", bob.as_str())], b"")
            .is_ok_and(|r| r.status == 200)
        {
            new_token_ms = Some(back.elapsed().as_millis());
            break;
        }
        sleep(Duration::from_millis(50));
    }
    sleep(o.after.saturating_sub(back.elapsed()));
    let mut report = load.finish("keystone-down");
    report.notes.push(format!("new token during the outage: {probes:?}"));
    if let Some(bad) = bad_probe {
        report
            .problems
            .push(format!("a new token during the outage got {bad}, not Barbican's 503"));
        report.bad_bodies += 1;
    }
    report.notes.push(format!(
        "new token accepted {} after Keystone returned",
        new_token_ms.map_or("never".to_owned(), |ms| format!("{ms} ms"))
    ));
    if new_token_ms.is_none() {
        report.recovery_ms = None;
    }
    Some(report)
}

/// A real Keystone under gunicorn (tests/keystone/harness.py), stoppable and restartable on its
/// port; stopped when dropped.
#[derive(Debug)]
struct Keystone {
    venv: PathBuf,
    dir: PathBuf,
    info: serde_json::Value,
    restarted: Mutex<Option<Child>>,
}

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/keystone/harness.py");

impl Keystone {
    fn start(venv: &Path, dir: &Path) -> Keystone {
        let out = Command::new(venv.join("bin/python"))
            .arg(HARNESS)
            .args(["start", "--dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "keystone: {}", String::from_utf8_lossy(&out.stderr));
        let info =
            serde_json::from_str(&std::fs::read_to_string(dir.join("keystone.json")).unwrap())
                .unwrap();
        Keystone { venv: venv.to_owned(), dir: dir.to_owned(), info, restarted: Mutex::new(None) }
    }

    fn auth_url(&self) -> String {
        self.info["auth_url"].as_str().unwrap().to_owned()
    }

    fn token(&self, user: &str) -> String {
        let u = &self.info["users"][user];
        let script = "import sys\nfrom keystoneauth1 import session, identity\n\
            a = identity.v3.Password(auth_url=sys.argv[1], username=sys.argv[2], password=sys.argv[3], \
            project_name=sys.argv[4], user_domain_id='default', project_domain_id='default')\n\
            print(session.Session(auth=a).get_token())";
        let out = Command::new(self.venv.join("bin/python"))
            .args(["-c", script, &self.auth_url(), user])
            .arg(u["password"].as_str().unwrap())
            .arg(u["project"].as_str().unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn stop(&self) {
        let _ = Command::new(self.venv.join("bin/python"))
            .arg(HARNESS)
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .status();
    }

    /// gunicorn again on the same port, configuration and keys, as the harness starts it.
    fn restart(&self) {
        let url = self.auth_url();
        let port: u16 = url.rsplit(':').next().unwrap().split('/').next().unwrap().parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gunicorn.log"))
            .unwrap();
        // `stop` returns once the port refuses connections; gunicorn removes its pid file a
        // moment later, and refuses to start while the file names a live process.
        let pid_file = self.dir.join("gunicorn.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(pid) = std::fs::read_to_string(&pid_file) {
            if !Path::new(&format!("/proc/{}", pid.trim())).exists() {
                let _ = std::fs::remove_file(&pid_file);
                break;
            }
            assert!(Instant::now() < deadline, "the stopped Keystone did not exit");
            sleep(Duration::from_millis(50));
        }
        let child = Command::new(self.venv.join("bin/gunicorn"))
            .args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "2", "--chdir"])
            .arg(&self.dir)
            .arg("--pid")
            .arg(self.dir.join("gunicorn.pid"))
            .arg("--access-logfile")
            .arg(self.dir.join("access.log"))
            .arg("wsgi:application")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        *self.restarted.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if try_http("GET", &url, &[], b"").is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "Keystone did not come back");
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut child) = self.restarted.lock().unwrap().take() {
            let _ = child.wait();
        }
    }
}
