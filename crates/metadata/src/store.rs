use crate::audit::{Actor, Record};
use crate::immutability::{self, Immutability, Refusal};
use berth_proto::Digest;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::AnyConnection;
use sqlx::{Any, AnyPool, Executor, Row};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A write transaction on a connection of its own, holding the writer lock (SQLite)
/// until it ends.
///
/// A transaction that does not end in a successful `COMMIT` or `ROLLBACK` (an error, a
/// dropped request) closes its connection instead of returning it to the pool. A failed
/// statement or commit can leave a connection's transaction state out of step with the
/// driver's bookkeeping (after `SQLITE_FULL` SQLite has already rolled back, and sqlx's
/// next "transaction" became a savepoint that never commits, so later writes were
/// acknowledged and lost); a fresh connection has no such state.
pub(crate) struct WriteTx {
    conn: PoolConnection<Any>,
    ended: bool,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Audit lines for the log stream, emitted once the transaction commits.
    pub(crate) logged: Vec<String>,
}

impl WriteTx {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    async fn end(mut self, sql: &str) -> Result<()> {
        self.conn.execute(sql).await?;
        self.ended = true;
        Ok(())
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        let logged = std::mem::take(&mut self.logged);
        self.end("COMMIT").await?;
        crate::audit::emit(&logged);
        Ok(())
    }

    /// Ends a transaction that changed nothing worth keeping.
    pub(crate) async fn rollback(self) -> Result<()> {
        self.end("ROLLBACK").await
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.ended {
            // Closing discards whatever the transaction did: both engines roll back an
            // open transaction when its connection closes.
            self.conn.close_on_drop();
        }
    }
}

/// Pool options shared by every pool; `synchronous` is fixed for each connection's life.
fn pool(sqlite: bool, synchronous: &'static str) -> AnyPoolOptions {
    AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30)).after_connect(move |conn, _| {
        Box::pin(async move {
            if sqlite {
                // WAL lets readers run beside the writer; FULL makes each commit durable
                // before the client hears 201.
                conn.execute(
                    format!(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; \
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;"
                    )
                    .as_str(),
                )
                .await?;
            }
            Ok(())
        })
    })
}

/// The file of a `sqlite://path[?options]` URL.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

pub use sqlx::Error;
pub type Result<T> = std::result::Result<T, Error>;

/// The metadata store.
///
/// SQLite allows one writer at a time, so every write first takes `writer` (queued
/// in-process instead of failing with SQLITE_BUSY), then a connection of its durability
/// class: `write` commits with `synchronous=FULL`, `offsets` (upload offsets only) with
/// `synchronous=NORMAL`. Each connection keeps the level it was opened with for its whole
/// life, so no cancelled request can leave a connection at the wrong level. Reads use a
/// pool of their own. On a server engine the pools are ordinary pools and the offset
/// commit lowers its durability with `SET LOCAL`, which ends with its transaction.
#[derive(Clone)]
pub struct MetadataStore {
    read: AnyPool,
    write: AnyPool,
    offsets: AnyPool,
    writer: Option<Arc<tokio::sync::Mutex<()>>>,
    sqlite: bool,
    /// Held while the store is open: the SQLite database belongs to this process alone.
    _lock: Option<Arc<DatabaseLock>>,
}

/// An exclusive `flock` on `<database>.lock`. Read caches are exact only because this
/// process sees every write; a second process on the same SQLite file would break that,
/// so it is refused at start-up.
struct DatabaseLock {
    _file: std::fs::File,
}

impl DatabaseLock {
    fn acquire(db_path: &Path) -> Result<DatabaseLock> {
        use std::os::fd::AsRawFd;
        let path = db_path.with_extension("db.lock");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::Io)?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(Error::Io)?;
        // SAFETY: flock on a descriptor we own; it is released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Configuration(
                format!(
                    "{} is in use by another process: one Berth process owns a SQLite database \
                     (run several instances on PostgreSQL)",
                    db_path.display()
                )
                .into(),
            ));
        }
        Ok(DatabaseLock { _file: file })
    }
}

/// A manifest row as it is stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A manifest to record, with what it references.
pub struct NewManifest<'a> {
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a Digest>,
    pub annotations: Option<String>,
    pub content: &'a [u8],
    pub blobs: Vec<&'a Digest>,
    pub children: Vec<&'a Digest>,
}

/// One entry of a referrers listing.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// Why a manifest could not be recorded.
#[derive(Debug)]
pub enum PutManifestError {
    /// A referenced blob or child manifest is not in the repository.
    Missing(String),
    /// The tag is immutable and names another manifest.
    Immutable(Refusal),
    /// The hold on the manifest's digest expired before the commit: its stored bytes may
    /// be collected, so it is not recorded.
    HoldLost,
    Db(sqlx::Error),
}

/// Why a tag or manifest was not deleted.
#[derive(Debug)]
pub enum DeleteError {
    /// A tag it would remove is immutable at the level that forbids deleting.
    Immutable(Refusal),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for DeleteError {
    fn from(e: sqlx::Error) -> Self {
        DeleteError::Db(e)
    }
}

impl From<sqlx::Error> for PutManifestError {
    fn from(e: sqlx::Error) -> Self {
        PutManifestError::Db(e)
    }
}

#[derive(Debug, Clone)]
pub struct Upload {
    pub repository: String,
    /// Bytes the blob store holds durably.
    pub size: u64,
    /// The hash state over those bytes as the registry saved it, if it did.
    pub hash_state: Option<Vec<u8>>,
    /// The parts that hold them, in order, where the store keeps parts.
    pub parts: Vec<String>,
}

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

const BLOB: &str = "blob";
const MANIFEST: &str = "manifest";

impl MetadataStore {
    /// Opens the database at `url` (`sqlite://path` or `postgres://...`) and brings its
    /// schema up to date. Several instances may start at once on one PostgreSQL database:
    /// sqlx runs migrations under a PostgreSQL advisory lock, so one migrates and the
    /// others wait and then find the schema current.
    pub async fn open(url: &str) -> Result<MetadataStore> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(Error::Configuration(
                format!("unsupported metadata database URL {url:?}: use sqlite:// or postgres://").into(),
            ));
        }
        let lock = match sqlite_path(url) {
            Some(path) => Some(Arc::new(DatabaseLock::acquire(&path)?)),
            None => None,
        };
        let url = if sqlite && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_owned() };
        let write = pool(sqlite, "FULL").max_connections(if sqlite { 1 } else { 16 }).connect(&url).await?;
        if sqlite {
            sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        } else {
            sqlx::migrate!("./migrations/postgres").run(&write).await?;
        }
        let offsets = pool(sqlite, "NORMAL").max_connections(if sqlite { 1 } else { 4 }).connect(&url).await?;
        let read = pool(sqlite, "FULL").max_connections(4).min_connections(1).connect(&url).await?;
        let writer = sqlite.then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(MetadataStore { read, write, offsets, writer, sqlite, _lock: lock })
    }

    /// Whether this process sees every write to the database (SQLite, locked by this
    /// process): only then may it cache answers that later writes change.
    pub fn is_exclusive(&self) -> bool {
        self._lock.is_some()
    }

    pub(crate) fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.read
    }

    pub(crate) async fn begin(&self) -> Result<WriteTx> {
        self.begin_on(&self.write).await
    }

    async fn begin_on(&self, pool: &AnyPool) -> Result<WriteTx> {
        let guard = match &self.writer {
            Some(w) => Some(w.clone().lock_owned().await),
            None => None,
        };
        let mut tx = WriteTx { conn: pool.acquire().await?, ended: false, _guard: guard, logged: Vec::new() };
        // SQLite: take the write lock now rather than on the first write, so a
        // transaction never has to upgrade from reading (it cannot fail half-way for that).
        tx.conn.execute(if self.sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" }).await?;
        Ok(tx)
    }

    // ---- repositories -------------------------------------------------------------

    async fn ensure_repository(tx: &mut WriteTx, name: &str) -> Result<i64> {
        sqlx::query("INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now_millis())
            .execute(tx.conn())
            .await?;
        sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(name).fetch_one(tx.conn()).await?.try_get(0)
    }

    pub async fn repository_id(&self, name: &str) -> Result<Option<i64>> {
        let row =
            sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(name).fetch_optional(&self.read).await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    /// Repository names after `last`, in byte order.
    pub async fn catalog(&self, last: &str, limit: u32) -> Result<Vec<String>> {
        let query = sqlx::query("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(last)
            .bind(i64::from(limit));
        first_column(query.fetch_all(&self.read).await?)
    }

    // ---- blobs --------------------------------------------------------------------

    /// Repositories a blob is linked to, in name order, at most `limit`.
    pub async fn repositories_holding(&self, digest: &Digest, limit: u32) -> Result<Vec<String>> {
        let query = sqlx::query(
            "SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
             WHERE rb.digest = $1 ORDER BY r.name LIMIT $2",
        )
        .bind(digest.as_str())
        .bind(i64::from(limit));
        first_column(query.fetch_all(&self.read).await?)
    }

    /// Size of a blob linked to the repository.
    pub async fn linked_blob(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM blobs b \
             JOIN repository_blobs rb ON rb.digest = b.digest \
             JOIN repositories r ON r.id = rb.repository_id \
             WHERE r.name = $1 AND b.digest = $2",
        )
        .bind(repository)
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| r.try_get::<i64, _>(0).map(|s| s as u64)).transpose()
    }

    /// Size of a blob known to the registry, in any repository.
    pub async fn blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| r.try_get::<i64, _>(0).map(|s| s as u64)).transpose()
    }

    /// Records a durable blob, links it to the repository and closes the upload session
    /// that produced it, in one transaction. The session must still hold the digest
    /// ([`MetadataStore::hold_blob`]); false, and nothing recorded, if its hold expired.
    pub async fn commit_blob(&self, repository: &str, digest: &Digest, size: u64, upload: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        self.lock_digest(&mut tx, digest.as_str(), true).await?;
        if !Self::settle_hold(&mut tx, upload, digest, size).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        let repo = Self::ensure_repository(&mut tx, repository).await?;
        self.link(&mut tx, repo, digest).await?;
        sqlx::query("DELETE FROM uploads WHERE id = $1").bind(upload).execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Links a blob to a repository, or renews the link's age: collection takes links
    /// nothing references only once they are older than its grace period.
    async fn link(&self, tx: &mut WriteTx, repo: i64, digest: &Digest) -> Result<()> {
        let sql = format!(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, {}) \
             ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at",
            self.clock()
        );
        sqlx::query(&sql).bind(repo).bind(digest.as_str()).execute(tx.conn()).await?;
        Ok(())
    }

    /// Links an already known blob into another repository (cross-repository mount).
    /// Returns false when the blob is not known to the registry.
    pub async fn mount_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let mut tx = self.begin().await?;
        // Under the digest's lock a blob with a row is not being collected.
        self.lock_digest(&mut tx, digest.as_str(), true).await?;
        let known = sqlx::query("SELECT 1 FROM blobs WHERE digest = $1")
            .bind(digest.as_str())
            .fetch_optional(tx.conn())
            .await?
            .is_some();
        if known {
            let repo = Self::ensure_repository(&mut tx, repository).await?;
            self.link(&mut tx, repo, digest).await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(known)
    }

    /// Removes a blob's link from a repository. The bytes stay until garbage collection
    /// finds them unreferenced everywhere.
    pub async fn unlink_blob(&self, repository: &str, digest: &Digest, actor: &Actor) -> Result<bool> {
        let q = sqlx::query(
            "DELETE FROM repository_blobs WHERE digest = $2 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository)
        .bind(digest.as_str());
        self.change_one(q, actor, Record::ok("blob.delete", &format!("{repository}@{digest}"))).await
    }

    // ---- manifests and tags -------------------------------------------------------

    /// Records a manifest, what it references, and optionally moves a tag to it, in one
    /// transaction. Every referenced blob and child manifest must be in the repository.
    /// `hold` held the manifest's digest while its bytes were stored at their content
    /// address ([`MetadataStore::hold_blob`]).
    pub async fn put_manifest(
        &self,
        repository: &str,
        m: &NewManifest<'_>,
        tag: Option<&str>,
        hold: &str,
        actor: &Actor,
    ) -> std::result::Result<(), PutManifestError> {
        let mut tx = self.begin().await?;
        self.lock_digest(&mut tx, m.digest.as_str(), true).await?;
        if !Self::settle_hold(&mut tx, hold, m.digest, m.content.len() as u64).await? {
            tx.rollback().await?;
            return Err(PutManifestError::HoldLost);
        }
        let repo = Self::ensure_repository(&mut tx, repository).await?;
        if let Some(target) = first_missing(tx.conn(), repo, m, self.lock_clause()).await? {
            tx.rollback().await?;
            return Err(PutManifestError::Missing(target));
        }
        let now = now_millis();
        // The push time is the database's: collection of untagged manifests measures
        // its grace on that clock. A re-push renews it.
        let sql = format!(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, size, content, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {}) \
             ON CONFLICT (repository_id, digest) DO UPDATE SET media_type = excluded.media_type, created_at = excluded.created_at",
            self.clock()
        );
        sqlx::query(&sql)
            .bind(repo)
            .bind(m.digest.as_str())
            .bind(m.media_type)
            .bind(m.artifact_type)
            .bind(m.subject.map(Digest::as_str))
            .bind(m.annotations.as_deref())
            .bind(m.content.len() as i64)
            .bind(m.content)
            .execute(tx.conn())
            .await?;
        for (kind, targets) in [(BLOB, &m.blobs), (MANIFEST, &m.children)] {
            for target in targets.iter() {
                sqlx::query(
                    "INSERT INTO manifest_references (repository_id, manifest_digest, target_digest, kind) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(repo)
                .bind(m.digest.as_str())
                .bind(target.as_str())
                .bind(kind)
                .execute(tx.conn())
                .await?;
            }
        }
        let mut previous = None;
        let mut overridden = false;
        if let Some(tag) = tag {
            previous = Self::tagged(&mut tx, repo, tag).await?;
            let protected = immutability::protection(&mut tx, repository, tag).await?;
            // An immutable tag moves only if it still names this digest (or nothing):
            // the condition is part of the write, so of two racing first pushes the
            // second finds the first one's digest.
            let guard = if protected.is_some() && !actor.overrides_immutability {
                " WHERE tags.manifest_digest = $3"
            } else {
                overridden = protected.is_some();
                ""
            };
            let sql = format!(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE SET manifest_digest = $3, updated_at = $4{guard}"
            );
            let q = sqlx::query(&sql).bind(repo).bind(tag).bind(m.digest.as_str()).bind(now);
            if q.execute(tx.conn()).await?.rows_affected() == 0 {
                let digest = Self::tagged(&mut tx, repo, tag).await?.unwrap_or_default();
                tx.rollback().await?;
                let level = protected.unwrap_or(Immutability::Move);
                return Err(PutManifestError::Immutable(Refusal { tag: tag.to_owned(), level, digest }));
            }
        }
        let target = format!("{repository}@{}", m.digest);
        let detail = serde_json::json!({ "tag": tag, "media_type": m.media_type }).to_string();
        tx.audit(actor, Record::ok("manifest.push", &target).with(detail)).await?;
        if let (Some(tag), Some(previous)) = (tag, previous.filter(|p| p != m.digest.as_str())) {
            let detail = serde_json::json!({ "from": previous, "to": m.digest.as_str() }).to_string();
            let action = if overridden { "tag.immutable_override" } else { "tag.overwrite" };
            tx.audit(actor, Record::ok(action, &format!("{repository}:{tag}")).with(detail)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The digest a tag names, read in `tx`.
    async fn tagged(tx: &mut WriteTx, repo: i64, tag: &str) -> Result<Option<String>> {
        sqlx::query("SELECT manifest_digest FROM tags WHERE repository_id = $1 AND name = $2")
            .bind(repo)
            .bind(tag)
            .fetch_optional(tx.conn())
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()
    }

    /// Refuses to delete `tags` (naming `digest`) if one is immutable at the level that
    /// forbids deleting, unless the actor overrides it (then audited).
    async fn check_deletable(
        tx: &mut WriteTx,
        repository: &str,
        tags: &[String],
        digest: &str,
        actor: &Actor,
    ) -> std::result::Result<(), DeleteError> {
        for tag in tags {
            if immutability::protection(tx, repository, tag).await? != Some(Immutability::Delete) {
                continue;
            }
            if !actor.overrides_immutability {
                let refusal = Refusal { tag: tag.clone(), level: Immutability::Delete, digest: digest.to_owned() };
                return Err(DeleteError::Immutable(refusal));
            }
            let detail = serde_json::json!({ "deleted": digest }).to_string();
            tx.audit(actor, Record::ok("tag.immutable_override", &format!("{repository}:{tag}")).with(detail)).await?;
        }
        Ok(())
    }

    fn manifest_from(row: &AnyRow) -> Result<StoredManifest> {
        Ok(StoredManifest { digest: row.try_get(0)?, media_type: row.try_get(1)?, content: row.try_get(2)? })
    }

    pub async fn manifest_by_digest(&self, repository: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM manifests m \
             JOIN repositories r ON r.id = m.repository_id WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repository)
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(Self::manifest_from)
        .transpose()
    }

    pub async fn manifest_by_tag(&self, repository: &str, tag: &str) -> Result<Option<StoredManifest>> {
        sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM tags t \
             JOIN repositories r ON r.id = t.repository_id \
             JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
             WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repository)
        .bind(tag)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(Self::manifest_from)
        .transpose()
    }

    /// Deletes a manifest, the tags on it and its references. Returns false if absent.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &Digest,
        actor: &Actor,
    ) -> std::result::Result<bool, DeleteError> {
        let mut tx = self.begin().await?;
        let Some(repo) = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repository)
            .fetch_optional(tx.conn())
            .await?
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        let repo: i64 = repo.try_get(0)?;
        let tags = first_column(
            sqlx::query("SELECT name FROM tags WHERE repository_id = $1 AND manifest_digest = $2")
                .bind(repo)
                .bind(digest.as_str())
                .fetch_all(tx.conn())
                .await?,
        )?;
        if let Err(refused) = Self::check_deletable(&mut tx, repository, &tags, digest.as_str(), actor).await {
            tx.rollback().await?;
            return Err(refused);
        }
        let deleted = sqlx::query("DELETE FROM manifests WHERE repository_id = $1 AND digest = $2")
            .bind(repo)
            .bind(digest.as_str())
            .execute(tx.conn())
            .await?
            .rows_affected();
        for sql in [
            "DELETE FROM tags WHERE repository_id = $1 AND manifest_digest = $2",
            "DELETE FROM manifest_references WHERE repository_id = $1 AND manifest_digest = $2",
        ] {
            sqlx::query(sql).bind(repo).bind(digest.as_str()).execute(tx.conn()).await?;
        }
        if deleted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.audit(actor, Record::ok("manifest.delete", &format!("{repository}@{digest}"))).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes one tag; the manifest stays. Returns false if there was no such tag.
    pub async fn delete_tag(
        &self,
        repository: &str,
        tag: &str,
        actor: &Actor,
    ) -> std::result::Result<bool, DeleteError> {
        let mut tx = self.begin().await?;
        let found = sqlx::query(
            "SELECT t.manifest_digest FROM tags t JOIN repositories r ON r.id = t.repository_id \
             WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repository)
        .bind(tag)
        .fetch_optional(tx.conn())
        .await?;
        let Some(digest) = found.map(|r| r.try_get::<String, _>(0)).transpose()? else {
            tx.rollback().await?;
            return Ok(false);
        };
        if let Err(refused) = Self::check_deletable(&mut tx, repository, &[tag.to_owned()], &digest, actor).await {
            tx.rollback().await?;
            return Err(refused);
        }
        sqlx::query(
            "DELETE FROM tags WHERE name = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository)
        .bind(tag)
        .execute(tx.conn())
        .await?;
        tx.audit(actor, Record::ok("tag.delete", &format!("{repository}:{tag}"))).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Tag names after `last` in byte order, at most `limit`.
    pub async fn tags(&self, repository_id: i64, last: &str, limit: u32) -> Result<Vec<String>> {
        let query = sqlx::query("SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3")
            .bind(repository_id)
            .bind(last)
            .bind(i64::from(limit));
        first_column(query.fetch_all(&self.read).await?)
    }

    /// Manifests in the repository whose subject is `subject`, optionally of one
    /// artifact type, ordered by digest.
    pub async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m \
             JOIN repositories r ON r.id = m.repository_id \
             WHERE r.name = $1 AND m.subject = $2 AND ($3 IS NULL OR m.artifact_type = $3) ORDER BY m.digest",
        )
        .bind(repository)
        .bind(subject.as_str())
        .bind(artifact_type)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| {
            Ok(Referrer {
                digest: r.try_get(0)?,
                media_type: r.try_get(1)?,
                size: r.try_get(2)?,
                artifact_type: r.try_get(3)?,
                annotations: r.try_get(4)?,
            })
        })
        .collect()
    }

    // ---- upload sessions ----------------------------------------------------------

    /// Opens an upload session unless `repository` already has `per_repository` open
    /// sessions or the registry `total`. False when a limit is reached.
    pub async fn create_upload(&self, id: &str, repository: &str, per_repository: u64, total: u64) -> Result<bool> {
        let now = now_millis();
        let q = sqlx::query(
            "INSERT INTO uploads (id, repository, size, created_at, updated_at) \
             SELECT $1, $2, 0, $3, $3 \
             WHERE (SELECT count(*) FROM uploads WHERE repository = $2) < $4 \
             AND (SELECT count(*) FROM uploads) < $5",
        )
        .bind(id)
        .bind(repository)
        .bind(now)
        .bind(i64::try_from(per_repository).unwrap_or(i64::MAX))
        .bind(i64::try_from(total).unwrap_or(i64::MAX));
        Ok(self.write_one(q).await? == 1)
    }

    /// Runs one statement as its own write transaction.
    pub(crate) async fn write_one<'q>(
        &self,
        q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let n = q.execute(tx.conn()).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Runs one statement as its own write transaction with its audit event; false, and
    /// nothing recorded, when it changed no row.
    pub(crate) async fn change_one<'q>(
        &self,
        q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
        actor: &Actor,
        record: Record<'_>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        if q.execute(tx.conn()).await?.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.audit(actor, record).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes the row `delete` names by `key`, and first the rows that refer to it
    /// (`dependents`, each bound to the same key), with its audit event, in one
    /// transaction; false, and nothing changed, if there was no such row.
    pub(crate) async fn delete_with_dependents(
        &self,
        dependents: &[&str],
        delete: &str,
        key: &str,
        actor: &Actor,
        record: Record<'_>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        for sql in dependents {
            sqlx::query(sql).bind(key).execute(tx.conn()).await?;
        }
        if sqlx::query(delete).bind(key).execute(tx.conn()).await?.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.audit(actor, record).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>> {
        let row = sqlx::query("SELECT repository, size, hash_state, parts FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| {
            let parts: String = r.try_get(3)?;
            Ok(Upload {
                repository: r.try_get(0)?,
                size: r.try_get::<i64, _>(1)? as u64,
                hash_state: r.try_get(2)?,
                parts: parts.lines().map(str::to_owned).collect(),
            })
        })
        .transpose()
    }

    /// Moves a session's durable offset from `from` to `to`, with the hash state over
    /// the first `to` bytes and the part that holds the new bytes, if the store keeps
    /// parts. False when the session is gone or another request moved it first: the
    /// caller's bytes are then not part of the upload.
    ///
    /// This one commit does not wait for its own fsync (the `offsets` connection, or
    /// `synchronous_commit = off` for this transaction): a power loss can only make the
    /// recorded offset lag behind the durable spool, never run ahead of it, and a lagging
    /// offset costs the client a restarted chunk, not data. The next durable commit
    /// syncs it along with its own.
    pub async fn advance_upload(
        &self,
        id: &str,
        from: u64,
        to: u64,
        hash_state: &[u8],
        part: Option<&str>,
    ) -> Result<bool> {
        debug_assert!(part.is_none_or(|p| !p.contains('\n')));
        let mut tx = self.begin_on(&self.offsets).await?;
        if !self.sqlite {
            tx.conn().execute("SET LOCAL synchronous_commit = off").await?;
        }
        let done = sqlx::query(
            "UPDATE uploads SET size = $3, hash_state = $5, parts = parts || $6, updated_at = $4 \
             WHERE id = $1 AND size = $2",
        )
        .bind(id)
        .bind(from as i64)
        .bind(to as i64)
        .bind(now_millis())
        .bind(hash_state)
        .bind(part.map(|p| format!("{p}\n")).unwrap_or_default())
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool> {
        Ok(self.write_one(sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id)).await? > 0)
    }

    /// Ids of sessions idle since before `cutoff_millis`.
    pub async fn idle_uploads(&self, cutoff_millis: i64) -> Result<Vec<String>> {
        let query = sqlx::query("SELECT id FROM uploads WHERE updated_at < $1 LIMIT 1000").bind(cutoff_millis);
        first_column(query.fetch_all(&self.read).await?)
    }

    /// Every open session with the time of its last change, for reconciling sessions
    /// with their spools. Bounded by the session limits.
    pub async fn uploads(&self) -> Result<Vec<(String, i64)>> {
        sqlx::query("SELECT id, updated_at FROM uploads")
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The first blob or child manifest of `m` that the repository does not hold, if any.
    /// A read-only check, so that a manifest that will be rejected costs no storage
    /// write; `put_manifest` checks again inside its transaction.
    pub async fn missing_reference(&self, repository: &str, m: &NewManifest<'_>) -> Result<Option<String>> {
        let mut conn = self.read.acquire().await?;
        let Some(repo) = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repository)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(m.blobs.iter().chain(&m.children).next().map(|d| d.to_string()));
        };
        let repo: i64 = repo.try_get(0)?;
        first_missing(&mut conn, repo, m, "").await
    }

    /// What a write transaction appends to a `SELECT` of rows it relies on, so that no
    /// concurrent transaction deletes them before it commits. SQLite needs none: its
    /// writers run one at a time. PostgreSQL runs them side by side under READ
    /// COMMITTED, where a checked row could otherwise vanish between check and commit.
    fn lock_clause(&self) -> &'static str {
        if self.sqlite {
            ""
        } else {
            " FOR KEY SHARE"
        }
    }
}

/// The first column of every row (names, ids).
pub(crate) fn first_column(rows: Vec<AnyRow>) -> Result<Vec<String>> {
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// The first reference of `m` not held by repository `repo`; `lock` (see
/// [`MetadataStore::lock_clause`]) keeps the rows found until the transaction ends.
async fn first_missing(conn: &mut AnyConnection, repo: i64, m: &NewManifest<'_>, lock: &str) -> Result<Option<String>> {
    for (kind, targets) in [(BLOB, &m.blobs), (MANIFEST, &m.children)] {
        let table = if kind == BLOB { "repository_blobs" } else { "manifests" };
        let sql = format!("SELECT 1 FROM {table} WHERE repository_id = $1 AND digest = $2{lock}");
        for target in targets.iter() {
            if sqlx::query(&sql).bind(repo).bind(target.as_str()).fetch_optional(&mut *conn).await?.is_none() {
                return Ok(Some(target.to_string()));
            }
        }
    }
    Ok(None)
}
