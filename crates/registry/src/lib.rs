//! The registry service: the rules of the distribution spec, independent of HTTP.
//!
//! It turns requests phrased in protocol types into blob-store and metadata-store
//! operations in the order that keeps the store consistent: bytes are durable and
//! verified before any metadata points at them.

mod cache;
mod error;
mod listing;
mod manifests;
mod uploads;

pub use cache::ManifestEntry;
pub use error::{RegistryError, Result};
pub use listing::Page;
pub use manifests::{ManifestPut, Referrers};
pub use uploads::{ChunkRange, UploadState};

use berth_metadata::MetadataStore;
use berth_proto::{Digest, ErrorCode, RepositoryName};
use berth_storage::{BlobStore, ByteRange, ByteStream, Spool};
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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delete_enabled: false,
            max_manifest_size: 4 * 1024 * 1024,
            upload_idle_timeout: Duration::from_secs(168 * 3600),
        }
    }
}

pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    spool: Spool,
    meta: MetadataStore,
    settings: Settings,
    sessions: uploads::Sessions,
    caches: cache::Caches,
}

impl Registry {
    pub fn new(blobs: Arc<dyn BlobStore>, spool: Spool, meta: MetadataStore, settings: Settings) -> Registry {
        Registry {
            blobs,
            spool,
            meta,
            settings,
            sessions: uploads::Sessions::default(),
            caches: cache::Caches::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn require_delete(&self) -> Result<()> {
        if self.settings.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::new(ErrorCode::Unsupported, "deletion is disabled (storage.delete.enabled)"))
        }
    }

    /// Size of a blob the repository may serve (`HEAD`), from metadata alone.
    pub async fn blob_size(&self, repo: &RepositoryName, digest: &Digest) -> Result<u64> {
        let key = cache::key(repo.as_str(), digest.as_str());
        if let Some(size) = self.caches.blob(&key) {
            return Ok(size);
        }
        let generation = self.caches.generation();
        let size =
            self.meta.linked_blob(repo.as_str(), digest).await?.ok_or_else(|| RegistryError::blob_unknown(digest))?;
        self.caches.fill_blob(generation, key, size);
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

    /// Removes a blob from a repository. Its bytes stay for other repositories and for
    /// garbage collection to judge.
    pub async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> {
        self.require_delete()?;
        if self.meta.unlink_blob(repo.as_str(), digest).await? {
            self.caches.blob_unlinked(&cache::key(repo.as_str(), digest.as_str()));
            Ok(())
        } else {
            Err(RegistryError::blob_unknown(digest))
        }
    }

    /// Cross-repository mount: links a blob into `repo` when it is readable from `from`
    /// (or, without `from`, anywhere in the registry). False means "upload it instead".
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
    ) -> Result<bool> {
        if let Some(from) = from {
            if self.meta.linked_blob(from.as_str(), digest).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(self.meta.mount_blob(repo.as_str(), digest).await?)
    }
}
