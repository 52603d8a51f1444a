//! Manifests: validated on push, stored byte for byte, served from metadata.

use crate::cache::{self, ManifestEntry};
use crate::{Registry, RegistryError, Result};
use berth_metadata::{NewManifest, PutManifestError, StoredManifest};
use berth_proto::{media, Algorithm, Digest, ErrorCode, Manifest, Reference, RepositoryName};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The outcome of a manifest push.
#[derive(Debug)]
pub struct ManifestPut {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// A referrers response: the OCI index body and whether a filter was applied.
pub struct Referrers {
    pub body: Vec<u8>,
    pub filtered: bool,
}

impl Registry {
    /// Validates and stores a manifest under `reference` (a tag, or the digest the bytes
    /// must have).
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<ManifestPut> {
        let manifest =
            Manifest::parse(&bytes, content_type).map_err(|e| RegistryError::new(ErrorCode::ManifestInvalid, e.0))?;
        let digest = match reference {
            Reference::Digest(claimed) => {
                let actual = Digest::of(claimed.algorithm(), &bytes);
                if &actual != claimed {
                    return Err(RegistryError::new(
                        ErrorCode::DigestInvalid,
                        format!("manifest has digest {actual}, not {claimed}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &bytes),
        };
        // The bytes go to the blob store too, so the data directory alone holds every
        // manifest (registry:2 keeps them there) and metadata can be rebuilt from it.
        if self.blobs.stat(&digest).await?.is_none() {
            self.blobs.put_bytes(&digest, bytes.clone()).await?;
        }
        let annotations = manifest.annotations.as_ref().map(|a| Value::Object(a.clone()).to_string());
        let record = NewManifest {
            digest: &digest,
            media_type: &manifest.media_type,
            artifact_type: manifest.artifact_type.as_deref(),
            subject: manifest.subject.as_ref().map(|s| &s.digest),
            annotations,
            content: &bytes,
            blobs: manifest.blobs.iter().map(|d| &d.digest).collect(),
            children: manifest.children.iter().map(|d| &d.digest).collect(),
        };
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        match self.meta.put_manifest(repo.as_str(), &record, tag).await {
            Ok(()) => Ok(ManifestPut { subject: manifest.subject.map(|s| s.digest), digest }),
            Err(PutManifestError::Missing(target)) => Err(RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("manifest references {target}, which is not in repository {repo}"),
            )
            .with_detail(json!({ "digest": target }))),
            Err(PutManifestError::Db(e)) => Err(e.into()),
        }
    }

    /// A manifest by tag or digest, from the caches when they have it.
    pub async fn get_manifest(&self, repo: &RepositoryName, reference: &Reference) -> Result<Arc<ManifestEntry>> {
        let digest_key = match reference {
            Reference::Digest(d) => Some(cache::key(repo.as_str(), d.as_str())),
            Reference::Tag(t) => {
                self.caches.tag(&cache::key(repo.as_str(), t.as_str())).map(|d| cache::key(repo.as_str(), &d))
            }
        };
        if let Some(m) = digest_key.and_then(|k| self.caches.manifest(&k)) {
            return Ok(m);
        }
        let generation = self.caches.generation();
        let found = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo.as_str(), t.as_str()).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo.as_str(), d).await?,
        };
        let Some(StoredManifest { digest, media_type, content }) = found else {
            return Err(self.manifest_unknown(repo, reference).await);
        };
        let m = Arc::new(ManifestEntry { digest, media_type, content: content.into() });
        if let Reference::Tag(t) = reference {
            self.caches.fill_tag(generation, cache::key(repo.as_str(), t.as_str()), m.digest.clone());
        }
        self.caches.fill_manifest(generation, cache::key(repo.as_str(), &m.digest), m.clone());
        Ok(m)
    }

    async fn manifest_unknown(&self, repo: &RepositoryName, reference: &Reference) -> RegistryError {
        match self.meta.repository_id(repo.as_str()).await {
            Ok(None) => RegistryError::new(ErrorCode::NameUnknown, format!("repository {repo} is not known")),
            _ => RegistryError::new(ErrorCode::ManifestUnknown, format!("manifest {reference} is not in {repo}")),
        }
    }

    /// Deletes a manifest by digest (with its tags), or only a tag.
    pub async fn delete_manifest(&self, repo: &RepositoryName, reference: &Reference) -> Result<()> {
        self.require_delete()?;
        let deleted = match reference {
            Reference::Tag(t) => {
                let deleted = self.meta.delete_tag(repo.as_str(), t.as_str()).await?;
                self.caches.tag_changed(&cache::key(repo.as_str(), t.as_str()));
                deleted
            }
            Reference::Digest(d) => {
                let deleted = self.meta.delete_manifest(repo.as_str(), d).await?;
                self.caches.manifest_deleted(&cache::key(repo.as_str(), d.as_str()));
                deleted
            }
        };
        if deleted {
            Ok(())
        } else {
            Err(self.manifest_unknown(repo, reference).await)
        }
    }

    /// The referrers of `subject` as an OCI image index.
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers> {
        let rows = self.meta.referrers(repo.as_str(), subject, artifact_type).await?;
        let manifests: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                let mut d = Map::new();
                d.insert("mediaType".into(), r.media_type.into());
                d.insert("digest".into(), r.digest.into());
                d.insert("size".into(), r.size.into());
                if let Some(t) = r.artifact_type {
                    d.insert("artifactType".into(), t.into());
                }
                if let Some(a) = r.annotations.and_then(|a| serde_json::from_str::<Value>(&a).ok()) {
                    d.insert("annotations".into(), a);
                }
                Value::Object(d)
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
        Ok(Referrers { body: index.to_string().into_bytes(), filtered: artifact_type.is_some() })
    }
}
