//! The metadata side of online garbage collection: holds, decisions and tombstones.
//!
//! The protocol (`docs/architecture.md`, "Garbage collection") in one paragraph: every
//! writer that is about to put bytes at a content address first *holds* the digest, and
//! the commit that records the bytes deletes its own hold and fails if it is gone.
//! Collection removes links that no manifest of their repository references once they
//! are older than the grace period, then *decides* to delete a digest's bytes only in
//! a transaction that finds no link, no manifest and no live hold for it, and that
//! replaces its `blobs` row with a tombstone in `blob_deletions`. While a tombstone
//! exists nobody can hold the digest; the bytes are deleted after the decision commits
//! and the tombstone only after they are gone, so any instance finishes a half-done
//! delete. Every transaction that reads or changes a digest's standing (hold, commit,
//! mount, manifest push, decision) first takes that digest's lock: SQLite runs one
//! writer at a time anyway; PostgreSQL takes a transaction-scoped advisory lock, so
//! those transactions run one after the other per digest and each statement after the
//! lock sees everything the previous one committed.

use crate::audit::{Actor, Record};
use crate::store::{first_column, MetadataStore, Result, WriteTx};
use berth_proto::Digest;
use sqlx::Row;
use std::time::Duration;

/// A digest whose bytes collection freed, or would free.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Collectable {
    pub digest: String,
    pub size: u64,
}

/// The PostgreSQL advisory lock key of a digest: 64 bits of its hash, so keys spread
/// evenly and a collision only makes two digests wait for each other.
fn lock_key(digest: &str) -> i64 {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    u64::from_str_radix(hex.get(..16).unwrap_or(hex), 16).unwrap_or(0) as i64
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl MetadataStore {
    /// The current time in milliseconds, as the database sees it: grace periods are
    /// measured on one clock, however far apart the instances' clocks drift.
    pub(crate) fn clock(&self) -> &'static str {
        if self.is_sqlite() {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        }
    }

    /// Takes `digest`'s lock for the rest of `tx` (see the module comment). With `wait`
    /// false it gives up at once (false) if another transaction holds it.
    pub(crate) async fn lock_digest(&self, tx: &mut WriteTx, digest: &str, wait: bool) -> Result<bool> {
        if self.is_sqlite() {
            return Ok(true);
        }
        let sql = if wait {
            "SELECT TRUE FROM (SELECT pg_advisory_xact_lock($1)) AS locked"
        } else {
            "SELECT pg_try_advisory_xact_lock($1)"
        };
        sqlx::query(sql).bind(lock_key(digest)).fetch_one(tx.conn()).await?.try_get(0)
    }

    /// Holds `digest` against collection for `owner` (an upload session, a manifest
    /// push) until the commit that records its bytes. False when the digest is being
    /// collected: its bytes may vanish, so the writer must not publish them now.
    pub async fn hold_blob(&self, owner: &str, digest: &Digest) -> Result<bool> {
        let mut tx = self.begin().await?;
        self.lock_digest(&mut tx, digest.as_str(), true).await?;
        if Self::is_tombstoned(&mut tx, digest.as_str()).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        let sql = format!(
            "INSERT INTO blob_holds (owner, digest, created_at) VALUES ($1, $2, {now}) \
             ON CONFLICT (owner) DO UPDATE SET digest = $2, created_at = {now}",
            now = self.clock()
        );
        sqlx::query(&sql).bind(owner).bind(digest.as_str()).execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Drops a hold whose writer gave up (its upload failed); a missing one is fine.
    pub async fn release_blob(&self, owner: &str) -> Result<()> {
        self.write_one(sqlx::query("DELETE FROM blob_holds WHERE owner = $1").bind(owner)).await.map(drop)
    }

    /// Inside a recording transaction that holds the digest's lock: ends `owner`'s hold
    /// and records the blob's row. False when the hold is gone: collection found it
    /// abandoned and may have decided to delete the bytes, so nothing may point at them.
    pub(crate) async fn settle_hold(tx: &mut WriteTx, owner: &str, digest: &Digest, size: u64) -> Result<bool> {
        let ended = sqlx::query("DELETE FROM blob_holds WHERE owner = $1 AND digest = $2")
            .bind(owner)
            .bind(digest.as_str())
            .execute(tx.conn())
            .await?
            .rows_affected();
        if ended == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(digest.as_str())
            .bind(size as i64)
            .bind(crate::now_millis())
            .execute(tx.conn())
            .await?;
        Ok(true)
    }

    /// Drops holds older than `lease`: their writers crashed or stalled, and a stalled
    /// one learns it at its commit, which then fails.
    pub async fn expire_holds(&self, lease: Duration) -> Result<u64> {
        let sql = format!("DELETE FROM blob_holds WHERE created_at <= {} - $1", self.clock());
        self.write_one(sqlx::query(&sql).bind(millis(lease))).await
    }

    async fn is_tombstoned(tx: &mut WriteTx, digest: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM blob_deletions WHERE digest = $1").bind(digest).fetch_optional(tx.conn());
        Ok(row.await?.is_some())
    }

    // ---- links --------------------------------------------------------------------

    /// A page of links, after `(repo, digest)` `after`, that no manifest of their
    /// repository references and that are older than `grace`.
    async fn stale_links(&self, grace: Duration, after: &(i64, String), limit: i64) -> Result<Vec<(i64, String)>> {
        let sql = format!(
            "SELECT l.repository_id, l.digest FROM repository_blobs l \
             WHERE l.created_at <= {now} - $1 AND (l.repository_id, l.digest) > ($2, $3) \
             AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository_id = l.repository_id \
                 AND r.target_digest = l.digest AND r.kind = 'blob') \
             ORDER BY l.repository_id, l.digest LIMIT $4",
            now = self.clock()
        );
        let rows =
            sqlx::query(&sql).bind(millis(grace)).bind(after.0).bind(&after.1).bind(limit).fetch_all(self.reader());
        rows.await?.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Removes links that no manifest of their repository references and that nobody
    /// re-linked within `grace`; returns the names of the repositories that lost one
    /// (their cached answers are outdated), with the count. A `dry_run` only counts.
    ///
    /// Each link is removed in a transaction of its own that first locks the link row
    /// (skipping one a manifest push holds: it is being referenced) and only then, in a
    /// later statement, looks for references: under PostgreSQL's READ COMMITTED that
    /// statement sees every manifest committed while the lock was awaited, which a single
    /// `DELETE … WHERE NOT EXISTS` would not.
    pub async fn collect_links(&self, grace: Duration, dry_run: bool) -> Result<(Vec<String>, u64)> {
        let (mut repos, mut removed, mut after) = (Vec::new(), 0, (i64::MIN, String::new()));
        loop {
            let page = self.stale_links(grace, &after, 500).await?;
            let Some(last) = page.last().cloned() else { break };
            for (repo, digest) in &page {
                if dry_run {
                    removed += 1;
                } else if self.collect_link(*repo, digest, grace).await? {
                    removed += 1;
                    repos.push(*repo);
                }
            }
            after = last;
        }
        repos.dedup();
        let mut names = Vec::with_capacity(repos.len());
        for id in repos {
            let name =
                sqlx::query("SELECT name FROM repositories WHERE id = $1").bind(id).fetch_optional(self.reader());
            names.extend(name.await?.map(|r| r.try_get::<String, _>(0)).transpose()?);
        }
        Ok((names, removed))
    }

    async fn collect_link(&self, repo: i64, digest: &str, grace: Duration) -> Result<bool> {
        let mut tx = self.begin().await?;
        let lock = if self.is_sqlite() { "" } else { " FOR UPDATE SKIP LOCKED" };
        let sql = format!(
            "SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = $2 AND created_at <= {} - $3{lock}",
            self.clock()
        );
        let stale = sqlx::query(&sql).bind(repo).bind(digest).bind(millis(grace)).fetch_optional(tx.conn()).await?;
        let referenced = stale.is_none()
            || sqlx::query(
                "SELECT 1 FROM manifest_references WHERE repository_id = $1 AND target_digest = $2 AND kind = 'blob' LIMIT 1",
            )
            .bind(repo)
            .bind(digest)
            .fetch_optional(tx.conn())
            .await?
            .is_some();
        if referenced {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = $2")
            .bind(repo)
            .bind(digest)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- untagged manifests -------------------------------------------------------

    /// Deletes the untagged manifests of the repositories of `namespace` (every
    /// repository for `""`) pushed longer than `grace` ago, except index children of a
    /// manifest of their repository and referrers whose subject is there; returns the
    /// repositories that lost one (their caches are outdated) and the count. Their blobs'
    /// links then count as unreferenced, as after a delete by digest.
    ///
    /// Each manifest goes in a transaction of its own that locks its row first (skipping
    /// one a push holds) and only then, in later statements, looks for a tag, a parent
    /// and a subject: a tag or index pushed meanwhile has committed by then, or waits
    /// for this transaction and then re-creates the manifest (a push) or finds it gone
    /// (an index: `MANIFEST_BLOB_UNKNOWN`, and the client pushes the child again).
    pub async fn collect_untagged(
        &self,
        namespace: &str,
        grace: Duration,
        dry_run: bool,
    ) -> Result<(Vec<String>, u64)> {
        let prefix = if namespace.is_empty() { String::new() } else { format!("{namespace}/") };
        let sql = format!(
            "SELECT m.repository_id, m.digest, r.name FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE (r.name = $1 OR substr(r.name, 1, length($2)) = $2 OR $2 = '') AND m.created_at <= {} - $3 \
             AND (m.repository_id, m.digest) > ($4, $5) AND {UNKEPT} \
             ORDER BY m.repository_id, m.digest LIMIT 500",
            self.clock()
        );
        let (mut repos, mut removed, mut after): (Vec<String>, u64, (i64, String)) =
            (Vec::new(), 0, (i64::MIN, String::new()));
        loop {
            let q = sqlx::query(&sql).bind(namespace).bind(&prefix).bind(millis(grace)).bind(after.0).bind(&after.1);
            let page = q.fetch_all(self.reader()).await?;
            let Some(last) = page.last() else { break };
            after = (last.try_get(0)?, last.try_get(1)?);
            for row in &page {
                let (repo, digest, name): (i64, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if dry_run || self.collect_manifest(repo, &digest, &name, grace).await? {
                    removed += 1;
                    if repos.last() != Some(&name) {
                        repos.push(name);
                    }
                }
            }
        }
        Ok((repos, removed))
    }

    async fn collect_manifest(&self, repo: i64, digest: &str, name: &str, grace: Duration) -> Result<bool> {
        let mut tx = self.begin().await?;
        let lock = if self.is_sqlite() { "" } else { " FOR UPDATE SKIP LOCKED" };
        let sql = format!(
            "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $2 AND created_at <= {} - $3{lock}",
            self.clock()
        );
        let locked = sqlx::query(&sql).bind(repo).bind(digest).bind(millis(grace)).fetch_optional(tx.conn()).await?;
        let check = format!("SELECT 1 FROM manifests m WHERE m.repository_id = $1 AND m.digest = $2 AND {UNKEPT}");
        if locked.is_none() || sqlx::query(&check).bind(repo).bind(digest).fetch_optional(tx.conn()).await?.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        for sql in [
            "DELETE FROM manifest_references WHERE repository_id = $1 AND manifest_digest = $2",
            "DELETE FROM manifests WHERE repository_id = $1 AND digest = $2",
        ] {
            sqlx::query(sql).bind(repo).bind(digest).execute(tx.conn()).await?;
        }
        tx.audit(&Actor::system(), Record::ok("manifest.collect", &format!("{name}@{digest}"))).await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- decisions ----------------------------------------------------------------

    /// A page (after `after`, by digest) of blobs that a pass with `grace` frees: no
    /// link that is young or referenced (a pass removes the others first), no manifest,
    /// no hold. The dry run's answer, and the candidates a pass decides on.
    pub async fn collectable_blobs(&self, grace: Duration, after: &str, limit: u32) -> Result<Vec<Collectable>> {
        let sql = format!(
            "SELECT b.digest, b.size FROM blobs b WHERE b.digest > $1 \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs l WHERE l.digest = b.digest AND (l.created_at > {now} - $2 \
                 OR EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository_id = l.repository_id \
                     AND r.target_digest = l.digest AND r.kind = 'blob'))) \
             AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest) \
             AND NOT EXISTS (SELECT 1 FROM blob_holds h WHERE h.digest = b.digest) \
             ORDER BY b.digest LIMIT $3",
            now = self.clock()
        );
        let q = sqlx::query(&sql).bind(after).bind(millis(grace)).bind(i64::from(limit));
        q.fetch_all(self.reader()).await?.iter().map(collectable).collect()
    }

    /// Decides to delete a digest's bytes if, now, nothing may point at them: no link,
    /// no manifest, no hold. Replaces the `blobs` row (if any) with a tombstone.
    /// `orphan`: the digest was found in storage without a row, and the sighting must be
    /// older than `grace`. Gives up (false) on a digest another transaction is working on.
    pub async fn decide_deletion(&self, digest: &str, grace: Duration, orphan: bool) -> Result<bool> {
        let mut tx = self.begin().await?;
        if !self.lock_digest(&mut tx, digest, false).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        let size = match self.deletable_size(&mut tx, digest, grace, orphan).await? {
            Some(size) => size,
            None => {
                tx.rollback().await?;
                return Ok(false);
            }
        };
        for sql in ["DELETE FROM blobs WHERE digest = $1", "DELETE FROM blob_orphans WHERE digest = $1"] {
            sqlx::query(sql).bind(digest).execute(tx.conn()).await?;
        }
        let tomb = format!("INSERT INTO blob_deletions (digest, size, decided_at) VALUES ($1, $2, {})", self.clock());
        sqlx::query(&tomb).bind(digest).bind(size).execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The size of the bytes `decide_deletion` may delete, read under the digest's lock;
    /// `None` if anything still needs them.
    async fn deletable_size(
        &self,
        tx: &mut WriteTx,
        digest: &str,
        grace: Duration,
        orphan: bool,
    ) -> Result<Option<i64>> {
        let live = "SELECT 1 FROM repository_blobs WHERE digest = $1 \
             UNION ALL SELECT 1 FROM manifests WHERE digest = $1 \
             UNION ALL SELECT 1 FROM blob_deletions WHERE digest = $1 \
             UNION ALL SELECT 1 FROM blob_holds WHERE digest = $1 LIMIT 1";
        if sqlx::query(live).bind(digest).fetch_optional(tx.conn()).await?.is_some() {
            return Ok(None);
        }
        let row = if orphan {
            let sql = format!(
                "SELECT o.size FROM blob_orphans o WHERE o.digest = $1 AND o.seen_at <= {} - $2 \
                 AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = o.digest)",
                self.clock()
            );
            sqlx::query(&sql).bind(digest).bind(millis(grace)).fetch_optional(tx.conn()).await?
        } else {
            sqlx::query("SELECT size FROM blobs WHERE digest = $1").bind(digest).fetch_optional(tx.conn()).await?
        };
        row.map(|r| r.try_get(0)).transpose()
    }

    // ---- orphans found in storage -------------------------------------------------

    /// Records objects a storage listing found that have no row, no tombstone and no
    /// hold, with the time first seen; sightings of digests that have a row now are
    /// dropped. Returns how many are new.
    pub async fn note_orphans(&self, found: &[Collectable]) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut noted = 0;
        let sql = format!(
            "INSERT INTO blob_orphans (digest, size, seen_at) SELECT $1, $2, {} \
             WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE digest = $1) \
             AND NOT EXISTS (SELECT 1 FROM blob_deletions WHERE digest = $1) \
             AND NOT EXISTS (SELECT 1 FROM blob_holds WHERE digest = $1) \
             ON CONFLICT (digest) DO NOTHING",
            self.clock()
        );
        for c in found {
            noted += sqlx::query(&sql).bind(&c.digest).bind(c.size as i64).execute(tx.conn()).await?.rows_affected();
        }
        sqlx::query("DELETE FROM blob_orphans WHERE digest IN (SELECT digest FROM blobs)").execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(noted)
    }

    /// A page of orphan sightings older than `grace`, by digest after `after`.
    pub async fn due_orphans(&self, grace: Duration, after: &str, limit: u32) -> Result<Vec<Collectable>> {
        let sql = format!(
            "SELECT digest, size FROM blob_orphans WHERE seen_at <= {} - $1 AND digest > $2 ORDER BY digest LIMIT $3",
            self.clock()
        );
        let q = sqlx::query(&sql).bind(millis(grace)).bind(after).bind(i64::from(limit));
        q.fetch_all(self.reader()).await?.iter().map(collectable).collect()
    }

    // ---- tombstones ---------------------------------------------------------------

    /// Decided deletions whose bytes may still exist, oldest first: this instance's and
    /// those a crashed one left.
    pub async fn pending_deletions(&self, limit: u32) -> Result<Vec<Collectable>> {
        let q = sqlx::query("SELECT digest, size FROM blob_deletions ORDER BY decided_at, digest LIMIT $1")
            .bind(i64::from(limit));
        q.fetch_all(self.reader()).await?.iter().map(collectable).collect()
    }

    /// Drops a tombstone once its bytes are gone: the digest may be written again.
    pub async fn finish_deletion(&self, digest: &str) -> Result<()> {
        self.write_one(sqlx::query("DELETE FROM blob_deletions WHERE digest = $1").bind(digest)).await.map(drop)
    }

    /// Digests with a row in `blobs` among `digests`: what a storage scan must not call
    /// orphans.
    pub async fn known_blobs(&self, digests: &[String]) -> Result<Vec<String>> {
        let mut known = Vec::new();
        for chunk in digests.chunks(200) {
            let marks = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(",");
            let sql = format!("SELECT digest FROM blobs WHERE digest IN ({marks})");
            let q = chunk.iter().fold(sqlx::query(&sql), |q, d| q.bind(d));
            known.extend(first_column(q.fetch_all(self.reader()).await?)?);
        }
        Ok(known)
    }
}

/// The condition on manifest `m` that nothing keeps it: no tag, no manifest of its
/// repository that has it as a child, no subject in its repository.
const UNKEPT: &str =
    "NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id AND t.manifest_digest = m.digest) \
     AND NOT EXISTS (SELECT 1 FROM manifest_references p WHERE p.repository_id = m.repository_id \
         AND p.target_digest = m.digest AND p.kind = 'manifest') \
     AND (m.subject IS NULL OR NOT EXISTS (SELECT 1 FROM manifests s WHERE s.repository_id = m.repository_id \
         AND s.digest = m.subject))";

fn collectable(r: &sqlx::any::AnyRow) -> Result<Collectable> {
    Ok(Collectable { digest: r.try_get(0)?, size: r.try_get::<i64, _>(1)? as u64 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_come_from_the_digest_hash() {
        let d = "sha256:00000000000000ffaaaa";
        assert_eq!(super::lock_key(d), 255);
        assert_eq!(super::lock_key("sha256:ffffffffffffffff00"), -1);
        assert_eq!(super::lock_key("garbage"), 0);
    }
}
