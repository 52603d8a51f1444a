//! Who may sign in and the token service's keys.

use crate::store::{now_millis, MetadataStore, Result};
use sqlx::Row;

/// A user whose password (if any) is kept in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// argon2id, as a PHC string; `None` for users who sign in elsewhere (LDAP, OIDC).
    pub password_hash: Option<String>,
    pub admin: bool,
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
        let row = sqlx::query("SELECT name, password_hash, admin FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| {
            Ok(UserRecord { name: r.try_get(0)?, password_hash: r.try_get(1)?, admin: r.try_get::<i64, _>(2)? != 0 })
        })
        .transpose()
    }

    /// Creates a user; `false` if the name is taken.
    pub async fn create_user(&self, user: &UserRecord) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(i64::from(user.admin))
        .bind(now_millis())
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    /// Replaces a user's password hash; `false` if there is no such user.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(password_hash)
            .bind(name)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
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
