//! The session pool and its pipeline: a bounded queue of work served by OS threads, each owning
//! one PKCS#11 session, so the pipeline depth (operations outstanding at the HSM) is the number
//! of workers.
//!
//! PKCS#11 calls block, so they never run on the async runtime: connection tasks put work in the
//! queue (waiting when it is full, which slows the client down) and await a one-shot answer. A
//! batch is split into one share per worker, at most, so a frame of many operations costs a
//! handful of queue hand-offs and wake-ups rather than one per operation. A worker that finds an
//! operation past its deadline answers it without touching the HSM.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::session::{Session, SessionState};
use hsm_proxy_proto::op::HealthReport;
use hsm_proxy_proto::{OpCode, Outcome, Reply, Request, Status};
use prometheus::IntCounter;
use tokio::sync::oneshot;

use crate::hsm::Token;
use crate::hsm::failure::{Class, Failure};
use crate::hsm::ops::{self, MessageAead, OpContext};
use crate::keys::{KekCache, lock};
use crate::metrics::Metrics;

/// Stack for worker threads: PKCS#11 modules need little, and with memory locked every byte of
/// stack is resident.
const WORKER_STACK_BYTES: usize = 512 * 1024;

/// Attempts per operation: the first, and up to two after recoveries.
const MAX_ATTEMPTS: u32 = 3;

enum Message {
    Run(Job),
    /// Sent once per worker at shutdown, behind all queued work.
    Stop,
}

/// One worker's share of a batch, answered in one message.
struct Job {
    ops: Vec<Request>,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Vec<Outcome>>,
}

/// How the pool is sized and how long work may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolSettings {
    pub(crate) workers: usize,
    pub(crate) queue_depth: usize,
    pub(crate) health_cache: Duration,
    pub(crate) log_error_details: bool,
}

/// The pool: the queue's sending side and the workers.
pub(crate) struct Pool {
    queue: flume::Sender<Message>,
    closing: AtomicBool,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
    token: Arc<Token>,
    health: HealthCache,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Pool {
    /// Opens one session per worker and starts the workers.
    pub(crate) fn start(
        token: Arc<Token>,
        keys: Arc<KekCache>,
        settings: PoolSettings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Pool> {
        let (tx, rx) = flume::bounded(settings.queue_depth);
        let health: HealthCache = Arc::default();
        let mut workers = Vec::with_capacity(settings.workers);
        for index in 0..settings.workers {
            let worker = Worker {
                index,
                token: token.clone(),
                keys: keys.clone(),
                metrics: metrics.clone(),
                session: None,
                aead: MessageAead::default(),
                health: health.clone(),
                sessions: u32::try_from(settings.workers).unwrap_or(u32::MAX),
                log_error_details: settings.log_error_details,
                counters: HashMap::new(),
            };
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hsm-worker-{index}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker.run(rx))?;
            workers.push(handle);
        }
        Ok(Pool {
            queue: tx,
            closing: AtomicBool::new(false),
            workers: std::sync::Mutex::new(workers),
            token,
            health,
            settings,
            metrics,
        })
    }

    /// Runs a batch: answers what needs no worker at once, splits the rest into at most one
    /// share per worker, and collects the answers in the batch's order.
    pub(crate) async fn run(&self, ops: Vec<Outcome<Request>>, deadline: Instant) -> Vec<Outcome> {
        let mut results: Vec<Outcome> = Vec::with_capacity(ops.len());
        let mut work = Vec::with_capacity(ops.len());
        for (index, op) in ops.into_iter().enumerate() {
            results.push(match op {
                Err(status) => Err(status),
                Ok(Request::Health(health)) => match self.cached_health() {
                    Some(report) => Ok(Reply::Health(report)),
                    None => {
                        work.push((index, Request::Health(health)));
                        Err(Status::Internal)
                    }
                },
                Ok(op) => {
                    work.push((index, op));
                    Err(Status::Internal)
                }
            });
        }
        if work.is_empty() {
            return results;
        }
        let share = work.len().div_ceil(self.settings.workers.max(1));
        let mut work = work.into_iter();
        let mut pending = Vec::new();
        loop {
            let (indices, ops): (Vec<usize>, Vec<Request>) = work.by_ref().take(share).unzip();
            if ops.is_empty() {
                break;
            }
            pending.push((indices, self.enqueue(ops, deadline).await));
        }
        for (indices, queued) in pending {
            let answers = match queued {
                Ok(rx) => rx.await.map_err(|_| Status::Internal),
                Err(status) => Err(status),
            };
            match answers {
                Ok(answers) => {
                    for (index, outcome) in indices.into_iter().zip(answers) {
                        results[index] = outcome;
                    }
                }
                Err(status) => {
                    for index in indices {
                        results[index] = Err(status);
                    }
                }
            }
        }
        results
    }

    /// Puts one share in the queue, waiting for room until its deadline.
    async fn enqueue(
        &self,
        ops: Vec<Request>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Vec<Outcome>>, Status> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Status::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        let job = Job { ops, enqueued: Instant::now(), deadline, reply };
        let send = self.queue.send_async(Message::Run(job));
        match tokio::time::timeout_at(deadline.into(), send).await {
            Ok(Ok(())) => {
                self.metrics.queue_depth.set(i64::try_from(self.queue.len()).unwrap_or(i64::MAX));
                Ok(rx)
            }
            Ok(Err(_)) => Err(Status::ShuttingDown),
            Err(_) => Err(Status::DeadlineExceeded),
        }
    }

    fn cached_health(&self) -> Option<HealthReport> {
        let cached = lock(&self.health);
        let (at, report) = cached.as_ref()?;
        let age = at.elapsed();
        if age > self.settings.health_cache {
            return None;
        }
        let mut report = report.clone();
        report.age_ms = u32::try_from(age.as_millis()).unwrap_or(u32::MAX);
        Some(report)
    }

    /// Stops taking work, lets the workers finish what is queued, joins them, and logs out.
    pub(crate) fn shutdown(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let workers: Vec<_> = lock(&self.workers).drain(..).collect();
        for _ in &workers {
            // Behind everything already queued; the workers drain the queue before they stop.
            let _ = self.queue.send(Message::Stop);
        }
        for w in workers {
            let _ = w.join();
        }
        self.token.shutdown();
    }

    /// Worker threads still running.
    pub(crate) fn workers(&self) -> usize {
        self.settings.workers
    }
}

/// The last `Health` answer and when it was made.
type HealthCache = Arc<std::sync::Mutex<Option<(Instant, HealthReport)>>>;

struct Worker {
    index: usize,
    token: Arc<Token>,
    keys: Arc<KekCache>,
    metrics: Arc<Metrics>,
    /// The session and the epoch it was opened in.
    session: Option<(u64, Session)>,
    /// The session's message-based AES-GCM state; reset with the session.
    aead: MessageAead,
    health: HealthCache,
    sessions: u32,
    log_error_details: bool,
    counters: HashMap<(OpCode, Status), IntCounter>,
}

impl Worker {
    fn run(mut self, rx: flume::Receiver<Message>) {
        while let Ok(Message::Run(job)) = rx.recv() {
            self.metrics.queue_depth.set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
            let mut answers = Vec::with_capacity(job.ops.len());
            for op in &job.ops {
                answers.push(self.serve(op, job.enqueued, job.deadline));
            }
            // The requests held plaintexts and wrapped keys; they are wiped as they drop here.
            drop(job.ops);
            let _ = job.reply.send(answers);
        }
        self.close_session();
    }

    /// One operation of a share, with its metrics.
    fn serve(&mut self, op: &Request, enqueued: Instant, deadline: Instant) -> Outcome {
        let code = op.code();
        let started = Instant::now();
        self.metrics.queue_wait[code.index()]
            .observe(started.saturating_duration_since(enqueued).as_secs_f64());
        let outcome = if started > deadline {
            Err(Status::DeadlineExceeded)
        } else {
            self.metrics.sessions_busy.inc();
            let outcome = self.execute(op);
            self.metrics.sessions_busy.dec();
            self.metrics.service_time[code.index()].observe(started.elapsed().as_secs_f64());
            outcome
        };
        let status = match &outcome {
            Ok(_) => Status::Ok,
            Err(s) => *s,
        };
        self.count(code, status);
        if let Ok(Reply::Health(report)) = &outcome {
            *lock(&self.health) = Some((Instant::now(), report.clone()));
        }
        outcome
    }

    /// Counts an answer; the labelled counter is looked up once per worker, not per operation.
    fn count(&mut self, code: OpCode, status: Status) {
        let metrics = &self.metrics;
        self.counters
            .entry((code, status))
            .or_insert_with(|| metrics.operations.with_label_values(&[code.name(), status.name()]))
            .inc();
    }

    /// Runs an operation, recovering from a lost session, a lost device or a stale handle.
    ///
    /// Every operation is safe to run again (none leaves anything behind in the token when it
    /// fails), so after a recovery it is retried, at most [`MAX_ATTEMPTS`] times in all: losing
    /// the whole library shows first as a lost session, then as a lost login.
    fn execute(&mut self, op: &Request) -> Outcome {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.attempt(op) {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            self.record(op.code(), &failure);
            let (class, seen_epoch) = (failure.class(), self.session.as_ref().map(|(e, _)| *e));
            match class {
                Class::Operation => return Err(failure.status()),
                Class::SessionLost => {
                    // The token no longer knows this handle; closing it could close a session
                    // that has since been given the same number.
                    tracing::warn!(worker = self.index, "session lost; opening a new one");
                    self.forget_session();
                    self.metrics.sessions_replaced.inc();
                }
                Class::SessionBroken => {
                    tracing::warn!(worker = self.index, "session in a bad state; replacing it");
                    self.close_session();
                    self.metrics.sessions_replaced.inc();
                }
                Class::DeviceError => {
                    tracing::warn!(worker = self.index, "device error; retrying on a new session");
                    self.close_session();
                    self.metrics.sessions_replaced.inc();
                }
                Class::Device => {
                    self.forget_session();
                    let epoch = seen_epoch.unwrap_or_else(|| self.token.read().number());
                    if let Ok(true) = self.token.reinitialize(epoch, &self.keys) {
                        self.metrics.reinitializations.inc();
                    }
                }
                Class::StaleKek => {
                    for id in ops::keks(op) {
                        self.keys.evict(&id);
                    }
                }
            }
            if attempts >= MAX_ATTEMPTS {
                return Err(failure.status());
            }
            self.metrics.retries.inc();
        }
    }

    fn attempt(&mut self, op: &Request) -> Result<Reply, Failure> {
        let token = self.token.clone();
        let guard = token.read();
        let Some(epoch) = guard.epoch() else {
            // The token is down: the failure makes `execute` try to bring it back.
            return Err(Failure::Pkcs11 {
                rv: cryptoki::error::RvError::DeviceRemoved,
                function: cryptoki::context::Function::OpenSession,
                step: crate::hsm::failure::Step::Other,
            });
        };
        if self.session.as_ref().is_some_and(|(e, _)| *e != epoch.number) {
            // A session of a previous library instance: its handle means nothing any more.
            self.forget_session();
        }
        if self.session.is_none() {
            let session = token.open_session(epoch).map_err(session_failure)?;
            self.metrics.sessions_open.inc();
            // Sessions share the application's login: a new session that is not logged in
            // means the library lost its state underneath us, which only re-initialising cures.
            let info = session.get_session_info();
            self.session = Some((epoch.number, session));
            let info = info.map_err(session_failure)?;
            let logged_in =
                matches!(info.session_state(), SessionState::RoUser | SessionState::RwUser);
            if !logged_in {
                return Err(Failure::Pkcs11 {
                    rv: cryptoki::error::RvError::UserNotLoggedIn,
                    function: cryptoki::context::Function::GetSessionInfo,
                    step: crate::hsm::failure::Step::Other,
                });
            }
        }
        let Some((_, session)) = self.session.as_ref() else {
            return Err(Failure::Status(Status::Internal));
        };
        let aead = token.caps.message_aead.then_some(&self.aead);
        let cx = OpContext {
            session,
            aead,
            epoch,
            token: &token,
            keys: &self.keys,
            sessions: self.sessions,
        };
        ops::execute(&cx, op)
    }

    fn record(&self, code: OpCode, failure: &Failure) {
        let Some((function, rv)) = failure.pkcs11() else { return };
        self.metrics
            .pkcs11_errors
            .with_label_values(&[&function.to_string(), &format!("{rv:?}")])
            .inc();
        if self.log_error_details {
            tracing::warn!(worker = self.index, op = code.name(), %function, %rv, class = ?failure.class(), "PKCS#11 call failed");
        } else {
            tracing::debug!(worker = self.index, op = code.name(), %function, %rv, "PKCS#11 call failed");
        }
    }

    fn forget_session(&mut self) {
        // Its operations end with it.
        self.aead = MessageAead::default();
        if let Some((_, session)) = self.session.take() {
            // Opened without close-on-drop: dropping it leaves the token's handle alone.
            drop(session);
            self.metrics.sessions_open.dec();
        }
    }

    fn close_session(&mut self) {
        self.aead = MessageAead::default();
        if let Some((epoch, session)) = self.session.take() {
            if self.token.read().number() == epoch {
                let _ = session.close();
            }
            self.metrics.sessions_open.dec();
        }
    }
}

/// A failed call opening or inspecting a worker session.
fn session_failure(e: cryptoki::error::Error) -> Failure {
    match e {
        cryptoki::error::Error::Pkcs11(rv, function) => {
            Failure::Pkcs11 { rv, function, step: crate::hsm::failure::Step::Other }
        }
        _ => Failure::Status(Status::Internal),
    }
}
