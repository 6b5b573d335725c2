//! The session pool and its pipeline: a bounded queue of work served by OS threads, each owning
//! one PKCS#11 session, so the pipeline depth (operations outstanding at the HSM) is the number
//! of workers.
//!
//! PKCS#11 calls block, so they never run on the async runtime: connection tasks put work in the
//! queue (waiting when it is full, which slows the client down) and await a one-shot answer. A
//! batch is split into one share per worker, at most, so a frame of many operations costs a
//! handful of queue hand-offs and wake-ups rather than one per operation. A worker that finds an
//! operation past its deadline answers it without touching the HSM.
//!
//! At low load the hand-off to a worker thread and back is most of what the proxy adds to an
//! operation. So when nothing is queued or in service, a frame whose operations the HSM has
//! lately answered within a few tens of microseconds runs on the connection's own thread, on
//! one more session kept for that (the inline lane). Slow operations never do: they would
//! hold up the other connections served by that thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::session::Session;
use hsm_proxy_proto::op::{HealthReport, Kek};
use hsm_proxy_proto::{OpCode, Outcome, Reply, Request, Status};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use tokio::sync::oneshot;

use crate::hsm::Token;
use crate::hsm::failure::{Class, Failure};
use crate::hsm::ops::{self, MessageAead, OpContext};
use crate::keys::{KekCache, lock};
use crate::metrics::Metrics;

/// Stack for worker threads: PKCS#11 modules need little, and with memory locked every byte of
/// stack is resident.
const WORKER_STACK_BYTES: usize = 512 * 1024;

/// Attempts per operation, within its deadline: enough that an operation fails only if the
/// device fails it every time (at one fault in six, eight attempts all fail once in 1.7 million).
const MAX_ATTEMPTS: u32 = 8;

/// The first wait before retrying on a device that said it was full; doubled each time.
const BUSY_BACKOFF: Duration = Duration::from_micros(250);

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
    /// A frame runs inline when the pool is idle and its operations' recent service times add
    /// up to no more than this; zero: never (and no inline session is opened).
    pub(crate) inline_below: Duration,
    pub(crate) queue_depth: usize,
    pub(crate) health_cache: Duration,
    pub(crate) log_error_details: bool,
}

/// What the workers are doing, shared with the pool: what decides whether a frame may run
/// inline.
#[derive(Debug)]
struct Load {
    /// Shares given to the workers and not yet answered.
    outstanding: AtomicUsize,
    /// Recent service time per operation, in microseconds (a moving average over about eight
    /// operations); [`Load::UNSEEN`] until one has run.
    service_us: Vec<AtomicU32>,
}

impl Load {
    const UNSEEN: u32 = u32::MAX;

    fn new() -> Load {
        Load {
            outstanding: AtomicUsize::new(0),
            service_us: OpCode::ALL.iter().map(|_| AtomicU32::new(Load::UNSEEN)).collect(),
        }
    }

    fn observe(&self, code: OpCode, took: Duration) {
        let Some(slot) = self.service_us.get(code.index()) else { return };
        let sample = u32::try_from(took.as_micros()).unwrap_or(Load::UNSEEN - 1);
        let before = slot.load(Ordering::Relaxed);
        let average = if before == Load::UNSEEN {
            sample
        } else {
            let blended = (u64::from(before) * 7 + u64::from(sample)) / 8;
            u32::try_from(blended).unwrap_or(Load::UNSEEN - 1)
        };
        // Racing updates may lose a sample; an estimate needs no more.
        slot.store(average, Ordering::Relaxed);
    }

    /// Whether `ops` are expected to take no more than `budget` in all. An operation never
    /// seen is not: its first run goes to a worker, which measures it.
    fn fits(&self, ops: &[Outcome<Request>], budget: Duration) -> bool {
        let budget = u64::try_from(budget.as_micros()).unwrap_or(u64::MAX);
        let mut total = 0u64;
        for op in ops {
            let Ok(op) = op else { continue };
            if matches!(op, Request::Health(_)) {
                continue;
            }
            let estimate = self
                .service_us
                .get(op.code().index())
                .map_or(Load::UNSEEN, |s| s.load(Ordering::Relaxed));
            if estimate == Load::UNSEEN {
                return false;
            }
            total += u64::from(estimate);
        }
        total <= budget
    }
}

/// Where an operation of a frame goes.
enum Route {
    /// Answered without the HSM.
    Answered(Outcome),
    /// To a session.
    Hsm(Request),
}

/// The pool: the queue's sending side and the workers.
pub(crate) struct Pool {
    queue: flume::Sender<Message>,
    /// The inline lane's worker state, when inline runs are on.
    inline: Option<std::sync::Mutex<Worker>>,
    load: Arc<Load>,
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
        let load = Arc::new(Load::new());
        let budget = settings.workers + usize::from(!settings.inline_below.is_zero());
        let lane = |index| Worker {
            index,
            token: token.clone(),
            keys: keys.clone(),
            metrics: metrics.clone(),
            session: None,
            aead: MessageAead::default(),
            health: health.clone(),
            load: load.clone(),
            sessions: u32::try_from(settings.workers).unwrap_or(u32::MAX),
            budget,
            log_error_details: settings.log_error_details,
            tally: Tally::new(&metrics),
        };
        // Numbered after the workers, for the logs.
        let inline = (!settings.inline_below.is_zero())
            .then(|| std::sync::Mutex::new(lane(settings.workers)));
        let mut workers = Vec::with_capacity(settings.workers);
        for index in 0..settings.workers {
            let worker = lane(index);
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hsm-worker-{index}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker.run(rx))?;
            workers.push(handle);
        }
        Ok(Pool {
            queue: tx,
            inline,
            load,
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
            results.push(match self.without_hsm(op) {
                Route::Answered(outcome) => outcome,
                Route::Hsm(op) => {
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
            // A worker stuck in a call the device stalls is not waited for past the deadline:
            // its share is answered as late, and the other shares' answers go out with it.
            let answers = match queued {
                Ok(rx) => match tokio::time::timeout_at(deadline.into(), rx).await {
                    Ok(answers) => answers.map_err(|_| Status::Internal),
                    Err(_) => Err(Status::DeadlineExceeded),
                },
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

    /// Runs a frame on the calling thread if the pool is idle, the inline lane free, and the
    /// frame's operations quick (see the module's documentation); otherwise gives the
    /// operations back, for [`Pool::run`].
    ///
    /// This blocks the calling thread for as long as the HSM takes, which the estimate keeps to
    /// tens of microseconds; one that takes longer raises the estimate, so that the next go to
    /// the workers.
    pub(crate) fn run_inline(
        &self,
        ops: Vec<Outcome<Request>>,
        deadline: Instant,
    ) -> Result<Vec<Outcome>, Vec<Outcome<Request>>> {
        let Some(lane) = &self.inline else { return Err(ops) };
        if self.load.outstanding.load(Ordering::Acquire) != 0
            || self.closing.load(Ordering::Acquire)
            || !self.load.fits(&ops, self.settings.inline_below)
        {
            return Err(ops);
        }
        let Ok(mut lane) = lane.try_lock() else { return Err(ops) };
        let arrived = Instant::now();
        let mut ran = 0;
        self.metrics.sessions_busy.inc();
        let results = ops
            .into_iter()
            .map(|op| match self.without_hsm(op) {
                Route::Answered(outcome) => outcome,
                Route::Hsm(op) => {
                    ran += 1;
                    // The request holds plaintexts and wrapped keys; it is wiped as it drops.
                    lane.serve(&op, arrived, deadline)
                }
            })
            .collect();
        self.metrics.sessions_busy.dec();
        lane.tally.flush();
        self.metrics.inline_operations.inc_by(ran);
        Ok(results)
    }

    /// The answer to an operation that needs no HSM (one refused at decoding, or a `Health`
    /// the cache still holds), or the operation back.
    fn without_hsm(&self, op: Outcome<Request>) -> Route {
        match op {
            Err(status) => Route::Answered(Err(status)),
            Ok(Request::Health(health)) => match self.cached_health() {
                Some(report) => Route::Answered(Ok(Reply::Health(report))),
                None => Route::Hsm(Request::Health(health)),
            },
            Ok(op) => Route::Hsm(op),
        }
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
        // Counted before it is visible to a worker, which uncounts it when done.
        self.load.outstanding.fetch_add(1, Ordering::AcqRel);
        let send = self.queue.send_async(Message::Run(job));
        let sent = match tokio::time::timeout_at(deadline.into(), send).await {
            Ok(Ok(())) => {
                self.metrics.queue_depth.set(i64::try_from(self.queue.len()).unwrap_or(i64::MAX));
                return Ok(rx);
            }
            Ok(Err(_)) => Err(Status::ShuttingDown),
            Err(_) => Err(Status::DeadlineExceeded),
        };
        self.load.outstanding.fetch_sub(1, Ordering::AcqRel);
        sent
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
        if let Some(lane) = &self.inline {
            // A run in progress holds the lock; waiting for it is as long as the operation.
            let mut lane = match lane.lock() {
                Ok(lane) => lane,
                Err(poisoned) => poisoned.into_inner(),
            };
            lane.close_session();
        }
        self.token.shutdown();
    }

    /// Worker threads still running.
    pub(crate) fn workers(&self) -> usize {
        self.settings.workers
    }

    /// Whether no work is with the workers.
    pub(crate) fn idle(&self) -> bool {
        self.load.outstanding.load(Ordering::Acquire) == 0
    }

    /// Whether small frames may run inline when the pool is idle.
    pub(crate) fn runs_inline(&self) -> bool {
        self.inline.is_some()
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
    load: Arc<Load>,
    sessions: u32,
    /// Sessions the workers and the inline lane may hold on the token at once.
    budget: usize,
    log_error_details: bool,
    tally: Tally,
}

/// A worker's per-operation metrics, counted on its own and published once per share: atomic
/// updates of shared counters and histograms for each operation cost a measurable part of a
/// fast token's operation.
struct Tally {
    queue_wait: Vec<LocalHistogram>,
    service_time: Vec<LocalHistogram>,
    answers: HashMap<(OpCode, Status), LocalIntCounter>,
    operations: prometheus::IntCounterVec,
}

impl Tally {
    fn new(metrics: &Metrics) -> Tally {
        Tally {
            queue_wait: metrics.queue_wait.iter().map(|h| h.local()).collect(),
            service_time: metrics.service_time.iter().map(|h| h.local()).collect(),
            answers: HashMap::new(),
            operations: metrics.operations.clone(),
        }
    }

    fn waited(&self, code: OpCode, wait: Duration) {
        if let Some(h) = self.queue_wait.get(code.index()) {
            h.observe(wait.as_secs_f64());
        }
    }

    fn served(&self, code: OpCode, took: Duration) {
        if let Some(h) = self.service_time.get(code.index()) {
            h.observe(took.as_secs_f64());
        }
    }

    /// Counts an answer; the labelled counter is looked up once per worker, not per operation.
    fn answered(&mut self, code: OpCode, status: Status) {
        let operations = &self.operations;
        self.answers
            .entry((code, status))
            .or_insert_with(|| operations.with_label_values(&[code.name(), status.name()]).local())
            .inc();
    }

    /// Publishes what was counted since the last flush.
    fn flush(&mut self) {
        self.queue_wait.iter().chain(&self.service_time).for_each(LocalHistogram::flush);
        self.answers.values().for_each(LocalIntCounter::flush);
    }
}

impl Worker {
    fn run(mut self, rx: flume::Receiver<Message>) {
        while let Ok(Message::Run(job)) = rx.recv() {
            self.metrics.queue_depth.set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
            let mut answers = Vec::with_capacity(job.ops.len());
            self.metrics.sessions_busy.inc();
            if job.ops.len() > 1 {
                self.prefetch(&job.ops, job.deadline);
            }
            for op in &job.ops {
                answers.push(self.serve(op, job.enqueued, job.deadline));
            }
            self.metrics.sessions_busy.dec();
            // Before the answer: whoever reads the metrics after it sees these operations.
            self.tally.flush();
            // The requests held plaintexts and wrapped keys; they are wiped as they drop here.
            drop(job.ops);
            // Before the answer, so that a client's next frame can find the pool idle.
            self.load.outstanding.fetch_sub(1, Ordering::AcqRel);
            let _ = job.reply.send(answers);
        }
        self.close_session();
    }

    /// Unwraps the share's uncached KEKs together before its operations run.
    fn prefetch(&self, ops: &[Request], deadline: Instant) {
        let guard = self.token.read();
        let Some(epoch) = guard.epoch() else { return };
        let keks: Vec<&Kek> = ops.iter().flat_map(ops::used_keks).collect();
        self.keys.prefetch(&keks, &self.token, epoch, deadline);
    }

    /// One operation of a share, with its metrics.
    fn serve(&mut self, op: &Request, enqueued: Instant, deadline: Instant) -> Outcome {
        let code = op.code();
        let started = Instant::now();
        self.tally.waited(code, started.saturating_duration_since(enqueued));
        let outcome = if started > deadline {
            Err(Status::DeadlineExceeded)
        } else {
            let outcome = self.execute(op, enqueued, deadline);
            let took = started.elapsed();
            self.tally.served(code, took);
            self.load.observe(code, took);
            outcome
        };
        let status = match &outcome {
            Ok(_) => Status::Ok,
            Err(s) => *s,
        };
        self.tally.answered(code, status);
        if let Ok(Reply::Health(report)) = &outcome {
            *lock(&self.health) = Some((Instant::now(), report.clone()));
        }
        outcome
    }

    /// Runs an operation, recovering from a lost session, a lost device or a stale handle.
    ///
    /// Every operation is safe to run again (none leaves anything behind in the token when it
    /// fails), so after a transient failure it is retried alone, at most [`MAX_ATTEMPTS`] times
    /// in all and not past its deadline; the other operations of its share go on either way.
    fn execute(&mut self, op: &Request, arrived: Instant, deadline: Instant) -> Outcome {
        let mut attempts = 0;
        let mut backoff = BUSY_BACKOFF;
        loop {
            attempts += 1;
            let failure = match self.attempt(op, arrived) {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            self.record(op.code(), &failure);
            let (class, seen_epoch) = (failure.class(), self.session.as_ref().map(|(e, _)| *e));
            match class {
                Class::Operation => return Err(failure.status()),
                Class::SessionLost => {
                    // The token no longer knows this handle; closing it could close a session
                    // that has since been given the same number. Counted in
                    // `sessions_replaced_total`: a flaky device loses thousands a second, too
                    // many for a log line each.
                    tracing::debug!(worker = self.index, "session lost; opening a new one");
                    self.forget_session();
                    self.metrics.sessions_replaced.inc();
                }
                Class::KeyholderLost | Class::DeviceError => {
                    // The session is not at fault, or not known to be: the retry runs on it.
                }
                Class::SessionBroken => {
                    tracing::warn!(worker = self.index, "session in a bad state; replacing it");
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
                Class::Busy if failure.out_of_room() => {
                    // The token's objects are mostly cached KEKs: fewer of them make the room.
                    if let Some(epoch) = self.token.read().epoch() {
                        self.keys.make_room(epoch);
                    }
                }
                Class::Busy => {
                    // A worker thread, not the runtime's: sleeping here holds up only this
                    // share, while the device drains its queue.
                    std::thread::sleep(
                        backoff.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    backoff = backoff.saturating_mul(2);
                }
            }
            if attempts >= MAX_ATTEMPTS || Instant::now() >= deadline {
                return Err(failure.status());
            }
            self.metrics.retries.inc();
        }
    }

    fn attempt(&mut self, op: &Request, arrived: Instant) -> Result<Reply, Failure> {
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
            // (The read lock is held here, so not `forget_session`.)
            self.drop_session();
        }
        if self.session.is_none() {
            if !epoch.reserve_session(self.budget) {
                // Every session the budget allows is held, so some are sessions that could
                // not be closed: re-initialising frees them.
                tracing::warn!(
                    worker = self.index,
                    held = epoch.sessions_held(),
                    budget = self.budget,
                    "session budget taken up by sessions that could not be closed"
                );
                return Err(Failure::Reclaim);
            }
            let session = match token.open_session(epoch) {
                Ok(session) => session,
                Err(e) => {
                    epoch.release_session();
                    return Err(session_failure(e));
                }
            };
            self.metrics.sessions_open.inc();
            // Sessions share the application's login, which goes when the token drops every
            // session of ours at once: log in again. A library that lost its state underneath
            // us fails this too, and is re-initialised.
            let login = token.ensure_login(&session);
            self.session = Some((epoch.number, session));
            login.map_err(session_failure)?;
        }
        let Some((_, session)) = self.session.as_ref() else {
            return Err(Failure::Status(Status::Internal));
        };
        let aead = token.caps.message_aead.then_some(&self.aead);
        let cx = OpContext {
            arrived,
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

    /// Forgets a session the token no longer knows (or that died with its library instance).
    /// Takes the token's read lock: never call it while holding one, since a second read waits
    /// behind a writer waiting for the first.
    fn forget_session(&mut self) {
        if let Some(number) = self.drop_session() {
            let guard = self.token.read();
            if let Some(epoch) = guard.epoch().filter(|e| e.number == number) {
                epoch.release_session();
            }
        }
    }

    /// Drops the session without closing it and without uncounting it: for a session of an
    /// earlier library instance, whose count went with its epoch. The epoch it was opened in.
    fn drop_session(&mut self) -> Option<u64> {
        // Its operations end with it.
        self.aead = MessageAead::default();
        let (number, session) = self.session.take()?;
        // Opened without close-on-drop: dropping it leaves the token's handle alone.
        drop(session);
        self.metrics.sessions_open.dec();
        Some(number)
    }

    /// Closes the session. One whose close fails stays counted against the budget: it may
    /// still be open on the token, and only re-initialising can free it now.
    fn close_session(&mut self) {
        self.aead = MessageAead::default();
        if let Some((number, session)) = self.session.take() {
            self.metrics.sessions_open.dec();
            let guard = self.token.read();
            let Some(epoch) = guard.epoch().filter(|e| e.number == number) else { return };
            match session.close() {
                Ok(())
                | Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::SessionHandleInvalid
                    | cryptoki::error::RvError::SessionClosed,
                    _,
                )) => epoch.release_session(),
                Err(e) => tracing::warn!(
                    worker = self.index,
                    error = %e,
                    "closing a session failed; it counts against the session budget until the \
                     library is re-initialised"
                ),
            }
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

#[cfg(test)]
mod tests {
    use hsm_proxy_proto::op::{Health, Random};

    use super::*;

    fn random() -> Outcome<Request> {
        Ok(Random { len: 32 }.into())
    }

    #[test]
    fn only_operations_seen_and_quick_enough_fit_the_inline_budget() {
        let load = Load::new();
        let budget = Duration::from_micros(50);
        // Never seen: a worker measures it first. Health and refused operations cost nothing.
        assert!(!load.fits(&[random()], budget));
        assert!(load.fits(&[Ok(Health.into()), Err(Status::InvalidArgument)], budget));

        load.observe(OpCode::Random, Duration::from_micros(10));
        assert!(load.fits(&[random()], budget));
        assert!(load.fits(&[random(), random(), random(), random(), random()], budget));
        assert!(!load.fits(&[random(), random(), random(), random(), random(), random()], budget));

        // One slow run (a stall) moves the average past the budget at once; quick runs on the
        // workers bring it back.
        load.observe(OpCode::Random, Duration::from_millis(5));
        assert!(!load.fits(&[random()], budget));
        for _ in 0..40 {
            load.observe(OpCode::Random, Duration::from_micros(10));
        }
        assert!(load.fits(&[random()], budget));
    }
}
