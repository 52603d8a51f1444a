//! Manifests: validated on push, stored byte for byte, served from metadata.

use crate::cache::{self, ManifestEntry};
use crate::{Actor, Registry, RegistryError, Result};
use berth_metadata::{DeleteError, NewManifest, PutManifestError, Refusal, StoredManifest};
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

/// A validated manifest, owned, so that its write can outlive the request.
struct Record {
    digest: Digest,
    media_type: String,
    artifact_type: Option<String>,
    subject: Option<Digest>,
    annotations: Option<String>,
    content: Bytes,
    blobs: Vec<Digest>,
    children: Vec<Digest>,
}

impl Record {
    fn view(&self) -> NewManifest<'_> {
        NewManifest {
            digest: &self.digest,
            media_type: &self.media_type,
            artifact_type: self.artifact_type.as_deref(),
            subject: self.subject.as_ref(),
            annotations: self.annotations.clone(),
            content: &self.content,
            blobs: self.blobs.iter().collect(),
            children: self.children.iter().collect(),
        }
    }
}

fn missing(repo: &RepositoryName, target: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestBlobUnknown,
        format!("manifest references {target}, which is not in repository {repo}"),
    )
    .with_detail(json!({ "digest": target }))
}

/// A write an immutability rule forbids: `DENIED`, naming the tag and what it keeps.
fn immutable(repo: &RepositoryName, r: &Refusal) -> RegistryError {
    let what = match r.level {
        berth_metadata::Immutability::Move => "it cannot be moved",
        berth_metadata::Immutability::Delete => "it cannot be moved or deleted",
    };
    RegistryError::new(ErrorCode::Denied, format!("tag {repo}:{} is immutable ({what}): it names {}", r.tag, r.digest))
        .with_detail(json!({ "tag": r.tag, "digest": r.digest, "level": r.level.as_str() }))
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
        actor: &Actor,
    ) -> Result<ManifestPut> {
        self.require_writable()?;
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
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str().to_owned()),
            Reference::Digest(_) => None,
        };
        let record = Record {
            digest: digest.clone(),
            annotations: manifest.annotations.as_ref().map(|a| Value::Object(a.clone()).to_string()),
            subject: manifest.subject.map(|s| s.digest),
            blobs: manifest.blobs.into_iter().map(|d| d.digest).collect(),
            children: manifest.children.into_iter().map(|d| d.digest).collect(),
            media_type: manifest.media_type,
            artifact_type: manifest.artifact_type,
            content: bytes,
        };
        // A manifest that will be rejected must cost no storage write: check first.
        if let Some(target) = self.meta.missing_reference(repo.as_str(), &record.view()).await? {
            return Err(missing(repo, &target));
        }
        // The bytes go to the blob store too, so the data directory alone holds every
        // manifest (registry:2 keeps them there) and metadata can be rebuilt from it;
        // held against collection until the manifest's row records them.
        let hold = uuid::Uuid::new_v4().to_string();
        if !self.meta.hold_blob(&hold, &digest).await? {
            return Err(RegistryError::collecting(&digest));
        }
        let put = self.store_and_record(repo, &hold, record, tag, actor).await;
        if put.is_err() {
            self.meta.release_blob(&hold).await.ok();
        }
        put
    }

    /// The held part of [`Registry::put_manifest`]: the copy at the content address,
    /// then the transaction that records the manifest.
    async fn store_and_record(
        &self,
        repo: &RepositoryName,
        hold: &str,
        record: Record,
        tag: Option<String>,
        actor: &Actor,
    ) -> Result<ManifestPut> {
        let digest = record.digest.clone();
        if self.blobs.stat(&digest).await?.is_none() {
            self.blobs.put_bytes(&digest, record.content.clone()).await?;
        }
        let (meta, name, subject, actor) = (self.meta.clone(), repo.clone(), record.subject.clone(), actor.clone());
        let hold = hold.to_owned();
        let put = self.write(repo, async move {
            meta.put_manifest(name.as_str(), &record.view(), tag.as_deref(), &hold, &actor).await
        });
        match put.await? {
            Ok(()) => Ok(ManifestPut { subject, digest }),
            Err(PutManifestError::Missing(target)) => Err(missing(repo, &target)),
            Err(PutManifestError::Immutable(refusal)) => Err(immutable(repo, &refusal)),
            Err(PutManifestError::HoldLost) => Err(RegistryError::collecting(&digest)),
            Err(PutManifestError::Db(e)) => Err(e.into()),
        }
    }

    /// A manifest by tag or digest, from the caches when they have it.
    pub async fn get_manifest(&self, repo: &RepositoryName, reference: &Reference) -> Result<Arc<ManifestEntry>> {
        let (c, name) = (&*self.caches, repo.as_str());
        let digest = match reference {
            Reference::Digest(d) => Some(d.to_string()),
            Reference::Tag(t) => c.tags.get(c, name, &cache::key(name, t.as_str())),
        };
        if let Some(m) = digest.and_then(|d| c.manifests.get(c, name, &cache::key(name, &d))) {
            return Ok(m);
        }
        let ticket = c.ticket(name);
        let found = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(name, t.as_str()).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(name, d).await?,
        };
        let Some(StoredManifest { digest, media_type, content }) = found else {
            return Err(self.manifest_unknown(repo, reference).await);
        };
        let m = Arc::new(ManifestEntry { digest, media_type, content: content.into() });
        if let Reference::Tag(t) = reference {
            c.tags.fill(ticket, cache::key(name, t.as_str()), m.digest.clone());
        }
        c.manifests.fill(ticket, cache::key(name, &m.digest), m.clone());
        Ok(m)
    }

    async fn manifest_unknown(&self, repo: &RepositoryName, reference: &Reference) -> RegistryError {
        match self.meta.repository_id(repo.as_str()).await {
            Ok(None) => RegistryError::new(ErrorCode::NameUnknown, format!("repository {repo} is not known")),
            _ => RegistryError::new(ErrorCode::ManifestUnknown, format!("manifest {reference} is not in {repo}")),
        }
    }

    /// Deletes a manifest by digest (with its tags), or only a tag.
    pub async fn delete_manifest(&self, repo: &RepositoryName, reference: &Reference, actor: &Actor) -> Result<()> {
        self.require_delete()?;
        let (meta, name, r, actor) = (self.meta.clone(), repo.clone(), reference.clone(), actor.clone());
        let deleted = self
            .write(repo, async move {
                match r {
                    Reference::Tag(t) => meta.delete_tag(name.as_str(), t.as_str(), &actor).await,
                    Reference::Digest(d) => meta.delete_manifest(name.as_str(), &d, &actor).await,
                }
            })
            .await?;
        match deleted {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.manifest_unknown(repo, reference).await),
            Err(DeleteError::Immutable(refusal)) => Err(immutable(repo, &refusal)),
            Err(DeleteError::Db(e)) => Err(e.into()),
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
