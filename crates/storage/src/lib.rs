//! Content-addressed blob storage and the upload sessions that fill it.
//!
//! [`BlobStore`] is the narrow interface through which upload sessions take their chunks,
//! verified uploads are published and blobs are read; it knows no repositories or registry
//! rules. [`FsBlobStore`] implements it on a local (or shared) filesystem, with a spool file
//! per session; [`ObjectBlobStore`] on Apache OpenDAL's services (S3, GCS, Azure Blob), with
//! a part object per chunk. Both keep blobs under registry:2's keys.

mod fs;
mod lane;
mod local;
mod object;
mod spool;
mod swift;
mod tail;

pub use fs::FsBlobStore;
pub use object::{AzureSettings, GcsSettings, ObjectBlobStore, S3Settings, SwiftSettings, MIN_PART_SIZE};
use spool::SpoolLock;
pub use swift::{Name, SwiftLogin};

pub use berth_proto::ByteRange;
use berth_proto::{Algorithm, Digest, Hasher};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::io;
use std::time::SystemTime;

/// A stream of body bytes. Errors from the client side (a dropped connection, a body
/// that ends early) arrive as `Err` items.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// The result of appending a chunk to an upload session.
pub struct Appended {
    /// Offset after the chunk: everything before it is durable in the store.
    pub offset: u64,
    /// The hash state over bytes `0..offset`.
    pub hasher: Hasher,
    /// The name of the part that holds the chunk, where the backend stores each chunk as
    /// a part of its own (object stores); the session records it with its offset.
    pub part: Option<String>,
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

/// An upload session as its database row records it: what the store needs to finish,
/// rehash or continue it on any instance.
#[derive(Debug, Clone, Copy)]
pub struct Staged<'a> {
    pub id: &'a str,
    /// Durable bytes of the session.
    pub size: u64,
    /// The parts that hold them, in order (see [`Appended::part`]).
    pub parts: &'a [String],
}

/// A session held by one request (see [`BlobStore::lock_upload`]) until dropped.
pub struct UploadLock {
    id: String,
    spool: Option<SpoolLock>,
}

impl UploadLock {
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Where upload sessions stage their bytes, where verified uploads are published and
/// where blobs are read from.
///
/// A session's bytes live in the store (a spool file beside the blobs on a filesystem,
/// part objects under `berth/uploads/<id>/` in an object store) and its hash state in its
/// database row, so any instance sharing the store continues any session.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Makes the (empty) staging place of a new session.
    async fn create_upload(&self, id: &str) -> io::Result<()>;

    /// Holds a session, as its row was last read, for one request; `None` when its
    /// staged bytes are gone (a crash took them, or the row records bytes in a place this
    /// store does not keep them), which makes the session unknown.
    async fn lock_upload(&self, upload: Staged<'_>) -> io::Result<Option<UploadLock>>;

    /// Streams `body` into the session after its first `offset` bytes, hashing as it
    /// goes, and makes the new bytes durable before returning. On any error the session
    /// is as it was. `max_len` caps the chunk.
    async fn append(
        &self,
        upload: &UploadLock,
        offset: u64,
        hasher: Hasher,
        body: ByteStream,
        max_len: Option<u64>,
    ) -> Result<Appended, AppendError>;

    /// Drops a chunk that was appended but will not be recorded (it lost a race, or
    /// fell short of its declared length).
    async fn drop_chunk(&self, upload: &UploadLock, chunk: &Appended) -> io::Result<()>;

    /// Rebuilds the hash state of a session's bytes (a session of the other algorithm).
    async fn rehash(&self, upload: Staged<'_>, algorithm: Algorithm) -> io::Result<Hasher>;

    /// Publishes a verified session at the blob's content address and removes its staged
    /// bytes. Atomic: the blob is either absent or complete and durable. Publishing an
    /// existing digest just drops the session's bytes (same bytes).
    async fn complete(&self, upload: Staged<'_>, digest: &Digest) -> io::Result<()>;

    /// Removes a session's staged bytes; a missing one is not an error.
    async fn abort(&self, id: &str) -> io::Result<()>;

    /// The sessions that have staged bytes here (and staged objects that belong to no
    /// session, which have ids too), each with the time it was last written: for finding
    /// crash leftovers.
    async fn staged_uploads(&self) -> io::Result<Vec<(String, SystemTime)>>;

    /// Whether a session's staging place exists. Object stores need none (a session with
    /// no bytes has no parts), so there every session has one.
    async fn has_staging(&self, id: &str) -> io::Result<bool>;

    /// Stores a small object (a manifest) at its content address, durably and atomically.
    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()>;

    /// Deletes a blob (garbage collection, once nothing references it); a missing one is
    /// not an error.
    async fn delete(&self, digest: &Digest) -> io::Result<()>;

    /// Every blob in the store with its size, in no particular order; object stores may
    /// list stale. For finding objects a crash left unrecorded: a listing only ever
    /// nominates them, the metadata decides.
    fn list_blobs(&self) -> BoxStream<'static, io::Result<(Digest, u64)>>;

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
    format!("{BLOBS}{}/{}/{hex}/data", digest.algorithm().name(), &hex[..2])
}

/// The digest a blob key (relative to the store's root) is the address of.
pub fn digest_of_key(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix(BLOBS)?.strip_suffix("/data")?;
    let mut parts = rest.split('/');
    let (alg, prefix, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !hex.starts_with(prefix) || prefix.len() != 2 {
        return None;
    }
    format!("{alg}:{hex}").parse().ok()
}

/// Where blobs live, relative to the store's root.
pub(crate) const BLOBS: &str = "docker/registry/v2/blobs/";

/// The behaviour every backend must show, run against each of them.
#[cfg(test)]
mod tests {
    use super::*;
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

    async fn append(store: &dyn BlobStore, lock: &UploadLock, at: &Appended, parts: &[&'static [u8]]) -> Appended {
        store.append(lock, at.offset, at.hasher.clone(), body(parts.to_vec()), None).await.unwrap()
    }

    fn start() -> Appended {
        Appended { offset: 0, hasher: Hasher::new(Algorithm::Sha256), part: None }
    }

    /// Records a chunk the way a session's row does.
    fn record(parts: &mut Vec<String>, chunk: &Appended) {
        parts.extend(chunk.part.clone());
    }

    /// The behaviour every backend shows through the seam alone.
    pub(crate) async fn conformance(store: &dyn BlobStore) {
        // Session ids are UUIDs, as the registry makes them.
        let ids: Vec<String> = (0..6).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let [_, i1, i2, i3, i4, i5] = [0, 1, 2, 3, 4, 5].map(|i| ids[i].as_str());
        // Chunked appends with a carried hash state, completion, reads by range.
        store.create_upload(i1).await.unwrap();
        let u1 = store.lock_upload(fresh(i1)).await.unwrap().expect("a new session has its staging");
        let mut parts = Vec::new();
        let a = append(store, &u1, &start(), &[b"hello ", b"wor"]).await;
        assert_eq!(a.offset, 9);
        record(&mut parts, &a);
        let empty = append(store, &u1, &a, &[]).await;
        assert_eq!(empty.offset, 9, "an empty chunk adds nothing");
        assert!(empty.part.is_none(), "an empty chunk has no part");
        let b = store.append(&u1, 9, a.hasher, body(vec![b"ld"]), Some(2)).await.unwrap();
        record(&mut parts, &b);
        let digest = b.hasher.finish();
        assert_eq!(digest, Digest::of(Algorithm::Sha256, b"hello world"));
        let staged = Staged { id: i1, size: 11, parts: &parts };
        let sha512 = store.rehash(staged, Algorithm::Sha512).await.unwrap().finish();
        assert_eq!(sha512, Digest::of(Algorithm::Sha512, b"hello world"), "rehashed from the staged bytes");
        assert_eq!(store.stat(&digest).await.unwrap(), None);
        store.complete(staged, &digest).await.unwrap();
        drop(u1);
        assert_eq!(store.stat(&digest).await.unwrap(), Some(11));
        let part = store.read(&digest, Some(ByteRange { start: 6, end: 9 })).await.unwrap();
        assert_eq!(collect(part).await, b"worl");
        assert_eq!(collect(store.read(&digest, None).await.unwrap()).await, b"hello world");
        assert!(!staged_ids(store).await.iter().any(|id| id == i1), "a completed session's bytes are gone");

        // A failed or over-long chunk leaves the session as it was; a dropped chunk is
        // not part of it.
        store.create_upload(i2).await.unwrap();
        let u2 = store.lock_upload(fresh(i2)).await.unwrap().unwrap();
        let a = append(store, &u2, &start(), &[b"abc"]).await;
        let mut parts = Vec::new();
        record(&mut parts, &a);
        let broken: ByteStream = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"def")),
            Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "client went away")),
        ])
        .boxed();
        let err = store.append(&u2, 3, a.hasher.clone(), broken, None).await.err().unwrap();
        assert!(matches!(err, AppendError::Body(_)));
        let too_long = store.append(&u2, 3, a.hasher.clone(), body(vec![b"defg"]), Some(3)).await.err().unwrap();
        assert!(matches!(too_long, AppendError::TooLong));
        let lost = append(store, &u2, &a, &[b"LOST"]).await;
        store.drop_chunk(&u2, &lost).await.unwrap();
        let abc = Digest::of(Algorithm::Sha256, b"abc");
        store.complete(Staged { id: i2, size: 3, parts: &parts }, &abc).await.unwrap();
        assert_eq!(collect(store.read(&abc, None).await.unwrap()).await, b"abc");

        // Completing a known digest keeps the blob and drops the session's bytes.
        store.create_upload(i3).await.unwrap();
        let u3 = store.lock_upload(fresh(i3)).await.unwrap().unwrap();
        let a = append(store, &u3, &start(), &[b"abc"]).await;
        let parts: Vec<String> = a.part.into_iter().collect();
        store.complete(Staged { id: i3, size: 3, parts: &parts }, &abc).await.unwrap();
        assert_eq!(store.stat(&abc).await.unwrap(), Some(3));
        assert!(!staged_ids(store).await.iter().any(|id| id == i3));

        // An empty blob; small objects; aborted sessions.
        store.create_upload(i5).await.unwrap();
        let nothing = Digest::of(Algorithm::Sha256, b"");
        store.complete(Staged { id: i5, size: 0, parts: &[] }, &nothing).await.unwrap();
        assert_eq!(store.stat(&nothing).await.unwrap(), Some(0));
        let m = Digest::of(Algorithm::Sha256, b"{}");
        store.put_bytes(&m, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(collect(store.read(&m, None).await.unwrap()).await, b"{}");
        store.create_upload(i4).await.unwrap();
        let u4 = store.lock_upload(fresh(i4)).await.unwrap().unwrap();
        append(store, &u4, &start(), &[b"abandoned"]).await;
        assert!(staged_ids(store).await.iter().any(|id| id == i4), "a session with bytes is listed");
        store.abort(i4).await.unwrap();
        store.abort(i4).await.unwrap();
        assert!(!staged_ids(store).await.iter().any(|id| id == i4));

        // The listing has every blob with its size.
        let listed: Vec<(Digest, u64)> = store.list_blobs().map(|r| r.unwrap()).collect().await;
        for (d, size) in [(&digest, 11), (&abc, 3), (&nothing, 0), (&m, 2)] {
            assert!(listed.contains(&(d.clone(), size)), "{d} listed with size {size} in {listed:?}");
        }

        // Deleted blobs are gone, others stay; deleting a missing one is no error.
        store.delete(&abc).await.unwrap();
        assert_eq!(store.stat(&abc).await.unwrap(), None);
        store.delete(&abc).await.unwrap();
        assert_eq!(store.stat(&digest).await.unwrap(), Some(11));
        let listed: Vec<(Digest, u64)> = store.list_blobs().map(|r| r.unwrap()).collect().await;
        assert!(!listed.iter().any(|(d, _)| d == &abc), "a deleted blob is not listed");
    }

    #[test]
    fn blob_keys_name_their_digest() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        assert_eq!(digest_of_key(&blob_key(&d)), Some(d.clone()));
        let key = blob_key(&d);
        for bad in [key.replace("/data", "/link"), key.replace("blobs/sha256/", "blobs/sha256/zz/"), "data".into()] {
            assert_eq!(digest_of_key(&bad), None, "{bad}");
        }
    }

    fn fresh(id: &str) -> Staged<'_> {
        Staged { id, size: 0, parts: &[] }
    }

    async fn staged_ids(store: &dyn BlobStore) -> Vec<String> {
        store.staged_uploads().await.unwrap().into_iter().map(|(id, _)| id).collect()
    }

    /// What the filesystem's spools add: a lock that holds across processes, leftovers
    /// cut at the recorded size, a session whose spool is gone is unknown.
    pub(crate) async fn spool_behaviour(store: &FsBlobStore, spool_dir: &std::path::Path) {
        assert!(store.lock_upload(fresh("s1")).await.unwrap().is_none(), "no spool, nothing to lock");
        store.create_upload("s1").await.unwrap();
        let s1 = store.lock_upload(fresh("s1")).await.unwrap().unwrap();
        let other = std::fs::File::open(spool_dir.join("s1")).unwrap();
        assert!(matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
        let a = append(store, &s1, &start(), &[b"pqr"]).await;
        assert_eq!(std::fs::read(spool_dir.join("s1")).unwrap(), b"pqr");
        std::fs::write(spool_dir.join("s1"), b"pqrLEFTOVER").unwrap();
        let pqr = a.hasher.finish();
        store.complete(Staged { id: "s1", size: 3, parts: &[] }, &pqr).await.unwrap();
        assert_eq!(collect(store.read(&pqr, None).await.unwrap()).await, b"pqr", "cut at the recorded size");
        assert!(!spool_dir.join("s1").exists(), "published spools are removed");
        assert!(!store.has_staging("s1").await.unwrap());
    }
}
