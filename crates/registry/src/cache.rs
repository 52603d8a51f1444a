//! Read caches for the hot paths of pulls: manifest by tag or digest and blob `HEAD`.
//!
//! Only positive results are cached, so anything that only adds (a push, a mount) needs
//! no invalidation. Whatever changes or removes a cached answer (a tag moved or deleted,
//! a manifest deleted, a blob unlinked) bumps a generation counter after its commit and
//! then invalidates; a reader caches what it read only if the generation did not move
//! while it read, so a stale answer can never be left behind by a race.
//!
//! Invalidation is in-process: it is exact while one process owns the metadata (SQLite).

use crate::Page;
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A manifest as served: its digest, media type and exact bytes.
#[derive(Debug)]
pub struct ManifestEntry {
    pub digest: String,
    pub media_type: String,
    pub content: Bytes,
}

#[derive(Clone)]
struct ManifestWeight;

impl Weighter<String, Arc<ManifestEntry>> for ManifestWeight {
    fn weight(&self, key: &String, m: &Arc<ManifestEntry>) -> u64 {
        (key.len() + m.digest.len() + m.media_type.len() + m.content.len() + 64) as u64
    }
}

#[derive(Clone)]
struct PageWeight;

impl Weighter<String, (u64, Arc<Page>)> for PageWeight {
    fn weight(&self, key: &String, (_, page): &(u64, Arc<Page>)) -> u64 {
        (key.len() + page.names.iter().map(|n| n.len() + 24).sum::<usize>() + 64) as u64
    }
}

/// Bytes of tag pages kept in memory.
const PAGE_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes of manifests kept in memory.
const MANIFEST_BYTES: u64 = 32 * 1024 * 1024;
const ENTRIES: usize = 64 * 1024;

pub(crate) struct Caches {
    generation: AtomicU64,
    /// `repo \0 digest` → manifest.
    manifests: Cache<String, Arc<ManifestEntry>, ManifestWeight>,
    /// `repo \0 tag` → manifest digest.
    tags: Cache<String, String>,
    /// `repo \0 digest` → size of a linked blob.
    blobs: Cache<String, u64>,
    /// Repository name → id. Repositories are never renamed or deleted.
    repositories: Cache<String, i64>,
    /// `repo \0 last \0 n` → a tag page and the generation it was read at. Any change
    /// makes every page stale, which is cheap to be conservative about.
    tag_pages: Cache<String, (u64, Arc<Page>), PageWeight>,
}

pub(crate) fn key(repo: &str, item: &str) -> String {
    let mut k = String::with_capacity(repo.len() + item.len() + 1);
    k.push_str(repo);
    k.push('\0');
    k.push_str(item);
    k
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            generation: AtomicU64::new(0),
            manifests: Cache::with_weighter(ENTRIES / 8, MANIFEST_BYTES, ManifestWeight),
            tags: Cache::new(ENTRIES),
            blobs: Cache::new(ENTRIES),
            repositories: Cache::new(ENTRIES),
            tag_pages: Cache::with_weighter(ENTRIES / 8, PAGE_BYTES, PageWeight),
        }
    }
}

impl Caches {
    /// Call before reading the database for a value that may then be cached.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn unchanged_since(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn manifest(&self, key: &str) -> Option<Arc<ManifestEntry>> {
        self.manifests.get(key)
    }

    pub(crate) fn tag(&self, key: &str) -> Option<String> {
        self.tags.get(key)
    }

    pub(crate) fn blob(&self, key: &str) -> Option<u64> {
        self.blobs.get(key)
    }

    pub(crate) fn repository(&self, name: &str) -> Option<i64> {
        self.repositories.get(name)
    }

    pub(crate) fn fill_repository(&self, name: &str, id: i64) {
        self.repositories.insert(name.to_owned(), id);
    }

    pub(crate) fn tag_page(&self, key: &str) -> Option<Arc<Page>> {
        self.tag_pages.get(key).filter(|(generation, _)| self.unchanged_since(*generation)).map(|(_, page)| page)
    }

    pub(crate) fn fill_tag_page(&self, generation: u64, key: String, page: Arc<Page>) {
        if self.unchanged_since(generation) {
            self.tag_pages.insert(key, (generation, page));
        }
    }

    pub(crate) fn fill_manifest(&self, generation: u64, key: String, m: Arc<ManifestEntry>) {
        if self.unchanged_since(generation) {
            self.manifests.insert(key, m);
        }
    }

    pub(crate) fn fill_tag(&self, generation: u64, key: String, digest: String) {
        if self.unchanged_since(generation) {
            self.tags.insert(key, digest);
        }
    }

    pub(crate) fn fill_blob(&self, generation: u64, key: String, size: u64) {
        if self.unchanged_since(generation) {
            self.blobs.insert(key, size);
        }
    }

    /// After a tag was moved or deleted.
    pub(crate) fn tag_changed(&self, key: &str) {
        self.bump();
        self.tags.remove(key);
    }

    /// After a manifest (and every tag on it) was deleted.
    pub(crate) fn manifest_deleted(&self, key: &str) {
        self.bump();
        self.manifests.remove(key);
        // Which tags pointed at it is not known here; deletes are rare, so start over.
        self.tags.clear();
    }

    /// After a blob was unlinked from a repository.
    pub(crate) fn blob_unlinked(&self, key: &str) {
        self.bump();
        self.blobs.remove(key);
    }
}
