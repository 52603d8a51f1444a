//! The built-in token service's JWTs: ES256 signatures with a key id, keys shared by
//! every instance through the metadata database, the public keys published as a JWKS.
//!
//! Verification accepts ES256 only, so `alg: none` and the HS256-with-the-public-key
//! confusion cannot get through, and checks issuer, audience, expiry and not-before.

use crate::scope::{Actions, Resource, Scope};
use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_metadata::MetadataStore;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One `access` entry of a token, as Docker's token specification writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl AccessEntry {
    pub fn from_scope(scope: &Scope) -> AccessEntry {
        match &scope.resource {
            Resource::Repository(name) => AccessEntry {
                kind: "repository".into(),
                name: name.clone(),
                actions: scope.actions.names().into_iter().map(str::to_owned).collect(),
            },
            Resource::Catalog => {
                AccessEntry { kind: "registry".into(), name: "catalog".into(), actions: vec!["*".into()] }
            }
        }
    }

    pub fn to_scope(&self) -> Option<Scope> {
        let resource = match (self.kind.as_str(), self.name.as_str()) {
            ("repository", name) => Resource::Repository(name.to_owned()),
            ("registry", "catalog") => Resource::Catalog,
            _ => return None,
        };
        Some(Scope { resource, actions: Actions::parse_list(&self.actions.join(",")) })
    }
}

/// The claims of an access or refresh token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// Set only on refresh tokens: a fingerprint of the password they were issued for,
    /// so that changing the password ends them. An access token never has it, and a
    /// refresh token is never accepted as an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The keys as loaded from the database.
struct Keys {
    signing: (String, EncodingKey),
    verifying: HashMap<String, DecodingKey>,
    jwks: serde_json::Value,
}

/// Signs and verifies the built-in service's tokens.
pub struct TokenKeys {
    meta: MetadataStore,
    keys: ArcSwap<Keys>,
    issuer: String,
    audience: String,
    /// When the keys were last read, so an unknown key id (a key another instance just
    /// added) re-reads them at most this often.
    reloaded: tokio::sync::Mutex<Option<Instant>>,
}

const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] berth_metadata::Error),
}

impl TokenKeys {
    /// Loads the keys, creating the first one if the database has none. Instances that
    /// start together may each create one: all of them verify, the newest signs.
    pub async fn open(meta: MetadataStore, issuer: String, audience: String) -> Result<TokenKeys, TokenError> {
        if meta.signing_keys().await?.is_empty() {
            let (kid, pem) = generate();
            meta.add_signing_key(&kid, &pem).await?;
            tracing::info!(kid, "created the token service's first signing key");
        }
        let keys = load(&meta).await?;
        Ok(TokenKeys {
            meta,
            keys: ArcSwap::from_pointee(keys),
            issuer,
            audience,
            reloaded: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public keys, as `GET /auth/jwks` serves them.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.load().jwks.clone()
    }

    /// Adds a new signing key; it signs from now on, here at once and on other
    /// instances when they first see a token with its key id.
    pub async fn rotate(&self) -> Result<String, TokenError> {
        let (kid, pem) = generate();
        self.meta.add_signing_key(&kid, &pem).await?;
        self.keys.store(Arc::new(load(&self.meta).await?));
        Ok(kid)
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        let keys = self.keys.load();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(keys.signing.0.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &keys.signing.1).expect("ES256 signing with a valid key cannot fail")
    }

    /// The claims of a token this service signed, if its signature, issuer, audience and
    /// times hold.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_for(token, &self.audience, &["exp", "nbf", "iss", "aud", "sub"]).await
    }

    /// The claims of a token this service signed for `audience`: access and refresh
    /// tokens are for the service, other things it signs for audiences of their own, so
    /// that none can pass for another.
    pub async fn verify_for<T: DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
        required: &[&str],
    ) -> Result<T, TokenError> {
        let header = header(token)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Invalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| TokenError::Invalid("no key id".into()))?;
        let key = match self.keys.load().verifying.get(&kid) {
            Some(k) => k.clone(),
            None => self.reload_for(&kid).await?,
        };
        validate(token, &key, Algorithm::ES256, &self.issuer, audience, required)
    }

    async fn reload_for(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let unknown = || TokenError::Invalid(format!("unknown key id {kid:?}"));
        let mut last = self.reloaded.lock().await;
        if last.is_none_or(|t| t.elapsed() >= RELOAD_AT_MOST_EVERY) {
            *last = Some(Instant::now());
            self.keys.store(Arc::new(load(&self.meta).await?));
        }
        self.keys.load().verifying.get(kid).cloned().ok_or_else(unknown)
    }
}

/// The claims of `token` if `key` signed it with `algorithm` and issuer, audience and
/// times hold (30 s leeway for clocks).
fn validate<T: DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    algorithm: Algorithm,
    issuer: &str,
    audience: &str,
    required: &[&str],
) -> Result<T, TokenError> {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.validate_nbf = true;
    validation.leeway = 30;
    validation.set_required_spec_claims(required);
    jsonwebtoken::decode::<T>(token, key, &validation).map(|d| d.claims).map_err(|e| TokenError::Invalid(e.to_string()))
}

/// The public keys of another issuer, from its JWKS: an external token server
/// (registry:2's `auth.token` with `jwks`) or a CI system's OIDC issuer. Tokens are
/// verified here, never issued.
pub struct IssuerKeys {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// `rootcertbundle`: roots of the chains tokens carry in `x5c`.
    roots: Option<crate::certbundle::RootBundle>,
    issuer: String,
    audience: String,
}

impl IssuerKeys {
    /// An external token server's keys, from registry:2's `auth.token`: a JWKS file
    /// and/or a PEM bundle of its certificates (`rootcertbundle`).
    pub fn load(
        jwks: Option<&std::path::Path>,
        bundle: Option<&std::path::Path>,
        issuer: String,
        audience: String,
    ) -> Result<IssuerKeys, String> {
        let mut keys = match jwks {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                IssuerKeys::parse(&text, issuer.clone(), audience.clone())
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => IssuerKeys { keys: HashMap::new(), roots: None, issuer, audience },
        };
        if let Some(path) = bundle {
            let (roots, certified) = crate::certbundle::load(path)?;
            keys.keys.extend(certified.into_iter().map(|(kid, key, algorithm)| (kid, (key, algorithm))));
            keys.roots = Some(roots);
        }
        if keys.keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(keys)
    }

    /// Reads a JWKS document. Each key needs a key id and an asymmetric type; its
    /// algorithm is the one it names, or the one its type implies. Shared secrets are
    /// refused: a registry that can verify with a secret could also forge with it. Keys
    /// meant for encryption (`use: enc`) are skipped.
    pub fn parse(jwks: &str, issuer: String, audience: String) -> Result<IssuerKeys, String> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
        let set: JwkSet = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for jwk in set.keys.iter().filter(|k| k.common.public_key_use != Some(PublicKeyUse::Encryption)) {
            let kid = jwk.common.key_id.clone().ok_or("a key has no \"kid\"")?;
            let implied = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => Algorithm::ES384,
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => return Err(format!("key {kid:?} is not an asymmetric signing key")),
            };
            let algorithm = match jwk.common.key_algorithm {
                Some(a) => a.to_string().parse::<Algorithm>().map_err(|e| format!("key {kid:?}: {e}"))?,
                None => implied,
            };
            if algorithm.family() != implied.family() {
                return Err(format!("key {kid:?} names {algorithm:?}, which its key type cannot do"));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
            keys.insert(kid, (key, algorithm));
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(IssuerKeys { keys, roots: None, issuer, audience })
    }

    pub fn has_key(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// A registry token of the external token server.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_claims(token, &["exp", "iss", "aud"])
    }

    /// The claims of a token one of these keys signed, with the algorithm the key is
    /// for, if issuer, audience, times and the `required` claims hold.
    pub fn verify_claims<T: DeserializeOwned>(&self, token: &str, required: &[&str]) -> Result<T, TokenError> {
        let header = header(token)?;
        let chained;
        let (key, algorithm) = match (&self.roots, &header.x5c) {
            (Some(roots), Some(chain)) => {
                chained = roots.chain_key(chain).map_err(TokenError::Invalid)?;
                (&chained.0, &chained.1)
            }
            _ => {
                let kid = header.kid.ok_or_else(|| TokenError::Invalid("no key id".into()))?;
                let (key, algorithm) =
                    self.keys.get(&kid).ok_or_else(|| TokenError::Invalid(format!("unknown key id {kid:?}")))?;
                (key, algorithm)
            }
        };
        if header.alg != *algorithm {
            return Err(TokenError::Invalid(format!("algorithm {:?} is not the key's", header.alg)));
        }
        validate(token, key, *algorithm, &self.issuer, &self.audience, required)
    }
}

/// A token's header, read before its signature is checked (to pick the key).
pub fn header(token: &str) -> Result<Header, TokenError> {
    jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))
}

/// A new P-256 key: its RFC 7638 thumbprint as key id, and its PKCS#8 PEM.
fn generate() -> (String, String) {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 encoding of a P-256 key").to_string();
    let (x, y) = coordinates(&secret.public_key());
    (thumbprint(&x, &y), pem)
}

fn coordinates(public: &p256::PublicKey) -> (String, String) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let point = public.to_encoded_point(false);
    let x = URL_SAFE_NO_PAD.encode(point.x().expect("uncompressed point"));
    let y = URL_SAFE_NO_PAD.encode(point.y().expect("uncompressed point"));
    (x, y)
}

fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

async fn load(meta: &MetadataStore) -> Result<Keys, TokenError> {
    let stored = meta.signing_keys().await?;
    let mut verifying = HashMap::new();
    let mut published = Vec::new();
    let mut signing = None;
    for key in stored {
        let secret = p256::SecretKey::from_pkcs8_pem(&key.private_pem)
            .map_err(|e| TokenError::Invalid(format!("stored signing key {} is unreadable: {e}", key.kid)))?;
        let (x, y) = coordinates(&secret.public_key());
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| TokenError::Invalid(format!("key {}: {e}", key.kid)))?;
        verifying.insert(key.kid.clone(), decoding);
        published.push(serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": key.kid, "x": x, "y": y,
        }));
        let der = secret.to_pkcs8_der().map_err(|e| TokenError::Invalid(format!("key {}: {e}", key.kid)))?;
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        // Oldest first: the last one read is the newest, and signs.
        signing = Some((key.kid, encoding));
    }
    let signing = signing.ok_or_else(|| TokenError::Invalid("no signing key in the database".into()))?;
    Ok(Keys { signing, verifying, jwks: serde_json::json!({ "keys": published }) })
}
