//! Local-disk helpers shared by the backends: durable directories, blocking I/O off the
//! async threads, the memory budget of transfer buffers, and streaming a file (or a
//! range of it) without holding it in memory.

use crate::{ByteRange, ByteStream};
use bytes::Bytes;
use futures_util::StreamExt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The largest piece a download reads at once.
const READ_CHUNK: usize = 512 * 1024;

/// Creates `dir` and any missing parents, fsyncing each parent that gained an entry so
/// the new directories survive a crash.
///
/// Serialised in the process: a directory that another request has just created but
/// not yet made durable must not look durable to this one (which would then publish
/// into it and acknowledge a blob a power cut could take). Under the lock, a directory
/// that exists is durable: created and synced by this process, or found at start-up.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _creating = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    create_dirs(dir)
}

fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
        match std::fs::create_dir(dir) {
            // Another process on the same root (instances sharing a file system) created
            // it first; syncing the parent here makes the entry durable either way.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
        sync_dir(parent)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs blocking I/O on tokio's blocking pool. Callers keep each call short (one batch,
/// one read): a thread is held per operation, never per transfer, so thousands of slow
/// transfers do not exhaust the pool.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// The memory that transfer buffers (download pieces, upload batches) may hold at once
/// before new buffers shrink. A slow client keeps the buffer it was last handed, so with
/// thousands of them fixed-size buffers would add up to gigabytes; instead, while the
/// budget is exceeded every new buffer is [`MIN_BUFFER`] bytes. Memory stays below
/// `BUDGET + transfers × MIN_BUFFER`, and no transfer ever waits for memory.
pub(crate) const BUDGET: usize = 64 * 1024 * 1024;
pub(crate) const MIN_BUFFER: usize = 16 * 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Bytes of transfer buffers alive now.
#[cfg(test)]
fn buffered_bytes() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// The size for the next buffer of a transfer that would like `wanted` bytes.
pub(crate) fn buffer_size(wanted: usize) -> usize {
    if IN_FLIGHT.load(Ordering::Relaxed) + wanted <= BUDGET {
        wanted
    } else {
        wanted.min(MIN_BUFFER)
    }
}

/// Counts `len` bytes against the budget until dropped.
pub(crate) struct Reservation(usize);

impl Reservation {
    pub(crate) fn new(len: usize) -> Reservation {
        IN_FLIGHT.fetch_add(len, Ordering::Relaxed);
        Reservation(len)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// A buffer that counts against the budget for as long as any `Bytes` points into it.
struct Tracked(Vec<u8>, #[allow(dead_code)] Reservation);

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn tracked(buf: Vec<u8>, reservation: Reservation) -> Bytes {
    Bytes::from_owner(Tracked(buf, reservation))
}

/// Streams `path` (or a range of it) in pieces of at most 512 KiB. Each piece is one
/// read on the blocking pool; between pieces nothing but the open file is held, and the
/// next piece is read only when the client has taken the last one.
pub(crate) async fn read_file(path: PathBuf, range: Option<ByteRange>) -> io::Result<ByteStream> {
    let (start, len) = range.map_or((0, u64::MAX), |r| (r.start, r.length()));
    let file = blocking(move || {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(start))?;
        Ok(f)
    })
    .await?;
    let state = Some((Arc::new(file), len));
    Ok(futures_util::stream::unfold(state, |state| async move {
        let (file, left) = state?;
        if left == 0 {
            return None;
        }
        let want = buffer_size(READ_CHUNK).min(usize::try_from(left).unwrap_or(READ_CHUNK));
        // Counted from the moment the size is chosen: requests arriving together must
        // see each other's buffers, or they would all pick the largest size.
        let reservation = Reservation::new(want);
        let reader = file.clone();
        // One stream reads its file sequentially, so the shared cursor is only ever moved
        // by this stream, one piece at a time.
        let piece = blocking(move || {
            let mut buf = Vec::with_capacity(want);
            (&*reader).take(want as u64).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await;
        match piece {
            Ok(buf) if buf.is_empty() && left != u64::MAX => {
                Some((Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob is shorter than recorded")), None))
            }
            Ok(buf) if buf.is_empty() => None,
            Ok(buf) => {
                let n = buf.len() as u64;
                let left = if left == u64::MAX { left } else { left - n };
                Some((Ok(tracked(buf, reservation)), Some((file, left))))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_shrink_when_the_budget_is_spent() {
        let held = Reservation::new(BUDGET);
        assert_eq!(buffer_size(READ_CHUNK), MIN_BUFFER);
        drop(held);
        let b = tracked(vec![0u8; 1024], Reservation::new(1024));
        assert!(buffered_bytes() >= 1024);
        let slice = b.slice(10..20);
        drop(b);
        assert!(buffered_bytes() >= 1024, "a slice keeps its buffer counted");
        drop(slice);
    }
}
