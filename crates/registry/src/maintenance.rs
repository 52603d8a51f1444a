//! Housekeeping of upload sessions: purging idle ones and reconciling what a crash can
//! leave behind (staged bytes without a session, a session without its staged bytes).

use crate::{Registry, Result};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// What one reconciliation removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Spool or staging files that belonged to no session.
    pub spools: usize,
    /// Sessions whose spool was gone.
    pub sessions: usize,
}

impl Registry {
    /// Purges sessions idle for longer than the configured timeout; returns how many.
    pub async fn purge_idle_uploads(&self) -> Result<usize> {
        if self.settings.read_only {
            return Ok(0);
        }
        let cutoff = berth_metadata::now_millis() - self.settings.upload_idle_timeout.as_millis() as i64;
        let ids = self.meta.idle_uploads(cutoff).await?;
        for id in &ids {
            let _guard = self.sessions.lock(id).await;
            self.discard_upload(id).await?;
        }
        Ok(ids.len())
    }

    /// Removes crash leftovers older than the grace period: spool files (and staged
    /// manifests) that no session owns, and sessions whose spool is gone (a power cut
    /// before the spool's directory entry was durable).
    ///
    /// Younger ones may belong to a request in flight (a spool is created before its
    /// session row; a publish renames the spool before the commit that closes the
    /// session), so the grace period, not a snapshot, decides. A session is dropped only
    /// under its lock, after checking again that its spool is still missing.
    pub async fn reconcile_uploads(&self) -> Result<Reconciled> {
        let mut done = Reconciled::default();
        if self.settings.read_only {
            return Ok(done);
        }
        let grace = self.settings.orphan_grace;
        let sessions: HashMap<String, i64> = self.meta.uploads().await?.into_iter().collect();
        let spools = self.blobs.staged_uploads().await?;
        let now = SystemTime::now();
        for (name, modified) in &spools {
            let age = now.duration_since(*modified).unwrap_or(Duration::ZERO);
            if !sessions.contains_key(name) && age >= grace && !self.meta_has_upload(name).await? {
                self.blobs.abort(name).await?;
                done.spools += 1;
            }
        }
        let on_disk: HashSet<&String> = spools.iter().map(|(name, _)| name).collect();
        let cutoff = berth_metadata::now_millis() - grace.as_millis() as i64;
        for (id, updated) in &sessions {
            if on_disk.contains(id) || *updated > cutoff {
                continue;
            }
            let _guard = self.sessions.lock(id).await;
            if !self.blobs.has_staging(id).await? && self.meta.delete_upload(id).await? {
                done.sessions += 1;
            }
        }
        Ok(done)
    }

    async fn meta_has_upload(&self, id: &str) -> Result<bool> {
        Ok(self.meta.upload(id).await?.is_some())
    }
}
