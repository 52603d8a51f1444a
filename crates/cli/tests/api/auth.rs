//! Authentication at the HTTP edge: htpasswd with `Basic`, the built-in token service
//! with `Bearer`, the challenges clients follow, and access limits on every endpoint.

use crate::common::*;
use reqwest::Method;
use std::time::{Duration, Instant};

/// An htpasswd file with bcrypt entries, as `htpasswd -Bbn` writes them.
fn htpasswd(dir: &std::path::Path, users: &[(&str, &str)]) -> String {
    let path = dir.join("htpasswd");
    let lines: Vec<String> =
        users.iter().map(|(u, p)| format!("{u}:{}", bcrypt::hash(p, 4).unwrap().replacen("$2b$", "$2y$", 1))).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.display().to_string()
}

async fn htpasswd_server(dir: &tempfile::TempDir, extra: &[(&str, &str)]) -> Server {
    let path = htpasswd(dir.path(), &[("alice", "alice-pw")]);
    let mut vars = vec![
        ("REGISTRY_AUTH", "htpasswd"),
        ("REGISTRY_AUTH_HTPASSWD_REALM", "test realm"),
        ("REGISTRY_AUTH_HTPASSWD_PATH", path.as_str()),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
    ];
    vars.extend_from_slice(extra);
    Server::with_env(&vars).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_users_sign_in_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let s = htpasswd_server(&dir, &[]).await;
    for path in ["/v2/", "/v2/app/manifests/v1", "/v2/_catalog", "/v2/app/tags/list"] {
        s.get(path).await.error(401, "UNAUTHORIZED").has("www-authenticate", "Basic realm=\"test realm\"");
    }
    let wrong = Server::as_caller(&s, &basic("alice", "nope"));
    wrong.get("/v2/").await.error(401, "UNAUTHORIZED");
    Server::as_caller(&s, &basic("mallory", "alice-pw")).get("/v2/").await.error(401, "UNAUTHORIZED");
    Server::as_caller(&s, "Basic !!!").get("/v2/").await.error(401, "UNAUTHORIZED");

    let alice = Server::as_caller(&s, &basic("alice", "alice-pw"));
    alice.get("/v2/").await.status(200);
    let m = alice.push_image("team/app", "v1", "basic").await;
    alice.get("/v2/team/app/manifests/v1").await.status(200).has("docker-content-digest", &m.digest);
    assert_eq!(alice.get("/v2/_catalog").await.status(200).json()["repositories"], serde_json::json!(["team/app"]));
    alice.delete(&format!("/v2/team/app/manifests/{}", m.digest)).await.status(202);
    // Nothing reached the store for the refused requests.
    s.get("/v2/team/app/manifests/v1").await.error(401, "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_htpasswd_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Polling with a wrong password would hit the sign-in limit: it is off here.
    let s = htpasswd_server(&dir, &[("REGISTRY_BERTH_AUTH_LOGINLIMIT_FAILURES", "0")]).await;
    let bob = Server::as_caller(&s, &basic("bob", "bob-pw"));
    bob.get("/v2/").await.error(401, "UNAUTHORIZED");
    htpasswd(dir.path(), &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    // The file is looked at again at most once a second: poll for the change.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bob.get("/v2/").await.status != 200 {
        assert!(Instant::now() < deadline, "bob never became a user");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    htpasswd(dir.path(), &[("bob", "bob-pw")]);
    let alice = Server::as_caller(&s, &basic("alice", "alice-pw"));
    while alice.get("/v2/").await.status != 401 {
        assert!(Instant::now() < deadline + Duration::from_secs(10), "alice was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_access_limits_what_signed_in_and_anonymous_callers_do() {
    let dir = tempfile::tempdir().unwrap();
    let admin = [
        ("REGISTRY_BERTH_AUTH_DEFAULTACCESS_AUTHENTICATED", "pull"),
        ("REGISTRY_BERTH_AUTH_DEFAULTACCESS_ANONYMOUS", "pull"),
        ("REGISTRY_BERTH_AUTH_ADMIN_USERNAME", "root"),
        ("REGISTRY_BERTH_AUTH_ADMIN_PASSWORD", "root-pw"),
    ];
    let s = htpasswd_server(&dir, &admin).await;
    let root = Server::as_caller(&s, &basic("root", "root-pw"));
    let m = root.push_image("shared/app", "v1", "defaults").await;

    let alice = Server::as_caller(&s, &basic("alice", "alice-pw"));
    alice.get("/v2/shared/app/manifests/v1").await.status(200);
    let r = alice.send(Method::POST, "/v2/shared/app/blobs/uploads/", &[], None).await;
    r.error(403, "DENIED");
    alice.delete(&format!("/v2/shared/app/manifests/{}", m.digest)).await.error(403, "DENIED");
    // Anonymous callers pull, but `/v2/` still asks them to sign in (docker login).
    s.get("/v2/shared/app/manifests/v1").await.status(200);
    s.get("/v2/").await.error(401, "UNAUTHORIZED");
    s.send(Method::POST, "/v2/shared/app/blobs/uploads/", &[], None).await.error(401, "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_answered_with_429_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = htpasswd_server(&dir, &[("REGISTRY_BERTH_AUTH_LOGINLIMIT_FAILURES", "3")]).await;
    let wrong = Server::as_caller(&s, &basic("alice", "guess"));
    for _ in 0..3 {
        wrong.get("/v2/").await.error(401, "UNAUTHORIZED");
    }
    let r = wrong.get("/v2/").await;
    r.error(429, "TOOMANYREQUESTS");
    let wait: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    Server::as_caller(&s, &basic("alice", "alice-pw")).get("/v2/").await.error(429, "TOOMANYREQUESTS");
}

async fn token_server(extra: &[(&str, &str)]) -> Server {
    let mut vars = vec![
        ("REGISTRY_BERTH_AUTH_TOKEN_ENABLED", "true"),
        ("REGISTRY_BERTH_AUTH_ADMIN_USERNAME", "root"),
        ("REGISTRY_BERTH_AUTH_ADMIN_PASSWORD", "root-pw"),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
    ];
    vars.extend_from_slice(extra);
    Server::with_env(&vars).await
}

/// What a challenge adds when the caller's token lacked the scope.
const INSUFFICIENT: &str = "error=\"insufficient_scope\"";

/// A token for `scopes` from the server's token endpoint (`GET` with basic auth).
async fn token(s: &Server, user: &str, password: &str, scopes: &[&str]) -> String {
    let query: String = scopes.iter().map(|sc| format!("&scope={sc}")).collect();
    let r = Server::as_caller(s, &basic(user, password)).get(&format!("/auth/token?service=berth{query}")).await;
    r.status(200).has("cache-control", "no-store");
    let v = r.json();
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(v["expires_in"], 300);
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_flow_docker_follows() {
    let s = token_server(&[]).await;
    let realm = format!("Bearer realm=\"http://{}/auth/token\",service=\"berth\"", s.addr);
    s.get("/v2/").await.error(401, "UNAUTHORIZED").has("www-authenticate", &realm);
    s.get("/v2/team/app/tags/list")
        .await
        .error(401, "UNAUTHORIZED")
        .has("www-authenticate", &format!("{realm},scope=\"repository:team/app:pull\""));
    s.send(Method::POST, "/v2/team/app/blobs/uploads/", &[], None)
        .await
        .error(401, "UNAUTHORIZED")
        .has("www-authenticate", &format!("{realm},scope=\"repository:team/app:pull,push\""));

    let t = token(&s, "root", "root-pw", &["repository:team/app:pull,push"]).await;
    let root = Server::as_caller(&s, &format!("Bearer {t}"));
    root.get("/v2/").await.status(200);
    let m = root.push_image("team/app", "v1", "token").await;
    root.get("/v2/team/app/manifests/v1").await.status(200).has("docker-content-digest", &m.digest);
    // The token names one repository and no delete: anything else is a new challenge.
    root.get("/v2/team/other/tags/list")
        .await
        .error(401, "UNAUTHORIZED")
        .has("www-authenticate", &format!("{realm},scope=\"repository:team/other:pull\",{INSUFFICIENT}"));
    root.delete(&format!("/v2/team/app/manifests/{}", m.digest)).await.error(401, "UNAUTHORIZED");
    root.get("/v2/_catalog")
        .await
        .error(401, "UNAUTHORIZED")
        .has("www-authenticate", &format!("{realm},scope=\"registry:catalog:*\",{INSUFFICIENT}"));
    let t = token(&s, "root", "root-pw", &["registry:catalog:*"]).await;
    let listed = Server::as_caller(&s, &format!("Bearer {t}")).get("/v2/_catalog").await;
    assert_eq!(listed.status(200).json()["repositories"], serde_json::json!(["team/app"]));

    // Anonymous callers get a token too, with nothing in it (anonymous access is none).
    let anon = s.get("/auth/token?service=berth&scope=repository:team/app:pull").await;
    let t = anon.status(200).json()["token"].as_str().unwrap().to_owned();
    Server::as_caller(&s, &format!("Bearer {t}")).get("/v2/team/app/tags/list").await.error(401, "UNAUTHORIZED");

    Server::as_caller(&s, &basic("root", "wrong")).get("/auth/token?service=berth").await.error(401, "UNAUTHORIZED");
    Server::as_caller(&s, "Bearer not-a-token").get("/v2/").await.error(401, "UNAUTHORIZED");
    let keys = s.get("/auth/jwks").await.status(200).json();
    assert_eq!(keys["keys"][0]["alg"], "ES256");
    assert!(keys["keys"][0].get("d").is_none(), "the private part is never published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth2_form_and_refresh_tokens() {
    let s = token_server(&[]).await;
    let form = |body: &str| {
        let body = body.to_owned();
        let s = &s;
        async move {
            s.send(
                Method::POST,
                "/auth/token",
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(body.into_bytes()),
            )
            .await
        }
    };
    let r = form("grant_type=password&username=root&password=root-pw&service=berth&client_id=docker&access_type=offline&scope=repository%3Aa%3Apull%2Cpush").await;
    let v = r.status(200).json();
    assert_eq!(v["scope"], "repository:a:pull,push");
    let refresh = v["refresh_token"].as_str().expect("access_type=offline gives a refresh token").to_owned();
    let access = v["access_token"].as_str().unwrap().to_owned();
    Server::as_caller(&s, &format!("Bearer {refresh}")).get("/v2/").await.error(401, "UNAUTHORIZED");
    Server::as_caller(&s, &format!("Bearer {access}")).get("/v2/").await.status(200);

    let v =
        form(&format!("grant_type=refresh_token&refresh_token={refresh}&service=berth&scope=repository%3Ab%3Apull"))
            .await
            .status(200)
            .json();
    assert_eq!(v["scope"], "repository:b:pull");
    form("grant_type=password&username=root&password=bad&service=berth").await.error(401, "UNAUTHORIZED");
    form("grant_type=password&username=root").await.status(400);
    form("grant_type=client_credentials").await.status(400);
    form(&format!("grant_type=refresh_token&refresh_token={access}")).await.error(401, "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_needs_pull_on_its_source() {
    let s = token_server(&[]).await;
    let t = token(&s, "root", "root-pw", &["repository:private/a:pull,push"]).await;
    let blob = Server::as_caller(&s, &format!("Bearer {t}")).push_blob("private/a", b"secret layer").await;

    // A token for b alone cannot take the blob from a, with or without naming it.
    let t = token(&s, "root", "root-pw", &["repository:b:pull,push"]).await;
    let b = Server::as_caller(&s, &format!("Bearer {t}"));
    for query in [format!("mount={}&from=private/a", blob.digest), format!("mount={}", blob.digest)] {
        let r = b.send(Method::POST, &format!("/v2/b/blobs/uploads/?{query}"), &[], None).await;
        r.status(202);
        b.head(&format!("/v2/b/blobs/{}", blob.digest)).await.status(404);
    }
    // With pull on a it may, and a mount without `from` finds a by itself.
    let t = token(&s, "root", "root-pw", &["repository:b:pull,push", "repository:private/a:pull"]).await;
    let b = Server::as_caller(&s, &format!("Bearer {t}"));
    let r = b.send(Method::POST, &format!("/v2/b/blobs/uploads/?mount={}", blob.digest), &[], None).await;
    r.status(201);
    b.head(&format!("/v2/b/blobs/{}", blob.digest)).await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_token_server_is_named_in_the_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let key = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    std::fs::write(&jwks, key).unwrap();
    let path = jwks.display().to_string();
    let s = Server::with_env(&[
        ("REGISTRY_AUTH_TOKEN_REALM", "https://auth.example.com/token"),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "registry.example.com"),
        ("REGISTRY_AUTH_TOKEN_ISSUER", "auth.example.com"),
        ("REGISTRY_AUTH_TOKEN_JWKS", path.as_str()),
    ])
    .await;
    s.get("/v2/team/app/tags/list").await.error(401, "UNAUTHORIZED").has(
        "www-authenticate",
        "Bearer realm=\"https://auth.example.com/token\",service=\"registry.example.com\",scope=\"repository:team/app:pull\"",
    );
    s.get("/auth/token").await.status(404);
    Server::as_caller(&s, "Bearer e30.e30.e30").get("/v2/").await.error(401, "UNAUTHORIZED");
}
