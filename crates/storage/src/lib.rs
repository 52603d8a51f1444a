//! Content-addressed blob storage and upload spools.
//!
//! [`Spool`] holds upload sessions' bytes on local disk while they arrive; [`BlobStore`]
//! is the narrow interface through which verified uploads are published and blobs read.
//! Neither knows repositories or registry rules. [`FsBlobStore`] implements it on a
//! local (or shared) filesystem, [`ObjectBlobStore`] on any Apache OpenDAL service (S3,
//! GCS, Azure Blob, Swift, ...); both keep blobs under registry:2's keys.

mod fs;
mod lane;
mod local;
mod object;
mod spool;
mod tail;

pub use fs::FsBlobStore;
pub use object::{AzureSettings, GcsSettings, ObjectBlobStore, S3Settings, MIN_PART_SIZE};
pub use spool::{Spool, SpoolLock};

pub use berth_proto::ByteRange;
use berth_proto::{Digest, Hasher};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::io;

/// A stream of body bytes. Errors from the client side (a dropped connection, a body
/// that ends early) arrive as `Err` items.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// The result of appending a chunk to an upload spool.
pub struct Appended {
    /// Offset after the chunk: everything before it is durable in the spool.
    pub offset: u64,
    /// The hash state over bytes `0..offset`.
    pub hasher: Hasher,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The client's body failed (disconnect, truncated body). Nothing was kept.
    #[error("request body: {0}")]
    Body(io::Error),
    /// The body carried more bytes than the request announced or the limit allows.
    #[error("request body longer than announced")]
    TooLong,
    /// The storage failed. Nothing was kept.
    #[error("storage: {0}")]
    Storage(#[from] io::Error),
}

/// Where verified uploads are published and blobs are read from.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Publishes the first `size` bytes of a verified spool at the blob's content
    /// address and removes the spool. Atomic: the blob is either absent or complete and
    /// durable. Publishing an existing digest just drops the spool (same bytes).
    async fn publish(&self, spool: &Spool, id: &str, digest: &Digest, size: u64) -> io::Result<()>;

    /// Stores a small object (a manifest) at its content address, durably and atomically.
    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()>;

    /// Size of a stored blob, if present.
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Streams a blob, or a range of it.
    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> io::Result<ByteStream>;

    /// A short-lived URL the client may fetch the blob from itself, so that its bytes
    /// bypass the registry; `None` where the backend has none or redirects are off.
    async fn redirect_url(&self, _digest: &Digest) -> io::Result<Option<String>> {
        Ok(None)
    }
}

/// Where a blob lives, relative to the store's root: registry:2's layout, so an existing
/// registry:2 store can be adopted in place.
pub fn blob_key(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("docker/registry/v2/blobs/{}/{}/{hex}/data", digest.algorithm().name(), &hex[..2])
}

/// The behaviour every backend must show, run against each of them.
#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::Algorithm;
    use futures_util::StreamExt;

    fn body(parts: Vec<&'static [u8]>) -> ByteStream {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))).boxed()
    }

    pub(crate) async fn collect(s: ByteStream) -> Vec<u8> {
        s.fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b.unwrap());
            acc
        })
        .await
    }

    pub(crate) async fn conformance(store: &dyn BlobStore, spool: &Spool, spool_dir: &std::path::Path) {
        // Chunked append, resumable hash state, publish, reads with and without a range.
        assert!(spool.lock("u1").await.unwrap().is_none(), "no spool, nothing to lock");
        spool.create("u1").await.unwrap();
        let u1 = spool.lock("u1").await.unwrap().unwrap();
        // Held against every other open of the spool, in this process or another.
        let other = std::fs::File::open(spool_dir.join("u1")).unwrap();
        assert!(matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
        let a =
            spool.append(&u1, 0, Hasher::new(Algorithm::Sha256), body(vec![b"hello ", b"wor"]), None).await.unwrap();
        assert_eq!(a.offset, 9);
        let a = spool.append(&u1, 9, a.hasher, body(vec![b"ld"]), Some(2)).await.unwrap();
        let digest = a.hasher.finish();
        assert_eq!(digest, Digest::of(Algorithm::Sha256, b"hello world"));
        assert_eq!(spool.rehash("u1", 11, Algorithm::Sha256).await.unwrap().finish(), digest);
        assert_eq!(store.stat(&digest).await.unwrap(), None);
        store.publish(spool, "u1", &digest, 11).await.unwrap();
        assert_eq!(store.stat(&digest).await.unwrap(), Some(11));
        assert!(!spool_dir.join("u1").exists(), "published spools are removed");
        let part = store.read(&digest, Some(ByteRange { start: 6, end: 9 })).await.unwrap();
        assert_eq!(collect(part).await, b"worl");
        assert_eq!(collect(store.read(&digest, None).await.unwrap()).await, b"hello world");

        // A failed or over-long chunk leaves the spool as it was.
        spool.create("u2").await.unwrap();
        let u2 = spool.lock("u2").await.unwrap().unwrap();
        let a = spool.append(&u2, 0, Hasher::new(Algorithm::Sha256), body(vec![b"abc"]), None).await.unwrap();
        let broken: ByteStream = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"def")),
            Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "client went away")),
        ])
        .boxed();
        let err = spool.append(&u2, 3, a.hasher.clone(), broken, None).await.err().unwrap();
        assert!(matches!(err, AppendError::Body(_)));
        let too_long = spool.append(&u2, 3, a.hasher, body(vec![b"defg"]), Some(3)).await.err().unwrap();
        assert!(matches!(too_long, AppendError::TooLong));
        assert_eq!(std::fs::read(spool_dir.join("u2")).unwrap(), b"abc");

        // Publishing cuts unacknowledged leftovers; publishing a known digest is a no-op.
        std::fs::write(spool_dir.join("u2"), b"abcLEFTOVER").unwrap();
        let abc = Digest::of(Algorithm::Sha256, b"abc");
        store.publish(spool, "u2", &abc, 3).await.unwrap();
        assert_eq!(collect(store.read(&abc, None).await.unwrap()).await, b"abc");
        spool.create("u3").await.unwrap();
        spool
            .append(
                &spool.lock("u3").await.unwrap().unwrap(),
                0,
                Hasher::new(Algorithm::Sha256),
                body(vec![b"abc"]),
                None,
            )
            .await
            .unwrap();
        store.publish(spool, "u3", &abc, 3).await.unwrap();
        assert_eq!(store.stat(&abc).await.unwrap(), Some(3));

        // Small objects and deletion of spools.
        let m = Digest::of(Algorithm::Sha256, b"{}");
        store.put_bytes(&m, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(collect(store.read(&m, None).await.unwrap()).await, b"{}");
        spool.create("u4").await.unwrap();
        spool.delete("u4").await.unwrap();
        spool.delete("u4").await.unwrap();
        assert!(!spool_dir.join("u4").exists());
    }
}
