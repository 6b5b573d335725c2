//! Running one cell: N workers looping over an operation for a warm-up and then a fixed
//! measured window, on OS threads (blocking PKCS#11) or tokio tasks (the proxy, HTTP).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::{Latencies, Summary};

/// Warm-up and measured window of a cell.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Run but not measured.
    pub warmup: Duration,
    /// Measured.
    pub measure: Duration,
}

/// What one worker did in the window.
#[derive(Default)]
struct Tally {
    ops: u64,
    latencies: Latencies,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ops += other.ops;
        self.latencies.merge(&other.latencies);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn summary(self, window: Window) -> (Summary, Latencies) {
        let mut s = Summary::of(self.ops, window.measure, &self.latencies);
        s.errors = self.errors;
        (s, self.latencies)
    }
}

/// Shows progress on a terminal: operations so far, once a second.
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(label: String, ops: Arc<AtomicU64>, window: Window) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let started = Instant::now();
                let total = (window.warmup + window.measure).as_secs_f64();
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let elapsed = started.elapsed().as_secs_f64().min(total);
                    eprint!(
                        "\r  {label}: {:>5.1}/{total:.0} s, {} ops   ",
                        elapsed,
                        ops.load(Ordering::Relaxed)
                    );
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r{:80}\r", "");
            })
        });
        Progress { done, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `op` on one OS thread per worker. `op` returns how many operations it completed
/// (a batch counts each) or an error kind. Gives the cell's summary and its latencies.
pub fn threads<W: Send>(
    label: &str,
    workers: Vec<W>,
    window: Window,
    op: impl Fn(&mut W) -> Result<u64, String> + Sync,
) -> (Summary, Latencies) {
    let counter = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(label.to_owned(), Arc::clone(&counter), window);
    // Everyone starts together, a moment after all threads exist.
    let start = Instant::now() + Duration::from_millis(50);
    let (from, until) = (start + window.warmup, start + window.warmup + window.measure);
    let mut total = Tally::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut w| {
                let (op, counter) = (&op, &counter);
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    while Instant::now() < start {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    loop {
                        let t0 = Instant::now();
                        if t0 >= until {
                            break;
                        }
                        let result = op(&mut w);
                        let t1 = Instant::now();
                        record(&mut tally, result, t0, t1, from, until, counter);
                    }
                    tally
                })
            })
            .collect();
        for h in handles {
            if let Ok(t) = h.join() {
                total.add(t);
            } else {
                *total.errors.entry("worker panicked".into()).or_default() += 1;
            }
        }
    });
    total.summary(window)
}

/// One asynchronous operation of a worker.
pub type AsyncOp =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send>> + Send>;

/// Boxes one run of an asynchronous operation.
pub fn boxed(
    f: impl Future<Output = Result<u64, String>> + Send + 'static,
) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send>> {
    Box::pin(f)
}

/// Runs one tokio task per worker.
pub async fn tasks(label: &str, workers: Vec<AsyncOp>, window: Window) -> (Summary, Latencies) {
    let counter = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(label.to_owned(), Arc::clone(&counter), window);
    let start = Instant::now() + Duration::from_millis(50);
    let (from, until) = (start + window.warmup, start + window.warmup + window.measure);
    let handles: Vec<_> = workers
        .into_iter()
        .map(|mut op| {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                tokio::time::sleep_until(start.into()).await;
                loop {
                    let t0 = Instant::now();
                    if t0 >= until {
                        break;
                    }
                    let result = op().await;
                    let t1 = Instant::now();
                    record(&mut tally, result, t0, t1, from, until, &counter);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for h in handles {
        match h.await {
            Ok(t) => total.add(t),
            Err(_) => *total.errors.entry("worker panicked".into()).or_default() += 1,
        }
    }
    total.summary(window)
}

fn record(
    tally: &mut Tally,
    result: Result<u64, String>,
    t0: Instant,
    t1: Instant,
    from: Instant,
    until: Instant,
    counter: &AtomicU64,
) {
    // Only operations wholly inside the window count: the rate is then exact for the window.
    let inside = t0 >= from && t1 <= until;
    match result {
        Ok(n) => {
            counter.fetch_add(n, Ordering::Relaxed);
            if inside {
                tally.ops += n;
                tally.latencies.record_n(t1 - t0, n);
            }
        }
        Err(kind) if inside => *tally.errors.entry(kind).or_default() += 1,
        Err(_) => {}
    }
}
