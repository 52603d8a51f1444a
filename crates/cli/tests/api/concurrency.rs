//! Concurrent pushes of the same blob and to the same tag.

use crate::common::*;
use futures_util::future::join_all;
use std::sync::Arc;

const TASKS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_blob_uploaded_concurrently() {
    let s = Arc::new(Server::start().await);
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&data);
    let tasks = (0..TASKS).map(|i| {
        let (s, data, digest) = (s.clone(), data.clone(), digest.clone());
        tokio::spawn(async move {
            if i % 2 == 0 {
                s.post_blob("conc", &digest, &data).await.status
            } else {
                let session = s.start_upload("conc").await;
                s.patch(&session, &data[..250_000], None).await.status(202);
                s.finish(&session, &digest, Some(&data[250_000..])).await.status
            }
        })
    });
    let statuses: Vec<u16> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses, vec![201; TASKS]);
    assert_eq!(s.blob_bytes("conc", &digest).await, data);
    s.head(&format!("/v2/conc/blobs/{digest}")).await.status(200).has("content-length", "600000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_pushed_to_one_tag_concurrently() {
    let s = Arc::new(Server::start().await);
    let (config, layer) = s.push_image_blobs("race", "race").await;
    let bodies: Vec<Vec<u8>> = (0..TASKS)
        .map(|i| {
            let mut m = image_manifest(OCI_MANIFEST, &config, std::slice::from_ref(&layer));
            m["annotations"] = serde_json::json!({ "n": i.to_string() });
            to_bytes(&m)
        })
        .collect();
    let tasks = bodies.iter().cloned().map(|body| {
        let s = s.clone();
        tokio::spawn(async move { s.put_manifest("race", "latest", OCI_MANIFEST, &body).await.status })
    });
    let statuses: Vec<u16> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses, vec![201; TASKS]);

    let r = s.get("/v2/race/manifests/latest").await;
    r.status(200);
    let digest = r.header("docker-content-digest");
    assert_eq!(sha256(&r.body), digest);
    assert!(bodies.iter().any(|b| b[..] == r.body[..]), "tag points at none of the pushed manifests");
    for body in &bodies {
        s.get(&format!("/v2/race/manifests/{}", sha256(body))).await.status(200);
    }
    assert_eq!(s.get("/v2/race/tags/list").await.json()["tags"], serde_json::json!(["latest"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_chunks_for_one_offset() {
    let s = Arc::new(Server::start().await);
    let session = s.start_upload("compete").await;
    let tasks = (0..TASKS).map(|_| {
        let (s, session) = (s.clone(), session.clone());
        tokio::spawn(async move { s.patch(&session, b"01234", Some("0-4")).await.status })
    });
    let mut statuses: Vec<u16> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    statuses.sort();
    let mut expected = vec![202];
    expected.extend([416; TASKS - 1]);
    assert_eq!(statuses, expected);
    s.get(&session).await.status(204).has("range", "0-4");

    // Competing completions: exactly one publishes, the rest find no session.
    let digest = sha256(b"01234");
    let tasks = (0..TASKS).map(|_| {
        let (s, session, digest) = (s.clone(), session.clone(), digest.clone());
        tokio::spawn(async move { s.finish(&session, &digest, None).await.status })
    });
    let mut statuses: Vec<u16> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    statuses.sort();
    let mut expected = vec![201];
    expected.extend([404; TASKS - 1]);
    assert_eq!(statuses, expected);
    assert_eq!(&s.blob_bytes("compete", &digest).await[..], b"01234");
}
