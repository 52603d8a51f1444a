//! Administration: users, robots, teams, namespaces and memberships, and the audit log,
//! with the rules of who may change what. The admin API and `berth admin` both call
//! this; neither decides permissions itself.
//!
//! Global administrators may do everything. A namespace's admins manage its members and
//! may create robots limited to namespaces they administer. Everyone signed in may read
//! their own account and change their own password.

use crate::{hash_argon2, AuthError, Authenticator, Principal};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_metadata::{
    Actor, AuditEvent, AuditQuery, ImmutabilityRule, Member, MemberKind, Namespace, Role, UserRecord, ROBOT_PREFIX,
};
use std::time::Duration;

/// Why an administrative request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl From<berth_metadata::Error> for AdminError {
    fn from(e: berth_metadata::Error) -> Self {
        AdminError::Auth(e.into())
    }
}

pub type Result<T> = std::result::Result<T, AdminError>;

/// Who is asking: the principal decides permission, the actor goes into the audit log.
#[derive(Debug, Clone)]
pub struct Acting {
    pub principal: Principal,
    pub actor: Actor,
}

impl Acting {
    /// The host itself (`berth admin`, run by whoever may read the configuration).
    pub fn system() -> Acting {
        Acting { principal: Principal::User { name: "system".into(), admin: true }, actor: Actor::system() }
    }

    fn is_admin(&self) -> bool {
        matches!(self.principal, Principal::User { admin: true, .. })
    }
}

/// A robot just created, with the secret that is shown this once.
#[derive(Debug, Clone)]
pub struct NewRobot {
    pub name: String,
    pub secret: String,
    pub expires_at: i64,
}

/// The most a robot may live.
const MAX_ROBOT_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);
const MIN_PASSWORD: usize = 8;

/// User and team names: what htpasswd, LDAP and OIDC names commonly look like, and
/// nothing that could be confused with a robot (`$`) or a path.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "invalid {kind} name {name:?}: letters, digits and . _ - @, starting with a letter or digit, at most 128"
        )))
    }
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AdminError::Invalid(format!("a password needs at least {MIN_PASSWORD} characters")));
    }
    Ok(())
}

impl Authenticator {
    /// Refuses anyone but an administrator (operations on the whole registry).
    pub fn require_admin(&self, by: &Acting) -> Result<()> {
        if by.is_admin() {
            Ok(())
        } else {
            Err(AdminError::Forbidden(format!("{} is not an administrator", by.principal.name())))
        }
    }

    async fn require_namespace_admin(&self, by: &Acting, namespace: &str) -> Result<()> {
        if self.namespace_role(&by.principal, namespace).await? == Some(Role::Admin) {
            Ok(())
        } else {
            Err(AdminError::Forbidden(format!("{} is not an admin of namespace {namespace}", by.principal.name())))
        }
    }

    /// A namespace name: exactly `namespacedepth` valid repository-name components.
    fn check_namespace(&self, name: &str) -> Result<()> {
        let depth = self.settings.namespace_depth;
        let valid = berth_proto::RepositoryName::parse(name).is_some() && name.split('/').count() == depth;
        if valid {
            Ok(())
        } else {
            Err(AdminError::Invalid(format!(
                "invalid namespace {name:?}: {depth} component(s) of a repository name (lowercase letters, digits, separators)"
            )))
        }
    }

    pub async fn user(&self, by: &Acting, name: &str) -> Result<UserRecord> {
        if !by.is_admin() && by.principal.name() != name {
            return Err(AdminError::Forbidden("only administrators may read other accounts".into()));
        }
        self.meta.user(name).await?.ok_or_else(|| AdminError::NotFound(format!("no user {name}")))
    }

    pub async fn users(&self, by: &Acting, after: &str, limit: u32) -> Result<Vec<UserRecord>> {
        self.require_admin(by)?;
        Ok(self.meta.users(after, limit).await?)
    }

    /// Creates a person with a password kept here (`password: None` for someone who
    /// signs in elsewhere but needs a row, e.g. to be an administrator).
    pub async fn create_user(&self, by: &Acting, name: &str, password: Option<&str>, admin: bool) -> Result<()> {
        self.require_admin(by)?;
        check_name("user", name)?;
        let password_hash = match password {
            Some(p) => {
                check_password(p)?;
                Some(hash_blocking(p).await?)
            }
            None => None,
        };
        let record = UserRecord { name: name.to_owned(), password_hash, admin, expires_at: None };
        created(self.meta.create_user(&record, &[], &by.actor).await?, "user", name)
    }

    /// Changes a password (one's own, or anyone's as an administrator) and/or the
    /// administrator flag (administrators only; never on a robot).
    pub async fn update_user(
        &self,
        by: &Acting,
        name: &str,
        password: Option<&str>,
        admin: Option<bool>,
    ) -> Result<()> {
        let existing = self.user(by, name).await?;
        if let Some(admin) = admin {
            self.require_admin(by)?;
            if !admin && by.principal.name() == name {
                return Err(AdminError::Invalid("administrators cannot drop their own administrator flag".into()));
            }
            if existing.is_robot() && admin {
                return Err(AdminError::Invalid("a robot cannot be an administrator".into()));
            }
            self.meta.set_admin(name, admin, &by.actor).await?;
        }
        if let Some(password) = password {
            if existing.is_robot() {
                return Err(AdminError::Invalid("a robot's secret cannot be set: create a new robot".into()));
            }
            check_password(password)?;
            self.meta.set_password(name, &hash_blocking(password).await?, &by.actor).await?;
        }
        Ok(())
    }

    /// Deletes a person, or revokes a robot. A robot may also be revoked by an admin of
    /// every namespace it has a role in.
    pub async fn delete_user(&self, by: &Acting, name: &str) -> Result<()> {
        // So that the last administrator cannot lock everyone out by mistake.
        if by.principal.name() == name {
            return Err(AdminError::Invalid("you cannot delete your own account".into()));
        }
        if !by.is_admin() {
            if !name.starts_with(ROBOT_PREFIX) {
                return Err(AdminError::Forbidden("only administrators may delete users".into()));
            }
            for namespace in self.meta.memberships(MemberKind::User, name).await? {
                self.require_namespace_admin(by, &namespace).await?;
            }
        }
        found(self.meta.delete_user(name, &by.actor).await?, "user", name)
    }

    /// Creates a robot `robot$<name>` holding `grants`, living `lifetime`. Returns the
    /// secret: it is stored only as an argon2id hash and cannot be shown again.
    pub async fn create_robot(
        &self,
        by: &Acting,
        name: &str,
        lifetime: Duration,
        grants: &[(String, Role)],
    ) -> Result<NewRobot> {
        check_name("robot", name)?;
        if lifetime.is_zero() || lifetime > MAX_ROBOT_LIFETIME {
            return Err(AdminError::Invalid("a robot lives from one second to ten years".into()));
        }
        if grants.is_empty() {
            return Err(AdminError::Invalid("a robot needs at least one grant".into()));
        }
        let full = format!("{ROBOT_PREFIX}{name}");
        let mut memberships = Vec::with_capacity(grants.len());
        for (namespace, role) in grants {
            if self.meta.namespace(namespace).await?.is_none() {
                return Err(AdminError::NotFound(format!("no namespace {namespace}")));
            }
            if !by.is_admin() {
                self.require_namespace_admin(by, namespace).await?;
            }
            memberships.push((namespace.clone(), Member { kind: MemberKind::User, name: full.clone(), role: *role }));
        }
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        let expires_at = berth_metadata::now_millis() + lifetime.as_millis() as i64;
        let record = UserRecord {
            name: full.clone(),
            password_hash: Some(hash_blocking(&secret).await?),
            admin: false,
            expires_at: Some(expires_at),
        };
        created(self.meta.create_user(&record, &memberships, &by.actor).await?, "robot", &full)?;
        Ok(NewRobot { name: full, secret, expires_at })
    }

    /// A page of namespaces as the caller may see them: all for administrators, else
    /// the public ones and the caller's own. The cursor for the next page follows what
    /// was read, not what was shown, so paging never stalls on hidden namespaces.
    pub async fn namespaces(&self, by: &Acting, after: &str, limit: u32) -> Result<(Vec<Namespace>, Option<String>)> {
        let all = self.meta.namespaces(after, limit).await?;
        let next = (all.len() == limit as usize).then(|| all.last().map(|n| n.name.clone())).flatten();
        if by.is_admin() {
            return Ok((all, next));
        }
        let visible: std::collections::HashSet<String> = self
            .meta
            .namespace_visibility(by.principal.name())
            .await?
            .into_iter()
            .filter(|n| n.visible)
            .map(|n| n.name)
            .collect();
        Ok((all.into_iter().filter(|n| visible.contains(&n.name)).collect(), next))
    }

    pub async fn namespace(&self, by: &Acting, name: &str) -> Result<Namespace> {
        let found =
            self.meta.namespace(name).await?.ok_or_else(|| AdminError::NotFound(format!("no namespace {name}")))?;
        if by.is_admin() || found.public || self.namespace_role(&by.principal, name).await?.is_some() {
            Ok(found)
        } else {
            Err(AdminError::NotFound(format!("no namespace {name}")))
        }
    }

    pub async fn create_namespace(&self, by: &Acting, name: &str, public: bool) -> Result<()> {
        self.require_admin(by)?;
        self.check_namespace(name)?;
        created(self.meta.create_namespace(name, public, &by.actor).await?, "namespace", name)
    }

    pub async fn update_namespace(&self, by: &Acting, name: &str, public: bool) -> Result<()> {
        self.require_namespace_admin(by, name).await?;
        found(self.meta.set_namespace_public(name, public, &by.actor).await?, "namespace", name)
    }

    pub async fn delete_namespace(&self, by: &Acting, name: &str) -> Result<()> {
        self.require_admin(by)?;
        found(self.meta.delete_namespace(name, &by.actor).await?, "namespace", name)
    }

    pub async fn members(&self, by: &Acting, namespace: &str) -> Result<Vec<Member>> {
        self.namespace(by, namespace).await?;
        self.require_namespace_admin(by, namespace).await?;
        Ok(self.meta.namespace_members(namespace).await?)
    }

    /// A namespace's tag immutability rules, for its admins.
    pub async fn immutability_rules(&self, by: &Acting, namespace: &str) -> Result<Vec<ImmutabilityRule>> {
        self.namespace(by, namespace).await?;
        self.require_namespace_admin(by, namespace).await?;
        Ok(self.meta.immutability_rules(Some(namespace)).await?)
    }

    /// Adds a rule to its namespace; its id.
    pub async fn add_immutability_rule(&self, by: &Acting, rule: &ImmutabilityRule) -> Result<i64> {
        self.namespace(by, &rule.namespace).await?;
        self.require_namespace_admin(by, &rule.namespace).await?;
        if rule.repositories.is_empty() || rule.tags.is_empty() || rule.except.iter().any(String::is_empty) {
            return Err(AdminError::Invalid("`repositories`, `tags` and each of `except` must not be empty".into()));
        }
        Ok(self
            .meta
            .add_immutability_rule(&ImmutabilityRule { id: None, declared: false, ..rule.clone() }, &by.actor)
            .await?)
    }

    /// Removes a rule made through the API (declared rules live in the configuration).
    pub async fn remove_immutability_rule(&self, by: &Acting, namespace: &str, id: i64) -> Result<()> {
        self.require_namespace_admin(by, namespace).await?;
        if self.meta.remove_immutability_rule(namespace, id, &by.actor).await? {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!("namespace {namespace} has no rule {id} made through the API")))
        }
    }

    pub async fn set_member(&self, by: &Acting, namespace: &str, member: &Member) -> Result<()> {
        self.require_namespace_admin(by, namespace).await?;
        match member.kind {
            MemberKind::User if !member.name.starts_with(ROBOT_PREFIX) => check_name("user", &member.name)?,
            MemberKind::User => {
                if self.meta.user(&member.name).await?.is_none() {
                    return Err(AdminError::NotFound(format!("no robot {}", member.name)));
                }
            }
            MemberKind::Team => {
                if !self.meta.team_exists(&member.name).await? {
                    return Err(AdminError::NotFound(format!("no team {}", member.name)));
                }
            }
        }
        found(self.meta.set_member(namespace, member, &by.actor).await?, "namespace", namespace)
    }

    pub async fn remove_member(&self, by: &Acting, namespace: &str, kind: MemberKind, name: &str) -> Result<()> {
        self.require_namespace_admin(by, namespace).await?;
        found(self.meta.remove_member(namespace, kind, name, &by.actor).await?, "member", name)
    }

    pub async fn teams(&self, by: &Acting, after: &str, limit: u32) -> Result<Vec<String>> {
        self.require_admin(by)?;
        Ok(self.meta.teams(after, limit).await?)
    }

    pub async fn team_members(&self, by: &Acting, team: &str) -> Result<Vec<String>> {
        self.require_admin(by)?;
        found(self.meta.team_exists(team).await?, "team", team)?;
        Ok(self.meta.team_members(team).await?)
    }

    pub async fn create_team(&self, by: &Acting, name: &str) -> Result<()> {
        self.require_admin(by)?;
        check_name("team", name)?;
        created(self.meta.create_team(name, &by.actor).await?, "team", name)
    }

    pub async fn delete_team(&self, by: &Acting, name: &str) -> Result<()> {
        self.require_admin(by)?;
        found(self.meta.delete_team(name, &by.actor).await?, "team", name)
    }

    /// Adds a user to a team; adding one already there changes nothing and succeeds.
    pub async fn add_team_member(&self, by: &Acting, team: &str, user: &str) -> Result<()> {
        self.require_admin(by)?;
        check_name("user", user)?;
        found(self.meta.team_exists(team).await?, "team", team)?;
        self.meta.add_team_member(team, user, &by.actor).await?;
        Ok(())
    }

    pub async fn remove_team_member(&self, by: &Acting, team: &str, user: &str) -> Result<()> {
        self.require_admin(by)?;
        found(self.meta.remove_team_member(team, user, &by.actor).await?, "team member", user)
    }

    /// Makes a team mirror a directory group, or (`None`) stop mirroring one while
    /// keeping its members. A mirrored team's members follow the group: each member is
    /// added or removed at their next sign-in against the directory, not now. Group
    /// names are stored lowercased, as the sign-in compares them.
    pub async fn set_team_directory_group(&self, by: &Acting, team: &str, group: Option<&str>) -> Result<()> {
        self.require_admin(by)?;
        let group = group.map(str::to_lowercase);
        if group.as_deref().is_some_and(|g| g.trim().is_empty()) {
            return Err(AdminError::Invalid("a directory group name cannot be empty".into()));
        }
        found(self.meta.set_team_group(team, group.as_deref(), &by.actor).await?, "team", team)
    }

    pub async fn audit(&self, by: &Acting, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        self.require_admin(by)?;
        Ok(self.meta.audit_events(query).await?)
    }
}

fn created(done: bool, kind: &str, name: &str) -> Result<()> {
    if done {
        Ok(())
    } else {
        Err(AdminError::Conflict(format!("{kind} {name} exists")))
    }
}

fn found(done: bool, kind: &str, name: &str) -> Result<()> {
    if done {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("no {kind} {name}")))
    }
}

/// argon2id takes tens of milliseconds of CPU: off the async workers.
async fn hash_blocking(secret: &str) -> Result<String> {
    let secret = secret.to_owned();
    tokio::task::spawn_blocking(move || hash_argon2(&secret))
        .await
        .map_err(|e| AdminError::Auth(AuthError::Backend(format!("hashing: {e}"))))
}
