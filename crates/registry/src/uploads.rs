//! Upload sessions: chunks stream into a spool, the digest is verified on completion,
//! and only a durable, verified blob is published and recorded.

use crate::{Registry, RegistryError, Result};
use berth_proto::{Algorithm, Digest, ErrorCode, Hasher, RepositoryName};
use berth_storage::{AppendError, ByteStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a client learns of a session: its id and how many bytes it holds.
#[derive(Debug, Clone)]
pub struct UploadState {
    pub id: String,
    pub offset: u64,
}

/// The `Content-Range` of a chunk: where it must start and, if given, where it ends.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRange {
    pub start: u64,
    pub end: Option<u64>,
}

/// The SHA-256 state of a session as this instance last left it. It saves re-reading the
/// spool on every chunk; when it is missing or stale (restart, another instance took a
/// chunk) the state is rebuilt from the spool, which is the source of truth.
#[derive(Default)]
struct Cached {
    offset: u64,
    hasher: Option<Hasher>,
}

type Slot = Arc<tokio::sync::Mutex<Cached>>;

/// Per-session locks: chunks of one session are applied one at a time on this instance.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Slot>>);

impl Sessions {
    fn slot(&self, id: &str) -> Slot {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Session ids are UUIDs we issued; anything else is unknown without a lookup.
fn valid_id(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok() && id.len() == 36
}

impl Registry {
    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<UploadState> {
        let id = uuid::Uuid::new_v4().to_string();
        self.spool.create(&id).await?;
        self.meta.create_upload(&id, repo.as_str()).await?;
        Ok(UploadState { id, offset: 0 })
    }

    /// The durable offset of a session that belongs to `repo`.
    async fn session_offset(&self, repo: &RepositoryName, id: &str) -> Result<u64> {
        if !valid_id(id) {
            return Err(RegistryError::upload_unknown());
        }
        match self.meta.upload(id).await? {
            Some(u) if u.repository == repo.as_str() => Ok(u.size),
            _ => Err(RegistryError::upload_unknown()),
        }
    }

    pub async fn upload_status(&self, repo: &RepositoryName, id: &str) -> Result<UploadState> {
        let offset = self.session_offset(repo, id).await?;
        Ok(UploadState { id: id.to_owned(), offset })
    }

    /// Appends a chunk (`PATCH`). `len` is the announced body length, if any.
    pub async fn append_chunk(
        &self,
        repo: &RepositoryName,
        id: &str,
        range: Option<ChunkRange>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadState> {
        let slot = self.sessions.slot(id);
        let mut cached = slot.lock().await;
        let offset = self.session_offset(repo, id).await?;
        let offset = self.append_locked(id, offset, &mut cached, range, len, body).await?;
        Ok(UploadState { id: id.to_owned(), offset })
    }

    async fn append_locked(
        &self,
        id: &str,
        offset: u64,
        cached: &mut Cached,
        range: Option<ChunkRange>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let max_len = chunk_length(offset, range, len)?;
        let hasher = self.hasher_at(id, offset, cached, Algorithm::Sha256).await?;
        let appended = match self.spool.append(id, offset, hasher, body, max_len).await {
            Ok(a) => a,
            Err(AppendError::Body(e)) => {
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("upload body was not received completely: {e}"),
                ))
            }
            Err(AppendError::TooLong) => {
                return Err(RegistryError::new(ErrorCode::SizeInvalid, "body is longer than its declared length"))
            }
            Err(AppendError::Storage(e)) => return Err(e.into()),
        };
        if let Some(expected) = max_len.filter(|&m| appended.offset - offset != m) {
            // A declared length the body fell short of: the chunk is not part of the
            // upload. The bytes past `offset` are cut by the next append or publish.
            return Err(RegistryError::new(
                ErrorCode::SizeInvalid,
                format!("declared {expected} bytes, received {}", appended.offset - offset),
            ));
        }
        if !self.meta.advance_upload(id, offset, appended.offset).await? {
            cached.hasher = None;
            return Err(RegistryError::new(ErrorCode::RangeInvalid, "upload was modified concurrently"));
        }
        *cached = Cached { offset: appended.offset, hasher: Some(appended.hasher) };
        Ok(appended.offset)
    }

    /// The hash state over the first `offset` bytes of the spool.
    async fn hasher_at(&self, id: &str, offset: u64, cached: &mut Cached, alg: Algorithm) -> Result<Hasher> {
        match cached.hasher.take() {
            Some(h) if cached.offset == offset && h.algorithm() == alg => Ok(h),
            _ => Ok(self.spool.rehash(id, offset, alg).await?),
        }
    }

    /// Completes an upload (`PUT ?digest=`), with an optional last chunk.
    pub async fn finish_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        digest: &Digest,
        len: Option<u64>,
        body: Option<ByteStream>,
    ) -> Result<u64> {
        let slot = self.sessions.slot(id);
        let mut cached = slot.lock().await;
        let mut offset = self.session_offset(repo, id).await?;
        if let Some(body) = body {
            offset = self.append_locked(id, offset, &mut cached, None, len, body).await?;
        }
        let actual = self.hasher_at(id, offset, &mut cached, digest.algorithm()).await?.finish();
        if &actual != digest {
            self.discard_upload(id).await?;
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("uploaded content has digest {actual}, not {digest}"),
            )
            .with_detail(serde_json::json!({ "expected": digest.as_str(), "actual": actual.as_str() })));
        }
        self.blobs.publish(&self.spool, id, digest, offset).await?;
        self.meta.commit_blob(repo.as_str(), digest, offset, Some(id)).await?;
        self.sessions.forget(id);
        Ok(offset)
    }

    /// Cancels a session (`DELETE`).
    pub async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()> {
        let slot = self.sessions.slot(id);
        let _guard = slot.lock().await;
        self.session_offset(repo, id).await?;
        self.discard_upload(id).await
    }

    async fn discard_upload(&self, id: &str) -> Result<()> {
        self.meta.delete_upload(id).await?;
        self.spool.delete(id).await?;
        self.sessions.forget(id);
        Ok(())
    }

    /// A whole blob in one request (`POST ?digest=` or `PUT` without chunks).
    pub async fn upload_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let session = self.start_upload(repo).await?;
        let result = self.finish_upload(repo, &session.id, digest, len, Some(body)).await;
        if result.is_err() {
            self.discard_upload(&session.id).await.ok();
        }
        result
    }

    /// Purges sessions idle for longer than the configured timeout; returns how many.
    pub async fn purge_idle_uploads(&self) -> Result<usize> {
        let cutoff = berth_metadata::now_millis() - self.settings.upload_idle_timeout.as_millis() as i64;
        let ids = self.meta.idle_uploads(cutoff).await?;
        for id in &ids {
            let slot = self.sessions.slot(id);
            let _guard = slot.lock().await;
            self.discard_upload(id).await?;
        }
        Ok(ids.len())
    }
}

/// Checks a chunk's `Content-Range` against the session and returns the chunk's length
/// when the request pins it down.
fn chunk_length(offset: u64, range: Option<ChunkRange>, len: Option<u64>) -> Result<Option<u64>> {
    let Some(range) = range else { return Ok(len) };
    if range.start != offset {
        return Err(RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("chunk starts at {} but the upload holds {offset} bytes", range.start),
        ));
    }
    let range_len = range.end.map(|end| end + 1 - range.start);
    match (range_len, len) {
        (Some(r), Some(l)) if r != l => Err(RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("Content-Range covers {r} bytes but Content-Length is {l}"),
        )),
        (r, l) => Ok(r.or(l)),
    }
}
