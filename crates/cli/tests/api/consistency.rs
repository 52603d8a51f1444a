//! Read-your-writes through other connections: every write, once acknowledged, is what
//! a later read sees, whatever the read caches held before it. Each read here goes
//! through a fresh client (a new connection) right after the write's response.

use crate::common::*;
use serde_json::json;

/// A GET on a connection of its own.
async fn fresh_get(s: &Server, path: &str) -> Resp {
    Server::on_same(s).get(path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_read_back_at_once() {
    let s = Server::start().await;
    let first = s.push_image("app", "latest", "build-1").await;
    // Fill every cache that serves this tag: GET, HEAD, by digest.
    s.get("/v2/app/manifests/latest").await.status(200).has("docker-content-digest", &first.digest);
    s.head("/v2/app/manifests/latest").await.status(200).has("docker-content-digest", &first.digest);
    for round in 2..6 {
        let next = s.push_image("app", "latest", &format!("build-{round}")).await;
        let r = fresh_get(&s, "/v2/app/manifests/latest").await;
        r.status(200).has("docker-content-digest", &next.digest);
        assert_eq!(sha256(&r.body), next.digest);
        s.head("/v2/app/manifests/latest").await.status(200).has("docker-content-digest", &next.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_listings_follow_pushes_and_deletes() {
    let s = Server::start().await;
    let m = s.push_image("list", "v1", "one").await;
    assert_eq!(fresh_get(&s, "/v2/list/tags/list").await.json()["tags"], json!(["v1"]));
    assert_eq!(s.get("/v2/list/tags/list?n=1").await.json()["tags"], json!(["v1"]));
    s.push_manifest("list", "v2", &s.get("/v2/list/manifests/v1").await.json()).await;
    assert_eq!(fresh_get(&s, "/v2/list/tags/list").await.json()["tags"], json!(["v1", "v2"]));
    assert_eq!(fresh_get(&s, "/v2/list/tags/list?n=1&last=v1").await.json()["tags"], json!(["v2"]));
    s.delete("/v2/list/manifests/v1").await.status(202);
    assert_eq!(fresh_get(&s, "/v2/list/tags/list").await.json()["tags"], json!(["v2"]));
    fresh_get(&s, "/v2/list/manifests/v1").await.error(404, "MANIFEST_UNKNOWN");
    s.delete(&format!("/v2/list/manifests/{}", m.digest)).await.status(202);
    assert_eq!(fresh_get(&s, "/v2/list/tags/list").await.json()["tags"], json!([]));
    fresh_get(&s, &format!("/v2/list/manifests/{}", m.digest)).await.error(404, "MANIFEST_UNKNOWN");
    fresh_get(&s, "/v2/list/manifests/v2").await.error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_links_follow_deletes_mounts_and_uploads() {
    let s = Server::start().await;
    let blob = s.push_blob("links", b"linked bytes").await;
    let path = format!("/v2/links/blobs/{}", blob.digest);
    s.head(&path).await.status(200);
    s.delete(&path).await.status(202);
    fresh_get(&s, &path).await.error(404, "BLOB_UNKNOWN");
    s.head(&path).await.status(404);
    s.post_blob("links", &blob.digest, b"linked bytes").await.status(201);
    assert_eq!(&fresh_get(&s, &path).await.body[..], b"linked bytes");
    s.delete(&path).await.status(202);
    s.head(&path).await.status(404);
    let mount = format!("/v2/links/blobs/uploads/?mount={}", blob.digest);
    s.send(reqwest::Method::POST, &mount, &[], None).await.status(201);
    s.head(&path).await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_gain_and_lose_referrers() {
    let s = Server::start().await;
    let subject = s.push_image("refs", "v1", "subject").await;
    let referrers = format!("/v2/refs/referrers/{}", subject.digest);
    assert_eq!(s.get(&referrers).await.json()["manifests"], json!([]));
    let empty = s.push_blob_as("refs", EMPTY_TYPE, b"{}").await;
    let mut sig = image_manifest(OCI_MANIFEST, &empty, std::slice::from_ref(&empty));
    sig["artifactType"] = json!("application/x.signature");
    sig["subject"] = subject.json();
    let sig = s.push_manifest("refs", &sha256(&to_bytes(&sig)), &sig).await;
    assert_eq!(fresh_get(&s, &referrers).await.json()["manifests"][0]["digest"], json!(sig.digest));
    s.delete(&format!("/v2/refs/manifests/{}", sig.digest)).await.status(202);
    assert_eq!(fresh_get(&s, &referrers).await.json()["manifests"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_a_tag_older_than_the_last_acknowledged_push() {
    // One writer moves a tag; readers on their own connections start a read only after
    // learning of an acknowledged push, and must see that push or a later one.
    let s = std::sync::Arc::new(Server::start().await);
    let (config, layer) = s.push_image_blobs("race", "race").await;
    let bodies: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let mut m = image_manifest(OCI_MANIFEST, &config, std::slice::from_ref(&layer));
            m["annotations"] = json!({ "n": i.to_string() });
            to_bytes(&m)
        })
        .collect();
    let order: Vec<String> = bodies.iter().map(|b| sha256(b)).collect();
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (s, order, acknowledged) = (s.clone(), order.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let reader = Server::on_same(&s);
                let mut checked = 0;
                while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < order.len() {
                    let floor = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
                    if floor == 0 {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let r = reader.head("/v2/race/manifests/latest").await;
                    let seen = order.iter().position(|d| d == r.header("docker-content-digest")).unwrap();
                    assert!(seen + 1 >= floor, "read push #{seen} after push #{} was acknowledged", floor - 1);
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        s.put_manifest("race", "latest", OCI_MANIFEST, body).await.status(201);
        acknowledged.store(i + 1, std::sync::atomic::Ordering::SeqCst);
    }
    for r in readers {
        assert!(r.await.unwrap() > 0, "a reader checked nothing");
    }
}
