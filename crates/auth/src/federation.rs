//! CI workload identity: a pipeline signs in with the OIDC ID token its CI system gave
//! it (GitHub Actions, GitLab CI, a Kubernetes service account), so that it needs no
//! stored secret. `docker login -u <provider> -p "$ID_TOKEN"`: the user name picks a
//! configured provider, the token is checked against that issuer's published keys and
//! the provider's audience, and its claims against the provider's rules; the rules that
//! match grant namespace roles, and nothing else is granted.
//!
//! The issuer's keys are found through its discovery document and kept; a token signed
//! with a key id not yet seen fetches them again, which is how issuers rotate keys. A
//! fetch that did not bring the key asked for pauses such fetches for
//! [`REFETCH_AT_MOST_EVERY`], so invented key ids cannot make the registry hammer the issuer.

use crate::tokens::{self, IssuerKeys, TokenError};
use arc_swap::ArcSwapOption;
use berth_metadata::Role;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CI system whose ID tokens are accepted, from `berth.auth.federation`.
#[derive(Debug, Clone)]
pub struct FederationSettings {
    /// The user name a pipeline signs in with.
    pub name: String,
    /// The issuer, exactly as its tokens' `iss` say (`https://token.actions.githubusercontent.com`).
    pub issuer: String,
    /// The audience the tokens must be for (`aud`): what the pipeline asks its token for.
    pub audience: String,
    /// The issuer's JWKS; default: the `jwks_uri` of its discovery document.
    pub jwks_uri: Option<String>,
    pub rules: Vec<FederationRule>,
    /// The bound on each request to the issuer.
    pub timeout: Duration,
}

/// Claims a token must have (every one: exact values, or patterns with `*`), and the
/// roles it then gets.
#[derive(Debug, Clone)]
pub struct FederationRule {
    pub claims: Vec<(String, String)>,
    pub grants: Vec<(String, Role)>,
}

/// Keys are fetched again after this long even when every key id is known, so a key
/// the issuer withdrew stops verifying.
const KEYS_KEPT_FOR: Duration = Duration::from_secs(3600);
/// After a fetch that lacked the key id a token named, unknown key ids are refused
/// without fetching for this long.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// The most of a discovery document or a JWKS that is read.
const MAX_DOCUMENT: usize = 1 << 20;

/// What a verified ID token is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `sub`: who the CI system says is calling (`repo:org/app:ref:refs/heads/main`).
    pub subject: String,
    pub grants: Vec<(String, Role)>,
    /// The token's `exp`: nothing derived from it lives longer.
    pub expires: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The token is not good for this registry (401).
    #[error("{0}")]
    Refused(String),
    /// The issuer could not be asked for its keys (503).
    #[error("the identity provider could not be reached: {0}")]
    Unavailable(String),
}

pub struct Provider {
    settings: FederationSettings,
    client: reqwest::Client,
    keys: ArcSwapOption<(IssuerKeys, Instant)>,
    /// When a fetch last lacked the key id that caused it.
    fruitless: tokio::sync::Mutex<Option<Instant>>,
}

impl Provider {
    pub fn new(settings: FederationSettings) -> Result<Provider, String> {
        for url in std::iter::once(&settings.issuer).chain(&settings.jwks_uri) {
            check_url(url)?;
        }
        if settings.rules.iter().any(|r| r.claims.is_empty()) {
            // Without a condition a rule would admit every token of the issuer: for a
            // public CI system, every pipeline in the world.
            return Err("every rule needs at least one claim to match".into());
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Provider { settings, client, keys: ArcSwapOption::empty(), fruitless: tokio::sync::Mutex::new(None) })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// What `token` is allowed, if it is a valid ID token of this issuer for this
    /// audience that some rule matches.
    pub async fn verify(&self, token: &str) -> Result<Workload, FederationError> {
        let refused = |e: TokenError| FederationError::Refused(format!("invalid ID token: {e}"));
        let kid = tokens::header(token).map_err(refused)?.kid;
        let kid = kid.ok_or_else(|| FederationError::Refused("invalid ID token: no key id".into()))?;
        let keys = self.keys_with(&kid).await?;
        let claims: Map<String, Value> = keys.0.verify_claims(token, &["exp", "iss", "aud", "sub"]).map_err(refused)?;
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        let expires = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let mut grants: Vec<(String, Role)> = Vec::new();
        for rule in self.settings.rules.iter().filter(|r| r.claims.iter().all(|(k, p)| claim_matches(&claims, k, p))) {
            grants.extend(rule.grants.iter().cloned());
        }
        if grants.is_empty() {
            return Err(FederationError::Refused(format!(
                "no rule of identity provider {:?} admits {subject:?}",
                self.settings.name
            )));
        }
        Ok(Workload { subject, grants, expires })
    }

    /// The issuer's keys, fetched if none are kept, if they are old, or if they lack `kid`.
    async fn keys_with(&self, kid: &str) -> Result<Arc<(IssuerKeys, Instant)>, FederationError> {
        let usable = |k: &Arc<(IssuerKeys, Instant)>| k.1.elapsed() < KEYS_KEPT_FOR && k.0.has_key(kid);
        if let Some(keys) = self.keys.load_full().filter(usable) {
            return Ok(keys);
        }
        // One fetch at a time; whoever waited here finds the keys the fetch before it got.
        let mut fruitless = self.fruitless.lock().await;
        if let Some(keys) = self.keys.load_full().filter(usable) {
            return Ok(keys);
        }
        let unknown = || FederationError::Refused(format!("invalid ID token: unknown key id {kid:?}"));
        let fresh = self.keys.load_full().is_some_and(|k| k.1.elapsed() < KEYS_KEPT_FOR);
        if fresh && fruitless.is_some_and(|at| at.elapsed() < REFETCH_AT_MOST_EVERY) {
            // A fetch just now did not have the key a token named: tokens naming keys the
            // issuer does not publish do not fetch again until the pause is over.
            return Err(unknown());
        }
        let keys = Arc::new((self.fetch_keys().await?, Instant::now()));
        self.keys.store(Some(keys.clone()));
        if keys.0.has_key(kid) {
            Ok(keys)
        } else {
            *fruitless = Some(Instant::now());
            Err(unknown())
        }
    }

    async fn fetch_keys(&self) -> Result<IssuerKeys, FederationError> {
        let jwks_uri = match &self.settings.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
                let discovery: Value = serde_json::from_slice(&self.get(&url).await?)
                    .map_err(|e| FederationError::Unavailable(format!("{url}: {e}")))?;
                if discovery.get("issuer").and_then(Value::as_str) != Some(self.settings.issuer.as_str()) {
                    let m = format!("{url} names another issuer than {:?}", self.settings.issuer);
                    return Err(FederationError::Unavailable(m));
                }
                let uri = discovery.get("jwks_uri").and_then(Value::as_str).unwrap_or_default();
                check_url(uri).map_err(|e| FederationError::Unavailable(format!("{url}: jwks_uri: {e}")))?;
                uri.to_owned()
            }
        };
        let body = self.get(&jwks_uri).await?;
        let text = std::str::from_utf8(&body).map_err(|e| FederationError::Unavailable(format!("{jwks_uri}: {e}")))?;
        IssuerKeys::parse(text, self.settings.issuer.clone(), self.settings.audience.clone())
            .map_err(|e| FederationError::Unavailable(format!("{jwks_uri}: {e}")))
    }

    /// A document of the issuer's, read up to [`MAX_DOCUMENT`].
    async fn get(&self, url: &str) -> Result<Vec<u8>, FederationError> {
        let failed = |e: String| FederationError::Unavailable(format!("{url}: {e}"));
        let mut response = self.client.get(url).send().await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(failed(format!("larger than {MAX_DOCUMENT} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Issuers are reached over HTTPS; plain HTTP only on loopback (a local test issuer).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(format!("{url:?}: an identity provider is reached over https (http only on loopback)")),
    }
}

/// Whether `url` names this machine: 127.0.0.0/8, ::1 or localhost.
pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether the claim `key` matches `pattern`: a string claim (numbers and booleans as
/// written in JSON), or any element of a list claim such as `groups`.
fn claim_matches(claims: &Map<String, Value>, key: &str, pattern: &str) -> bool {
    let matches = |v: &Value| match v {
        Value::String(s) => berth_proto::wildcard(pattern, s),
        Value::Number(_) | Value::Bool(_) => berth_proto::wildcard(pattern, &v.to_string()),
        _ => false,
    };
    match claims.get(key) {
        Some(Value::Array(items)) => items.iter().any(matches),
        Some(v) => matches(v),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_match_strings_numbers_and_list_elements() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"repository": "org/app", "run_attempt": 2, "protected": true, "groups": ["a", "ops"], "nested": {"x": "y"}}"#,
        )
        .unwrap();
        assert!(claim_matches(&claims, "repository", "org/app"));
        assert!(claim_matches(&claims, "run_attempt", "2"));
        assert!(claim_matches(&claims, "protected", "true"));
        assert!(claim_matches(&claims, "groups", "ops"));
        assert!(!claim_matches(&claims, "groups", "dev"));
        assert!(!claim_matches(&claims, "nested", "*"));
        assert!(!claim_matches(&claims, "missing", "*"));
    }

    #[test]
    fn issuers_need_https_except_on_loopback() {
        assert!(check_url("https://token.actions.githubusercontent.com").is_ok());
        assert!(check_url("http://127.0.0.1:9000").is_ok());
        assert!(check_url("http://localhost:9000/jwks").is_ok());
        assert!(check_url("http://[::1]:9000").is_ok());
        assert!(check_url("http://issuer.example.org").is_err());
        assert!(check_url("file:///etc/jwks.json").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn a_rule_without_conditions_is_refused() {
        let settings = FederationSettings {
            name: "github".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "berth".into(),
            jwks_uri: None,
            rules: vec![FederationRule { claims: vec![], grants: vec![("org".into(), Role::Developer)] }],
            timeout: Duration::from_secs(5),
        };
        assert!(Provider::new(settings).err().is_some_and(|e| e.contains("at least one claim")));
    }
}
