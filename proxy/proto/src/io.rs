//! Frame I/O over tokio streams, shared by the client and the proxy (feature `client`).

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
