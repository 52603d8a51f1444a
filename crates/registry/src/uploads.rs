//! Upload sessions: chunks stream into the blob store's staging (a spool file, or part
//! objects), the digest is verified on completion, and only a durable, verified blob is
//! published and recorded.

use crate::{Registry, RegistryError, Result};
use berth_metadata::Upload;
use berth_proto::{Algorithm, ByteRange, Digest, ErrorCode, Hasher, RepositoryName};
use berth_storage::{AppendError, Appended, ByteStream, Staged, UploadLock};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a client learns of a session: its id and how many bytes it holds.
#[derive(Debug, Clone)]
pub struct UploadState {
    pub id: String,
    pub offset: u64,
}

/// Per-session bookkeeping on this instance.
///
/// `locks` serialises the chunks of one session on this instance (two appends must never
/// write the same spool at once; across instances the database's conditional update of
/// the offset orders them). An entry exists only while a request holds or waits for it, and only
/// for sessions that exist in the database, so unknown ids create no state at all. The
/// hash state of a session is not kept here but in its database row, written with its
/// offset, so any instance (or this one after a restart) continues any session.
#[derive(Default)]
pub(crate) struct Sessions {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a session's lock; the map entry goes when its last holder does.
pub(crate) struct SessionGuard<'a> {
    sessions: &'a Sessions,
    id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.sessions.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.id);
        }
    }
}

impl Sessions {
    pub(crate) async fn lock(&self, id: &str) -> SessionGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(id.to_owned()).or_default().clone()
        };
        SessionGuard { sessions: self, id: id.to_owned(), guard: Some(lock.lock_owned().await) }
    }

    fn tracked_locks(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The hash state saved with a session, if any (and readable).
fn saved_hasher(session: &Upload) -> Option<Hasher> {
    session.hash_state.as_deref().and_then(Hasher::restore)
}

/// What the store needs of a session's row.
fn staged<'a>(id: &'a str, session: &'a Upload) -> Staged<'a> {
    Staged { id, size: session.size, parts: &session.parts }
}

/// Session ids are UUIDs we issued; anything else is unknown without a lookup.
fn valid_id(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok() && id.len() == 36
}

impl Registry {
    /// How many upload sessions this instance keeps state for (locks held or awaited):
    /// bounded by the sessions that exist, whatever clients send.
    pub fn session_state_entries(&self) -> usize {
        self.sessions.tracked_locks()
    }

    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<UploadState> {
        self.require_writable()?;
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.create_upload(&id).await?;
        let s = &self.settings;
        let opened = self.meta.create_upload(&id, repo.as_str(), s.max_sessions_per_repository, s.max_sessions).await;
        if !matches!(opened, Ok(true)) {
            self.blobs.abort(&id).await?;
        }
        if !opened? {
            return Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "too many open upload sessions (at most {} per repository, {} in all): finish or cancel some",
                    s.max_sessions_per_repository, s.max_sessions
                ),
            ));
        }
        Ok(UploadState { id, offset: 0 })
    }

    /// A session that belongs to `repo`.
    async fn session(&self, repo: &RepositoryName, id: &str) -> Result<Upload> {
        if !valid_id(id) {
            return Err(RegistryError::upload_unknown());
        }
        match self.meta.upload(id).await? {
            Some(u) if u.repository == repo.as_str() => Ok(u),
            _ => Err(RegistryError::upload_unknown()),
        }
    }

    /// Locks a session that exists, and returns it as of holding the lock.
    ///
    /// Two locks: the in-process one queues this process's requests cheaply; the store's
    /// (a spool's `flock`) then orders them with other processes sharing the file system,
    /// and the offset is read only once both are held. A session whose spool is gone is
    /// unknown: a power cut can take a spool whose directory entry was not yet durable,
    /// or cut a publish between moving the spool and the commit that closes the session.
    /// The client starts the upload again.
    async fn lock_session(&self, repo: &RepositoryName, id: &str) -> Result<(SessionGuard<'_>, UploadLock, Upload)> {
        let before = self.session(repo, id).await?;
        let guard = self.sessions.lock(id).await;
        let Some(spool) = self.blobs.lock_upload(staged(id, &before)).await? else {
            self.session(repo, id).await?;
            tracing::warn!(session = id, "upload session lost its spool (a crash); it is unknown now");
            self.discard_upload(id).await?;
            return Err(RegistryError::upload_unknown());
        };
        let session = self.session(repo, id).await?;
        Ok((guard, spool, session))
    }

    pub async fn upload_status(&self, repo: &RepositoryName, id: &str) -> Result<UploadState> {
        let offset = self.session(repo, id).await?.size;
        if !self.blobs.has_staging(id).await? {
            // Finishing, or lost: the lock tells which.
            self.lock_session(repo, id).await?;
        }
        Ok(UploadState { id: id.to_owned(), offset })
    }

    /// Appends a chunk (`PATCH`). `len` is the announced body length, if any.
    pub async fn append_chunk(
        &self,
        repo: &RepositoryName,
        id: &str,
        range: Option<ByteRange>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadState> {
        self.require_writable()?;
        let (_guard, lock, session) = self.lock_session(repo, id).await?;
        let appended = self.append_locked(&lock, &session, range, len, body).await?;
        Ok(UploadState { id: id.to_owned(), offset: appended.offset })
    }

    /// Appends a chunk to a locked session and records it.
    async fn append_locked(
        &self,
        lock: &UploadLock,
        session: &Upload,
        range: Option<ByteRange>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<Appended> {
        let offset = session.size;
        let declared = chunk_length(offset, range, len)?;
        let room = self.room_after(offset, declared)?;
        let hasher = self.hasher_at(staged(lock.id(), session), saved_hasher(session), Algorithm::Sha256).await?;
        let appended = match self.blobs.append(lock, offset, hasher, body, declared.or(room)).await {
            Ok(a) => a,
            Err(AppendError::Body(e)) => {
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("upload body was not received completely: {e}"),
                ))
            }
            Err(AppendError::TooLong) if declared.is_none() => return Err(self.blob_too_large()),
            Err(AppendError::TooLong) => {
                return Err(RegistryError::new(ErrorCode::SizeInvalid, "body is longer than its declared length"))
            }
            Err(AppendError::Storage(e)) => return Err(e.into()),
        };
        let received = appended.offset - offset;
        if let Some(expected) = declared.filter(|&d| received != d) {
            // A declared length the body fell short of: the chunk is not part of the
            // upload.
            self.blobs.drop_chunk(lock, &appended).await?;
            return Err(RegistryError::new(
                ErrorCode::SizeInvalid,
                format!("declared {expected} bytes, received {received}"),
            ));
        }
        let (hash_state, part) = (appended.hasher.save(), appended.part.as_deref());
        if !self.meta.advance_upload(lock.id(), offset, appended.offset, &hash_state, part).await? {
            self.blobs.drop_chunk(lock, &appended).await?;
            return Err(RegistryError::new(ErrorCode::RangeInvalid, "upload was modified concurrently"));
        }
        Ok(appended)
    }

    /// How many more bytes a session at `offset` may take under the blob size limit;
    /// refuses a chunk whose declared length is already over it, before reading it.
    fn room_after(&self, offset: u64, declared: Option<u64>) -> Result<Option<u64>> {
        let Some(max) = self.settings.max_blob_size else { return Ok(None) };
        let room = max.saturating_sub(offset);
        if declared.is_some_and(|d| d > room) {
            return Err(self.blob_too_large());
        }
        Ok(Some(room))
    }

    fn blob_too_large(&self) -> RegistryError {
        let max = self.settings.max_blob_size.unwrap_or(u64::MAX);
        RegistryError::new(ErrorCode::TooLarge, format!("blob exceeds the limit of {max} bytes"))
    }

    /// The `alg` hash state over a session's bytes: `saved` if it is of that algorithm,
    /// else (a session from before hash states were saved, or a digest of the other
    /// algorithm) rebuilt from the store.
    async fn hasher_at(&self, upload: Staged<'_>, saved: Option<Hasher>, alg: Algorithm) -> Result<Hasher> {
        match saved {
            Some(h) if h.algorithm() == alg => Ok(h),
            _ if upload.size == 0 => Ok(Hasher::new(alg)),
            _ => Ok(self.blobs.rehash(upload, alg).await?),
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
        self.require_writable()?;
        let (_guard, lock, mut session) = self.lock_session(repo, id).await?;
        let saved = match body {
            Some(body) => {
                let appended = self.append_locked(&lock, &session, None, len, body).await?;
                session.size = appended.offset;
                session.parts.extend(appended.part);
                Some(appended.hasher)
            }
            None => saved_hasher(&session),
        };
        let upload = staged(id, &session);
        let actual = self.hasher_at(upload, saved, digest.algorithm()).await?.finish();
        if &actual != digest {
            self.discard_upload(id).await?;
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("uploaded content has digest {actual}, not {digest}"),
            )
            .with_detail(serde_json::json!({ "expected": digest.as_str(), "actual": actual.as_str() })));
        }
        // Held from before the bytes are published until the commit that links them, so
        // collection cannot delete them in between. A refused hold leaves the session as
        // it was: the client's retry of this request completes it.
        if !self.meta.hold_blob(id, digest).await? {
            return Err(RegistryError::collecting(digest));
        }
        if let Err(e) = self.blobs.complete(upload, digest).await {
            self.meta.release_blob(id).await.ok();
            return Err(e.into());
        }
        let offset = session.size;
        let (meta, name, d) = (self.meta.clone(), repo.clone(), digest.clone());
        let owner = id.to_owned();
        let committed = self.write(repo, async move { meta.commit_blob(name.as_str(), &d, offset, &owner).await });
        if !committed.await?? {
            // The hold expired (a publish slower than the hold's lease): the staged bytes
            // are spent and the published ones may be collected, so the session ends.
            self.discard_upload(id).await?;
            return Err(RegistryError::collecting(digest));
        }
        Ok(offset)
    }

    /// Cancels a session (`DELETE`).
    pub async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()> {
        self.require_writable()?;
        let _locked = self.lock_session(repo, id).await?;
        self.discard_upload(id).await
    }

    /// Staged bytes first: they are what a full disk needs back, and a session whose
    /// spool is gone is already unknown if deleting the row then fails.
    pub(crate) async fn discard_upload(&self, id: &str) -> Result<()> {
        self.blobs.abort(id).await?;
        self.meta.delete_upload(id).await?;
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
        self.require_writable()?;
        self.room_after(0, len)?;
        let session = self.start_upload(repo).await?;
        let result = self.finish_upload(repo, &session.id, digest, len, Some(body)).await;
        if result.is_err() {
            self.discard_upload(&session.id).await.ok();
        }
        result
    }
}

/// Checks a chunk's `Content-Range` against the session and returns the chunk's length
/// when the request pins it down.
fn chunk_length(offset: u64, range: Option<ByteRange>, len: Option<u64>) -> Result<Option<u64>> {
    let Some(range) = range else { return Ok(len) };
    if range.start != offset {
        return Err(RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("chunk starts at {} but the upload holds {offset} bytes", range.start),
        ));
    }
    let range_len = range.length();
    match len {
        Some(l) if l != range_len => Err(RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("Content-Range covers {range_len} bytes but Content-Length is {l}"),
        )),
        _ => Ok(Some(range_len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn session_locks_live_only_while_held() {
        let s = Sessions::default();
        {
            let _a = s.lock("a").await;
            let _b = s.lock("b").await;
            assert_eq!(s.tracked_locks(), 2);
        }
        assert_eq!(s.tracked_locks(), 0);
    }

    #[test]
    fn chunk_ranges_with_extreme_values_do_not_overflow() {
        let whole = ByteRange { start: 0, end: u64::MAX };
        assert_eq!(chunk_length(0, Some(whole), None).unwrap(), Some(u64::MAX));
        assert!(chunk_length(0, Some(whole), Some(5)).is_err());
        assert!(chunk_length(5, Some(ByteRange { start: 4, end: 9 }), None).is_err());
        assert_eq!(chunk_length(7, None, Some(3)).unwrap(), Some(3));
    }
}
