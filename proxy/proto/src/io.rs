//! Frame I/O over tokio streams, shared by the client and the proxy (feature `client`).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use zeroize::{Zeroize, Zeroizing};

/// Frames gathered into one write at most (a few TLS records).
pub const COALESCE_BYTES: usize = 64 * 1024;

/// Writes frames from `frames` until the channel closes (then `Ok`) or a write fails.
///
/// Frames already waiting leave in one write: fewer TLS records and syscalls under load, no
/// added wait at low load. The staging buffer is ours rather than a `BufWriter`'s so that the
/// plaintexts it held are wiped after every write: only the bytes staged, not its whole
/// capacity, and it never grows (a frame that does not fit is written from its own buffer), so
/// no copy is left behind in memory it gave back.
///
/// The stream is locked for each gathered write only, so that others may write whole frames of
/// their own in between; `usable` is asked once the lock is held, and when it says no (another
/// writer left a frame cut short) nothing more is written and the frames waiting are dropped.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    out: &tokio::sync::Mutex<W>,
    frames: &mut mpsc::Receiver<Zeroizing<Vec<u8>>>,
    usable: impl Fn() -> bool,
) -> std::io::Result<()> {
    // Wiped whole only when dropped, which covers a write cut off midway.
    let mut staged = Zeroizing::new(Vec::with_capacity(COALESCE_BYTES));
    while let Some(first) = frames.recv().await {
        let mut out = out.lock().await;
        if !usable() {
            break;
        }
        write_gathered(&mut *out, first, frames, &mut staged).await?;
    }
    Ok(())
}

/// Writes `first` and every frame already waiting in `frames`, gathered in `staged` (a buffer
/// of [`COALESCE_BYTES`] capacity, left empty and wiped), and flushes.
async fn write_gathered<W: AsyncWrite + Unpin>(
    out: &mut W,
    first: Zeroizing<Vec<u8>>,
    frames: &mut mpsc::Receiver<Zeroizing<Vec<u8>>>,
    staged: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        if staged.len() + frame.len() > staged.capacity() {
            flush_staged(out, staged).await?;
            if frame.len() > staged.capacity() {
                out.write_all(&frame).await?;
                next = frames.try_recv().ok();
                continue;
            }
        }
        staged.extend_from_slice(&frame);
        drop(frame);
        next = frames.try_recv().ok();
    }
    flush_staged(out, staged).await
}

/// Awaits `fut`, for up to `spin` keeping the thread busy instead of parking it.
///
/// Until `fut` is ready or `spin` has passed, this task yields, and the runtime looks for I/O
/// without sleeping before running it again; after that, `fut` is awaited as usual. On a virtual
/// machine, waking a thread parked on an idle CPU costs tens of microseconds (the host must
/// resume a halted virtual CPU), more than the whole exchange at one operation in flight: an
/// answer that comes within the window pays none of it. The price is a CPU kept busy for the
/// window after every frame; zero turns it off.
pub async fn busy_poll<F: Future>(fut: F, spin: Duration) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match spin_on(fut.as_mut(), spin, || true).await {
        Some(out) => out,
        None => fut.await,
    }
}

/// Polls `fut` without parking for up to `spin`, as long as `worth_it()` holds (asked before
/// every turn): its output if it was ready in that time, `None` if not, and `fut` may then be
/// awaited as usual.
pub async fn spin_on<F: Future>(
    mut fut: std::pin::Pin<&mut F>,
    spin: Duration,
    worth_it: impl Fn() -> bool,
) -> Option<F::Output> {
    if spin.is_zero() {
        return None;
    }
    let until = Instant::now() + spin;
    loop {
        if !worth_it() {
            return None;
        }
        let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = polled {
            return Some(out);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::task::yield_now().await;
    }
}

/// Writes and flushes what is staged, then wipes it.
async fn flush_staged<W: AsyncWrite + Unpin>(
    out: &mut W,
    staged: &mut Vec<u8>,
) -> std::io::Result<()> {
    if staged.is_empty() {
        return Ok(());
    }
    let written = out.write_all(staged).await.and(out.flush().await);
    staged.as_mut_slice().zeroize();
    staged.clear();
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_poll_returns_what_the_future_gives_within_or_after_the_window() {
        // Ready at once, with and without a window.
        assert_eq!(busy_poll(async { 7 }, Duration::ZERO).await, 7);
        assert_eq!(busy_poll(async { 8 }, Duration::from_millis(5)).await, 8);
        // Ready while spinning: a value sent by another task that the spin lets run.
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move { tx.send(9).unwrap() });
        assert_eq!(busy_poll(rx, Duration::from_secs(5)).await.unwrap(), 9);
        // Ready only after the window: the wait goes on, parked, until it is.
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            tx.send(10).unwrap();
        });
        let started = Instant::now();
        assert_eq!(busy_poll(rx, Duration::from_millis(1)).await.unwrap(), 10);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn spinning_stops_when_it_no_longer_pays() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        // Never worth it: not polled at all, and the future is still there to await.
        let polls = AtomicU32::new(0);
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut rx = std::pin::pin!(rx);
        assert!(spin_on(rx.as_mut(), Duration::from_secs(5), || false).await.is_none());
        tx.send(3).unwrap();
        assert_eq!(rx.await.unwrap(), 3);
        // Worth it until another task says otherwise: the spin ends early, with nothing.
        let worth = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&worth);
        tokio::spawn(async move { flag.store(false, Ordering::Relaxed) });
        let (_tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut rx = std::pin::pin!(rx);
        let started = Instant::now();
        let spun = spin_on(rx.as_mut(), Duration::from_secs(30), || {
            polls.fetch_add(1, Ordering::Relaxed);
            worth.load(Ordering::Relaxed)
        })
        .await;
        assert!(spun.is_none());
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(polls.load(Ordering::Relaxed) >= 2, "asked before every turn");
        // Ready while worth it: its output.
        let mut ready = std::pin::pin!(async { 5 });
        assert_eq!(spin_on(ready.as_mut(), Duration::from_millis(1), || true).await, Some(5));
    }

    #[tokio::test]
    async fn frames_leave_whole_and_in_order_whatever_their_size() {
        let sizes = [10, COALESCE_BYTES - 5, 7, 2 * COALESCE_BYTES, 3, COALESCE_BYTES, 1];
        let (tx, mut rx) = mpsc::channel(sizes.len());
        let mut expected = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let frame = vec![u8::try_from(i + 1).unwrap(); *n];
            expected.extend_from_slice(&frame);
            tx.send(Zeroizing::new(frame)).await.unwrap();
        }
        drop(tx);
        let out = tokio::sync::Mutex::new(Vec::new());
        write_frames(&out, &mut rx, || true).await.unwrap();
        let out = out.into_inner();
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "frames reordered or cut");
    }
}
