//! Read caches for the hot paths of pulls: manifest by tag or digest, blob `HEAD`, tag
//! pages and repository ids.
//!
//! Why a cached answer is never stale (the argument `docs/architecture.md` spells out):
//! - each repository maps to a generation counter (one of [`STRIPES`], by hash);
//! - a reader loads the generation *before* it queries the database and stores it in
//!   the entry it fills ([`Caches::ticket`], [`Versioned::fill`]);
//! - every write to a repository bumps its generation *after* its commit and *before*
//!   it is acknowledged, in a task that a dropped request cannot cancel
//!   ([`crate::Registry`]'s `write`);
//! - an entry is served only while its generation equals the current one.
//!
//! So an entry served after a write was acknowledged was filled from a query that began
//! after the write's bump, hence after its commit. A racing fill can only store an entry
//! that is already outdated, never serve one. Invalidation is O(1) and needs no
//! knowledge of which keys a write touched.
//!
//! This holds only while this process sees every write: SQLite, whose database file the
//! metadata store locks for this process. With a shared database (several instances on
//! PostgreSQL) the caches are switched off and every read goes to the database.

use crate::Page;
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{UnitWeighter, Weighter};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A manifest as served: its digest, media type and exact bytes.
#[derive(Debug)]
pub struct ManifestEntry {
    pub digest: String,
    pub media_type: String,
    pub content: Bytes,
}

/// Generation counters. A write bumps one stripe, so it also invalidates the other
/// repositories that hash to it: harmless, and memory stays fixed however many
/// repositories exist.
const STRIPES: usize = 4096;

/// Bytes of tag pages kept in memory.
const PAGE_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes of manifests kept in memory.
const MANIFEST_BYTES: u64 = 32 * 1024 * 1024;
const ENTRIES: usize = 64 * 1024;

/// What a reader noted before it queried the database.
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
}

/// A cache whose entries carry the generation they were read at.
pub(crate) struct Versioned<V: Clone, W: Weighter<String, (u64, V)> + Clone = UnitWeighter> {
    entries: Cache<String, (u64, V), W>,
}

impl<V: Clone, W: Weighter<String, (u64, V)> + Clone> Versioned<V, W> {
    fn with_weighter(items: usize, weight: u64, weighter: W) -> Self {
        Versioned { entries: Cache::with_weighter(items, weight, weighter) }
    }

    /// The cached value, if it was read at the repository's current generation.
    pub(crate) fn get(&self, caches: &Caches, repo: &str, key: &str) -> Option<V> {
        let current = caches.ticket(repo)?;
        self.entries.get(key).filter(|(generation, _)| *generation == current.generation).map(|(_, v)| v)
    }

    /// Stores what a reader read after taking `ticket`. If a write bumped the generation
    /// meanwhile, the entry is born outdated and will never be served.
    pub(crate) fn fill(&self, ticket: Option<Ticket>, key: String, value: V) {
        if let Some(t) = ticket {
            self.entries.insert(key, (t.generation, value));
        }
    }
}

impl<V: Clone> Versioned<V> {
    fn new(items: usize) -> Self {
        Versioned::with_weighter(items, items as u64, UnitWeighter)
    }
}

#[derive(Clone)]
pub(crate) struct ManifestWeight;

impl Weighter<String, (u64, Arc<ManifestEntry>)> for ManifestWeight {
    fn weight(&self, key: &String, (_, m): &(u64, Arc<ManifestEntry>)) -> u64 {
        (key.len() + m.digest.len() + m.media_type.len() + m.content.len() + 64) as u64
    }
}

#[derive(Clone)]
pub(crate) struct PageWeight;

impl Weighter<String, (u64, Arc<Page>)> for PageWeight {
    fn weight(&self, key: &String, (_, page): &(u64, Arc<Page>)) -> u64 {
        (key.len() + page.names.iter().map(|n| n.len() + 24).sum::<usize>() + 64) as u64
    }
}

pub(crate) struct Caches {
    /// False when another process may write the database: then nothing is cached.
    enabled: bool,
    generations: Box<[AtomicU64]>,
    /// `repo \0 digest` → manifest.
    pub(crate) manifests: Versioned<Arc<ManifestEntry>, ManifestWeight>,
    /// `repo \0 tag` → manifest digest.
    pub(crate) tags: Versioned<String>,
    /// `repo \0 digest` → size of a linked blob.
    pub(crate) blobs: Versioned<u64>,
    /// Repository name → id.
    pub(crate) repositories: Versioned<i64>,
    /// `repo \0 last \0 n` → a page of tags.
    pub(crate) tag_pages: Versioned<Arc<Page>, PageWeight>,
}

pub(crate) fn key(repo: &str, item: &str) -> String {
    let mut k = String::with_capacity(repo.len() + item.len() + 1);
    k.push_str(repo);
    k.push('\0');
    k.push_str(item);
    k
}

impl Caches {
    pub(crate) fn new(enabled: bool) -> Caches {
        Caches {
            enabled,
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            manifests: Versioned::with_weighter(ENTRIES / 8, MANIFEST_BYTES, ManifestWeight),
            tags: Versioned::new(ENTRIES),
            blobs: Versioned::new(ENTRIES),
            repositories: Versioned::new(ENTRIES),
            tag_pages: Versioned::with_weighter(ENTRIES / 8, PAGE_BYTES, PageWeight),
        }
    }

    fn stripe(repo: &str) -> usize {
        BuildHasherDefault::<DefaultHasher>::default().hash_one(repo) as usize % STRIPES
    }

    /// Take before querying the database for a value that may then be cached; `None`
    /// when caching is off.
    pub(crate) fn ticket(&self, repo: &str) -> Option<Ticket> {
        self.enabled.then(|| Ticket { generation: self.generations[Self::stripe(repo)].load(Ordering::Acquire) })
    }

    /// After a committed write to `repo`: every entry read before now is outdated.
    pub(crate) fn changed(&self, repo: &str) {
        self.generations[Self::stripe(repo)].fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(names: &[&str]) -> Arc<Page> {
        Arc::new(Page { names: names.iter().map(|s| s.to_string()).collect(), more: false })
    }

    #[test]
    fn a_write_outdates_what_was_read_before_it() {
        let c = Caches::new(true);
        let t = c.ticket("app");
        c.tags.fill(t, key("app", "latest"), "sha256:old".into());
        assert_eq!(c.tags.get(&c, "app", &key("app", "latest")).as_deref(), Some("sha256:old"));
        c.changed("app");
        assert_eq!(c.tags.get(&c, "app", &key("app", "latest")), None, "served after a write");
        let t = c.ticket("app");
        c.tags.fill(t, key("app", "latest"), "sha256:new".into());
        assert_eq!(c.tags.get(&c, "app", &key("app", "latest")).as_deref(), Some("sha256:new"));
    }

    #[test]
    fn a_fill_that_raced_a_write_is_never_served() {
        let c = Caches::new(true);
        // A reader takes its ticket and queries; a write commits and bumps before the
        // reader stores what it read (the old value).
        let t = c.ticket("app");
        c.changed("app");
        c.tag_pages.fill(t, key("app", ""), page(&["v1"]));
        assert!(c.tag_pages.get(&c, "app", &key("app", "")).is_none());
    }

    #[test]
    fn other_repositories_keep_their_entries_unless_they_share_a_stripe() {
        let c = Caches::new(true);
        let (a, b) = (
            "team/a",
            (0..).map(|i| format!("team/b{i}")).find(|b| Caches::stripe(b) != Caches::stripe("team/a")).unwrap(),
        );
        c.blobs.fill(c.ticket(a), key(a, "d"), 1);
        c.blobs.fill(c.ticket(&b), key(&b, "d"), 2);
        c.changed(a);
        assert_eq!(c.blobs.get(&c, a, &key(a, "d")), None);
        assert_eq!(c.blobs.get(&c, &b, &key(&b, "d")), Some(2));
    }

    #[test]
    fn disabled_caches_store_and_serve_nothing() {
        let c = Caches::new(false);
        c.repositories.fill(c.ticket("x"), "x".into(), 7);
        assert_eq!(c.repositories.get(&c, "x", "x"), None);
    }

    #[test]
    fn concurrent_writers_and_fillers_never_leave_a_stale_value() {
        // Model: the "database" is an atomic value; a writer stores then bumps; readers
        // take a ticket, read, fill. After the writer is done, any served value is the
        // final one.
        let c = Arc::new(Caches::new(true));
        let db = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (c, db) = (c.clone(), db.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let t = c.ticket("r");
                        let v = db.load(Ordering::SeqCst);
                        c.blobs.fill(t, "k".into(), v);
                    }
                })
            })
            .collect();
        for v in 1..=2_000u64 {
            db.store(v, Ordering::SeqCst);
            c.changed("r");
            if let Some(served) = c.blobs.get(&c, "r", "k") {
                assert_eq!(served, v, "a value older than the last acknowledged write was served");
            }
        }
        for r in readers {
            r.join().unwrap();
        }
        if let Some(served) = c.blobs.get(&c, "r", "k") {
            assert_eq!(served, 2_000);
        }
    }
}
