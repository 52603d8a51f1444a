//! The audit log: who did what, when, from where, and how it ended. An event is written
//! in the transaction of the change it records, so the log never claims a change that
//! was rolled back nor misses one that was committed; it also goes to the log stream.

use crate::store::{now_millis, MetadataStore, Result, WriteTx};
use sqlx::Row;

/// Who is acting: a user or robot name (empty for an anonymous caller) and the client's
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actor {
    pub name: String,
    pub client: String,
    /// A registry admin who asked to move or delete immutable tags anyway: allowed, and
    /// each override is audited.
    pub overrides_immutability: bool,
}

impl Actor {
    pub fn new(name: impl Into<String>, client: impl Into<String>) -> Actor {
        Actor { name: name.into(), client: client.into(), overrides_immutability: false }
    }

    /// Changes made on the host (`berth admin`, start-up), not through the API.
    pub fn system() -> Actor {
        Actor::new("system", "local")
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub actor: String,
    pub client: String,
    /// What happened, e.g. `manifest.push`, `user.create`, `auth.failure`.
    pub action: String,
    /// What it happened to: a repository reference, a user, a namespace.
    pub target: String,
    /// `ok` or `denied`.
    pub result: String,
    /// More facts as a JSON object, when there are any.
    pub detail: Option<String>,
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Only events at or after / before these times (milliseconds).
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Paging: only events older than this id (newest come first).
    pub before: Option<i64>,
    pub limit: u32,
}

/// What is about to be recorded.
pub(crate) struct Record<'a> {
    pub action: &'a str,
    pub target: &'a str,
    pub result: &'a str,
    pub detail: Option<String>,
}

impl<'a> Record<'a> {
    pub(crate) fn ok(action: &'a str, target: &'a str) -> Record<'a> {
        Record { action, target, result: "ok", detail: None }
    }

    pub(crate) fn with(mut self, detail: String) -> Record<'a> {
        self.detail = Some(detail);
        self
    }
}

impl WriteTx {
    /// Writes an audit event inside this transaction: it commits or vanishes with the
    /// change it describes. It reaches the log stream only once the commit succeeded.
    pub(crate) async fn audit(&mut self, actor: &Actor, record: Record<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, client, action, target, result, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_millis())
        .bind(&actor.name)
        .bind(&actor.client)
        .bind(record.action)
        .bind(record.target)
        .bind(record.result)
        .bind(record.detail.as_deref())
        .execute(self.conn())
        .await?;
        self.logged.push(format!(
            "actor={:?} client={} action={} target={:?} result={} detail={}",
            actor.name,
            actor.client,
            record.action,
            record.target,
            record.result,
            record.detail.as_deref().unwrap_or("{}")
        ));
        Ok(())
    }
}

/// Emits the audit lines of a committed transaction.
pub(crate) fn emit(lines: &[String]) {
    for line in lines {
        tracing::info!(target: "berth::audit", "{line}");
    }
}

impl MetadataStore {
    /// Records an event that changes nothing else (a refused sign-in, a denied request).
    pub async fn audit_refusal(&self, actor: &Actor, action: &str, target: &str, detail: Option<String>) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.audit(actor, Record { action, target, result: "denied", detail }).await?;
        tx.commit().await
    }

    /// Events matching `q`, newest first.
    pub async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        sqlx::query(
            "SELECT id, at, actor, client, action, target, result, detail FROM audit_events \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR target = $3) \
             AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5) AND ($6 IS NULL OR id < $6) \
             ORDER BY id DESC LIMIT $7",
        )
        .bind(q.actor.as_deref())
        .bind(q.action.as_deref())
        .bind(q.target.as_deref())
        .bind(q.since)
        .bind(q.until)
        .bind(q.before)
        .bind(i64::from(q.limit))
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| {
            Ok(AuditEvent {
                id: r.try_get(0)?,
                at: r.try_get(1)?,
                actor: r.try_get(2)?,
                client: r.try_get(3)?,
                action: r.try_get(4)?,
                target: r.try_get(5)?,
                result: r.try_get(6)?,
                detail: r.try_get(7)?,
            })
        })
        .collect()
    }
}
