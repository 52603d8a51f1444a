//! Online garbage collection: one pass removes unreferenced links, decides which bytes
//! nothing may point at any more, and deletes them. It runs beside pushes and pulls; the
//! protocol that makes that safe is the metadata store's (`berth_metadata`'s `gc`
//! module, and `docs/architecture.md`). Any instance may run passes at any time, several
//! at once: every decision is a transaction of its own, and a tombstone a crashed pass
//! left is finished by the next pass anywhere.

use crate::{Registry, Result};
use berth_metadata::Collectable;
use berth_proto::Digest;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

/// How a pass runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// How long an unreferenced link, or an object found in storage with no record,
    /// stays before it is collected: layers pushed for a manifest not pushed yet.
    pub grace: Duration,
    /// How long a writer may take from holding a digest to recording it (a publish);
    /// a slower one fails and its client retries.
    pub hold_lease: Duration,
    /// Also list the store for objects with no record (a crash between publish and
    /// commit leaves them). Costs a full listing.
    pub scan_storage: bool,
    /// Report what would be freed; change nothing.
    pub dry_run: bool,
    /// Namespaces (`""`: all) whose untagged manifests go, each after its grace period.
    pub untagged: Vec<(String, Duration)>,
}

impl GcOptions {
    /// A pass with the configured grace period and hold lease.
    pub fn configured(settings: &crate::Settings) -> GcOptions {
        GcOptions {
            grace: settings.gc_grace,
            hold_lease: settings.gc_hold_lease,
            scan_storage: false,
            dry_run: false,
            untagged: settings.gc_untagged.clone(),
        }
    }
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions::configured(&crate::Settings::default())
    }
}

/// What a pass did, or in a dry run would do.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Untagged manifests deleted under `berth.gc.untagged` (a dry run counts them, but
    /// not yet the blobs only they use: those go in the same real pass).
    pub manifests: u64,
    /// Links removed from repositories (no manifest there references them).
    pub links: u64,
    /// Blobs (and manifest copies) whose bytes were deleted, with their sizes; at most
    /// [`LISTED`] are listed, all are counted.
    pub blobs: Vec<Collectable>,
    pub blob_count: u64,
    pub bytes: u64,
    /// Objects found in storage with no record, first seen by this pass: collected by
    /// a pass after the grace period.
    pub orphans_seen: u64,
    /// Holds of writers that crashed or stalled, dropped.
    pub holds_expired: u64,
    /// Deletions that failed (storage errors): their tombstones stay, and the next pass
    /// retries them.
    pub failed: u64,
}

/// How many collected digests a report lists.
pub const LISTED: usize = 1000;

const PAGE: u32 = 500;

impl GcReport {
    fn count(&mut self, c: Collectable) {
        self.blob_count += 1;
        self.bytes += c.size;
        if self.blobs.len() < LISTED {
            self.blobs.push(c);
        }
    }
}

impl Registry {
    /// Runs one collection pass.
    pub async fn collect_garbage(&self, opts: &GcOptions) -> Result<GcReport> {
        let mut report = GcReport::default();
        if self.settings.read_only && !opts.dry_run {
            return Ok(report);
        }
        if !opts.dry_run {
            report.holds_expired = self.meta.expire_holds(opts.hold_lease).await?;
        }
        for (namespace, grace) in &opts.untagged {
            let (repos, n) = self.meta.collect_untagged(namespace, *grace, opts.dry_run).await?;
            report.manifests += n;
            repos.iter().for_each(|r| self.caches.changed(r));
        }
        let (repos, links) = self.meta.collect_links(opts.grace, opts.dry_run).await?;
        report.links = links;
        // A removed link (or manifest) changes what the repository serves.
        repos.iter().for_each(|r| self.caches.changed(r));
        if opts.scan_storage && !opts.dry_run {
            report.orphans_seen = self.note_orphans().await?;
        }
        // Blobs with a row first, then (with a scan) objects that have none.
        for orphans in [false, true] {
            if orphans && !opts.scan_storage {
                break;
            }
            let mut after = String::new();
            loop {
                let page = if orphans {
                    self.meta.due_orphans(opts.grace, &after, PAGE).await?
                } else {
                    self.meta.collectable_blobs(opts.grace, &after, PAGE).await?
                };
                let Some(last) = page.last() else { break };
                after = last.digest.clone();
                for c in page {
                    if opts.dry_run {
                        report.count(c);
                    } else {
                        self.meta.decide_deletion(&c.digest, opts.grace, orphans).await?;
                    }
                }
            }
        }
        if !opts.dry_run {
            self.sweep(&mut report).await?;
        }
        Ok(report)
    }

    /// Deletes the bytes of every decided deletion, then its tombstone. A failed delete
    /// keeps its tombstone for the next pass; the digest stays unwritable until then.
    async fn sweep(&self, report: &mut GcReport) -> Result<()> {
        let mut failed = HashSet::new();
        loop {
            let pending = self.meta.pending_deletions(PAGE).await?;
            let todo: Vec<Collectable> = pending.into_iter().filter(|c| !failed.contains(&c.digest)).collect();
            if todo.is_empty() {
                return Ok(());
            }
            for c in todo {
                let deleted = match c.digest.parse::<Digest>() {
                    Ok(d) => self.blobs.delete(&d).await,
                    // Nothing with an invalid name was ever stored.
                    Err(_) => Ok(()),
                };
                match deleted {
                    Ok(()) => {
                        self.meta.finish_deletion(&c.digest).await?;
                        report.count(c);
                    }
                    Err(e) => {
                        tracing::warn!(digest = %c.digest, error = %e, "deleting collected bytes failed; the next pass retries");
                        report.failed += 1;
                        failed.insert(c.digest);
                    }
                }
            }
        }
    }

    /// Lists the store and records objects that have no row (see
    /// [`berth_metadata::MetadataStore::note_orphans`]); returns how many are new.
    async fn note_orphans(&self) -> Result<u64> {
        let mut listing = self.blobs.list_blobs();
        let (mut noted, mut batch, mut done) = (0, Vec::new(), false);
        while !done {
            match listing.next().await.transpose()? {
                Some(found) => batch.push(found),
                None => done = true,
            }
            let full = batch.len() >= PAGE as usize;
            if !full && (batch.is_empty() || !done) {
                continue;
            }
            let names: Vec<String> = batch.iter().map(|(d, _)| d.to_string()).collect();
            let known: HashSet<String> = self.meta.known_blobs(&names).await?.into_iter().collect();
            let unknown: Vec<Collectable> = batch
                .drain(..)
                .filter(|(d, _)| !known.contains(d.as_str()))
                .map(|(d, size)| Collectable { digest: d.to_string(), size })
                .collect();
            if !unknown.is_empty() {
                noted += self.meta.note_orphans(&unknown).await?;
            }
        }
        Ok(noted)
    }
}
