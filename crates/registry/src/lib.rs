//! The registry service: the rules of the distribution spec, independent of HTTP.
//!
//! It turns requests phrased in protocol types into blob-store and metadata-store
//! operations in the order that keeps the store consistent: bytes are durable and
//! verified before any metadata points at them.

mod cache;
mod error;
mod gc;
mod listing;
mod maintenance;
mod manifests;
mod uploads;

/// Who is acting: passed to every write, so that audit (and later quotas and webhooks)
/// know without new plumbing.
pub use berth_metadata::{Actor, NameRange};
pub use cache::ManifestEntry;
pub use error::{RegistryError, Result};
pub use gc::{GcOptions, GcReport};
pub use listing::Page;
pub use maintenance::Reconciled;
pub use manifests::{ManifestPut, Referrers};
pub use uploads::UploadState;

use berth_metadata::MetadataStore;
use berth_proto::{Digest, ErrorCode, RepositoryName};
use berth_storage::{BlobStore, ByteRange, ByteStream};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Registry rules that come from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether `DELETE` of blobs and manifests is allowed (`storage.delete.enabled`).
    pub delete_enabled: bool,
    /// The largest manifest accepted, in bytes.
    pub max_manifest_size: usize,
    /// Upload sessions idle for longer than this are purged.
    pub upload_idle_timeout: Duration,
    /// Every write answers 405 (`storage.maintenance.readonly.enabled`).
    pub read_only: bool,
    /// The largest blob accepted, in bytes; `None` for no limit.
    pub max_blob_size: Option<u64>,
    /// Open upload sessions allowed in one repository, and in the whole registry.
    pub max_sessions_per_repository: u64,
    pub max_sessions: u64,
    /// How old a spool without a session (or a session without a spool) must be before
    /// it counts as a crash leftover: younger ones may belong to a request in flight.
    pub orphan_grace: Duration,
    /// How long garbage collection leaves an unreferenced link, or an unrecorded object
    /// found in storage (`berth.gc.grace`).
    pub gc_grace: Duration,
    /// How long a writer may hold a digest before collection treats the hold as
    /// abandoned (`berth.gc.holdlease`).
    pub gc_hold_lease: Duration,
    /// Namespaces whose untagged manifests are collected, each after its grace period
    /// (`berth.gc.untagged`; `""` is every repository). Elsewhere they are kept.
    pub gc_untagged: Vec<(String, Duration)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delete_enabled: false,
            max_manifest_size: 4 * 1024 * 1024,
            upload_idle_timeout: Duration::from_secs(168 * 3600),
            read_only: false,
            max_blob_size: None,
            max_sessions_per_repository: 1_000,
            max_sessions: 10_000,
            orphan_grace: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(24 * 3600),
            gc_hold_lease: Duration::from_secs(3600),
            gc_untagged: Vec::new(),
        }
    }
}

pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    meta: MetadataStore,
    settings: Settings,
    sessions: uploads::Sessions,
    caches: Arc<cache::Caches>,
}

impl Registry {
    pub fn new(blobs: Arc<dyn BlobStore>, meta: MetadataStore, settings: Settings) -> Registry {
        Registry {
            blobs,
            settings,
            sessions: uploads::Sessions::default(),
            caches: Arc::new(cache::Caches::new(meta.is_exclusive())),
            meta,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The metadata store (for maintenance tools and the protocol's tests).
    pub fn metadata(&self) -> &MetadataStore {
        &self.meta
    }

    /// The blob store (for maintenance tools and the protocol's tests).
    pub fn blob_store(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    /// Runs a metadata write to `repo` to completion even if the request that started it
    /// is dropped, then outdates the repository's cached reads: both happen before the
    /// caller can acknowledge the write, and no cancellation can separate them.
    async fn write<T: Send + 'static>(
        &self,
        repo: &RepositoryName,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let caches = self.caches.clone();
        let repo = repo.as_str().to_owned();
        tokio::spawn(async move {
            let out = work.await;
            caches.changed(&repo);
            out
        })
        .await
        .map_err(|e| RegistryError::internal("metadata write", &e))
    }

    /// Refuses writes in read-only mode, with registry:2's answer.
    fn require_writable(&self) -> Result<()> {
        if self.settings.read_only {
            Err(RegistryError::new(
                ErrorCode::Unsupported,
                "the registry is in read-only mode (storage.maintenance.readonly)",
            ))
        } else {
            Ok(())
        }
    }

    fn require_delete(&self) -> Result<()> {
        self.require_writable()?;
        if self.settings.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::new(ErrorCode::Unsupported, "deletion is disabled (storage.delete.enabled)"))
        }
    }

    /// Size of a blob the repository may serve (`HEAD`), from metadata alone.
    pub async fn blob_size(&self, repo: &RepositoryName, digest: &Digest) -> Result<u64> {
        let key = cache::key(repo.as_str(), digest.as_str());
        if let Some(size) = self.caches.blobs.get(&self.caches, repo.as_str(), &key) {
            return Ok(size);
        }
        let ticket = self.caches.ticket(repo.as_str());
        let size =
            self.meta.linked_blob(repo.as_str(), digest).await?.ok_or_else(|| RegistryError::blob_unknown(digest))?;
        self.caches.blobs.fill(ticket, key, size);
        Ok(size)
    }

    /// Opens a blob, or a range of it, for streaming.
    pub async fn read_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        self.blob_size(repo, digest).await?;
        match self.blobs.read(digest, range).await {
            Ok(stream) => Ok(stream),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(%digest, "blob is recorded in metadata but missing from storage");
                Err(RegistryError::blob_unknown(digest))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Where the client may download a blob from itself (a presigned object-store URL),
    /// if the store offers that; the blob must be in the repository.
    pub async fn blob_redirect(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<String>> {
        self.blob_size(repo, digest).await?;
        Ok(self.blobs.redirect_url(digest).await?)
    }

    /// Removes a blob from a repository. Its bytes stay for other repositories and for
    /// garbage collection to judge.
    pub async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest, actor: &Actor) -> Result<()> {
        self.require_delete()?;
        let (meta, name, d, actor) = (self.meta.clone(), repo.clone(), digest.clone(), actor.clone());
        if self.write(repo, async move { meta.unlink_blob(name.as_str(), &d, &actor).await }).await?? {
            Ok(())
        } else {
            Err(RegistryError::blob_unknown(digest))
        }
    }

    /// Some repositories that hold a blob (the first hundred by name): where a mount
    /// without `from` may take it from, once the caller's access is checked.
    pub async fn repositories_holding(&self, digest: &Digest) -> Result<Vec<RepositoryName>> {
        let names = self.meta.repositories_holding(digest, 100).await?;
        Ok(names.iter().filter_map(|n| RepositoryName::parse(n)).collect())
    }

    /// Cross-repository mount: links a blob into `repo` when it is readable from `from`
    /// (or, without `from`, anywhere in the registry). False means "upload it instead".
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
    ) -> Result<bool> {
        self.require_writable()?;
        if let Some(from) = from {
            if self.meta.linked_blob(from.as_str(), digest).await?.is_none() {
                return Ok(false);
            }
        }
        let (meta, name, d) = (self.meta.clone(), repo.clone(), digest.clone());
        Ok(self.write(repo, async move { meta.mount_blob(name.as_str(), &d).await }).await??)
    }
}
