//! Authorization: namespaces with roles, teams, robots and the registry's defaults, set
//! up through the admin API and checked on every endpoint; the admin API's own rules;
//! the audit log.

use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ROOT: (&str, &str) = ("root", "root-password");

/// A server with authentication on (an htpasswd file with `outsider`), a bootstrap
/// administrator, and signed-in callers allowed to pull repositories in no namespace.
async fn server() -> (tempfile::TempDir, Server) {
    server_with(&[]).await
}

async fn server_with(extra: &[(&str, &str)]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let entry = bcrypt::hash("outsider-pw", 4).unwrap();
    std::fs::write(&path, format!("outsider:{entry}\n")).unwrap();
    let path = path.display().to_string();
    let env = [
        ("REGISTRY_AUTH", "htpasswd"),
        ("REGISTRY_AUTH_HTPASSWD_REALM", "berth"),
        ("REGISTRY_AUTH_HTPASSWD_PATH", &path),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ("REGISTRY_BERTH_AUTH_ADMIN_USERNAME", ROOT.0),
        ("REGISTRY_BERTH_AUTH_ADMIN_PASSWORD", ROOT.1),
        ("REGISTRY_BERTH_AUTH_DEFAULTACCESS_AUTHENTICATED", "pull"),
        ("REGISTRY_BERTH_AUTH_LOGINLIMIT_FAILURES", "0"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect::<Vec<_>>();
    let s = Server::with_env(&env).await;
    (dir, s)
}

fn as_user(s: &Server, user: &str, password: &str) -> Server {
    Server::as_caller(s, &basic(user, password))
}

/// A JSON call on the admin API.
async fn call(s: &Server, method: Method, path: &str, body: Option<Value>) -> Resp {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    s.send(method, path, &[("content-type", "application/json")], body).await
}

async fn admin_ok(root: &Server, method: Method, path: &str, body: Option<Value>) -> Value {
    let r = call(root, method.clone(), path, body).await;
    assert!((200..300).contains(&r.status), "{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

/// What each caller may do, per repository: pull, push, delete.
#[derive(Clone, Copy, Debug, PartialEq)]
struct May(bool, bool, bool);

const NONE: May = May(false, false, false);
const PULL: May = May(true, false, false);
const PUSH: May = May(true, true, false);
const ALL: May = May(true, true, true);

/// How the matrix's callers present themselves.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Presenting {
    /// Basic credentials on every request.
    Password,
    /// A token of the token service, asked for every repository and the catalog.
    Token,
}

/// The repositories a matrix token asks for, with everything.
const MATRIX_SCOPES: &[&str] = &[
    "repository:team/app:pull,push,delete",
    "repository:pub/lib:pull,push,delete",
    "repository:other/x:pull,push,delete",
    "repository:loose:pull,push,delete",
    "repository:team/new:pull,push",
    "registry:catalog:*",
];

/// A caller presenting `credentials` (none: anonymous) the matrix's way. With tokens,
/// credentials the token service refuses stay Basic, so that the refusal is seen.
async fn matrix_caller(s: &Server, presenting: Presenting, credentials: Option<(&str, &str)>) -> Server {
    if presenting == Presenting::Password {
        return match credentials {
            Some((user, password)) => as_user(s, user, password),
            None => Server::on_same(s),
        };
    }
    let query: String = MATRIX_SCOPES.iter().map(|sc| format!("&scope={sc}")).collect();
    let asking = match credentials {
        Some((user, password)) => as_user(s, user, password),
        None => Server::on_same(s),
    };
    let r = asking.get(&format!("/auth/token?service=berth{query}")).await;
    if r.status == 401 {
        return asking;
    }
    let token = r.status(200).json()["token"].as_str().unwrap().to_owned();
    Server::as_caller(s, &format!("Bearer {token}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_follows_roles_teams_robots_and_defaults() {
    permission_matrix(Presenting::Password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_follows_roles_teams_robots_and_defaults_with_tokens() {
    permission_matrix(Presenting::Token).await;
}

/// For every endpoint and every kind of caller, the expected allow or deny; then the
/// catalog's filtering and mounts across namespaces.
async fn permission_matrix(presenting: Presenting) {
    let (_dir, s) = match presenting {
        Presenting::Password => server().await,
        Presenting::Token => server_with(&[("REGISTRY_BERTH_AUTH_TOKEN_ENABLED", "true")]).await,
    };
    let root = as_user(&s, ROOT.0, ROOT.1);
    for (ns, public) in [("team", false), ("pub", true), ("other", false)] {
        admin_ok(&root, Method::POST, "/api/v1/namespaces", Some(json!({ "name": ns, "public": public }))).await;
    }
    for user in ["reader1", "dev1", "maint1", "nsadmin1", "teamdev"] {
        let body = json!({ "name": user, "password": format!("{user}-password") });
        admin_ok(&root, Method::POST, "/api/v1/users", Some(body)).await;
    }
    for (user, role) in [("reader1", "reader"), ("dev1", "developer"), ("maint1", "maintainer"), ("nsadmin1", "admin")]
    {
        let path = format!("/api/v1/namespaces/team/members/user/{user}");
        admin_ok(&root, Method::PUT, &path, Some(json!({ "role": role }))).await;
    }
    admin_ok(&root, Method::POST, "/api/v1/teams", Some(json!({ "name": "devs" }))).await;
    admin_ok(&root, Method::PUT, "/api/v1/teams/devs/members/teamdev", None).await;
    admin_ok(&root, Method::PUT, "/api/v1/namespaces/team/members/team/devs", Some(json!({ "role": "developer" })))
        .await;
    let robot = json!({ "name": "ci", "expires_in": 3600, "grants": [{ "namespace": "team", "role": "developer" }] });
    let robot = admin_ok(&root, Method::POST, "/api/v1/robots", Some(robot)).await;
    assert_eq!(robot["name"], "robot$ci");
    let robot_secret = robot["secret"].as_str().unwrap().to_owned();
    let short = json!({ "name": "short", "expires_in": 1, "grants": [{ "namespace": "team", "role": "maintainer" }] });
    let short = admin_ok(&root, Method::POST, "/api/v1/robots", Some(short)).await;

    let mut digests = std::collections::HashMap::new();
    for repo in ["team/app", "pub/lib", "other/x", "loose"] {
        digests.insert(repo, root.push_image(repo, "v1", repo).await.digest);
    }
    // The short-lived robot expires: wait for that condition, not for a time.
    let short_secret = short["secret"].as_str().unwrap().to_owned();
    let probe = as_user(&s, "robot$short", &short_secret);
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.get("/v2/pub/lib/tags/list").await.status != 401 {
        assert!(Instant::now() < deadline, "the robot never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut callers: Vec<(&str, Server)> = Vec::new();
    for (name, credentials) in [
        ("anonymous", None),
        ("outsider", Some(("outsider", "outsider-pw"))),
        ("reader1", Some(("reader1", "reader1-password"))),
        ("dev1", Some(("dev1", "dev1-password"))),
        ("teamdev", Some(("teamdev", "teamdev-password"))),
        ("maint1", Some(("maint1", "maint1-password"))),
        ("nsadmin1", Some(("nsadmin1", "nsadmin1-password"))),
        ("root", Some(ROOT)),
        ("robot", Some(("robot$ci", robot_secret.as_str()))),
        ("expired robot", Some(("robot$short", short_secret.as_str()))),
    ] {
        callers.push((name, matrix_caller(&s, presenting, credentials).await));
    }
    // Expected access per caller: team/app, pub/lib, other/x, loose.
    let expect = |caller: &str| -> [May; 4] {
        match caller {
            "anonymous" => [NONE, PULL, NONE, NONE],
            // Credentials that no longer work are refused, not taken for anonymous.
            "expired robot" => [NONE; 4],
            "outsider" => [NONE, PULL, NONE, PULL],
            "reader1" => [PULL, PULL, NONE, PULL],
            "dev1" | "teamdev" => [PUSH, PULL, NONE, PULL],
            "maint1" | "nsadmin1" => [ALL, PULL, NONE, PULL],
            "robot" => [PUSH, PULL, NONE, NONE],
            "root" => [ALL, ALL, ALL, ALL],
            other => unreachable!("{other}"),
        }
    };
    for (name, caller) in &callers {
        for (i, repo) in ["team/app", "pub/lib", "other/x", "loose"].into_iter().enumerate() {
            let May(pull, push, delete) = expect(name)[i];
            // A token that lacks a scope is answered 401 (`insufficient_scope`): the client
            // may ask for a wider token. A signed-in password caller is refused (403).
            let signed_out = *name == "anonymous" || *name == "expired robot";
            let refused = if signed_out || presenting == Presenting::Token { 401 } else { 403 };
            let digest = &digests[repo];
            let checks = [
                (pull, Method::GET, format!("/v2/{repo}/manifests/v1"), 200),
                (pull, Method::HEAD, format!("/v2/{repo}/manifests/{digest}"), 200),
                (pull, Method::GET, format!("/v2/{repo}/tags/list"), 200),
                (pull, Method::GET, format!("/v2/{repo}/referrers/{digest}"), 200),
                (push, Method::POST, format!("/v2/{repo}/blobs/uploads/"), 202),
                (push, Method::PUT, format!("/v2/{repo}/manifests/v1"), 400),
                // An unknown digest: allowed callers learn it is unknown, others nothing.
                (delete, Method::DELETE, format!("/v2/{repo}/manifests/sha256:{}", "0".repeat(64)), 404),
            ];
            for (allowed, method, path, ok) in checks {
                let body = (method == Method::PUT).then(|| b"{}".to_vec());
                let r = caller.send(method.clone(), &path, &[], body).await;
                let want = if allowed { ok } else { refused };
                assert_eq!(r.status, want, "{name} {method} {path}: {}", String::from_utf8_lossy(&r.body));
            }
        }
    }

    // The catalog lists what each caller may pull, filtered in the query.
    let catalog = |c: &Server| {
        let c = c.clone_handle();
        async move {
            let r = c.get("/v2/_catalog").await;
            (r.status == 200).then(|| r.json()["repositories"].clone())
        }
    };
    let by_name = |n: &str| &callers.iter().find(|(name, _)| *name == n).unwrap().1;
    // Anonymous tokens never include the catalog; anonymous password-less callers see
    // the public part.
    let anonymous_catalog = (presenting == Presenting::Password).then(|| json!(["pub/lib"]));
    assert_eq!(catalog(by_name("anonymous")).await, anonymous_catalog);
    assert_eq!(catalog(by_name("outsider")).await, Some(json!(["loose", "pub/lib"])));
    assert_eq!(catalog(by_name("reader1")).await, Some(json!(["loose", "pub/lib", "team/app"])));
    assert_eq!(catalog(by_name("robot")).await, Some(json!(["pub/lib", "team/app"])));
    assert_eq!(catalog(by_name("root")).await, Some(json!(["loose", "other/x", "pub/lib", "team/app"])));
    // Paging through a filtered catalog: every page a page, nothing hidden shows.
    let reader = by_name("reader1");
    let first = reader.get("/v2/_catalog?n=1").await.status(200).json();
    assert_eq!(first["repositories"], json!(["loose"]));
    let second = reader.get("/v2/_catalog?n=2&last=loose").await.status(200).json();
    assert_eq!(second["repositories"], json!(["pub/lib", "team/app"]));

    // Mounts: from a repository the caller may pull, the blob is linked (201); from one
    // it may not, the mount becomes an ordinary upload (202) and nothing leaks.
    let dev = by_name("dev1");
    let layer_of = |repo: &str| {
        let m = s.registry.clone();
        let repo = repo.to_owned();
        async move {
            let name = berth_proto::RepositoryName::parse(&repo).unwrap();
            let tag = berth_proto::Reference::parse("v1").unwrap();
            let entry = m.get_manifest(&name, &tag).await.unwrap();
            let v: Value = serde_json::from_slice(&entry.content).unwrap();
            v["layers"][0]["digest"].as_str().unwrap().to_owned()
        }
    };
    let public_layer = layer_of("pub/lib").await;
    let private_layer = layer_of("other/x").await;
    dev.send(Method::POST, &format!("/v2/team/new/blobs/uploads/?mount={public_layer}&from=pub/lib"), &[], None)
        .await
        .status(201);
    dev.send(Method::POST, &format!("/v2/team/new/blobs/uploads/?mount={private_layer}&from=other/x"), &[], None)
        .await
        .status(202);
    dev.send(Method::POST, &format!("/v2/team/new/blobs/uploads/?mount={private_layer}"), &[], None).await.status(202);
    dev.head(&format!("/v2/team/new/blobs/{private_layer}")).await.status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_role_applies_to_the_next_request_on_any_connection() {
    let (_dir, s) = server().await;
    let root = as_user(&s, ROOT.0, ROOT.1);
    admin_ok(&root, Method::POST, "/api/v1/namespaces", Some(json!({ "name": "team" }))).await;
    admin_ok(&root, Method::POST, "/api/v1/users", Some(json!({ "name": "dev", "password": "dev-password" }))).await;
    root.push_image("team/app", "v1", "x").await;
    let dev = as_user(&s, "dev", "dev-password");
    dev.get("/v2/team/app/manifests/v1").await.error(403, "DENIED");
    for role in ["reader", "developer"] {
        let body = json!({ "role": role });
        admin_ok(&root, Method::PUT, "/api/v1/namespaces/team/members/user/dev", Some(body)).await;
        // Another handle: a new connection for every request.
        let fresh = Server::as_caller(&Server::on_same(&s), &basic("dev", "dev-password"));
        fresh.get("/v2/team/app/manifests/v1").await.status(200);
        let push = fresh.send(Method::POST, "/v2/team/app/blobs/uploads/", &[], None).await;
        assert_eq!(push.status, if role == "reader" { 403 } else { 202 }, "{role}");
    }
    admin_ok(&root, Method::DELETE, "/api/v1/namespaces/team/members/user/dev", None).await;
    dev.get("/v2/team/app/manifests/v1").await.error(403, "DENIED");
    // A public namespace lets anyone pull; making it private again takes that back.
    admin_ok(&root, Method::PATCH, "/api/v1/namespaces/team", Some(json!({ "public": true }))).await;
    Server::on_same(&s).get("/v2/team/app/manifests/v1").await.status(200);
    admin_ok(&root, Method::PATCH, "/api/v1/namespaces/team", Some(json!({ "public": false }))).await;
    Server::on_same(&s).get("/v2/team/app/manifests/v1").await.error(401, "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_enforces_who_may_change_what() {
    let (_dir, s) = server().await;
    let root = as_user(&s, ROOT.0, ROOT.1);
    // Signing in is required, with Basic credentials.
    call(&Server::on_same(&s), Method::GET, "/api/v1/me", None)
        .await
        .status(401)
        .has("www-authenticate", "Basic realm=\"berth\"");
    call(&as_user(&s, ROOT.0, "wrong-password"), Method::GET, "/api/v1/me", None).await.status(401);
    assert_eq!(
        admin_ok(&root, Method::GET, "/api/v1/me", None).await,
        json!({ "name": "root", "admin": true, "robot": false })
    );

    admin_ok(&root, Method::POST, "/api/v1/namespaces", Some(json!({ "name": "team" }))).await;
    admin_ok(&root, Method::POST, "/api/v1/namespaces", Some(json!({ "name": "other" }))).await;
    for user in ["boss", "plain"] {
        admin_ok(&root, Method::POST, "/api/v1/users", Some(json!({ "name": user, "password": "long-password" })))
            .await;
    }
    admin_ok(&root, Method::PUT, "/api/v1/namespaces/team/members/user/boss", Some(json!({ "role": "admin" }))).await;
    let boss = as_user(&s, "boss", "long-password");
    let plain = as_user(&s, "plain", "long-password");

    // Validation and conflicts answer in the API's error shape.
    let dup = call(&root, Method::POST, "/api/v1/users", Some(json!({ "name": "boss", "password": "long-password" })));
    assert_eq!(dup.await.status(409).json()["code"], "CONFLICT");
    for bad in [
        json!({ "name": "bad name", "password": "long-password" }),
        json!({ "name": "short", "password": "short" }),
        json!({ "name": "x", "password": "long-password", "extra": 1 }),
    ] {
        assert_eq!(call(&root, Method::POST, "/api/v1/users", Some(bad)).await.status(400).json()["code"], "INVALID");
    }
    let nested = call(&root, Method::POST, "/api/v1/namespaces", Some(json!({ "name": "a/b" }))).await;
    nested.status(400);
    call(&root, Method::POST, "/api/v1/users", None).await.status(400);

    // A namespace admin manages its members and robots there, nothing else.
    boss.send(Method::PUT, "/api/v1/namespaces/team/members/user/plain", &[], Some(br#"{"role":"reader"}"#.to_vec()))
        .await
        .status(204);
    let elsewhere = br#"{"role":"reader"}"#.to_vec();
    boss.send(Method::PUT, "/api/v1/namespaces/other/members/user/plain", &[], Some(elsewhere)).await.status(403);
    call(&boss, Method::POST, "/api/v1/users", Some(json!({ "name": "x", "password": "long-password" })))
        .await
        .status(403);
    call(&boss, Method::GET, "/api/v1/audit", None).await.status(403);
    let robot = json!({ "name": "deploy", "expires_in": 600, "grants": [{ "namespace": "team", "role": "reader" }] });
    let created = call(&boss, Method::POST, "/api/v1/robots", Some(robot)).await.status(201).json();
    let outside =
        json!({ "name": "sneaky", "expires_in": 600, "grants": [{ "namespace": "other", "role": "reader" }] });
    call(&boss, Method::POST, "/api/v1/robots", Some(outside)).await.status(403);
    // The secret is shown once: reading the robot back never shows it.
    let read = admin_ok(&root, Method::GET, "/api/v1/users/robot$deploy", None).await;
    assert_eq!(read["robot"], true);
    assert!(read.get("secret").is_none() && !read.to_string().contains(created["secret"].as_str().unwrap()));
    // Revoking a robot stops it at once.
    let deploy = as_user(&s, "robot$deploy", created["secret"].as_str().unwrap());
    deploy.get("/v2/").await.status(200);
    call(&boss, Method::DELETE, "/api/v1/users/robot$deploy", None).await.status(204);
    deploy.get("/v2/").await.status(401);

    // Everyone may change their own password, and only their own.
    let own = json!({ "password": "new-long-password" });
    call(&plain, Method::PATCH, "/api/v1/users/plain", Some(own)).await.status(200);
    let plain = as_user(&s, "plain", "new-long-password");
    call(&plain, Method::GET, "/api/v1/me", None).await.status(200);
    call(&plain, Method::PATCH, "/api/v1/users/boss", Some(json!({ "password": "taken-over!" }))).await.status(403);
    call(&plain, Method::PATCH, "/api/v1/users/plain", Some(json!({ "admin": true }))).await.status(403);
    call(&plain, Method::GET, "/api/v1/users", None).await.status(403);
    // No administrator locks themselves out.
    call(&root, Method::DELETE, "/api/v1/users/root", None).await.status(400);
    call(&root, Method::PATCH, "/api/v1/users/root", Some(json!({ "admin": false }))).await.status(400);

    // The document describes the API it is served by.
    let doc = root.get("/api/v1/openapi.json").await.status(200).json();
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    assert!(doc["paths"]["/api/v1/namespaces/{name}/members/{kind}/{member}"]["put"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_changes_and_refusals() {
    let (_dir, s) = server().await;
    let root = as_user(&s, ROOT.0, ROOT.1);
    let m1 = root.push_image("loose", "v1", "one").await;
    let m2 = root.push_image("loose", "v1", "two").await;
    root.delete(&format!("/v2/loose/manifests/{}", m1.digest)).await.status(202);
    as_user(&s, "mallory", "guess").get("/v2/").await.status(401);
    admin_ok(&root, Method::POST, "/api/v1/teams", Some(json!({ "name": "ops" }))).await;
    admin_ok(&root, Method::PATCH, "/api/v1/teams/ops", Some(json!({ "directory_group": "Operators" }))).await;
    call(&root, Method::PATCH, "/api/v1/teams/nope", Some(json!({ "directory_group": "x" }))).await.status(404);

    let events = admin_ok(&root, Method::GET, "/api/v1/audit?limit=1000", None).await;
    let events = events["events"].as_array().unwrap();
    let find = |action: &str, target: &str| {
        events.iter().find(|e| e["action"] == action && e["target"] == target).unwrap_or_else(|| {
            panic!("no {action} on {target} in {events:#?}");
        })
    };
    let push = find("manifest.push", &format!("loose@{}", m2.digest));
    assert_eq!((push["actor"].as_str(), push["result"].as_str()), (Some("root"), Some("ok")));
    assert_eq!(push["client"], "127.0.0.1");
    assert_eq!(push["detail"]["tag"], "v1");
    let moved = find("tag.overwrite", "loose:v1");
    assert_eq!(moved["detail"], json!({ "from": m1.digest, "to": m2.digest }));
    find("manifest.delete", &format!("loose@{}", m1.digest));
    let failure = find("auth.failure", "mallory");
    assert_eq!(failure["result"], "denied");
    assert!(!failure.to_string().contains("guess"), "a password reached the audit log");
    find("team.create", "ops");
    find("team.group", "ops");
    // Newest first, filtered and paged.
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    let pushes = admin_ok(&root, Method::GET, "/api/v1/audit?action=manifest.push&limit=1", None).await;
    assert_eq!(pushes["events"].as_array().unwrap().len(), 1);
    let before = pushes["next_before"].as_i64().unwrap();
    let older =
        admin_ok(&root, Method::GET, &format!("/api/v1/audit?action=manifest.push&before={before}"), None).await;
    assert_eq!(older["events"].as_array().unwrap().len(), 1);
    assert_eq!(older["events"][0]["target"], format!("loose@{}", m1.digest));
    call(&root, Method::GET, "/api/v1/audit?since=yesterday", None).await.status(400);
}

/// Immutability rules through the admin API: a namespace admin manages its own, nobody
/// else's; a registry admin may override a rule on a single request, and that is audited.
#[tokio::test]
async fn immutability_rules_are_managed_per_namespace_and_overrides_are_audited() {
    let (_dir, s) = server().await;
    let root = as_user(&s, ROOT.0, ROOT.1);
    admin_ok(&root, Method::POST, "/api/v1/namespaces", Some(json!({ "name": "team" }))).await;
    admin_ok(&root, Method::POST, "/api/v1/users", Some(json!({ "name": "lead", "password": "lead-password" }))).await;
    let lead_role = Some(json!({ "role": "admin" }));
    admin_ok(&root, Method::PUT, "/api/v1/namespaces/team/members/user/lead", lead_role).await;
    let lead = as_user(&s, "lead", "lead-password");
    let rule = json!({ "repositories": "*", "tags": "v*", "except": ["*-dev"], "level": "delete" });
    let made = admin_ok(&lead, Method::POST, "/api/v1/namespaces/team/immutability", Some(rule.clone())).await;
    let id = made["id"].as_i64().unwrap();
    assert_eq!((made["level"].as_str(), made["declared"].as_bool()), (Some("delete"), Some(false)));
    let listed = admin_ok(&lead, Method::GET, "/api/v1/namespaces/team/immutability", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // To anyone else the namespace does not exist.
    let outsider = as_user(&s, "outsider", "outsider-pw");
    call(&outsider, Method::GET, "/api/v1/namespaces/team/immutability", None).await.status(404);
    call(&outsider, Method::POST, "/api/v1/namespaces/team/immutability", Some(rule.clone())).await.status(404);
    let bad = json!({ "repositories": "*", "tags": "v*", "level": "forever" });
    call(&lead, Method::POST, "/api/v1/namespaces/team/immutability", Some(bad)).await.status(400);

    let v1 = lead.push_image("team/app", "v1", "one").await;
    let (config, layer) = lead.push_image_blobs("team/app", "two").await;
    let two = to_bytes(&image_manifest(OCI_MANIFEST, &config, &[layer]));
    lead.put_manifest("team/app", "v1", OCI_MANIFEST, &two).await.error(403, "DENIED");
    // The override header counts only from a registry admin.
    let force = [("content-type", OCI_MANIFEST), ("berth-override-immutability", "true")];
    lead.send(Method::PUT, "/v2/team/app/manifests/v1", &force, Some(two.clone())).await.error(403, "DENIED");
    root.send(Method::PUT, "/v2/team/app/manifests/v1", &force, Some(two.clone())).await.status(201);
    let events = admin_ok(&root, Method::GET, "/api/v1/audit?action=tag.immutable_override", None).await;
    let events = events["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["target"] == "team/app:v1" && e["actor"] == "root"), "{events:#?}");
    assert!(events[0]["detail"].to_string().contains(&v1.digest), "the override names what it replaced");

    call(&lead, Method::DELETE, &format!("/api/v1/namespaces/team/immutability/{id}"), None).await.status(204);
    call(&lead, Method::DELETE, &format!("/api/v1/namespaces/team/immutability/{id}"), None).await.status(404);
    lead.delete("/v2/team/app/manifests/v1").await.status(202);
}

/// `POST /api/v1/gc` runs a pass for administrators only, with the configured grace,
/// and answers with its report; a dry run frees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_administrators_run_garbage_collection() {
    let (_dir, s) = server_with(&[("REGISTRY_BERTH_GC_GRACE", "0s")]).await;
    let root = as_user(&s, ROOT.0, ROOT.1);
    let loose = root.push_blob("nowhere/app", b"no manifest will reference this").await;
    admin_ok(&root, Method::POST, "/api/v1/users", Some(json!({ "name": "plain", "password": "long-password" }))).await;
    let plain = as_user(&s, "plain", "long-password");
    call(&plain, Method::POST, "/api/v1/gc", None).await.status(403);
    call(&root, Method::POST, "/api/v1/gc", Some(json!({ "dry_run": "yes" }))).await.status(400);
    let dry = admin_ok(&root, Method::POST, "/api/v1/gc", Some(json!({ "dry_run": true }))).await;
    assert_eq!((dry["blob_count"].clone(), dry["links"].clone()), (json!(1), json!(1)), "{dry}");
    assert_eq!(dry["blobs"], json!([{ "digest": loose.digest, "size": loose.size }]));
    root.head(&format!("/v2/nowhere/app/blobs/{}", loose.digest)).await.status(200);
    let done = admin_ok(&root, Method::POST, "/api/v1/gc", None).await;
    assert_eq!((done["blob_count"].clone(), done["bytes"].clone()), (json!(1), json!(loose.size)), "{done}");
    root.head(&format!("/v2/nowhere/app/blobs/{}", loose.digest)).await.status(404);
}
