//! The filesystem backend, in the registry:2 layout:
//! `<root>/docker/registry/v2/blobs/<alg>/<2 hex>/<hex>/data`.
//!
//! Spools live in `<root>/berth/uploads/<id>` on the same filesystem, so publishing is a
//! rename: the bytes are written once. Durability order: fdatasync the spool, rename it
//! into place, fsync the directory that gained the entry.

use crate::local::{blocking, create_dir_durable, read_file, remove_if_exists, sync_dir};
use crate::spool::Spool;
use crate::{
    blob_key, digest_of_key, AppendError, Appended, BlobStore, ByteRange, ByteStream, Staged, UploadLock, BLOBS,
};
use berth_proto::{Algorithm, Digest, Hasher};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    /// Upload sessions' bytes, and small objects staged before their rename: on the same
    /// filesystem as the blobs.
    spool: Spool,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store under `root`.
    pub fn open(root: &Path) -> io::Result<FsBlobStore> {
        create_dir_durable(&root.join("docker/registry/v2/blobs"))?;
        let spool = Spool::open(&Self::spool_dir(root))?;
        Ok(FsBlobStore { root: root.to_owned(), spool })
    }

    /// The spool directory of this store: inside `root`, so that publishing is a rename
    /// on one filesystem.
    pub fn spool_dir(root: &Path) -> PathBuf {
        root.join("berth/uploads")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(blob_key(digest))
    }

    fn publish_file(&self, staged: &Path, digest: &Digest) -> io::Result<()> {
        let target = self.blob_path(digest);
        let dir = target.parent().expect("blob paths have a directory");
        if target.exists() {
            // Same bytes; but the entry may be another request's rename that is not
            // durable yet, and this caller is about to acknowledge it too.
            remove_if_exists(staged)?;
            return sync_dir(dir);
        }
        create_dir_durable(dir)?;
        std::fs::rename(staged, &target)?;
        sync_dir(dir)
    }
}

/// Sends every `<alg>/<2 hex>/<hex>/data` under the blobs directory, with its size, until
/// the receiver is gone. Directories without `data` (a delete that left its directory)
/// are skipped.
fn walk_blobs(root: &Path, tx: &tokio::sync::mpsc::Sender<io::Result<(Digest, u64)>>) -> io::Result<()> {
    let dirs = |dir: &Path| -> io::Result<Vec<PathBuf>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.map(|e| e.path())).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    };
    for alg in dirs(&root.join(BLOBS))? {
        for prefix in dirs(&alg)? {
            for blob in dirs(&prefix)? {
                let Ok(key) = blob.join("data").strip_prefix(root).map(|k| k.to_string_lossy().into_owned()) else {
                    continue;
                };
                let (Some(digest), Ok(meta)) = (digest_of_key(&key), std::fs::metadata(blob.join("data"))) else {
                    continue;
                };
                if tx.blocking_send(Ok((digest, meta.len()))).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl BlobStore for FsBlobStore {
    async fn create_upload(&self, id: &str) -> io::Result<()> {
        self.spool.create(id).await
    }

    async fn lock_upload(&self, upload: Staged<'_>) -> io::Result<Option<UploadLock>> {
        let spool = self.spool.lock(upload.id).await?;
        Ok(spool.map(|spool| UploadLock { id: upload.id.to_owned(), spool: Some(spool) }))
    }

    async fn append(
        &self,
        upload: &UploadLock,
        offset: u64,
        hasher: Hasher,
        body: ByteStream,
        max_len: Option<u64>,
    ) -> Result<Appended, AppendError> {
        let spool = upload.spool.as_ref().expect("filesystem sessions are locked by their spool");
        self.spool.append(spool, offset, hasher, body, max_len).await
    }

    /// Nothing to do: bytes past the recorded offset are cut by the next append or by
    /// the publish.
    async fn drop_chunk(&self, _upload: &UploadLock, _chunk: &Appended) -> io::Result<()> {
        Ok(())
    }

    async fn rehash(&self, upload: Staged<'_>, algorithm: Algorithm) -> io::Result<Hasher> {
        self.spool.rehash(upload.id, upload.size, algorithm).await
    }

    async fn complete(&self, upload: Staged<'_>, digest: &Digest) -> io::Result<()> {
        let (this, id, size, digest) = (self.clone(), upload.id.to_owned(), upload.size, digest.clone());
        blocking(move || {
            this.spool.truncate_to(&id, size)?;
            this.publish_file(&this.spool.path(&id), &digest)
        })
        .await
    }

    async fn abort(&self, id: &str) -> io::Result<()> {
        self.spool.delete(id).await
    }

    async fn staged_uploads(&self) -> io::Result<Vec<(String, SystemTime)>> {
        self.spool.list().await
    }

    async fn has_staging(&self, id: &str) -> io::Result<bool> {
        self.spool.exists(id).await
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()> {
        let (this, digest) = (self.clone(), digest.clone());
        let staged = self.spool.path(&uuid::Uuid::new_v4().to_string());
        blocking(move || {
            let written = File::create(&staged).and_then(|mut f| {
                f.write_all(&data)?;
                f.sync_data()
            });
            if let Err(e) = written {
                // A full disk must get its space back now, not after the orphan sweep.
                remove_if_exists(&staged)?;
                return Err(e);
            }
            this.publish_file(&staged, &digest)
        })
        .await
    }

    /// Durable once it returns: a collected blob does not come back after a power cut.
    async fn delete(&self, digest: &Digest) -> io::Result<()> {
        let path = self.blob_path(digest);
        blocking(move || {
            remove_if_exists(&path)?;
            let dir = path.parent().expect("blob paths have a directory");
            // registry:2 removes the blob's directory too. Nothing publishes into it
            // meanwhile: collection deletes only digests no writer holds.
            match std::fs::remove_dir(dir) {
                Ok(()) => sync_dir(dir.parent().expect("blob directories have a parent")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(_) => sync_dir(dir),
            }
        })
        .await
    }

    fn list_blobs(&self) -> BoxStream<'static, io::Result<(Digest, u64)>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = walk_blobs(&root, &tx) {
                tx.blocking_send(Err(e)).ok();
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
    }

    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> io::Result<ByteStream> {
        read_file(self.blob_path(digest), range).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::Algorithm;

    #[tokio::test]
    async fn conforms_and_uses_the_registry2_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        crate::tests::conformance(&store).await;
        crate::tests::spool_behaviour(&store, &FsBlobStore::spool_dir(dir.path())).await;
        let digest = Digest::of(Algorithm::Sha256, b"hello world");
        let hex = digest.hex();
        let on_disk = dir.path().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
        assert_eq!(std::fs::read(on_disk).unwrap(), b"hello world");
    }
}
