//! Tag immutability: rules declared in the configuration (`berth.immutability`) keep
//! covered tags on their manifest, at the stricter level keep them from being deleted,
//! leave excepted, uncovered and signature tags alone, give one winner to racing first
//! pushes, and yield to an explicit override. The admin API's rules are in `access.rs`.

use crate::common::*;
use serde_json::Value;

const RULES: &str = r#"[{namespace: team, tags: "v*", except: ["*-rc*"]}, {namespace: team, repositories: locked, tags: "*", level: delete}]"#;

async fn server() -> Server {
    Server::with_env(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true"), ("REGISTRY_BERTH_IMMUTABILITY", RULES)]).await
}

/// The manifest of a small image unique to `seed`, its blobs pushed.
async fn image(s: &Server, repo: &str, seed: &str) -> (Desc, Vec<u8>) {
    let (config, layer) = s.push_image_blobs(repo, seed).await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &config, &[layer]));
    (Desc::of(OCI_MANIFEST, &body), body)
}

async fn put(s: &Server, repo: &str, tag: &str, body: &[u8]) -> Resp {
    s.put_manifest(repo, tag, OCI_MANIFEST, body).await
}

#[tokio::test]
async fn an_immutable_tag_keeps_its_manifest_and_a_retry_of_the_same_push_succeeds() {
    let s = server().await;
    let (a, a_body) = image(&s, "team/app", "a").await;
    let (_, b_body) = image(&s, "team/app", "b").await;
    put(&s, "team/app", "v1", &a_body).await.status(201);
    put(&s, "team/app", "v1", &a_body).await.status(201);
    let refused = put(&s, "team/app", "v1", &b_body).await;
    refused.error(403, "DENIED");
    let message = refused.json()["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("team/app:v1 is immutable") && message.contains(&a.digest), "{message}");
    s.get("/v2/team/app/manifests/v1").await.status(200).has("docker-content-digest", &a.digest);
    // The refused manifest was not stored under its digest either.
    let b = Desc::of(OCI_MANIFEST, &b_body);
    s.get(&format!("/v2/team/app/manifests/{}", b.digest)).await.status(404);

    // Excepted, uncovered, other namespaces, pushes by digest: as without rules.
    for (repo, tag) in [("team/app", "v1-rc1"), ("team/app", "latest"), ("other/app", "v1"), ("teamx/app", "v1")] {
        let (_, first) = image(&s, repo, "a").await;
        let (_, second) = image(&s, repo, "b").await;
        put(&s, repo, tag, &first).await.status(201);
        put(&s, repo, tag, &second).await.status(201);
    }
    put(&s, "team/app", &b.digest, &b_body).await.status(201);
    // The move level allows deleting.
    s.delete("/v2/team/app/manifests/v1").await.status(202);
    put(&s, "team/app", "v1", &b_body).await.status(201);
}

#[tokio::test]
async fn the_delete_level_keeps_tags_and_their_manifests_but_not_signature_tags() {
    let s = server().await;
    let (a, a_body) = image(&s, "team/locked", "a").await;
    let (_, b_body) = image(&s, "team/locked", "b").await;
    put(&s, "team/locked", "prod", &a_body).await.status(201);
    put(&s, "team/locked", "prod", &b_body).await.error(403, "DENIED");
    s.delete("/v2/team/locked/manifests/prod").await.error(403, "DENIED");
    s.delete(&format!("/v2/team/locked/manifests/{}", a.digest)).await.error(403, "DENIED");
    s.get("/v2/team/locked/manifests/prod").await.status(200).has("docker-content-digest", &a.digest);
    // cosign re-signs by moving its tag: exempt unless a rule covers signatures.
    let sig = format!("sha256-{}.sig", a.digest.trim_start_matches("sha256:"));
    put(&s, "team/locked", &sig, &a_body).await.status(201);
    put(&s, "team/locked", &sig, &b_body).await.status(201);
    s.delete(&format!("/v2/team/locked/manifests/{sig}")).await.status(202);
}

#[tokio::test]
async fn an_override_moves_and_deletes_immutable_tags() {
    // With authentication off every caller may override (with it on, registry admins:
    // `access.rs`).
    let s = server().await;
    let (_, a_body) = image(&s, "team/locked", "a").await;
    let (b, b_body) = image(&s, "team/locked", "b").await;
    put(&s, "team/locked", "prod", &a_body).await.status(201);
    let force = [("content-type", OCI_MANIFEST), ("berth-override-immutability", "true")];
    s.send(reqwest::Method::PUT, "/v2/team/locked/manifests/prod", &force, Some(b_body.clone())).await.status(201);
    s.get("/v2/team/locked/manifests/prod").await.has("docker-content-digest", &b.digest);
    let no = [("berth-override-immutability", "no")];
    s.send(reqwest::Method::DELETE, "/v2/team/locked/manifests/prod", &no, None).await.error(403, "DENIED");
    let yes = [("berth-override-immutability", "true")];
    s.send(reqwest::Method::DELETE, "/v2/team/locked/manifests/prod", &yes, None).await.status(202);
}

/// Racing first pushes of one immutable tag, each of another manifest on its own
/// connection: exactly one is acknowledged, and the tag names it.
#[tokio::test]
async fn racing_first_pushes_of_an_immutable_tag_have_one_winner() {
    let s = server().await;
    for round in 0..5 {
        let tag = format!("v{round}");
        let mut bodies = Vec::new();
        for i in 0..6 {
            bodies.push(image(&s, "team/app", &format!("race-{round}-{i}")).await.1);
        }
        let pushes = bodies.iter().map(|body| {
            let (s, tag) = (s.clone_handle(), tag.clone());
            async move { (put(&s, "team/app", &tag, body).await, Desc::of(OCI_MANIFEST, body).digest) }
        });
        let results = futures_util::future::join_all(pushes).await;
        let winners: Vec<&String> = results.iter().filter(|(r, _)| r.status == 201).map(|(_, d)| d).collect();
        assert_eq!(winners.len(), 1, "round {round}: {:?}", results.iter().map(|(r, _)| r.status).collect::<Vec<_>>());
        assert!(results.iter().all(|(r, _)| r.status == 201 || r.status == 403));
        let tagged = s.get(&format!("/v2/team/app/manifests/{tag}")).await;
        assert_eq!(tagged.header("docker-content-digest"), winners[0].as_str());
        let listed: Value = s.get("/v2/team/app/tags/list").await.json();
        assert!(listed["tags"].as_array().unwrap().iter().any(|t| t == tag.as_str()));
    }
}
