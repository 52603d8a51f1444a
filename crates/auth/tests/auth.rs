//! The authenticator against a real (SQLite) metadata store: passwords, the token
//! service, and every way a forged or misused token must fail.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_auth::{
    hash_argon2, Actions, AuthError, AuthSettings, Authenticator, Caller, Credentials, ExternalTokenSettings,
    Principal, TokenRequest,
};
use berth_metadata::{Actor, MetadataStore, UserRecord};
use common::settings;
use std::net::IpAddr;
use std::time::Duration;

mod common;

const FROM: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Env {
    _dir: tempfile::TempDir,
    meta: MetadataStore,
    auth: Authenticator,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let meta = MetadataStore::open(&format!("sqlite://{}", dir.path().join("m.db").display())).await.unwrap();
    let user = UserRecord {
        name: "alice".into(),
        password_hash: Some(hash_argon2("alice-pw")),
        admin: false,
        expires_at: None,
    };
    assert!(meta.create_user(&user, &[], &Actor::system()).await.unwrap());
    let auth = Authenticator::new(settings(), meta.clone()).await.unwrap();
    Env { _dir: dir, meta, auth }
}

fn basic(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials::Basic { user: user.into(), password: password.into() })
}

fn request(scopes: &[&str]) -> TokenRequest {
    TokenRequest { scopes: scopes.iter().map(|s| s.to_string()).collect(), ..TokenRequest::default() }
}

async fn bearer(auth: &Authenticator, token: &str) -> Result<Caller, AuthError> {
    auth.authenticate(Some(Credentials::Bearer(token.to_owned())), FROM).await
}

#[tokio::test]
async fn tokens_grant_the_allowed_part_of_what_was_asked() {
    let e = env().await;
    let issued = e
        .auth
        .issue(
            request(&["repository:team/app:pull,push,delete", "registry:catalog:*"]),
            basic("alice", "alice-pw"),
            FROM,
        )
        .await
        .unwrap();
    assert_eq!(issued.scope, "repository:team/app:pull,push registry:catalog:*");
    let caller = bearer(&e.auth, &issued.token).await.unwrap();
    assert_eq!(caller.principal, Principal::User { name: "alice".into(), admin: false });
    assert_eq!(e.auth.access(&caller, "team/app").await.unwrap(), Actions::PULL.union(Actions::PUSH));
    assert_eq!(e.auth.access(&caller, "team/other").await.unwrap(), Actions::NONE, "only what the token names");
    assert!(e.auth.may_list_catalog(&caller));

    // The administrator gets delete too; an anonymous caller gets pull and no catalog.
    let root = e.auth.issue(request(&["repository:team/app:*"]), basic("root", "root-pw"), FROM).await.unwrap();
    assert_eq!(root.scope, "repository:team/app:pull,push,delete");
    let anon =
        e.auth.issue(request(&["repository:team/app:pull,push", "registry:catalog:*"]), None, FROM).await.unwrap();
    assert_eq!(anon.scope, "repository:team/app:pull");
    let anon = bearer(&e.auth, &anon.token).await.unwrap();
    assert_eq!(anon.principal, Principal::Anonymous);
    assert!(!e.auth.may_list_catalog(&anon));

    let wrong = e.auth.issue(request(&[]), basic("alice", "nope"), FROM).await.unwrap_err();
    assert!(matches!(wrong, AuthError::Unauthenticated(_)), "{wrong:?}");
    let service = TokenRequest { service: Some("elsewhere".into()), ..request(&[]) };
    assert!(matches!(e.auth.issue(service, basic("alice", "alice-pw"), FROM).await, Err(AuthError::BadRequest(_))));
}

/// Re-encodes a token's payload after `edit`, keeping its header and signature.
fn tamper(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut payload);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn unsigned(header: serde_json::Value, payload: &serde_json::Value, signature: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap());
    format!("{h}.{p}.{signature}")
}

/// Signs `claims` with the service's current key, as only the service could.
async fn sign_with_service_key(meta: &MetadataStore, claims: &serde_json::Value) -> String {
    use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let key = meta.signing_keys().await.unwrap().pop().unwrap();
    let der = p256::SecretKey::from_pkcs8_pem(&key.private_pem).unwrap().to_pkcs8_der().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.kid);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes())).unwrap()
}

fn payload_of(token: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

#[tokio::test]
async fn forged_and_misused_tokens_are_refused() {
    let e = env().await;
    let good = e.auth.issue(request(&["repository:a:pull"]), basic("alice", "alice-pw"), FROM).await.unwrap().token;
    assert!(bearer(&e.auth, &good).await.is_ok());
    let claims = payload_of(&good);
    let kid = e.auth.jwks().unwrap()["keys"][0]["kid"].as_str().unwrap().to_owned();
    let now = claims["iat"].as_u64().unwrap();

    let mut forged = vec![
        ("tampered access", tamper(&good, |p| p["access"][0]["actions"] = serde_json::json!(["pull", "push"]))),
        ("tampered subject", tamper(&good, |p| p["sub"] = "root".into())),
        ("tampered expiry", tamper(&good, |p| p["exp"] = (now + 36_000).into())),
        ("alg none", unsigned(serde_json::json!({"alg": "none", "kid": kid}), &claims, "")),
        ("garbage", "not.a.token".to_owned()),
        ("unknown kid", unsigned(serde_json::json!({"alg": "ES256", "kid": "nope"}), &claims, "AAAA")),
    ];
    // HS256 keyed with the public key's bytes: the classic algorithm confusion.
    let x = e.auth.jwks().unwrap()["keys"][0]["x"].as_str().unwrap().to_owned();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let key = jsonwebtoken::EncodingKey::from_secret(x.as_bytes());
    forged.push(("HS256 with the public key", jsonwebtoken::encode(&hs, &claims, &key).unwrap()));
    // Signed with the service's real key, with times that do not hold.
    let mut expired = claims.clone();
    expired["exp"] = (now - 3600).into();
    forged.push(("expired", sign_with_service_key(&e.meta, &expired).await));
    let mut early = claims.clone();
    early["nbf"] = (now + 3600).into();
    forged.push(("not yet valid", sign_with_service_key(&e.meta, &early).await));
    let mut no_expiry = claims.clone();
    no_expiry.as_object_mut().unwrap().remove("exp");
    forged.push(("no expiry", sign_with_service_key(&e.meta, &no_expiry).await));
    // Properly signed, but for another audience or issuer.
    for (what, field, value) in [("wrong audience", "aud", "other"), ("wrong issuer", "iss", "other")] {
        let mut other = settings();
        let t = other.token.as_mut().unwrap();
        if field == "aud" {
            t.service = value.into();
        } else {
            t.issuer = value.into();
        }
        // Same database, so the same keys: only the claim can make the difference.
        let other = Authenticator::new(other, e.meta.clone()).await.unwrap();
        let token = other.issue(request(&["repository:a:pull"]), basic("root", "root-pw"), FROM).await.unwrap().token;
        assert!(bearer(&other, &token).await.is_ok());
        forged.push((what, token));
    }
    for (what, token) in forged {
        match bearer(&e.auth, &token).await {
            Err(AuthError::Unauthenticated(m)) => {
                let why = match what {
                    "expired" => "Expired",
                    "not yet valid" => "Immature",
                    "no expiry" => "exp",
                    "wrong audience" => "Audience",
                    "wrong issuer" => "Issuer",
                    "alg none" => "none",
                    "HS256 with the public key" => "HS256 is not accepted",
                    "unknown kid" => "unknown key id",
                    "garbage" => "Base64",
                    _ => "InvalidSignature",
                };
                assert!(m.starts_with("invalid token") && m.contains(why), "{what}: {m}")
            }
            other => panic!("{what}: accepted or wrong error: {other:?}"),
        }
    }
}

#[tokio::test]
async fn refresh_tokens_last_until_the_password_changes() {
    let e = env().await;
    let offline = TokenRequest { offline: true, ..request(&["repository:a:pull"]) };
    let issued = e.auth.issue(offline, basic("alice", "alice-pw"), FROM).await.unwrap();
    let refresh = issued.refresh_token.expect("offline_token asks for a refresh token");
    assert!(bearer(&e.auth, &refresh).await.is_err(), "a refresh token is not an access token");

    let by_refresh = TokenRequest { refresh_token: Some(refresh.clone()), ..request(&["repository:a:push"]) };
    let again = e.auth.issue(by_refresh, None, FROM).await.unwrap();
    assert_eq!(again.scope, "repository:a:push");
    let access = TokenRequest { refresh_token: Some(issued.token.clone()), ..request(&[]) };
    assert!(e.auth.issue(access, None, FROM).await.is_err(), "an access token is not a refresh token");

    assert!(e.meta.set_password("alice", &hash_argon2("new-pw"), &Actor::system()).await.unwrap());
    let stale = TokenRequest { refresh_token: Some(refresh), ..request(&["repository:a:pull"]) };
    assert!(matches!(e.auth.issue(stale, None, FROM).await, Err(AuthError::Unauthenticated(_))));
}

#[tokio::test]
async fn a_changed_password_is_not_served_from_the_credential_cache() {
    let e = env().await;
    let caller = e.auth.authenticate(basic("alice", "alice-pw"), FROM).await.unwrap();
    assert_eq!(caller.principal.name(), "alice");
    assert!(e.meta.set_password("alice", &hash_argon2("new-pw"), &Actor::system()).await.unwrap());
    assert!(e.auth.authenticate(basic("alice", "alice-pw"), FROM).await.is_err());
    assert!(e.auth.authenticate(basic("alice", "new-pw"), FROM).await.is_ok());
}

#[tokio::test]
async fn failed_sign_ins_are_limited() {
    let e = env().await;
    for _ in 0..3 {
        assert!(matches!(e.auth.authenticate(basic("alice", "bad"), FROM).await, Err(AuthError::Unauthenticated(_))));
    }
    // Even the right password waits now: the limit is checked before the password.
    match e.auth.authenticate(basic("alice", "alice-pw"), FROM).await {
        Err(AuthError::TooManyAttempts { retry_after }) => assert!(retry_after <= Duration::from_secs(60)),
        other => panic!("expected a limit, got {other:?}"),
    }
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid_on_every_instance() {
    let e = env().await;
    let second = Authenticator::new(settings(), e.meta.clone()).await.unwrap();
    let old = e.auth.issue(request(&["repository:a:pull"]), basic("alice", "alice-pw"), FROM).await.unwrap().token;
    let kid = e.auth.rotate_signing_key().await.unwrap().unwrap();
    assert_eq!(e.auth.jwks().unwrap()["keys"].as_array().unwrap().len(), 2);
    let new = e.auth.issue(request(&["repository:a:pull"]), basic("alice", "alice-pw"), FROM).await.unwrap().token;
    let header = jsonwebtoken::decode_header(&new).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    for token in [&old, &new] {
        assert!(bearer(&e.auth, token).await.is_ok());
        // The other instance has not seen the new key yet: it reads it on first sight.
        assert!(bearer(&second, token).await.is_ok());
    }
}

/// A P-256 key of an "external token server": its JWKS entry and a signer.
fn external_key(kid: &str) -> (serde_json::Value, jsonwebtoken::EncodingKey) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    });
    let der = secret.to_pkcs8_der().unwrap();
    (jwk, jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()))
}

#[tokio::test]
async fn tokens_of_an_external_token_server_are_verified_by_its_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let (jwk, signer) = external_key("ext-1");
    let (_, stranger) = external_key("ext-1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let meta = MetadataStore::open(&format!("sqlite://{}", dir.path().join("m.db").display())).await.unwrap();
    let settings = AuthSettings {
        token: None,
        external: Some(ExternalTokenSettings {
            realm: "https://auth.example.com/token".into(),
            service: "registry.example.com".into(),
            issuer: "auth.example.com".into(),
            jwks: Some(jwks),
            root_certificates: None,
        }),
        ..settings()
    };
    let auth = Authenticator::new(settings, meta).await.unwrap();
    assert_eq!(
        auth.challenge(),
        &berth_auth::Challenge::Bearer {
            realm: Some("https://auth.example.com/token".into()),
            service: "registry.example.com".into()
        }
    );
    assert!(!auth.issues_tokens());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": "auth.example.com", "aud": "registry.example.com", "sub": "ci", "exp": now + 300,
        "access": [{ "type": "repository", "name": "team/app", "actions": ["pull", "push"] }],
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ext-1".into());
    let sign = |claims: &serde_json::Value, key: &jsonwebtoken::EncodingKey| {
        jsonwebtoken::encode(&header, claims, key).unwrap()
    };

    let caller = bearer(&auth, &sign(&claims, &signer)).await.unwrap();
    assert_eq!(auth.access(&caller, "team/app").await.unwrap(), Actions::PULL.union(Actions::PUSH));
    assert_eq!(auth.access(&caller, "team/other").await.unwrap(), Actions::NONE);

    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = "other".into();
    let mut expired = claims.clone();
    expired["exp"] = (now - 3600).into();
    for (what, token) in [
        ("another key with the same kid", sign(&claims, &stranger)),
        ("wrong audience", sign(&wrong_aud, &signer)),
        ("expired", sign(&expired, &signer)),
    ] {
        assert!(matches!(bearer(&auth, &token).await, Err(AuthError::Unauthenticated(_))), "{what} was accepted");
    }
    let refused = auth.issue(request(&[]), basic("root", "root-pw"), FROM).await.unwrap_err();
    assert!(matches!(refused, AuthError::BadRequest(_)), "an external-token registry issues no tokens");
}
