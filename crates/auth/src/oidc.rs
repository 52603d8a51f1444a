//! People signing in through an OpenID Connect provider (Keycloak, Entra ID, Okta,
//! Google, Dex, GitLab): the authorization code flow with PKCE (S256) and a nonce, on
//! the `openidconnect` crate. The browser flow (`/auth/oidc/login` → provider →
//! `/auth/oidc/callback`) is what the web UI uses; `berth login` runs the same flow with
//! a loopback redirect (RFC 8252) and ends with a registry password.
//!
//! Nothing of a sign-in in progress is kept on the server: the state, nonce and PKCE
//! verifier travel with the client, signed by the token service (a cookie for a browser,
//! a field for the CLI), so any instance behind a load balancer can finish a sign-in
//! another one began. The verifier is no secret from the client that holds it: PKCE
//! guards the code against other apps, and the code is useless without the verifier.

use crate::tokens::{unix_now, TokenKeys};
use crate::{fingerprint, refresh_token, AuthError, Authenticator};
use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_metadata::{Actor, OIDC_STAMP_PREFIX};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreTokenResponse,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `berth.auth.oidc`.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The provider, exactly as its ID tokens' `iss` say it.
    pub issuer: String,
    /// The client the registry is at the provider (the browser flow's).
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Where the provider sends browsers back; default `/auth/oidc/callback` on the host
    /// the browser used. It must be registered at the provider.
    pub redirect_url: Option<String>,
    /// A public client for `berth login` (loopback redirects on any port); default:
    /// `client_id`.
    pub cli_client_id: Option<String>,
    pub scopes: Vec<String>,
    /// The claim that names the user (`preferred_username`, `email`, `upn`, `sub`).
    pub username_claim: String,
    /// The claim listing the user's groups, mirrored onto teams as LDAP groups are.
    pub groups_claim: String,
    pub timeout: Duration,
}

/// Discovery (with the provider's keys) is fetched again after this long.
const METADATA_KEPT_FOR: Duration = Duration::from_secs(3600);
/// An ID token whose signature no known key verifies fetches the keys again, at most
/// this often: the provider may have rotated them.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// A sign-in in progress, as the client carries it between the two halves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub redirect_uri: String,
    /// Begun by `berth login`: the CLI client redeems the code.
    pub cli: bool,
}

/// What a browser or `berth login` is sent to the provider with.
#[derive(Debug, Clone)]
pub struct OidcStart {
    /// The provider's authorization URL.
    pub authorization_url: String,
    /// The signed sign-in state to bring back with the code (a cookie, or a field).
    pub login: String,
}

/// What a person who signed in through the OIDC provider gets: a registry password
/// (`docker login -u <username> -p <password>`), good until `expires_in` seconds from now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OidcCredential {
    pub username: String,
    pub password: String,
    pub expires_in: u64,
}

/// How long a sign-in may take between leaving for the provider and coming back.
const OIDC_SIGN_IN_TIME: Duration = Duration::from_secs(600);

/// The claims of a sign-in in progress, signed by the token service.
#[derive(serde::Serialize, serde::Deserialize)]
struct SignInClaims {
    iss: String,
    aud: String,
    exp: u64,
    #[serde(flatten)]
    pending: Pending,
}

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The sign-in does not prove anyone (401).
    #[error("{0}")]
    Refused(String),
    /// The provider could not be asked (503).
    #[error("the OpenID Connect provider could not be reached: {0}")]
    Unavailable(String),
}

impl From<OidcError> for AuthError {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Refused(m) => AuthError::Unauthenticated(m),
            OidcError::Unavailable(_) => AuthError::Backend(e.to_string()),
        }
    }
}

pub struct SignIn {
    settings: OidcSettings,
    http: reqwest::Client,
    issuer: IssuerUrl,
    metadata: ArcSwapOption<(CoreProviderMetadata, Instant)>,
    /// When the metadata was last fetched because of a signature no key verified.
    refetched: tokio::sync::Mutex<Option<Instant>>,
}

impl SignIn {
    pub fn new(settings: OidcSettings) -> Result<SignIn, String> {
        crate::federation::check_url(&settings.issuer)?;
        if let Some(url) = &settings.redirect_url {
            RedirectUrl::new(url.clone()).map_err(|e| format!("redirecturl {url:?}: {e}"))?;
        }
        let issuer = IssuerUrl::new(settings.issuer.clone()).map_err(|e| e.to_string())?;
        // No redirects: a provider's endpoints answer themselves, and following
        // redirects would let a hostile document point the registry anywhere.
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(SignIn {
            settings,
            http,
            issuer,
            metadata: ArcSwapOption::empty(),
            refetched: tokio::sync::Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// The provider's authorization URL for a new sign-in that comes back to
    /// `redirect_uri`, and what the client must bring back with the code.
    pub async fn begin(&self, redirect_uri: &str, cli: bool) -> Result<(String, Pending), OidcError> {
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| OidcError::Refused(format!("invalid redirect URI {redirect_uri:?}: {e}")))?;
        let client = self.client(&*self.metadata(false).await?, cli);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect));
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let pending = Pending {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            redirect_uri: redirect_uri.to_owned(),
            cli,
        };
        Ok((url.to_string(), pending))
    }

    /// Redeems the code of a sign-in begun with [`SignIn::begin`] and returns who signed
    /// in, once the ID token's signature, issuer, audience, expiry and nonce hold.
    pub async fn finish(&self, pending: &Pending, code: &str) -> Result<Person, OidcError> {
        let metadata = self.metadata(false).await?;
        let client = self.client(&metadata, pending.cli);
        let redirect = RedirectUrl::new(pending.redirect_uri.clone()).map_err(|e| OidcError::Refused(e.to_string()))?;
        let response: CoreTokenResponse = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    OidcError::Refused(format!("the provider refused the sign-in: {r}"))
                }
                other => OidcError::Unavailable(other.to_string()),
            })?;
        let token = response.id_token().ok_or_else(|| OidcError::Refused("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let verified = match token.claims(&verifier(&client), &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                // Perhaps a key the provider rotated in since the keys were fetched.
                let fresh = self.metadata(true).await?;
                token.claims(&verifier(&self.client(&fresh, pending.cli)), &nonce).map(drop)
            }
            other => other.map(drop),
        };
        verified.map_err(|e| OidcError::Refused(format!("invalid ID token: {e}")))?;
        self.person(&token.to_string())
    }

    /// The user name and groups from the (verified) ID token's claims. They are read
    /// from its payload because the claims are the deployment's choice (`groups`,
    /// `roles`, `upn`), which the crate's typed claims do not cover.
    fn person(&self, verified_token: &str) -> Result<Person, OidcError> {
        let claims = payload(verified_token).ok_or_else(|| OidcError::Refused("unreadable ID token".into()))?;
        let wanted = &self.settings.username_claim;
        let name = claims.get(wanted).and_then(Value::as_str).ok_or_else(|| {
            OidcError::Refused(format!("the ID token has no {wanted:?} claim to name the user (`usernameclaim`)"))
        })?;
        if !crate::admin::valid_name(name) {
            return Err(OidcError::Refused(format!(
                "the {wanted:?} claim {name:?} is not a usable user name: letters, digits and . _ - @"
            )));
        }
        let groups = match claims.get(&self.settings.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Person { name: name.to_owned(), groups })
    }

    fn client(&self, metadata: &(CoreProviderMetadata, Instant), cli: bool) -> CoreClientFor {
        let s = &self.settings;
        let (id, secret) = match (&s.cli_client_id, cli) {
            (Some(id), true) => (id.clone(), None),
            _ => (s.client_id.clone(), s.client_secret.clone()),
        };
        CoreClient::from_provider_metadata(metadata.0.clone(), ClientId::new(id), secret.map(ClientSecret::new))
    }

    /// The provider's discovery document and keys: kept for [`METADATA_KEPT_FOR`], or
    /// fetched again when `refetch` (at most every [`REFETCH_AT_MOST_EVERY`]).
    async fn metadata(&self, refetch: bool) -> Result<Arc<(CoreProviderMetadata, Instant)>, OidcError> {
        let usable = |m: &Arc<(CoreProviderMetadata, Instant)>| m.1.elapsed() < METADATA_KEPT_FOR;
        if !refetch {
            if let Some(m) = self.metadata.load_full().filter(usable) {
                return Ok(m);
            }
        }
        let mut last = self.refetched.lock().await;
        if let Some(m) = self.metadata.load_full().filter(usable) {
            if !refetch || last.is_some_and(|at| at.elapsed() < REFETCH_AT_MOST_EVERY) {
                return Ok(m);
            }
        }
        let fetched = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("discovery at {}: {e}", self.settings.issuer)))?;
        if refetch {
            *last = Some(Instant::now());
        }
        let m = Arc::new((fetched, Instant::now()));
        self.metadata.store(Some(m.clone()));
        Ok(m)
    }
}

/// The client type `from_provider_metadata` makes: authorization endpoint known, token
/// and user info endpoints as the discovery document has them.
type CoreClientFor = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Asymmetric algorithms only: with HS256 the key would be the client secret, which a
/// public client does not have and a provider should not sign people's tokens with.
fn verifier(client: &CoreClientFor) -> openidconnect::IdTokenVerifier<'_, openidconnect::core::CoreJsonWebKey> {
    use CoreJwsSigningAlgorithm::*;
    client.id_token_verifier().set_allowed_algs([
        RsaSsaPkcs1V15Sha256,
        RsaSsaPkcs1V15Sha384,
        RsaSsaPkcs1V15Sha512,
        RsaSsaPssSha256,
        RsaSsaPssSha384,
        RsaSsaPssSha512,
        EcdsaP256Sha256,
        EcdsaP384Sha384,
        EdDsa,
    ])
}

fn payload(token: &str) -> Option<Map<String, Value>> {
    let part = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `uri` is a loopback redirect a native app may ask for (RFC 8252 §7.3):
/// plain http to 127.0.0.1, [::1] or localhost, on any port.
pub fn is_loopback_redirect(uri: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else { return false };
    url.scheme() == "http" && crate::federation::is_loopback(&url) && url.fragment().is_none()
}

impl Authenticator {
    /// Whether people may sign in through an OpenID Connect provider.
    pub fn oidc_enabled(&self) -> bool {
        self.oidc.is_some()
    }

    /// Begins a sign-in through the provider. `cli_redirect`: the loopback URI of
    /// `berth login`; otherwise the browser flow, coming back to the configured
    /// `redirecturl` or else to `callback` (this server's callback as the browser
    /// reaches it).
    pub async fn oidc_begin(
        &self,
        cli_redirect: Option<&str>,
        callback: Option<String>,
    ) -> Result<OidcStart, AuthError> {
        let (Some(sign_in), Some(keys)) = (&self.oidc, &self.tokens) else {
            return Err(AuthError::BadRequest("this registry has no OpenID Connect sign-in".into()));
        };
        let redirect =
            match cli_redirect {
                Some(uri) if is_loopback_redirect(uri) => uri.to_owned(),
                Some(uri) => {
                    return Err(AuthError::BadRequest(format!(
                        "redirect URI {uri:?}: only http://127.0.0.1, [::1] or localhost on any port (RFC 8252)"
                    )))
                }
                None => sign_in.settings().redirect_url.clone().or(callback).ok_or_else(|| {
                    AuthError::BadRequest("no callback URL: set `berth.auth.oidc.redirecturl`".into())
                })?,
            };
        let (authorization_url, pending) = sign_in.begin(&redirect, cli_redirect.is_some()).await?;
        let login = keys.sign(&SignInClaims {
            iss: keys.issuer().to_owned(),
            aud: sign_in_audience(keys),
            exp: unix_now() + OIDC_SIGN_IN_TIME.as_secs(),
            pending,
        });
        Ok(OidcStart { authorization_url, login })
    }

    /// Finishes a sign-in with the code and state the provider sent back and the signed
    /// state from [`Authenticator::oidc_begin`]. The person becomes a user here (or is
    /// found again), their teams follow the groups claim, and they get a registry
    /// password: a refresh token, which ends when an administrator deletes them.
    pub async fn oidc_finish(
        &self,
        login: &str,
        code: &str,
        state: &str,
        from: IpAddr,
    ) -> Result<OidcCredential, AuthError> {
        let (Some(sign_in), Some(keys), Some(settings)) = (&self.oidc, &self.tokens, &self.settings.token) else {
            return Err(AuthError::BadRequest("this registry has no OpenID Connect sign-in".into()));
        };
        let claims: SignInClaims =
            keys.verify_for(login, &sign_in_audience(keys), &["exp", "iss", "aud"]).await.map_err(|e| {
                AuthError::Unauthenticated(format!("the sign-in expired or is not this registry's ({e}): start again"))
            })?;
        // The state binds the code to the client that began the sign-in (CSRF).
        if claims.pending.state != state {
            return Err(AuthError::Unauthenticated("the sign-in state does not match: start again".into()));
        }
        let actor = Actor::new(OIDC_ACTOR, from.to_string());
        let person = match sign_in.finish(&claims.pending, code).await {
            Ok(person) => person,
            Err(OidcError::Refused(reason)) => {
                self.meta.audit_refusal(&actor, "auth.failure", &sign_in.settings().issuer, None).await?;
                return Err(AuthError::Unauthenticated(reason));
            }
            Err(e) => return Err(e.into()),
        };
        let name = &person.name;
        let local = || AuthError::Unauthenticated(format!("{name:?} is a user with a password here: sign in with it"));
        if self.htpasswd.as_ref().is_some_and(|h| h.lookup(name).is_some()) {
            return Err(local());
        }
        let mut random = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        let fresh = format!("{OIDC_STAMP_PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
        let stamp = self.meta.oidc_user(name, &fresh, &actor).await?.ok_or_else(local)?;
        self.meta.sync_directory_teams(name, &person.groups, &actor).await?;
        tracing::info!(user = %name, "signed in through the OpenID Connect provider");
        Ok(OidcCredential {
            username: name.clone(),
            password: refresh_token(keys, settings, name, fingerprint(&stamp), unix_now()),
            expires_in: settings.refresh_expiration.as_secs(),
        })
    }
}

/// The audience of signed sign-in states: never the service's, so that no state can
/// pass for an access or refresh token, nor one for a state.
fn sign_in_audience(keys: &TokenKeys) -> String {
    format!("{}#oidc-sign-in", keys.audience())
}

/// The audit log's actor for changes made by OIDC sign-ins.
const OIDC_ACTOR: &str = "oidc";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_redirects_are_native() {
        for ok in ["http://127.0.0.1:4711/callback", "http://[::1]:80/cb", "http://localhost:9/"] {
            assert!(is_loopback_redirect(ok), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:4711/callback",
            "http://evil.example/callback",
            "http://127.0.0.1.evil.example/",
            "http://10.0.0.1:80/",
            "http://127.0.0.1:80/#frag",
            "javascript:alert(1)",
        ] {
            assert!(!is_loopback_redirect(bad), "{bad}");
        }
    }
}
