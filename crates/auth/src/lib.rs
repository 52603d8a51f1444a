//! Who is calling and what they may do: passwords (htpasswd files with bcrypt, users in
//! the metadata database with argon2id, an LDAP directory or Active Directory), the
//! built-in token service, and the access rules applied to every request.
//!
//! The HTTP edge turns headers into [`Credentials`], asks [`Authenticator::authenticate`]
//! for a [`Caller`], and [`Authenticator::access`] for what that caller may do with a
//! repository. Nothing here knows HTTP.

pub mod admin;
mod certbundle;
mod federation;
mod htpasswd;
mod ldap;
mod limiter;
mod oidc;
mod password;
pub mod scope;
mod tokens;

pub use federation::{FederationRule, FederationSettings};
pub use ldap::{DirectoryUser, LdapDirectory, LdapError, LdapSettings};
pub use oidc::{is_loopback_redirect, OidcCredential, OidcSettings, OidcStart};
pub use password::{hash_argon2, StoredHash};
pub use scope::{Actions, Resource, Scope};
pub use tokens::{AccessEntry, Claims};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_metadata::{Actor, MetadataStore, NameRange, Role, UserRecord};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokens::{unix_now, TokenKeys};

/// Authentication settings, from `auth` and `berth.auth`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `auth.htpasswd`: the file and the realm of the `Basic` challenge.
    pub htpasswd: Option<(PathBuf, String)>,
    /// `berth.auth.token`, when enabled.
    pub token: Option<TokenSettings>,
    /// registry:2's `auth.token`: tokens from an external token server.
    pub external: Option<ExternalTokenSettings>,
    /// What anonymous and signed-in callers may do with repositories in no namespace.
    pub anonymous: Actions,
    pub authenticated: Actions,
    /// How many leading components of a repository name make its namespace.
    pub namespace_depth: usize,
    /// An administrator to create at first start.
    pub bootstrap_admin: Option<(String, String)>,
    pub login_failures: u32,
    pub login_window: Duration,
    pub credential_cache: Duration,
    /// `berth.auth.ldap`: a directory for the users with no password kept here.
    pub ldap: Option<LdapSettings>,
    /// `berth.auth.federation`: CI systems whose OIDC ID tokens sign pipelines in.
    pub federation: Vec<FederationSettings>,
    /// `berth.auth.oidc`: people sign in through an OpenID Connect provider.
    pub oidc: Option<OidcSettings>,
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub service: String,
    pub issuer: String,
    pub expiration: Duration,
    pub refresh_expiration: Duration,
    /// The token endpoint's URL when it is not this server's `/auth/token`.
    pub realm: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExternalTokenSettings {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// A JWKS file with the token server's public keys.
    pub jwks: Option<PathBuf>,
    /// A PEM bundle of the token server's certificates (`rootcertbundle`).
    pub root_certificates: Option<PathBuf>,
}

/// How clients are told to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: String,
    },
    /// `realm: None` means this server's own token endpoint.
    Bearer {
        realm: Option<String>,
        service: String,
    },
}

/// What a request presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
    /// The subject's common name of a client certificate that a configured CA signed
    /// (`http.tls.clientcas`): the TLS layer has proven it.
    Certificate(String),
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User {
        name: String,
        admin: bool,
    },
    /// A CI pipeline signed in with its CI system's ID token: it may do what the
    /// provider's matching rules grant (and what anyone may), until `expires`.
    Workload {
        /// [`WORKLOAD_PREFIX`], the provider, `:` and the token's subject.
        name: String,
        grants: Arc<Vec<(String, Role)>>,
        expires: u64,
    },
}

/// Begins the name of every workload principal. No user can be named like it (`$` is
/// not allowed in user names), so a pipeline never acts as a user.
pub const WORKLOAD_PREFIX: &str = "ci$";

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::User { name, .. } | Principal::Workload { name, .. } => name,
        }
    }
}

/// An authenticated request's caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// A bearer token's grants: the request may do no more than these, whatever the
    /// principal could. `None` for password and anonymous callers.
    pub token: Option<Arc<Vec<Scope>>>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller { principal: Principal::Anonymous, token: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No usable credentials: the client should authenticate (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many failed sign-ins from this user or address.
    #[error("too many failed sign-ins: try again in {} s", retry_after.as_secs())]
    TooManyAttempts { retry_after: Duration },
    /// A token request the service cannot serve (400).
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication backend failed: {0}")]
    Backend(String),
}

impl From<federation::FederationError> for AuthError {
    fn from(e: federation::FederationError) -> Self {
        match e {
            federation::FederationError::Refused(m) => AuthError::Unauthenticated(m),
            federation::FederationError::Unavailable(_) => AuthError::Backend(e.to_string()),
        }
    }
}

impl From<berth_metadata::Error> for AuthError {
    fn from(e: berth_metadata::Error) -> Self {
        AuthError::Backend(e.to_string())
    }
}

impl From<tokens::TokenError> for AuthError {
    fn from(e: tokens::TokenError) -> Self {
        match e {
            tokens::TokenError::Invalid(m) => AuthError::Unauthenticated(format!("invalid token: {m}")),
            tokens::TokenError::Store(e) => e.into(),
        }
    }
}

/// Password checks that run at once: each holds a core for tens of milliseconds.
const CONCURRENT_HASHES: usize = 4;

/// Stands for the stored hash in the credential cache's key of a directory password:
/// no stored hash looks like it (they start with `$`).
const DIRECTORY_CREDENTIAL: &str = "ldap";

/// The audit log's actor for team memberships changed to follow the directory.
const DIRECTORY_ACTOR: &str = "ldap";

pub struct Authenticator {
    settings: AuthSettings,
    challenge: Challenge,
    meta: MetadataStore,
    htpasswd: Option<htpasswd::Htpasswd>,
    tokens: Option<TokenKeys>,
    external: Option<tokens::IssuerKeys>,
    directory: Option<LdapDirectory>,
    /// The CI identity providers, by the user name pipelines sign in with.
    federation: std::collections::HashMap<String, federation::Provider>,
    oidc: Option<oidc::SignIn>,
    limiter: limiter::LoginLimiter,
    /// Passwords verified recently, keyed by a keyed hash of user, stored hash and
    /// password: a wrong password, or one whose stored hash changed, misses.
    verified: quick_cache::sync::Cache<[u8; 32], Instant>,
    /// Callers proven by tokens, with the tokens' expiry, keyed by the tokens' SHA-256.
    verified_tokens: quick_cache::sync::Cache<[u8; 32], (u64, Caller)>,
    cache_key: [u8; 32],
    hashing: tokio::sync::Semaphore,
}

/// A token response, as Docker's and OAuth2's token endpoints answer.
#[derive(Debug, serde::Serialize)]
pub struct IssuedToken {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// A request to the token endpoint, from either its `GET` or its `POST` form.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// A refresh token (`grant_type=refresh_token`) instead of a password.
    pub refresh_token: Option<String>,
    pub offline: bool,
}

impl Authenticator {
    pub async fn new(settings: AuthSettings, meta: MetadataStore) -> anyhow::Result<Authenticator> {
        let htpasswd = match &settings.htpasswd {
            Some((path, _)) => Some(
                htpasswd::Htpasswd::open(path.clone())
                    .with_context(|| format!("reading htpasswd file {}", path.display()))?,
            ),
            None => None,
        };
        let tokens = match &settings.token {
            Some(t) => Some(
                TokenKeys::open(meta.clone(), t.issuer.clone(), t.service.clone())
                    .await
                    .context("loading the token service's signing keys")?,
            ),
            None => None,
        };
        let external = match &settings.external {
            Some(e) => Some(
                tokens::IssuerKeys::load(
                    e.jwks.as_deref(),
                    e.root_certificates.as_deref(),
                    e.issuer.clone(),
                    e.service.clone(),
                )
                .map_err(|m| anyhow::anyhow!("loading the token server's keys (`auth.token`): {m}"))?,
            ),
            None => None,
        };
        let directory = match &settings.ldap {
            Some(ldap) => {
                if ldap.url.starts_with("ldap://") && !ldap.starttls {
                    tracing::warn!(
                        url = %ldap.url,
                        "berth.auth.ldap: plain ldap:// without starttls sends passwords to the directory in the clear"
                    );
                }
                Some(LdapDirectory::new(ldap.clone()).context("setting up the LDAP directory (`berth.auth.ldap`)")?)
            }
            None => None,
        };
        let mut federation = std::collections::HashMap::new();
        for provider in &settings.federation {
            let p = federation::Provider::new(provider.clone())
                .map_err(|e| anyhow::anyhow!("`berth.auth.federation` {:?}: {e}", provider.name))?;
            if federation.insert(provider.name.clone(), p).is_some() {
                anyhow::bail!("`berth.auth.federation`: two providers are named {:?}", provider.name);
            }
        }
        let oidc = match &settings.oidc {
            Some(_) if tokens.is_none() => {
                anyhow::bail!("`berth.auth.oidc` needs the token service (`berth.auth.token.enabled: true`): it signs the sign-in state and the registry passwords")
            }
            Some(o) => Some(oidc::SignIn::new(o.clone()).map_err(|e| anyhow::anyhow!("`berth.auth.oidc`: {e}"))?),
            None => None,
        };
        let challenge = match (&settings.token, &settings.external, &settings.htpasswd) {
            (Some(t), _, _) => Challenge::Bearer { realm: t.realm.clone(), service: t.service.clone() },
            (None, Some(e), _) => Challenge::Bearer { realm: Some(e.realm.clone()), service: e.service.clone() },
            (None, None, Some((_, realm))) => Challenge::Basic { realm: realm.clone() },
            (None, None, None) => Challenge::Basic { realm: "berth".into() },
        };
        if let Some((name, password)) = &settings.bootstrap_admin {
            let admin = UserRecord {
                name: name.clone(),
                password_hash: Some(hash_argon2(password)),
                admin: true,
                expires_at: None,
            };
            if meta.create_user(&admin, &[], &Actor::system()).await.context("creating the first administrator")? {
                tracing::info!(user = %name, "created the first administrator from the configuration");
            }
        }
        let mut cache_key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut cache_key);
        Ok(Authenticator {
            limiter: limiter::LoginLimiter::new(settings.login_failures, settings.login_window),
            settings,
            challenge,
            meta,
            htpasswd,
            tokens,
            external,
            directory,
            federation,
            oidc,
            verified: quick_cache::sync::Cache::new(10_000),
            verified_tokens: quick_cache::sync::Cache::new(10_000),
            cache_key,
            hashing: tokio::sync::Semaphore::new(CONCURRENT_HASHES),
        })
    }

    pub fn challenge(&self) -> &Challenge {
        &self.challenge
    }

    /// Whether this server runs the token service (and so serves `/auth/token`).
    pub fn issues_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Adds a signing key that signs from now on; tokens signed with older keys stay
    /// valid until they expire. Returns the new key id.
    pub async fn rotate_signing_key(&self) -> Result<Option<String>, AuthError> {
        match &self.tokens {
            Some(keys) => Ok(Some(keys.rotate().await?)),
            None => Ok(None),
        }
    }

    pub fn jwks(&self) -> Option<serde_json::Value> {
        self.tokens.as_ref().map(TokenKeys::jwks)
    }

    /// The caller a request's credentials prove; no credentials make an anonymous
    /// caller, whose access the rules decide like anyone else's.
    pub async fn authenticate(&self, credentials: Option<Credentials>, from: IpAddr) -> Result<Caller, AuthError> {
        match credentials {
            None => Ok(Caller::anonymous()),
            Some(Credentials::Basic { user, password }) => {
                let (principal, _) = self.check_password(&user, &password, from).await?;
                Ok(Caller { principal, token: None })
            }
            Some(Credentials::Bearer(token)) => self.check_token(&token).await,
            Some(Credentials::Certificate(name)) => {
                Ok(Caller { principal: self.certificate_principal(&name).await?, token: None })
            }
        }
    }

    /// The user a client certificate names: an administrator if the database says so.
    /// A certificate cannot name a robot or a pipeline: those prove themselves otherwise.
    async fn certificate_principal(&self, name: &str) -> Result<Principal, AuthError> {
        if name.contains('$') {
            return Err(AuthError::Unauthenticated(format!("a client certificate cannot name {name:?}")));
        }
        let admin = self.meta.user(name).await?.is_some_and(|u| u.admin);
        Ok(Principal::User { name: name.to_owned(), admin })
    }

    /// What `caller` may do with `repository`.
    pub async fn access(&self, caller: &Caller, repository: &str) -> Result<Actions, AuthError> {
        if let Some(grants) = &caller.token {
            let granted = grants
                .iter()
                .filter(|s| s.resource == Resource::Repository(repository.to_owned()))
                .fold(Actions::NONE, |acc, s| acc.union(s.actions));
            return Ok(granted);
        }
        self.principal_access(&caller.principal, repository).await
    }

    /// Whether the caller may list repositories at all; the listing itself shows only
    /// what [`Authenticator::catalog_view`] lets the caller see.
    pub fn may_list_catalog(&self, caller: &Caller) -> bool {
        match (&caller.token, &caller.principal) {
            (Some(grants), _) => grants.iter().any(|s| s.resource == Resource::Catalog),
            // A pipeline pushes and pulls what it was granted; it has no business browsing.
            (None, Principal::Workload { .. }) => false,
            (None, _) => true,
        }
    }

    /// Which repositories the catalog shows this caller: `None` for all, else the name
    /// ranges of what it may pull, by the caller's own rules (a token's subject, not its
    /// scopes). The ranges go into the query, so a page still costs a page.
    pub async fn catalog_view(&self, caller: &Caller) -> Result<Option<Vec<NameRange>>, AuthError> {
        let principal = match &caller.token {
            Some(_) => self.token_principal(caller.principal.name()).await?,
            None => caller.principal.clone(),
        };
        if matches!(principal, Principal::User { admin: true, .. }) {
            return Ok(None);
        }
        let by_default = self.default_access(&principal).contains(Actions::PULL);
        let mut namespaces: Vec<_> = self
            .meta
            .namespace_visibility(principal.name())
            .await?
            .into_iter()
            .filter(|n| n.name.split('/').count() == self.settings.namespace_depth && n.visible != by_default)
            .map(|n| NameRange::namespace(&n.name))
            .collect();
        // Ranges sort by `name/`, which is not always the order of the names.
        namespaces.sort_by(|a, b| a.from.cmp(&b.from));
        if !by_default {
            return Ok(Some(namespaces));
        }
        if namespaces.is_empty() {
            return Ok(None);
        }
        // Everything but the namespaces the caller may not see: the gaps between them.
        let mut ranges = Vec::with_capacity(namespaces.len() + 1);
        let mut from = String::new();
        for hidden in namespaces {
            ranges.push(NameRange { from, to: Some(hidden.from) });
            from = hidden.to.unwrap_or_default();
        }
        ranges.push(NameRange { from, to: None });
        Ok(Some(ranges))
    }

    /// The namespace `repository` belongs to, if its name is long enough to have one.
    pub fn namespace_of<'a>(&self, repository: &'a str) -> Option<&'a str> {
        let depth = self.settings.namespace_depth;
        let end = repository.match_indices('/').nth(depth.checked_sub(1)?)?.0;
        Some(&repository[..end])
    }

    /// What a principal may do with a repository by the rules, before any token limits:
    /// global admins everything; in a namespace that exists, what the caller's role (held
    /// directly or through a team) allows, plus pulling if it is public; elsewhere the
    /// registry's defaults. Asked of the database on every request, so a changed role
    /// applies to the next request.
    async fn principal_access(&self, principal: &Principal, repository: &str) -> Result<Actions, AuthError> {
        match principal {
            Principal::User { admin: true, .. } => return Ok(Actions::ALL),
            Principal::Workload { grants, .. } => {
                let granted = grants
                    .iter()
                    .filter(|(namespace, _)| in_namespace(repository, namespace))
                    .fold(Actions::NONE, |acc, (_, role)| acc.union(role_actions(*role)));
                // Never less than anyone may do (a public namespace's pulls).
                return Ok(granted.union(Box::pin(self.principal_access(&Principal::Anonymous, repository)).await?));
            }
            _ => {}
        }
        let Some(namespace) = self.namespace_of(repository) else { return Ok(self.default_access(principal)) };
        Ok(match self.meta.standing(namespace, principal.name()).await? {
            None => self.default_access(principal),
            Some(standing) => {
                let public = if standing.public { Actions::PULL } else { Actions::NONE };
                standing.role.map_or(Actions::NONE, role_actions).union(public)
            }
        })
    }

    /// What a principal may do with repositories in no namespace. Robots get what
    /// anyone gets: their access is what their memberships say, nothing more.
    fn default_access(&self, principal: &Principal) -> Actions {
        match principal {
            Principal::User { admin: true, .. } => Actions::ALL,
            Principal::User { name, .. } if !name.starts_with(berth_metadata::ROBOT_PREFIX) => {
                self.settings.authenticated
            }
            _ => self.settings.anonymous,
        }
    }

    /// The caller's role in a namespace, for managing it: global admins count as admins.
    pub async fn namespace_role(&self, principal: &Principal, namespace: &str) -> Result<Option<Role>, AuthError> {
        if let Principal::User { admin: true, .. } = principal {
            return Ok(Some(Role::Admin));
        }
        Ok(self.meta.standing(namespace, principal.name()).await?.and_then(|s| s.role))
    }

    /// What a token principal may do: looked up again, so that a token names its
    /// subject but carries no role of its own.
    async fn token_principal(&self, subject: &str) -> Result<Principal, AuthError> {
        if subject.is_empty() {
            return Ok(Principal::Anonymous);
        }
        let admin = self.meta.user(subject).await?.is_some_and(|u| u.admin);
        Ok(Principal::User { name: subject.to_owned(), admin })
    }

    async fn check_token(&self, token: &str) -> Result<Caller, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((exp, caller)) = self.verified_tokens.get(&key) {
            if exp > unix_now() {
                return Ok(caller);
            }
        }
        let claims = match (&self.tokens, &self.external) {
            (Some(keys), _) => keys.verify(token).await?,
            (None, Some(external)) => external.verify(token)?,
            (None, None) => {
                let m = "bearer tokens are not accepted here: sign in with a password";
                return Err(AuthError::Unauthenticated(m.into()));
            }
        };
        if claims.refresh.is_some() {
            return Err(AuthError::Unauthenticated("a refresh token is not an access token".into()));
        }
        let grants: Vec<Scope> = claims.access.iter().filter_map(AccessEntry::to_scope).collect();
        let principal = if claims.sub.is_empty() {
            Principal::Anonymous
        } else {
            Principal::User { name: claims.sub.clone(), admin: false }
        };
        let caller = Caller { principal, token: Some(Arc::new(grants)) };
        // A token's claims never change: what it proves can be kept until it expires.
        self.verified_tokens.insert(key, (claims.exp, caller.clone()));
        Ok(caller)
    }

    /// Checks a user's password, remembering a success for a short time, and counting
    /// failures against the user and address. The password is checked against the
    /// htpasswd file, else a password stored in the database, else the LDAP directory:
    /// the directory only ever sees users with no stored password, and never a robot.
    ///
    /// Directories compare names without regard to case, so a directory user's name is
    /// lowercased before anything else (the limiter's and the credential cache's keys,
    /// the principal, the team sync): `ALICE` and `alice` are one principal, and one
    /// count of failures. A directory password is remembered like a stored one, so a
    /// password changed or an account disabled in the directory takes effect here only
    /// once `berth.auth.credentialcache` has passed.
    ///
    /// A registry password from an OIDC sign-in (a refresh token of the user's) is
    /// checked as a refresh token.
    ///
    /// Returns the principal and the fingerprint refresh tokens issued for it carry
    /// (`None` for a directory user: nothing here would end them with the account).
    async fn check_password(
        &self,
        user: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<(Principal, Option<String>), AuthError> {
        let too_many = |retry_after| AuthError::TooManyAttempts { retry_after };
        if let Some(provider) = self.federation.get(user) {
            return Ok((self.check_workload(provider, password, from).await?, None));
        }
        self.limiter.check(user, from).map_err(too_many)?;
        if let (Some(keys), true) = (&self.tokens, looks_like_jwt(password)) {
            return match self.check_refresh(keys, password).await {
                Ok((principal, fingerprint)) if principal.name() == user => Ok((principal, fingerprint)),
                Ok(_) | Err(AuthError::Unauthenticated(_)) => Err(self.refuse(user, from).await?),
                Err(e) => Err(e),
            };
        }
        let (name, verified) = match self.stored_credential(user).await? {
            Some((hash, admin)) => {
                let ok = self.verify_cached(user, &hash, password).await?;
                (user.to_owned(), ok.then(|| (admin, Some(fingerprint(hash.as_str())))))
            }
            None => match self.directory_name(user).await? {
                Some((directory, name)) => {
                    self.limiter.check(&name, from).map_err(too_many)?;
                    let ok = self.verify_directory(directory, &name, password, from).await?;
                    // Like htpasswd users: administrators if the database says so.
                    let admin = ok && self.meta.user(&name).await?.is_some_and(|r| r.admin);
                    (name, ok.then_some((admin, None)))
                }
                None => (user.to_owned(), None),
            },
        };
        match verified {
            Some((admin, fingerprint)) => Ok((Principal::User { name, admin }, fingerprint)),
            None => Err(self.refuse(&name, from).await?),
        }
    }

    /// Counts and audits a failed sign-in; the refusal to answer with.
    async fn refuse(&self, name: &str, from: IpAddr) -> Result<AuthError, AuthError> {
        self.limiter.failed(name, from);
        // The audit log and the log stream both get it; the password never.
        let actor = Actor::new(name, from.to_string());
        self.meta.audit_refusal(&actor, "auth.failure", name, None).await?;
        Ok(AuthError::Unauthenticated("invalid username or password".into()))
    }

    /// The workload an ID token proves. Failures count against the address (and the
    /// provider from that address), never against the provider's name alone: that
    /// would let anyone lock every pipeline out. A verified token is remembered until
    /// it expires, like a registry token.
    async fn check_workload(
        &self,
        provider: &federation::Provider,
        token: &str,
        from: IpAddr,
    ) -> Result<Principal, AuthError> {
        let key: [u8; 32] = Sha256::digest(format!("{}\0{token}", provider.name()).as_bytes()).into();
        if let Some((exp, caller)) = self.verified_tokens.get(&key) {
            if exp > unix_now() {
                return Ok(caller.principal);
            }
        }
        let counted = format!("{}\0{from}", provider.name());
        self.limiter.check(&counted, from).map_err(|retry_after| AuthError::TooManyAttempts { retry_after })?;
        match provider.verify(token).await {
            Ok(workload) => {
                let principal = Principal::Workload {
                    name: format!("{WORKLOAD_PREFIX}{}:{}", provider.name(), workload.subject),
                    grants: Arc::new(workload.grants),
                    expires: workload.expires,
                };
                let caller = Caller { principal: principal.clone(), token: None };
                self.verified_tokens.insert(key, (workload.expires, caller));
                Ok(principal)
            }
            Err(federation::FederationError::Refused(reason)) => {
                self.limiter.failed(&counted, from);
                let actor = Actor::new(provider.name(), from.to_string());
                self.meta.audit_refusal(&actor, "auth.failure", provider.name(), None).await?;
                Err(AuthError::Unauthenticated(reason))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The directory and the (lowercased) name to ask it about, for a user with no
    /// stored password; `None` without a directory, for a robot, and for a name that
    /// lowercases to a user with a stored password (else `ALICE` could become the local
    /// `alice` with the directory's password for alice).
    async fn directory_name(&self, user: &str) -> Result<Option<(&LdapDirectory, String)>, AuthError> {
        let Some(directory) = &self.directory else { return Ok(None) };
        let name = user.to_lowercase();
        if name.starts_with(berth_metadata::ROBOT_PREFIX) {
            return Ok(None);
        }
        if name != user && self.stored_credential(&name).await?.is_some() {
            return Ok(None);
        }
        Ok(Some((directory, name)))
    }

    /// Whether the directory accepts the password (or accepted it within the credential
    /// cache's time). After a real bind the user's mirrored teams are set to follow their
    /// groups (lowercased: group names, like user names, ignore case in directories). An
    /// unreachable directory is an error (503 at the edge), never a refusal or a success.
    async fn verify_directory(
        &self,
        directory: &LdapDirectory,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<bool, AuthError> {
        let key = self.credential_key(name, DIRECTORY_CREDENTIAL, password);
        if self.remembered(&key) {
            return Ok(true);
        }
        let found = directory.verify(name, password).await.map_err(|e| AuthError::Backend(e.to_string()))?;
        let Some(found) = found else { return Ok(false) };
        let groups: Vec<String> = found.groups.iter().map(|g| g.to_lowercase()).collect();
        self.meta.sync_directory_teams(name, &groups, &Actor::new(DIRECTORY_ACTOR, from.to_string())).await?;
        self.remember(key);
        Ok(true)
    }

    /// The stored hash of a user and whether they are an administrator. An expired
    /// robot has none. htpasswd users are administrators if the database says so.
    async fn stored_credential(&self, user: &str) -> Result<Option<(StoredHash, bool)>, AuthError> {
        let record = self.meta.user(user).await?;
        if let Some(hash) = self.htpasswd.as_ref().and_then(|h| h.lookup(user)) {
            return Ok(Some((hash, record.is_some_and(|r| r.admin))));
        }
        let now = berth_metadata::now_millis();
        Ok(record
            .filter(|r| r.expires_at.is_none_or(|at| at > now))
            .and_then(|r| Some((StoredHash::recognise(r.password_hash.as_deref()?)?, r.admin))))
    }

    /// What a user's refresh tokens are tied to: the stored hash of their password, or
    /// the stamp of a person who signs in through the OIDC provider. `None` for an
    /// expired robot and a user who is gone.
    async fn stamp(&self, user: &str) -> Result<Option<String>, AuthError> {
        if let Some(hash) = self.htpasswd.as_ref().and_then(|h| h.lookup(user)) {
            return Ok(Some(hash.as_str().to_owned()));
        }
        let now = berth_metadata::now_millis();
        let record = self.meta.user(user).await?;
        Ok(record.filter(|r| r.expires_at.is_none_or(|at| at > now)).and_then(|r| r.password_hash))
    }

    async fn verify_cached(&self, user: &str, stored: &StoredHash, password: &str) -> Result<bool, AuthError> {
        let key = self.credential_key(user, stored.as_str(), password);
        if self.remembered(&key) {
            return Ok(true);
        }
        let permit = self.hashing.acquire().await.map_err(|e| AuthError::Backend(e.to_string()))?;
        let (hash, pw) = (stored.clone(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || hash.verify(&pw))
            .await
            .map_err(|e| AuthError::Backend(format!("password check: {e}")))?;
        drop(permit);
        if ok {
            self.remember(key);
        }
        Ok(ok)
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        self.verified.get(key).is_some_and(|until| until > Instant::now())
    }

    fn remember(&self, key: [u8; 32]) {
        self.verified.insert(key, Instant::now() + self.settings.credential_cache);
    }

    /// `stored`: the stored hash, or [`DIRECTORY_CREDENTIAL`] for a directory password.
    fn credential_key(&self, user: &str, stored: &str, password: &str) -> [u8; 32] {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("HMAC takes any key length");
        for part in [user, stored, password] {
            // Length-prefixed, so that no two different triples feed the same bytes.
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// Serves the token endpoint: the caller (by password, by refresh token, or
    /// anonymous) gets a token for the part of the requested scopes it is allowed.
    pub async fn issue(
        &self,
        request: TokenRequest,
        credentials: Option<Credentials>,
        from: IpAddr,
    ) -> Result<IssuedToken, AuthError> {
        let (Some(keys), Some(settings)) = (&self.tokens, &self.settings.token) else {
            return Err(AuthError::BadRequest("this registry does not issue tokens".into()));
        };
        if let Some(service) = &request.service {
            if service != keys.audience() {
                return Err(AuthError::BadRequest(format!("unknown service {service:?}")));
            }
        }
        let (principal, fingerprint) = match (&request.refresh_token, credentials) {
            (Some(refresh), _) => self.check_refresh(keys, refresh).await?,
            (None, Some(Credentials::Basic { user, password })) => {
                // A directory user has no stored hash to tie a refresh token to, and so
                // gets none: it would outlive their directory account.
                self.check_password(&user, &password, from).await?
            }
            (None, Some(Credentials::Certificate(name))) => (self.certificate_principal(&name).await?, None),
            (None, Some(Credentials::Bearer(_))) => {
                return Err(AuthError::Unauthenticated("sign in to the token endpoint with a password".into()))
            }
            (None, None) => (Principal::Anonymous, None),
        };
        let mut granted = Vec::new();
        for requested in request.scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
            let Some(scope) = Scope::parse(requested) else { continue };
            let actions = match &scope.resource {
                Resource::Repository(name) => self.principal_access(&principal, name).await?.intersect(scope.actions),
                Resource::Catalog if matches!(principal, Principal::User { .. }) => Actions::ALL,
                Resource::Catalog => Actions::NONE,
            };
            if !actions.is_empty() {
                granted.push(Scope { resource: scope.resource, actions });
            }
        }
        let now = unix_now();
        let mut exp = now + settings.expiration.as_secs();
        if let Principal::Workload { expires, .. } = &principal {
            // A registry token never outlives the ID token it was exchanged for.
            exp = exp.min(*expires);
        }
        let claims = Claims {
            iss: keys.issuer().to_owned(),
            sub: principal.name().to_owned(),
            aud: keys.audience().to_owned(),
            exp,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access: granted.iter().map(AccessEntry::from_scope).collect(),
            refresh: None,
        };
        let token = keys.sign(&claims);
        let refresh_token = match (request.offline, &principal, fingerprint) {
            (true, Principal::User { name, .. }, Some(fp)) => Some(refresh_token(keys, settings, name, fp, now)),
            _ => None,
        };
        Ok(IssuedToken {
            access_token: token.clone(),
            token,
            expires_in: exp.saturating_sub(now),
            issued_at: humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(now)).to_string(),
            refresh_token,
            scope: granted.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        })
    }

    /// The principal of a refresh token, if it is valid and the password (or OIDC
    /// stamp) it was issued for has not changed since.
    async fn check_refresh(&self, keys: &TokenKeys, token: &str) -> Result<(Principal, Option<String>), AuthError> {
        let claims = keys.verify(token).await?;
        let Some(fingerprint) = claims.refresh else {
            return Err(AuthError::Unauthenticated("an access token is not a refresh token".into()));
        };
        let current = self.stamp(&claims.sub).await?.map(|stamp| self::fingerprint(&stamp));
        if current.as_deref() != Some(fingerprint.as_str()) {
            return Err(AuthError::Unauthenticated("the refresh token was revoked (the password changed)".into()));
        }
        let principal = self.token_principal(&claims.sub).await?;
        Ok((principal, Some(fingerprint)))
    }
}

/// A refresh token of `name`'s, tied to the fingerprint `fp` of their password or stamp.
fn refresh_token(keys: &TokenKeys, settings: &TokenSettings, name: &str, fp: String, now: u64) -> String {
    keys.sign(&Claims {
        iss: keys.issuer().to_owned(),
        sub: name.to_owned(),
        aud: keys.audience().to_owned(),
        exp: now + settings.refresh_expiration.as_secs(),
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        access: Vec::new(),
        refresh: Some(fp),
    })
}

/// Whether a password is shaped like a JWT (a registry password from an OIDC sign-in):
/// three base64url parts, the first a JSON object. No password hash is tried on it.
fn looks_like_jwt(password: &str) -> bool {
    password.starts_with("eyJ") && password.split('.').count() == 3
}

/// A one-way fingerprint of a user's stored hash or OIDC stamp (not of the password):
/// equal as long as the password is unchanged.
fn fingerprint(stored: &str) -> String {
    let digest = Sha256::digest(format!("berth-refresh\0{stored}").as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// Whether `repository` lies in `namespace` (a path prefix, whole components only).
fn in_namespace(repository: &str, namespace: &str) -> bool {
    repository.strip_prefix(namespace).is_some_and(|rest| rest.starts_with('/'))
}

/// What a role allows on its namespace's repositories.
pub fn role_actions(role: Role) -> Actions {
    match role {
        Role::Reader => Actions::PULL,
        Role::Developer => Actions::PULL.union(Actions::PUSH),
        Role::Maintainer | Role::Admin => Actions::ALL,
    }
}
