//! Who may sign in (people and robots) and the token service's keys.

use crate::audit::{Actor, Record};
use crate::namespaces::Member;
use crate::store::{now_millis, MetadataStore, Result};
use sqlx::Row;

/// Robot accounts' names start with this, so no person can take one's name.
pub const ROBOT_PREFIX: &str = "robot$";

/// Begins the stored "hash" of a person who signs in through an OIDC provider: a
/// random stamp, not a password's hash, so no password ever matches it. Refresh tokens
/// are tied to it, so replacing it (or deleting the user) ends every credential issued.
pub const OIDC_STAMP_PREFIX: &str = "oidc$";

/// A user whose password (if any) is kept in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// argon2id, as a PHC string; `None` for users who sign in elsewhere (LDAP, OIDC).
    pub password_hash: Option<String>,
    pub admin: bool,
    /// When the account stops working (milliseconds since the epoch); robots have one.
    pub expires_at: Option<i64>,
}

impl UserRecord {
    pub fn is_robot(&self) -> bool {
        self.name.starts_with(ROBOT_PREFIX)
    }
}

/// A signing key of the built-in token service.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub kid: String,
    /// PKCS#8 PEM.
    pub private_pem: String,
    pub created_at: i64,
}

impl MetadataStore {
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let row =
            sqlx::query(&format!("{USER_COLUMNS} WHERE name = $1")).bind(name).fetch_optional(self.reader()).await?;
        row.as_ref().map(user_from).transpose()
    }

    /// Users (people and robots) after `after` in name order.
    pub async fn users(&self, after: &str, limit: u32) -> Result<Vec<UserRecord>> {
        sqlx::query(&format!("{USER_COLUMNS} WHERE name > $1 ORDER BY name LIMIT $2"))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    /// Creates a user (and, for a robot, its memberships) in one transaction; `false`
    /// if the name is taken. Memberships in namespaces that do not exist are skipped.
    pub async fn create_user(
        &self,
        user: &UserRecord,
        memberships: &[(String, Member)],
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, admin, expires_at, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(i64::from(user.admin))
        .bind(user.expires_at)
        .bind(now_millis())
        .execute(tx.conn())
        .await?
        .rows_affected();
        if done == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (namespace, m) in memberships {
            sqlx::query(
                "INSERT INTO namespace_members (namespace, kind, member, role) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM namespaces WHERE name = $1) \
                 ON CONFLICT (namespace, kind, member) DO UPDATE SET role = excluded.role",
            )
            .bind(namespace)
            .bind(m.kind.as_str())
            .bind(&m.name)
            .bind(m.role.as_str())
            .execute(tx.conn())
            .await?;
        }
        let grants: Vec<_> =
            memberships.iter().map(|(ns, m)| serde_json::json!({ "namespace": ns, "role": m.role.as_str() })).collect();
        let detail = serde_json::json!({ "admin": user.admin, "expires_at": user.expires_at, "grants": grants });
        let action = if user.is_robot() { "robot.create" } else { "user.create" };
        tx.audit(actor, Record::ok(action, &user.name).with(detail.to_string())).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The stamp of a person who signed in through an OIDC provider: their row is made
    /// with `stamp` if there is none, a row without a password (one an administrator
    /// made to make them an admin beforehand) takes it, and a row with a stamp keeps
    /// its own, so their other machines stay signed in. `None` if the name belongs to a
    /// user with a password here: a provider must not take over a local account.
    pub async fn oidc_user(&self, name: &str, stamp: &str, actor: &Actor) -> Result<Option<String>> {
        let mut tx = self.begin().await?;
        let taken = sqlx::query(
            "INSERT INTO users (name, password_hash, admin, created_at) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash \
             WHERE users.password_hash IS NULL",
        )
        .bind(name)
        .bind(stamp)
        .bind(now_millis())
        .execute(tx.conn())
        .await?
        .rows_affected();
        if taken > 0 {
            tx.audit(actor, Record::ok("user.oidc", name)).await?;
            tx.commit().await?;
            return Ok(Some(stamp.to_owned()));
        }
        let row =
            sqlx::query("SELECT password_hash FROM users WHERE name = $1").bind(name).fetch_one(tx.conn()).await?;
        tx.rollback().await?;
        let existing: Option<String> = row.try_get(0)?;
        Ok(existing.filter(|h| h.starts_with(OIDC_STAMP_PREFIX)))
    }

    /// Replaces a user's password hash; `false` if there is no such user.
    pub async fn set_password(&self, name: &str, password_hash: &str, actor: &Actor) -> Result<bool> {
        let q = sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2").bind(password_hash).bind(name);
        self.change_one(q, actor, Record::ok("user.password", name)).await
    }

    /// Makes a user a global administrator or not. A user who signs in elsewhere
    /// (htpasswd, LDAP) gets a row without a password.
    pub async fn set_admin(&self, name: &str, admin: bool, actor: &Actor) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO users (name, admin, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET admin = excluded.admin",
        )
        .bind(name)
        .bind(i64::from(admin))
        .bind(now_millis());
        let detail = serde_json::json!({ "admin": admin }).to_string();
        self.change_one(q, actor, Record::ok("user.admin", name).with(detail)).await.map(drop)
    }

    /// Deletes a user or robot with every role it held; its tokens stop working when
    /// they are next checked against the rules (at the latest when they expire).
    pub async fn delete_user(&self, name: &str, actor: &Actor) -> Result<bool> {
        let dependents = [
            "DELETE FROM namespace_members WHERE kind = 'user' AND member = $1",
            "DELETE FROM team_members WHERE member = $1",
        ];
        let action = if name.starts_with(ROBOT_PREFIX) { "robot.delete" } else { "user.delete" };
        self.delete_with_dependents(
            &dependents,
            "DELETE FROM users WHERE name = $1",
            name,
            actor,
            Record::ok(action, name),
        )
        .await
    }

    /// Keys that verify tokens, oldest first; the last one signs.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        sqlx::query(
            "SELECT kid, private_pem, created_at FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at, kid",
        )
        .fetch_all(self.reader())
        .await?
        .iter()
        .map(|r| Ok(SigningKey { kid: r.try_get(0)?, private_pem: r.try_get(1)?, created_at: r.try_get(2)? }))
        .collect()
    }

    pub async fn add_signing_key(&self, kid: &str, private_pem: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO signing_keys (kid, private_pem, created_at) VALUES ($1, $2, $3)")
            .bind(kid)
            .bind(private_pem)
            .bind(now_millis())
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }
}

const USER_COLUMNS: &str = "SELECT name, password_hash, admin, expires_at FROM users";

fn user_from(r: &sqlx::any::AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        name: r.try_get(0)?,
        password_hash: r.try_get(1)?,
        admin: r.try_get::<i64, _>(2)? != 0,
        expires_at: r.try_get(3)?,
    })
}
