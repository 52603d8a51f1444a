//! Tag immutability: rules that keep release tags where they were pushed. A covered tag
//! cannot be moved to another manifest (re-pushing the same digest, as CI retries do,
//! succeeds); at the stricter level it cannot be deleted either, nor the manifest it
//! names. The rules are read inside the transaction that moves or deletes the tag, and
//! the move itself is conditional on the tag's current digest, so two concurrent first
//! pushes of a covered tag have exactly one winner.

use crate::audit::{Actor, Record};
use crate::store::{now_millis, MetadataStore, Result, WriteTx};
use berth_proto::wildcard;
use sqlx::Row;

/// What a rule forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Immutability {
    /// Moving a covered tag to another manifest.
    Move,
    /// Moving it, deleting it, and deleting the manifest it names.
    Delete,
}

impl Immutability {
    pub fn as_str(self) -> &'static str {
        match self {
            Immutability::Move => "move",
            Immutability::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Immutability> {
        [Immutability::Move, Immutability::Delete].into_iter().find(|l| l.as_str() == s)
    }
}

/// A rule, as stored or as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImmutabilityRule {
    /// `None` for a rule not yet stored.
    pub id: Option<i64>,
    /// The namespace whose repositories it covers.
    pub namespace: String,
    /// A pattern (`*` any run of characters) on the repository name after
    /// `<namespace>/`.
    pub repositories: String,
    /// A pattern on tags, and patterns of tags it leaves out.
    pub tags: String,
    pub except: Vec<String>,
    pub level: Immutability,
    /// Whether signature and attestation tags are covered too; by default they are not,
    /// so that signing a release after it was pushed keeps working.
    pub signatures: bool,
    /// From the configuration file: managed there, not through the API.
    pub declared: bool,
}

impl ImmutabilityRule {
    /// Whether it covers `tag` of `repository` (a full repository name).
    pub fn covers(&self, repository: &str, tag: &str) -> bool {
        let Some(rest) = repository.strip_prefix(&self.namespace).and_then(|r| r.strip_prefix('/')) else {
            return false;
        };
        wildcard(&self.repositories, rest)
            && wildcard(&self.tags, tag)
            && !self.except.iter().any(|e| wildcard(e, tag))
            && (self.signatures || !is_signature_tag(tag))
    }
}

/// cosign's tags for signatures, attestations and SBOMs: `sha256-<64 hex>.sig`, `.att`,
/// `.sbom`.
pub fn is_signature_tag(tag: &str) -> bool {
    let Some((digest, suffix)) = tag.split_once('.') else { return false };
    matches!(suffix, "sig" | "att" | "sbom")
        && digest.strip_prefix("sha256-").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub tag: String,
    pub level: Immutability,
    /// The digest the tag names and keeps.
    pub digest: String,
}

const COLUMNS: &str = "id, namespace, repositories, tags, except_tags, level, signatures, declared";

fn rule_from(row: &sqlx::any::AnyRow) -> Result<ImmutabilityRule> {
    let except: String = row.try_get(4)?;
    let level: String = row.try_get(5)?;
    Ok(ImmutabilityRule {
        id: Some(row.try_get(0)?),
        namespace: row.try_get(1)?,
        repositories: row.try_get(2)?,
        tags: row.try_get(3)?,
        except: serde_json::from_str(&except).unwrap_or_default(),
        level: Immutability::parse(&level).unwrap_or(Immutability::Delete),
        signatures: row.try_get::<i64, _>(6)? != 0,
        declared: row.try_get::<i64, _>(7)? != 0,
    })
}

impl MetadataStore {
    /// The rules of one namespace, or of all, in the order they were made.
    pub async fn immutability_rules(&self, namespace: Option<&str>) -> Result<Vec<ImmutabilityRule>> {
        let sql = format!("SELECT {COLUMNS} FROM immutability_rules WHERE $1 IS NULL OR namespace = $1 ORDER BY id");
        sqlx::query(&sql).bind(namespace).fetch_all(self.reader()).await?.iter().map(rule_from).collect()
    }

    /// Stores a rule; its id.
    pub async fn add_immutability_rule(&self, rule: &ImmutabilityRule, actor: &Actor) -> Result<i64> {
        let mut tx = self.begin().await?;
        let id = insert_rule(&mut tx, rule).await?;
        let target = format!("{}/{}:{}", rule.namespace, rule.repositories, rule.tags);
        let detail = serde_json::json!({ "id": id, "level": rule.level.as_str(), "except": rule.except }).to_string();
        tx.audit(actor, Record::ok("immutability.create", &target).with(detail)).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Removes a rule of the API (not a declared one); false if the namespace has no such
    /// rule.
    pub async fn remove_immutability_rule(&self, namespace: &str, id: i64, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("DELETE FROM immutability_rules WHERE id = $1 AND namespace = $2 AND declared = 0")
            .bind(id)
            .bind(namespace);
        self.change_one(q, actor, Record::ok("immutability.delete", &format!("{namespace}#{id}"))).await
    }

    /// Replaces the declared rules by those of the configuration file, in one
    /// transaction (every instance does this at start-up with the same file).
    pub async fn declare_immutability_rules(&self, rules: &[ImmutabilityRule]) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM immutability_rules WHERE declared = 1").execute(tx.conn()).await?;
        for rule in rules {
            insert_rule(&mut tx, &ImmutabilityRule { declared: true, ..rule.clone() }).await?;
        }
        tx.commit().await
    }
}

async fn insert_rule(tx: &mut WriteTx, rule: &ImmutabilityRule) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO immutability_rules (namespace, repositories, tags, except_tags, level, signatures, declared, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&rule.namespace)
    .bind(&rule.repositories)
    .bind(&rule.tags)
    .bind(serde_json::to_string(&rule.except).unwrap_or_else(|_| "[]".into()))
    .bind(rule.level.as_str())
    .bind(i64::from(rule.signatures))
    .bind(i64::from(rule.declared))
    .bind(now_millis())
    .fetch_one(tx.conn())
    .await?;
    row.try_get(0)
}

/// The strongest level of the rules covering `tag` of `repository`, read in `tx`.
/// Rules live under the namespace that is a prefix of the repository's name: every
/// prefix ending before a `/` is a candidate, so no namespace depth is assumed.
pub(crate) async fn protection(tx: &mut WriteTx, repository: &str, tag: &str) -> Result<Option<Immutability>> {
    let prefixes: Vec<&str> = repository.match_indices('/').map(|(at, _)| &repository[..at]).collect();
    if prefixes.is_empty() {
        return Ok(None);
    }
    let marks: Vec<String> = (1..=prefixes.len()).map(|i| format!("${i}")).collect();
    let sql = format!("SELECT {COLUMNS} FROM immutability_rules WHERE namespace IN ({})", marks.join(", "));
    let mut q = sqlx::query(&sql);
    for p in &prefixes {
        q = q.bind(*p);
    }
    let mut strongest = None;
    for row in q.fetch_all(tx.conn()).await? {
        let rule = rule_from(&row)?;
        if rule.covers(repository, tag) {
            strongest = strongest.max(Some(rule.level));
        }
    }
    Ok(strongest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repositories: &str, tags: &str, except: &[&str]) -> ImmutabilityRule {
        ImmutabilityRule {
            id: None,
            namespace: "team".into(),
            repositories: repositories.into(),
            tags: tags.into(),
            except: except.iter().map(|e| e.to_string()).collect(),
            level: Immutability::Move,
            signatures: false,
            declared: false,
        }
    }

    #[test]
    fn rules_cover_their_namespace_repositories_and_tags_less_exceptions() {
        let r = rule("*", "v*", &["*-rc*"]);
        assert!(r.covers("team/app", "v1.2"));
        assert!(r.covers("team/sub/app", "v1"));
        assert!(!r.covers("team/app", "v1.2-rc1"), "excepted");
        assert!(!r.covers("team/app", "latest"));
        assert!(!r.covers("teamx/app", "v1"), "another namespace");
        assert!(!r.covers("other/team/app", "v1"));
        let only = rule("app", "*", &[]);
        assert!(only.covers("team/app", "anything") && !only.covers("team/app2", "x"));
    }

    #[test]
    fn signature_tags_are_exempt_unless_the_rule_says_otherwise() {
        let sig = format!("sha256-{}.sig", "ab".repeat(32));
        assert!(is_signature_tag(&sig) && is_signature_tag(&sig.replace(".sig", ".att")));
        assert!(is_signature_tag(&sig.replace(".sig", ".sbom")));
        assert!(!is_signature_tag("sha256-abc.sig") && !is_signature_tag(&sig.replace(".sig", ".tar")));
        let mut r = rule("*", "*", &[]);
        assert!(!r.covers("team/app", &sig));
        r.signatures = true;
        assert!(r.covers("team/app", &sig));
    }
}
