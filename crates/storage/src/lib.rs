//! Content-addressed blob storage and upload spools.
//!
//! [`BlobStore`] is the narrow interface the registry service uses; it knows digests and
//! upload ids, never repositories or registry rules. [`FsBlobStore`] implements it on a
//! local (or shared) filesystem with the registry:2 layout. Object-store backends
//! implement the same trait.

mod fs;

pub use fs::FsBlobStore;

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

/// A byte range of a blob, both ends inclusive as in HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Creates an empty spool for a new upload session.
    async fn create_upload(&self, id: &str) -> io::Result<()>;

    /// Streams `body` into the spool at `offset`, hashing as it goes, and makes the new
    /// bytes durable before returning. On any error the spool is cut back to `offset`,
    /// so the session is exactly as it was before the call. `max_len` caps the chunk.
    async fn append(
        &self,
        id: &str,
        offset: u64,
        hasher: Hasher,
        body: ByteStream,
        max_len: Option<u64>,
    ) -> Result<Appended, AppendError>;

    /// Rebuilds the hash state of the first `len` spool bytes (after a restart, or when
    /// another instance received the earlier chunks).
    async fn rehash(&self, id: &str, len: u64, algorithm: berth_proto::Algorithm) -> io::Result<Hasher>;

    /// Publishes the first `size` bytes of a verified spool at the blob's content
    /// address. Atomic: the blob is either absent or complete and durable. Publishing an
    /// existing digest just drops the spool (same bytes).
    async fn publish(&self, id: &str, digest: &Digest, size: u64) -> io::Result<()>;

    /// Stores a small object (a manifest) at its content address, durably and atomically.
    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()>;

    /// Removes an upload spool; missing spools are not an error.
    async fn delete_upload(&self, id: &str) -> io::Result<()>;

    /// Size of a stored blob, if present.
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Streams a blob, or a range of it.
    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> io::Result<ByteStream>;
}
