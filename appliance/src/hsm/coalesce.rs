//! Coalescing: operations that API requests submit at the same time leave in one frame.
//!
//! A dispatcher takes the first operation waiting and every other one already queued (up to
//! [`MAX_BATCH`]), and sends them as one batch; it never waits for more, so a lone request
//! goes out at once and low load pays nothing. At most a set number of frames are in flight:
//! under load, requests queue while every slot is taken, and the next frame carries them all:
//! fewer frames, TLS records and proxy wake-ups per operation, for as many operations
//! outstanding at the proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hsm_proxy_proto::client::{Client, Error as ClientError};
use hsm_proxy_proto::{Outcome, Reply, Request};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most operations per frame.
pub(crate) const MAX_BATCH: usize = 32;

/// What a waiter gets back: its reply, or the error that failed its frame or its operation.
pub(crate) type Answer = Result<Reply, ClientError>;

struct Pending {
    op: Request,
    answer: oneshot::Sender<Answer>,
}

/// The submitting side; dropping it ends the dispatcher.
#[derive(Debug, Clone)]
pub(crate) struct Coalescer {
    queue: mpsc::UnboundedSender<PendingBox>,
}

/// Boxed so that the channel's slots stay small whatever the operation.
type PendingBox = Box<Pending>;

/// Sends one frame: the proxy client's `call_batch`, or a stand-in in tests.
type Sender = Arc<
    dyn Fn(Vec<Request>) -> Pin<Box<dyn Future<Output = Result<Vec<Outcome>, ClientError>> + Send>>
        + Send
        + Sync,
>;

impl Coalescer {
    /// Starts the dispatcher on the current runtime, sending through `client`, with at most
    /// `frames_in_flight` frames unanswered.
    pub(crate) fn start(client: Client, frames_in_flight: usize) -> Coalescer {
        let sender: Sender = Arc::new(move |ops| {
            let client = client.clone();
            Box::pin(async move { client.call_batch(ops).await })
        });
        Coalescer::start_with(sender, frames_in_flight)
    }

    fn start_with(sender: Sender, frames_in_flight: usize) -> Coalescer {
        let (queue, mut rx) = mpsc::unbounded_channel::<PendingBox>();
        let slots = Arc::new(Semaphore::new(frames_in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // A slot first, then the batch: whatever queues while every slot is taken
                // leaves together.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                // Frames go out concurrently: the dispatcher is back for the next batch at once.
                let sender = Arc::clone(&sender);
                tokio::spawn(async move {
                    send(sender, batch).await;
                    drop(slot);
                });
            }
        });
        Coalescer { queue }
    }

    /// Runs `op` in the next frame.
    pub(crate) async fn call(&self, op: Request) -> Answer {
        let (answer, rx) = oneshot::channel();
        if self.queue.send(Box::new(Pending { op, answer })).is_err() {
            return Err(ClientError::ConnectionLost);
        }
        rx.await.unwrap_or(Err(ClientError::ConnectionLost))
    }
}

async fn send(sender: Sender, batch: Vec<PendingBox>) {
    let (ops, waiters): (Vec<Request>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|p| (p.op, p.answer)).unzip();
    match sender(ops).await {
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
        Arc::new(move |ops: Vec<Request>| {
            let frames = Arc::clone(&frames);
            let gate = gate.clone();
            Box::pin(async move {
                frames.lock().unwrap_or_else(|p| p.into_inner()).push(ops.len());
                if let Some(gate) = gate {
                    gate.acquire().await.unwrap_or_else(|e| panic!("gate: {e}")).forget();
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
        let coalescer = Coalescer::start_with(fake(Arc::clone(&frames), false), 8);
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
        let coalescer = Coalescer::start_with(fake(Arc::clone(&frames), false), 8);
        assert!(coalescer.call(Random { len: 3 }.into()).await.is_ok());
        assert_eq!(*frames.lock().unwrap_or_else(|p| p.into_inner()), vec![1]);

        let failing = Coalescer::start_with(fake(Arc::new(Mutex::new(Vec::new())), true), 8);
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
        let coalescer =
            Coalescer::start_with(gated(Arc::clone(&frames), false, Some(Arc::clone(&gate))), 1);
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

    #[test]
    fn every_client_error_is_reproduced_for_each_waiter() {
        let e = ClientError::Connect {
            endpoint: "p:1".into(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert_eq!(same_error(&e).to_string(), e.to_string());
        for e in [ClientError::Refused(Status::Busy), ClientError::Config("x".into())] {
            assert_eq!(same_error(&e).to_string(), e.to_string());
        }
    }
}
