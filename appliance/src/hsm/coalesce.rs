//! Coalescing: operations that API requests submit at the same time leave in one frame.
//!
//! A dispatcher takes the first operation waiting and every other one already queued (up to
//! [`MAX_BATCH`]), and sends them as one batch; it never waits for more, so a lone request
//! goes out at once and low load pays nothing. At most a set number of frames are in flight:
//! under load, requests queue while every slot is taken, and the next frame carries them all:
//! fewer frames, TLS records and proxy wake-ups per operation, for as many operations
//! outstanding at the proxy.
//!
//! The queue is bounded: an operation that finds it full fails at once (the API answers 503).
//! Each operation has a deadline, queueing included; its caller stops waiting there, and the
//! dispatcher drops operations whose callers are gone instead of sending them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_proxy_proto::client::{Client, Error as ClientError};
use hsm_proxy_proto::{Outcome, Reply, Request};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most operations per frame.
pub(crate) const MAX_BATCH: usize = 32;

/// What a waiter gets back: its reply, or the error that failed its frame or its operation.
pub(crate) type Answer = Result<Reply, ClientError>;

struct Pending {
    op: Request,
    answer: oneshot::Sender<Answer>,
    deadline: Instant,
}

/// The submitting side; dropping it ends the dispatcher.
#[derive(Debug, Clone)]
pub(crate) struct Coalescer {
    queue: mpsc::Sender<PendingBox>,
    limits: Limits,
}

/// How much may wait, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Frames unanswered at once.
    pub(crate) frames_in_flight: usize,
    /// Operations waiting for a frame.
    pub(crate) max_queued: usize,
    /// Time an operation may take, from its submission to its answer.
    pub(crate) timeout: Duration,
}

/// Boxed so that the channel's slots stay small whatever the operation.
type PendingBox = Box<Pending>;

/// Sends one frame by a deadline: the proxy client's `call_batch_by`, or a stand-in in tests.
type Sender = Arc<
    dyn Fn(
            Vec<Request>,
            Instant,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<Outcome>, ClientError>> + Send>>
        + Send
        + Sync,
>;

impl Coalescer {
    /// Starts the dispatcher on the current runtime, sending through `client`.
    pub(crate) fn start(client: Client, limits: Limits) -> Coalescer {
        let sender: Sender = Arc::new(move |ops, deadline| {
            let client = client.clone();
            Box::pin(async move { client.call_batch_by(ops, deadline).await })
        });
        Coalescer::start_with(sender, limits)
    }

    fn start_with(sender: Sender, limits: Limits) -> Coalescer {
        let (queue, mut rx) = mpsc::channel::<PendingBox>(limits.max_queued.max(1));
        let slots = Arc::new(Semaphore::new(limits.frames_in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // A slot first, then the batch: whatever queues while every slot is taken
                // leaves together.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
                let mut batch = Vec::new();
                let mut next = Some(first);
                while let Some(pending) = next.take() {
                    if let Some(pending) = still_wanted(pending) {
                        batch.push(pending);
                    }
                    if batch.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                let Some(deadline) = batch.iter().map(|p| p.deadline).max() else { continue };
                // Frames go out concurrently: the dispatcher is back for the next batch at once.
                let sender = Arc::clone(&sender);
                tokio::spawn(async move {
                    send(sender, batch, deadline).await;
                    drop(slot);
                });
            }
        });
        Coalescer { queue, limits }
    }

    /// Runs `op` in the next frame, within the timeout; fails at once if the queue is full.
    pub(crate) async fn call(&self, op: Request) -> Answer {
        let deadline = Instant::now() + self.limits.timeout;
        let (answer, rx) = oneshot::channel();
        match self.queue.try_send(Box::new(Pending { op, answer, deadline })) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ClientError::Overloaded),
            Err(TrySendError::Closed(_)) => return Err(ClientError::ConnectionLost),
        }
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(answer) => answer.unwrap_or(Err(ClientError::ConnectionLost)),
            // Dropping `rx` tells the dispatcher not to send the operation, if it still waits.
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Operations waiting for a frame.
    pub(crate) fn queued(&self) -> usize {
        self.limits.max_queued.max(1).saturating_sub(self.queue.capacity())
    }
}

/// The operation, unless its caller has stopped waiting for it (gone, or past its deadline).
fn still_wanted(pending: PendingBox) -> Option<PendingBox> {
    if pending.answer.is_closed() {
        return None;
    }
    if pending.deadline <= Instant::now() {
        let _ = pending.answer.send(Err(ClientError::Timeout));
        return None;
    }
    Some(pending)
}

async fn send(sender: Sender, batch: Vec<PendingBox>, deadline: Instant) {
    let (ops, waiters): (Vec<Request>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|p| (p.op, p.answer)).unzip();
    match sender(ops, deadline).await {
        Ok(outcomes) => {
            for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                let _ = waiter.send(outcome.map_err(ClientError::Operation));
            }
        }
        Err(e) => {
            for waiter in waiters {
                let _ = waiter.send(Err(same_error(&e)));
            }
        }
    }
}

/// A frame's failure, for each of its operations.
fn same_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Operation(s) => ClientError::Operation(*s),
        ClientError::Refused(s) => ClientError::Refused(*s),
        ClientError::Protocol(s) => ClientError::Protocol(*s),
        ClientError::ConnectionLost => ClientError::ConnectionLost,
        ClientError::Timeout => ClientError::Timeout,
        ClientError::Overloaded => ClientError::Overloaded,
        ClientError::Config(text) => ClientError::Config(text.clone()),
        ClientError::Connect { endpoint, source } => ClientError::Connect {
            endpoint: endpoint.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        // A variant added later: the frame failed, and the caller may retry.
        _ => ClientError::ConnectionLost,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use hsm_proxy_proto::op::Random;
    use hsm_proxy_proto::{SecretBytes, Status};

    use super::*;

    /// Waits (letting the other tasks run) until `done` holds; fails after 5 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(5), "waited in vain for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn limits(frames_in_flight: usize) -> Limits {
        Limits { frames_in_flight, max_queued: 4096, timeout: Duration::from_secs(30) }
    }

    /// A stand-in proxy: answers Random(n) with n bytes of value n, fails Random(0), and
    /// records the size of every frame.
    fn fake(frames: Arc<Mutex<Vec<usize>>>, fail_frames: bool) -> Sender {
        gated(frames, fail_frames, None)
    }

    /// [`fake`], each frame's answer held until `gate` gives a permit.
    fn gated(
        frames: Arc<Mutex<Vec<usize>>>,
        fail_frames: bool,
        gate: Option<Arc<Semaphore>>,
    ) -> Sender {
        Arc::new(move |ops: Vec<Request>, deadline: Instant| {
            let frames = Arc::clone(&frames);
            let gate = gate.clone();
            Box::pin(async move {
                frames.lock().unwrap_or_else(|p| p.into_inner()).push(ops.len());
                if let Some(gate) = gate {
                    // As the client does, the frame gives up at its deadline.
                    let opened = tokio::time::timeout_at(deadline.into(), gate.acquire()).await;
                    match opened {
                        Ok(permit) => permit.unwrap_or_else(|e| panic!("gate: {e}")).forget(),
                        Err(_) => return Err(ClientError::Timeout),
                    }
                }
                if fail_frames {
                    return Err(ClientError::Timeout);
                }
                Ok(ops
                    .into_iter()
                    .map(|op| match op {
                        Request::Random(Random { len: 0 }) => Err(Status::InvalidArgument),
                        Request::Random(Random { len }) => {
                            Ok(Reply::Random(SecretBytes::copy_from(&vec![
                                len as u8;
                                len as usize
                            ])))
                        }
                        _ => Err(Status::UnknownOperation),
                    })
                    .collect())
            })
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_calls_leave_in_one_frame_and_get_their_own_answers() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let coalescer = Coalescer::start_with(fake(Arc::clone(&frames), false), limits(8));
        // On one thread, every task queues its operation before the dispatcher runs again.
        let tasks: Vec<_> = (0..20u32)
            .map(|n| {
                let c = coalescer.clone();
                tokio::spawn(async move { (n, c.call(Random { len: n }.into()).await) })
            })
            .collect();
        for t in tasks {
            let (n, answer) = t.await.unwrap_or_else(|e| panic!("a task failed: {e}"));
            match answer {
                Ok(Reply::Random(bytes)) => {
                    assert_eq!(bytes.expose_secret(), vec![n as u8; n as usize].as_slice())
                }
                Err(ClientError::Operation(Status::InvalidArgument)) => assert_eq!(n, 0),
                other => panic!("{n}: {other:?}"),
            }
        }
        let frames = frames.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(frames.iter().sum::<usize>(), 20);
        assert!(frames.len() < 20, "no frame was shared: {frames:?}");
        assert!(frames.iter().all(|n| *n <= MAX_BATCH));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_call_goes_out_alone_and_a_failed_frame_fails_each_caller() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let coalescer = Coalescer::start_with(fake(Arc::clone(&frames), false), limits(8));
        assert!(coalescer.call(Random { len: 3 }.into()).await.is_ok());
        assert_eq!(*frames.lock().unwrap_or_else(|p| p.into_inner()), vec![1]);

        let failing =
            Coalescer::start_with(fake(Arc::new(Mutex::new(Vec::new())), true), limits(8));
        let (a, b) = tokio::join!(
            failing.call(Random { len: 1 }.into()),
            failing.call(Random { len: 2 }.into())
        );
        assert!(matches!(a, Err(ClientError::Timeout)), "{a:?}");
        assert!(matches!(b, Err(ClientError::Timeout)), "{b:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_every_frame_slot_taken_the_queue_leaves_in_one_frame() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let coalescer = Coalescer::start_with(
            gated(Arc::clone(&frames), false, Some(Arc::clone(&gate))),
            limits(1),
        );
        let sent = |frames: &Arc<Mutex<Vec<usize>>>| {
            frames.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        let call = |len: u32| {
            let c = coalescer.clone();
            tokio::spawn(async move { c.call(Random { len }.into()).await })
        };
        let first = call(1);
        while sent(&frames).is_empty() {
            tokio::task::yield_now().await;
        }
        // The one slot is taken: ten more calls wait in the queue, none in a frame.
        let rest: Vec<_> = (2..12).map(call).collect();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sent(&frames), vec![1]);
        gate.add_permits(1);
        assert!(first.await.unwrap_or_else(|e| panic!("{e}")).is_ok());
        gate.add_permits(1);
        for (len, task) in (2..12u32).zip(rest) {
            match task.await.unwrap_or_else(|e| panic!("{e}")) {
                Ok(Reply::Random(bytes)) => assert_eq!(bytes.expose_secret().len(), len as usize),
                other => panic!("{len}: {other:?}"),
            }
        }
        assert_eq!(sent(&frames), vec![1, 10]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_refuses_at_once_and_callers_stop_waiting_at_their_deadline() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        // A proxy that never answers: its frames end at their deadline.
        let gate = Arc::new(Semaphore::new(0));
        let limits =
            Limits { frames_in_flight: 1, max_queued: 8, timeout: Duration::from_millis(300) };
        let coalescer =
            Coalescer::start_with(gated(Arc::clone(&frames), false, Some(gate)), limits);
        let call = |len: u32| {
            let c = coalescer.clone();
            tokio::spawn(async move { c.call(Random { len }.into()).await })
        };
        let first = call(1);
        until("the first frame", || !frames.lock().unwrap_or_else(|p| p.into_inner()).is_empty())
            .await;
        // The one frame is out: one operation in the dispatcher's hands waits for its slot,
        // eight fill the queue, and the next is refused at once.
        let mut queued = vec![call(2)];
        tokio::time::sleep(Duration::from_millis(20)).await;
        queued.extend((3..11).map(call));
        until("a full queue", || coalescer.queued() == 8).await;
        let started = Instant::now();
        let over = coalescer.call(Random { len: 10 }.into()).await;
        assert!(matches!(over, Err(ClientError::Overloaded)), "{over:?}");
        assert!(started.elapsed() < Duration::from_millis(50));
        // Half the callers go away, as request handlers do when their HTTP client leaves.
        let mut gone = queued;
        let waiting = gone.split_off(5);
        for task in &gone {
            task.abort();
        }
        // Every caller left gets its answer by its deadline: a timeout.
        for task in std::iter::once(first).chain(waiting) {
            let answer = task.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(answer, Err(ClientError::Timeout)), "{answer:?}");
        }
        assert!(started.elapsed() < Duration::from_millis(1000));
        // The operations whose callers left are dropped, not sent, and the queue empties.
        until("an empty queue", || coalescer.queued() == 0).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let sent = frames.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(sent.first(), Some(&1));
        // At most the one in the dispatcher's hands and the four still waiting.
        let later = sent.iter().skip(1).sum::<usize>();
        assert!(later <= 5, "operations of gone callers sent: {sent:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_proxy_unreachable_calls_fail_promptly_and_nothing_stays_queued() {
        use hsm_proxy_proto::client::ClientConfig;
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let nowhere = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
        drop(listener);
        // Nothing gets as far as a handshake: the TLS configuration is never used.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let config = ClientConfig::new(vec![nowhere], "hsm-proxy", Arc::new(tls))
            .unwrap_or_else(|e| panic!("{e}"));
        let client = Client::new(config).unwrap_or_else(|e| panic!("{e}"));
        let limits =
            Limits { frames_in_flight: 4, max_queued: 1024, timeout: Duration::from_secs(10) };
        let coalescer = Coalescer::start(client.clone(), limits);

        let started = Instant::now();
        let tasks: Vec<_> = (0..5000u32)
            .map(|n| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.call(Random { len: n % 64 + 1 }.into()).await })
            })
            .collect();
        let (mut unreachable, mut overloaded) = (0, 0);
        for task in tasks {
            match task.await.unwrap_or_else(|e| panic!("{e}")) {
                Err(ClientError::Connect { .. }) => unreachable += 1,
                Err(ClientError::Overloaded) => overloaded += 1,
                other => panic!("{other:?}"),
            }
        }
        let took = started.elapsed();
        assert_eq!(unreachable + overloaded, 5000);
        assert!(unreachable > 0);
        assert!(took < Duration::from_secs(3), "5000 failed calls took {took:?}");
        assert_eq!(coalescer.queued(), 0);
        assert_eq!(client.calls_in_progress(), 0);
        assert_eq!(client.answers_awaited(), 0);
        // Refusals and unreachable proxies are both "retry later" to API clients: 503.
        for e in [ClientError::Overloaded, ClientError::ConnectionLost, ClientError::Timeout] {
            assert!(matches!(
                super::super::HsmError::from(e),
                super::super::HsmError::Unavailable(_)
            ));
        }
    }

    #[test]
    fn every_client_error_is_reproduced_for_each_waiter() {
        let e = ClientError::Connect {
            endpoint: "p:1".into(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert_eq!(same_error(&e).to_string(), e.to_string());
        for e in [
            ClientError::Refused(Status::Busy),
            ClientError::Config("x".into()),
            ClientError::Overloaded,
        ] {
            assert_eq!(same_error(&e).to_string(), e.to_string());
        }
    }
}
