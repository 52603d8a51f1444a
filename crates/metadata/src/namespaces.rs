//! Namespaces, their members and roles, and teams: the facts authorization decides on.
//! What a role allows is the authorization layer's business; this module only stores
//! who holds which role where, and answers the two questions asked on every request
//! (a caller's standing in one namespace, and which key ranges a catalog page may show)
//! with indexed queries.

use crate::audit::{Actor, Record};
use crate::store::{now_millis, MetadataStore, Result};
use sqlx::Row;
use std::fmt;

/// A role in a namespace, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    Developer,
    Maintainer,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Developer, Role::Maintainer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a membership is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberKind {
    /// A person or a robot.
    User,
    Team,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::Team => "team",
        }
    }

    pub fn parse(s: &str) -> Option<MemberKind> {
        [MemberKind::User, MemberKind::Team].into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Anyone, signed in or not, may pull its repositories.
    pub public: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub kind: MemberKind,
    pub name: String,
    pub role: Role,
}

/// A caller's standing in a namespace that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub public: bool,
    /// The highest role held directly or through a team.
    pub role: Option<Role>,
}

/// A namespace in a catalog view: whether the caller may see its repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceVisibility {
    pub name: String,
    pub visible: bool,
}

/// A half-open range of repository names `[from, to)`; `to: None` runs to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRange {
    pub from: String,
    pub to: Option<String>,
}

impl NameRange {
    /// The repositories of a namespace: every name that starts with `namespace/`
    /// (`'0'` is the byte after `'/'`).
    pub fn namespace(name: &str) -> NameRange {
        NameRange { from: format!("{name}/"), to: Some(format!("{name}0")) }
    }
}

const STANDING: &str = "SELECT n.public, m.role FROM namespaces n \
     LEFT JOIN namespace_members m ON m.namespace = n.name AND ( \
       (m.kind = 'user' AND m.member = $2) OR \
       (m.kind = 'team' AND m.member IN (SELECT team FROM team_members WHERE member = $2))) \
     WHERE n.name = $1";

impl MetadataStore {
    /// `user`'s standing in `namespace`, or `None` if no such namespace exists (then
    /// the registry's defaults apply). One indexed query.
    pub async fn standing(&self, namespace: &str, user: &str) -> Result<Option<Standing>> {
        let rows = sqlx::query(STANDING).bind(namespace).bind(user).fetch_all(self.reader()).await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let public = first.try_get::<i64, _>(0)? != 0;
        let mut role = None;
        for r in &rows {
            let held: Option<String> = r.try_get(1)?;
            role = role.max(held.as_deref().and_then(Role::parse));
        }
        Ok(Some(Standing { public, role }))
    }

    /// Every namespace with whether `user` (empty: anonymous) may see it: public, or a
    /// member directly or through a team. Namespaces are few; their repositories are not.
    pub async fn namespace_visibility(&self, user: &str) -> Result<Vec<NamespaceVisibility>> {
        sqlx::query(
            "SELECT n.name, CAST(CASE WHEN n.public <> 0 OR EXISTS (SELECT 1 FROM namespace_members m \
               WHERE m.namespace = n.name AND ((m.kind = 'user' AND m.member = $1) OR \
               (m.kind = 'team' AND m.member IN (SELECT team FROM team_members WHERE member = $1)))) \
             THEN 1 ELSE 0 END AS BIGINT) FROM namespaces n ORDER BY n.name",
        )
        .bind(user)
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| Ok(NamespaceVisibility { name: r.try_get(0)?, visible: r.try_get::<i64, _>(1)? != 0 }))
        .collect()
    }

    /// Repository names after `last` within `ranges` (sorted, disjoint), at most `limit`:
    /// one index range scan per range until the page is full, so a page costs a page
    /// plus one query per range it crosses.
    pub async fn catalog_within(&self, ranges: &[NameRange], last: &str, limit: u32) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for range in ranges {
            if range.to.as_deref().is_some_and(|to| to <= last) {
                continue;
            }
            let want = limit as usize - names.len();
            if want == 0 {
                break;
            }
            let rows = sqlx::query(
                "SELECT name FROM repositories WHERE name > $1 AND name >= $2 AND ($3 IS NULL OR name < $3) \
                 ORDER BY name LIMIT $4",
            )
            .bind(last)
            .bind(&range.from)
            .bind(range.to.as_deref())
            .bind(want as i64)
            .fetch_all(self.reader())
            .await?;
            for r in rows {
                names.push(r.try_get(0)?);
            }
        }
        Ok(names)
    }

    pub async fn namespace(&self, name: &str) -> Result<Option<Namespace>> {
        let row = sqlx::query("SELECT name, public, created_at FROM namespaces WHERE name = $1")
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(namespace_from).transpose()
    }

    /// Namespaces after `after` in name order.
    pub async fn namespaces(&self, after: &str, limit: u32) -> Result<Vec<Namespace>> {
        sqlx::query("SELECT name, public, created_at FROM namespaces WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(namespace_from)
            .collect()
    }

    /// Creates a namespace; false if it exists.
    pub async fn create_namespace(&self, name: &str, public: bool, actor: &Actor) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO namespaces (name, public, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(i64::from(public))
        .bind(now_millis());
        let detail = serde_json::json!({ "public": public }).to_string();
        self.change_one(q, actor, Record::ok("namespace.create", name).with(detail)).await
    }

    pub async fn set_namespace_public(&self, name: &str, public: bool, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("UPDATE namespaces SET public = $2 WHERE name = $1").bind(name).bind(i64::from(public));
        let detail = serde_json::json!({ "public": public }).to_string();
        self.change_one(q, actor, Record::ok("namespace.update", name).with(detail)).await
    }

    /// Deletes a namespace and its memberships (not its repositories: they fall back to
    /// the registry's defaults).
    pub async fn delete_namespace(&self, name: &str, actor: &Actor) -> Result<bool> {
        let dependents = ["DELETE FROM namespace_members WHERE namespace = $1"];
        let delete = "DELETE FROM namespaces WHERE name = $1";
        self.delete_with_dependents(&dependents, delete, name, actor, Record::ok("namespace.delete", name)).await
    }

    pub async fn namespace_members(&self, namespace: &str) -> Result<Vec<Member>> {
        sqlx::query("SELECT kind, member, role FROM namespace_members WHERE namespace = $1 ORDER BY kind, member")
            .bind(namespace)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| {
                let bad = |what: &str, v: String| sqlx::Error::Decode(format!("unknown {what} {v:?}").into());
                let kind: String = r.try_get(0)?;
                let role: String = r.try_get(2)?;
                Ok(Member {
                    kind: MemberKind::parse(&kind).ok_or_else(|| bad("member kind", kind.clone()))?,
                    name: r.try_get(1)?,
                    role: Role::parse(&role).ok_or_else(|| bad("role", role.clone()))?,
                })
            })
            .collect()
    }

    /// The namespaces where a user or team holds a role directly.
    pub async fn memberships(&self, kind: MemberKind, name: &str) -> Result<Vec<String>> {
        let q =
            sqlx::query("SELECT namespace FROM namespace_members WHERE kind = $1 AND member = $2 ORDER BY namespace")
                .bind(kind.as_str())
                .bind(name);
        crate::store::first_column(q.fetch_all(self.reader()).await?)
    }

    /// Gives a member a role in a namespace (replacing any role it had there); false if
    /// the namespace does not exist.
    pub async fn set_member(&self, namespace: &str, member: &Member, actor: &Actor) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO namespace_members (namespace, kind, member, role) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM namespaces WHERE name = $1) \
             ON CONFLICT (namespace, kind, member) DO UPDATE SET role = excluded.role",
        )
        .bind(namespace)
        .bind(member.kind.as_str())
        .bind(&member.name)
        .bind(member.role.as_str());
        let detail =
            serde_json::json!({ "kind": member.kind.as_str(), "member": member.name, "role": member.role.as_str() });
        self.change_one(q, actor, Record::ok("member.set", namespace).with(detail.to_string())).await
    }

    pub async fn remove_member(&self, namespace: &str, kind: MemberKind, name: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("DELETE FROM namespace_members WHERE namespace = $1 AND kind = $2 AND member = $3")
            .bind(namespace)
            .bind(kind.as_str())
            .bind(name);
        let detail = serde_json::json!({ "kind": kind.as_str(), "member": name }).to_string();
        self.change_one(q, actor, Record::ok("member.remove", namespace).with(detail)).await
    }

    // ---- teams --------------------------------------------------------------------

    pub async fn teams(&self, after: &str, limit: u32) -> Result<Vec<String>> {
        let q = sqlx::query("SELECT name FROM teams WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after)
            .bind(i64::from(limit));
        crate::store::first_column(q.fetch_all(self.reader()).await?)
    }

    pub async fn team_exists(&self, name: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM teams WHERE name = $1").bind(name).fetch_optional(self.reader()).await?.is_some())
    }

    pub async fn create_team(&self, name: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("INSERT INTO teams (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now_millis());
        self.change_one(q, actor, Record::ok("team.create", name)).await
    }

    /// Deletes a team, its members and the roles it held.
    pub async fn delete_team(&self, name: &str, actor: &Actor) -> Result<bool> {
        let dependents = [
            "DELETE FROM team_members WHERE team = $1",
            "DELETE FROM namespace_members WHERE kind = 'team' AND member = $1",
        ];
        let delete = "DELETE FROM teams WHERE name = $1";
        self.delete_with_dependents(&dependents, delete, name, actor, Record::ok("team.delete", name)).await
    }

    pub async fn team_members(&self, team: &str) -> Result<Vec<String>> {
        let q = sqlx::query("SELECT member FROM team_members WHERE team = $1 ORDER BY member").bind(team);
        crate::store::first_column(q.fetch_all(self.reader()).await?)
    }

    /// Adds a user to a team; false if the team does not exist or has the user already.
    pub async fn add_team_member(&self, team: &str, user: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO team_members (team, member) SELECT $1, $2 \
             WHERE EXISTS (SELECT 1 FROM teams WHERE name = $1) ON CONFLICT (team, member) DO NOTHING",
        )
        .bind(team)
        .bind(user);
        let detail = serde_json::json!({ "member": user }).to_string();
        self.change_one(q, actor, Record::ok("team.member.add", team).with(detail)).await
    }

    pub async fn remove_team_member(&self, team: &str, user: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("DELETE FROM team_members WHERE team = $1 AND member = $2").bind(team).bind(user);
        let detail = serde_json::json!({ "member": user }).to_string();
        self.change_one(q, actor, Record::ok("team.member.remove", team).with(detail)).await
    }
}

fn namespace_from(r: &sqlx::any::AnyRow) -> Result<Namespace> {
    Ok(Namespace { name: r.try_get(0)?, public: r.try_get::<i64, _>(1)? != 0, created_at: r.try_get(2)? })
}
