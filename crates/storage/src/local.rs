//! Local-disk helpers shared by the backends: durable directories, blocking I/O off the
//! async threads, and streaming a file (or a range of it) without holding it in memory.

use crate::{ByteRange, ByteStream};
use bytes::Bytes;
use futures_util::StreamExt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Size of the reads that feed a download.
const READ_CHUNK: usize = 512 * 1024;

/// Creates `dir` and any missing parents, fsyncing each parent that gained an entry so
/// the new directories survive a crash.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
        match std::fs::create_dir(dir) {
            Ok(()) => sync_dir(parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
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

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Streams `path` (or a range of it) from a blocking thread in 512 KiB pieces. The read
/// stops as soon as the receiver is dropped (the client went away).
pub(crate) async fn read_file(path: PathBuf, range: Option<ByteRange>) -> io::Result<ByteStream> {
    let mut file = blocking(move || File::open(path)).await?;
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let (start, mut left) = match range {
            Some(r) => (r.start, r.end - r.start + 1),
            None => (0, u64::MAX),
        };
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        while left > 0 {
            // Read into spare capacity: no zeroing pass over every buffer.
            let want = READ_CHUNK.min(usize::try_from(left).unwrap_or(READ_CHUNK));
            let mut buf = Vec::with_capacity(want);
            let item = match (&mut file).take(want as u64).read_to_end(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}
