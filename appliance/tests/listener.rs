//! The API's listener over real sockets: bodies cut off mid-way are never handled or stored
//! (on SQLite and PostgreSQL), the header, body and idle timeouts, the connection limit, and
//! forwarded headers believed only from trusted proxies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use appliance::config::ServerConfig;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Caller, Env, call, path_of, post_json};

/// A project no other test writes to, so its counts are this test's alone.
const CUT: Caller<'static> = Caller { project: "cut", user: Some("u1"), roles: Some("member") };

/// One HTTP/1.1 answer read off a socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!("not JSON ({}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// Asserts Barbican's error body with this status.
    #[track_caller]
    fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{}{}", self.head, String::from_utf8_lossy(&self.body));
        let body = self.json();
        assert_eq!(body["code"], status, "{body}");
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        assert!(body["description"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        assert!(self.header("x-openstack-request-id").is_some_and(|id| id.starts_with("req-")));
    }
}

/// Reads one answer (its head, then `Content-Length` bytes of body); `None` when the
/// connection ends (or is reset) before a whole head arrives.
async fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut answer = Answer { status, head, body: raw[split + 4..].to_vec() };
    let length: usize = answer.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while answer.body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(answer)
}

/// Waits for the server to close `stream`: true on end of file (or a reset), false when bytes
/// arrive instead or nothing happens within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(limit, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

/// The head of a request as `caller`, without its blank line.
fn head(method: &str, path: &str, caller: Caller<'_>, extra: &[(&str, &str)]) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: kms.test:9311\r\nX-Project-Id: {}\r\n",
        caller.project
    );
    if let Some(user) = caller.user {
        head.push_str(&format!("X-User-Id: {user}\r\n"));
    }
    if let Some(roles) = caller.roles {
        head.push_str(&format!("X-Roles: {roles}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head
}

/// A whole request with a `Content-Length` body.
fn request(
    method: &str,
    path: &str,
    caller: Caller<'_>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = head(method, path, caller, extra).into_bytes();
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Sends `bytes` on a new connection and reads one answer.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<Answer> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_answer(&mut stream).await
}

/// How a body is cut off.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// `Content-Length` promises more than is sent, then the client closes.
    ShortThenClose,
    /// A chunked body whose last chunk never comes, then the client closes.
    ChunkedThenClose,
    /// `Content-Length` promises more than is sent, then the connection is reset.
    Reset,
}

/// Sends a request whose body is cut off after `sent`, and checks what comes back: nothing,
/// or Barbican's 400.
async fn cut_off(
    addr: SocketAddr,
    how: Cut,
    method: &str,
    path: &str,
    caller: Caller<'_>,
    content_type: &str,
    sent: &[u8],
) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = head(method, path, caller, &[("Content-Type", content_type)]).into_bytes();
    match how {
        Cut::ShortThenClose | Cut::Reset => {
            bytes.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", sent.len() + 90).as_bytes(),
            );
            bytes.extend_from_slice(sent);
        }
        Cut::ChunkedThenClose => {
            bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            bytes.extend_from_slice(format!("{:x}\r\n", sent.len()).as_bytes());
            bytes.extend_from_slice(sent);
            bytes.extend_from_slice(b"\r\n");
        }
    }
    stream.write_all(&bytes).await.unwrap();
    match how {
        Cut::Reset => {
            // Let the bytes reach the server, then reset the connection (SO_LINGER 0).
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.set_zero_linger().unwrap();
            drop(stream);
        }
        _ => {
            stream.shutdown().await.unwrap();
            if let Some(answer) = read_answer(&mut stream).await {
                answer.assert_error(400);
                assert_eq!(answer.header("connection"), Some("close"));
            }
        }
    }
}

fn count(env: &Env, sql: &str) -> i64 {
    let out = env.sql(sql);
    let digits: String = out.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{sql}: {out}"))
}

async fn cut_off_bodies_are_never_stored(env: &Env) {
    let served = env.serve(ServerConfig::default()).await;
    let addr = served.addr;
    // The PUT target: a secret with no payload yet, in a project of its own.
    let put_caller = Caller { project: "cut-put", ..CUT };
    let r = post_json(&env.app, "/v1/secrets", put_caller, json!({"name": "target"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let target = r.json()["secret_ref"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let keks =
        |project: &str| format!("SELECT count(*) FROM project_keks WHERE project_id = '{project}'");
    let rows =
        |project: &str| format!("SELECT count(*) FROM secrets WHERE project_id = '{project}'");
    let put_keks = count(env, &keks("cut-put"));

    // Each body is whole JSON (or text) already, so a server that took the cut as the end
    // would store it.
    let whole =
        json!({"name": "cut", "payload": "abc", "payload_content_type": "text/plain"}).to_string();
    for how in [Cut::ShortThenClose, Cut::ChunkedThenClose, Cut::Reset] {
        cut_off(addr, how, "POST", "/v1/secrets", CUT, "application/json", whole.as_bytes()).await;
        cut_off(addr, how, "PUT", &path_of(&target), put_caller, "text/plain", b"0123456789").await;
    }
    // A whole request after the cut ones: anything they set off has finished by its answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = json!({"name": "whole"}).to_string();
    let answer = exchange(
        addr,
        &request(
            "POST",
            "/v1/secrets",
            CUT,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&answer.body));

    let r = call(&env.app, Method::GET, "/v1/secrets?name=cut", Some(CUT), &[], b"").await;
    assert_eq!(r.json()["total"], 0, "a cut-off POST was stored: {}", r.json());
    assert_eq!(count(env, &rows("cut")), 1, "only the whole POST is stored");
    assert_eq!(count(env, &keks("cut")), 0, "a cut-off POST made a KEK");
    assert_eq!(count(env, &keks("cut-put")), put_keks, "a cut-off PUT made a KEK");
    let r = call(&env.app, Method::GET, &path_of(&target), Some(put_caller), &[], b"").await;
    assert!(r.json().get("content_types").is_none(), "a cut-off PUT stored: {}", r.json());
    let r = call(
        &env.app,
        Method::GET,
        &format!("{}/payload", path_of(&target)),
        Some(put_caller),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The target still takes its payload.
    let answer = exchange(
        addr,
        &request(
            "PUT",
            &path_of(&target),
            put_caller,
            &[("Content-Type", "text/plain")],
            b"0123456789",
        ),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 204, "{}", String::from_utf8_lossy(&answer.body));
    let r = call(
        &env.app,
        Method::GET,
        &format!("{}/payload", path_of(&target)),
        Some(put_caller),
        &[("accept", "text/plain")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"0123456789");
    drop(served);
}

on_each_database!(cut_off_bodies_are_never_stored);

/// Raises the open-file limit as far as allowed; answers how many slow connections fit.
fn slow_connections_that_fit(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((soft, hard));
    // Each costs two files in this process (client and server side), plus room for the rest.
    let fit = (soft.saturating_sub(400) / 2) as usize;
    if fit < wanted {
        eprintln!("open-file limit {soft}: {fit} slow connections instead of {wanted}");
    }
    fit.min(wanted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_do_not_delay_others_and_are_closed_at_the_header_timeout() {
    let n = slow_connections_that_fit(2_000);
    assert!(n >= 100, "too few files for the test");
    let env = Env::sqlite().await;
    let header_timeout = Duration::from_millis(3_000);
    let served = env
        .serve(ServerConfig {
            header_timeout_ms: header_timeout.as_millis() as u64,
            max_connections: n + 100,
            ..ServerConfig::default()
        })
        .await;
    let addr = served.addr;
    // A normal GET on a quiet server, to compare with.
    let get = b"GET / HTTP/1.1\r\nHost: kms.test\r\n\r\n";
    let mut quiet = Duration::MAX;
    for _ in 0..5 {
        let asked = Instant::now();
        assert_eq!(exchange(addr, get).await.unwrap().status, 300);
        quiet = quiet.min(asked.elapsed());
    }
    let opened = Instant::now();
    let mut slow = Vec::with_capacity(n);
    for group in 0..n.div_ceil(200) {
        let connects = (group * 200..n.min(group * 200 + 200)).map(|_| async move {
            let started = Instant::now();
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /v1/secrets HTTP/1.1\r\nHost: kms.test\r\nX-Proj").await.unwrap();
            (s, started)
        });
        slow.extend(futures_join(connects.collect()).await);
    }
    let setup = opened.elapsed();
    assert!(setup < header_timeout, "opening {n} connections took {setup:?}");

    // A normal client is answered promptly while they all wait.
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let asked = Instant::now();
        assert_eq!(exchange(addr, get).await.unwrap().status, 300);
        worst = worst.max(asked.elapsed());
    }
    let still_open = slow
        .iter()
        .filter(|(s, _)| {
            let mut byte = [0u8; 1];
            matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    eprintln!(
        "{n} slow connections opened in {setup:?}; a normal GET took {quiet:?} before them, at \
         most {worst:?} among them"
    );
    assert_eq!(still_open, n, "slow connections were closed before the header timeout");
    assert!(worst < Duration::from_millis(500), "a normal GET took {worst:?} among them");

    // Then each is closed at its header timeout, none before.
    let closes = futures_join(
        slow.into_iter()
            .map(|(mut s, started)| async move {
                let closed = closed_within(&mut s, Duration::from_secs(15)).await;
                (closed, started.elapsed())
            })
            .collect(),
    )
    .await;
    let closed_after = opened.elapsed();
    for (closed, after) in &closes {
        assert!(*closed, "a slow connection was never closed");
        assert!(*after >= header_timeout, "a slow connection was closed after {after:?}");
        assert!(*after < header_timeout + Duration::from_secs(5), "closed after {after:?}");
    }
    let latest = closes.iter().map(|(_, after)| *after).max().unwrap_or_default();
    eprintln!(
        "all {n} closed by {closed_after:?} after the first was opened, each at most {latest:?} \
         after its own"
    );
    drop(served);
    env.finish().await;
}

/// Runs futures side by side on this task and collects their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_wait_the_idle_timeout_and_silent_ones_the_header_timeout() {
    let env = Env::sqlite().await;
    let served = env
        .serve(ServerConfig {
            header_timeout_ms: 500,
            idle_timeout_ms: 1_500,
            ..ServerConfig::default()
        })
        .await;
    let get = b"GET / HTTP/1.1\r\nHost: kms.test\r\n\r\n";
    let mut kept = TcpStream::connect(served.addr).await.unwrap();
    kept.write_all(get).await.unwrap();
    assert_eq!(read_answer(&mut kept).await.unwrap().status, 300);
    // Longer than the header timeout, shorter than the idle one: still kept.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    kept.write_all(get).await.unwrap();
    assert_eq!(read_answer(&mut kept).await.unwrap().status, 300);
    let answered = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(5)).await, "a kept connection stayed");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1_400) && idle < Duration::from_millis(3_000),
        "{idle:?}"
    );

    // A connection that never sends a byte gets the header timeout.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1_500),
        "{waited:?}"
    );
    drop(served);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut_at_the_body_timeout() {
    let env = Env::sqlite().await;
    let served =
        env.serve(ServerConfig { body_timeout_ms: 1_000, ..ServerConfig::default() }).await;
    let whole =
        json!({"name": "slow", "payload": "abc", "payload_content_type": "text/plain"}).to_string();
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let mut bytes =
        head("POST", "/v1/secrets", CUT, &[("Content-Type", "application/json")]).into_bytes();
    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", whole.len()).as_bytes());
    stream.write_all(&bytes).await.unwrap();
    let sent = Instant::now();
    // The body trickles in, a byte every 100 ms: each read is quick, the whole is not.
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in whole.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        writer
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut raw)).await;
    let took = sent.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {text:?}"));
    let answer = Answer {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_owned(),
        body: body.as_bytes().to_vec(),
    };
    answer.assert_error(408);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(2_500), "{took:?}");
    let r = call(&env.app, Method::GET, "/v1/secrets?name=slow", Some(CUT), &[], b"").await;
    assert_eq!(r.json()["total"], 0);
    drop(served);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503_until_others_close() {
    let log = capture_warnings();
    let env = Env::sqlite().await;
    let served = env.serve(ServerConfig { max_connections: 3, ..ServerConfig::default() }).await;
    let get = b"GET / HTTP/1.1\r\nHost: kms.test\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(served.addr).await.unwrap();
        s.write_all(get).await.unwrap();
        assert_eq!(read_answer(&mut s).await.unwrap().status, 300);
        held.push(s);
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(served.addr).await.unwrap();
        s.write_all(get).await.unwrap();
        let answer = read_answer(&mut s).await.expect("no answer beyond the limit");
        answer.assert_error(503);
        assert_eq!(answer.json()["title"], "Service Unavailable");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(closed_within(&mut s, Duration::from_secs(3)).await, "a refused connection stayed");
    }
    // One warning for the three refusals, not one each.
    let warnings = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert_eq!(warnings.matches("connection limit reached").count(), 1, "{warnings}");
    // The kept connections still work, and once one closes a new one is served.
    assert_eq!(exchange_on(&mut held[0], get).await.status, 300);
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = exchange(served.addr, get).await.unwrap();
        if answer.status == 300 {
            break;
        }
        assert_eq!(answer.status, 503);
        assert!(Instant::now() < deadline, "no connection served after one closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(served);
    env.finish().await;
}

/// Sends this process's warnings to a buffer, and answers it.
fn capture_warnings() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || Sink(sink.clone()))
        .init();
    log
}

async fn exchange_on(stream: &mut TcpStream, bytes: &[u8]) -> Answer {
    stream.write_all(bytes).await.unwrap();
    read_answer(stream).await.unwrap()
}

/// The secret_ref a POST over `addr` gets with forwarded headers claiming another host.
async fn secret_ref_with_forwarded_headers(addr: SocketAddr, proto: &str, host: &str) -> String {
    let body = json!({"name": "forwarded"}).to_string();
    let bytes = request(
        "POST",
        "/v1/secrets",
        CUT,
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-Proto", proto),
            ("X-Forwarded-Host", host),
        ],
        body.as_bytes(),
    );
    let answer = exchange(addr, &bytes).await.unwrap();
    assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&answer.body));
    answer.json()["secret_ref"].as_str().unwrap().to_owned()
}

fn trusting(cidrs: &[&str]) -> ServerConfig {
    ServerConfig {
        trusted_proxies: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    let env = Env::sqlite().await;
    // Default: never believed (Barbican's *_change_host_with_header_not_allowed).
    let served = env.serve(ServerConfig::default()).await;
    let r = secret_ref_with_forwarded_headers(served.addr, "https", "www.example.com").await;
    assert!(r.starts_with("http://kms.test:9311/v1/secrets/"), "{r}");
    let answer = exchange(
        served.addr,
        b"GET / HTTP/1.1\r\nHost: kms.test:9311\r\nX-Forwarded-Host: www.example.com\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        answer.json()["versions"]["values"][0]["links"][0]["href"],
        "http://kms.test:9311/v1/"
    );
    // Trusted networks that do not hold the peer (127.0.0.1): still not believed.
    let served = env.serve(trusting(&["10.0.0.0/8", "::1/128", "127.0.0.2"])).await;
    let r = secret_ref_with_forwarded_headers(served.addr, "https", "www.example.com").await;
    assert!(r.starts_with("http://kms.test:9311/v1/secrets/"), "{r}");
    // The peer is trusted: the proxy names the server.
    let served = env.serve(trusting(&["10.0.0.0/8", "127.0.0.0/8"])).await;
    let r = secret_ref_with_forwarded_headers(served.addr, "https", "www.example.com").await;
    assert!(r.starts_with("https://www.example.com/v1/secrets/"), "{r}");
    // The client-side entry of a list; nonsense is ignored even from a trusted proxy.
    let r = secret_ref_with_forwarded_headers(
        served.addr,
        "https, http",
        "kms.example.com:8443, 10.0.0.1",
    )
    .await;
    assert!(r.starts_with("https://kms.example.com:8443/v1/secrets/"), "{r}");
    let r = secret_ref_with_forwarded_headers(served.addr, "gopher", "evil.example.com/x?").await;
    assert!(r.starts_with("http://kms.test:9311/v1/secrets/"), "{r}");
    drop(served);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_href_names_the_server_in_every_href() {
    let env = Env::sqlite_configured(|c| {
        c.server.host_href = Some("https://kms.example.com:9311/".into());
    })
    .await;
    let served = env.serve(trusting(&["127.0.0.0/8"])).await;
    let r = secret_ref_with_forwarded_headers(served.addr, "http", "www.example.com").await;
    assert!(r.starts_with("https://kms.example.com:9311/v1/secrets/"), "{r}");
    let answer = exchange(served.addr, b"GET / HTTP/1.1\r\nHost: kms.test\r\n\r\n").await.unwrap();
    assert_eq!(
        answer.json()["versions"]["values"][0]["links"][0]["href"],
        "https://kms.example.com:9311/v1/"
    );
    let r = call(&env.app, Method::GET, "/v1/secrets?limit=1", Some(CUT), &[], b"").await;
    let first = r.json()["secrets"][0]["secret_ref"].as_str().unwrap().to_owned();
    assert!(first.starts_with("https://kms.example.com:9311/v1/secrets/"), "{first}");
    // Barbican's *_change_host_with_header_not_allowed: a client's own Host changes nothing.
    let body = json!({"name": "host"}).to_string();
    let bytes = request(
        "POST",
        "/v1/secrets",
        CUT,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let text = String::from_utf8(bytes)
        .unwrap()
        .replace("Host: kms.test:9311", "Host: some.bad.server.com");
    let answer = exchange(served.addr, text.as_bytes()).await.unwrap();
    assert_eq!(answer.status, 201);
    let location = answer.header("location").unwrap();
    assert!(location.starts_with("https://kms.example.com:9311/v1/secrets/"), "{location}");
    drop(served);
    env.finish().await;
}
