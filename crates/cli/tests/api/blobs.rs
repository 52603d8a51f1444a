//! The base endpoint, blob reads (HEAD/GET, ranges), deletes and cross-repository mounts.

use crate::common::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint() {
    let s = Server::start().await;
    for path in ["/v2/", "/v2"] {
        s.get(path).await.status(200).has("docker-distribution-api-version", "registry/2.0");
        s.head(path).await.status(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_get_blob() {
    let s = Server::start().await;
    let data = b"0123456789abcdefghij";
    let d = s.push_blob("lib/app", data).await;
    let path = format!("/v2/lib/app/blobs/{}", d.digest);
    for r in [s.head(&path).await, s.get(&path).await] {
        r.status(200)
            .has("content-length", "20")
            .has("docker-content-digest", &d.digest)
            .has("etag", &format!("\"{}\"", d.digest))
            .has("accept-ranges", "bytes");
    }
    assert!(s.head(&path).await.body.is_empty());
    assert_eq!(&s.get(&path).await.body[..], data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests() {
    let s = Server::start().await;
    let data = b"0123456789abcdefghij";
    let d = s.push_blob("ranges", data).await;
    let path = format!("/v2/ranges/blobs/{}", d.digest);
    for (range, content_range, bytes) in [
        ("bytes=0-4", "bytes 0-4/20", &data[0..5]),
        ("bytes=5-9", "bytes 5-9/20", &data[5..10]),
        ("bytes=15-", "bytes 15-19/20", &data[15..]),
        ("bytes=-3", "bytes 17-19/20", &data[17..]),
        ("bytes=18-100", "bytes 18-19/20", &data[18..]),
        ("bytes=-50", "bytes 0-19/20", &data[..]),
    ] {
        let r = s.get_with(&path, &[("range", range)]).await;
        r.status(206)
            .has("content-range", content_range)
            .has("content-length", &bytes.len().to_string())
            .has("docker-content-digest", &d.digest);
        assert_eq!(&r.body[..], bytes, "{range}");
    }
    for range in ["bytes=20-", "bytes=20-25", "bytes=7-3", "bytes=-0"] {
        let r = s.get_with(&path, &[("range", range)]).await;
        r.status(416).has("content-range", "bytes */20");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_blob() {
    let s = Server::start().await;
    s.push_blob("known", b"something").await;
    let missing = sha256(b"never pushed");
    for r in [s.get(&format!("/v2/known/blobs/{missing}")).await, s.get(&format!("/v2/nowhere/blobs/{missing}")).await]
    {
        r.error(404, "BLOB_UNKNOWN");
    }
    s.head(&format!("/v2/known/blobs/{missing}")).await.status(404);
    s.get("/v2/known/blobs/sha256:1234").await.error(400, "DIGEST_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_scoped_to_their_repository() {
    let s = Server::start().await;
    let d = s.push_blob("team-a/app", b"private to a").await;
    s.get(&format!("/v2/team-b/app/blobs/{}", d.digest)).await.error(404, "BLOB_UNKNOWN");
    s.head(&format!("/v2/team-b/app/blobs/{}", d.digest)).await.status(404);
    let mount = format!("/v2/team-b/app/blobs/uploads/?mount={}&from=team-a/app", d.digest);
    s.send(Method::POST, &mount, &[], None).await.status(201);
    assert_eq!(&s.blob_bytes("team-b/app", &d.digest).await[..], b"private to a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_blob() {
    let s = Server::start().await;
    let d = s.push_blob("del", b"to be deleted").await;
    let other = s.push_blob("keep", b"to be deleted").await;
    let path = format!("/v2/del/blobs/{}", d.digest);
    s.delete(&path).await.status(202);
    s.get(&path).await.error(404, "BLOB_UNKNOWN");
    s.head(&path).await.status(404);
    s.delete(&path).await.error(404, "BLOB_UNKNOWN");
    // The same bytes stay readable where they were pushed too.
    assert_eq!(&s.blob_bytes("keep", &other.digest).await[..], b"to be deleted");
    // And the blob can be pushed again.
    s.post_blob("del", &d.digest, b"to be deleted").await.status(201);
    assert_eq!(&s.blob_bytes("del", &d.digest).await[..], b"to be deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_disabled() {
    let s = Server::with_env(&[]).await;
    let d = s.push_blob("nodel", b"permanent").await;
    let path = format!("/v2/nodel/blobs/{}", d.digest);
    s.delete(&path).await.error(405, "UNSUPPORTED");
    s.get(&path).await.status(200);
    let m = s.push_image("nodel", "v1", "nodel").await;
    s.delete("/v2/nodel/manifests/v1").await.error(405, "UNSUPPORTED");
    s.delete(&format!("/v2/nodel/manifests/{}", m.digest)).await.error(405, "UNSUPPORTED");
    s.get("/v2/nodel/manifests/v1").await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_from_repository_holding_the_blob() {
    let s = Server::start().await;
    let d = s.push_blob("src", b"mount me").await;
    let r = s.send(Method::POST, &format!("/v2/dst/blobs/uploads/?mount={}&from=src", d.digest), &[], None).await;
    r.status(201).has("docker-content-digest", &d.digest);
    assert_eq!(s.path_of(r.header("location")), format!("/v2/dst/blobs/{}", d.digest));
    s.head(&format!("/v2/dst/blobs/{}", d.digest)).await.status(200).has("content-length", "8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_from_repository_without_the_blob_starts_a_session() {
    let s = Server::start().await;
    let d = s.push_blob("holder", b"only in holder").await;
    s.push_blob("empty-src", b"something else").await;
    for query in [
        format!("mount={}&from=empty-src", d.digest),
        format!("mount={}&from=never-existed", d.digest),
        format!("mount={}", sha256(b"unknown everywhere")),
    ] {
        let r = s.send(Method::POST, &format!("/v2/dst/blobs/uploads/?{query}"), &[], None).await;
        r.status(202).has("range", "0-0");
        let session = s.path_of(r.header("location"));
        assert!(session.starts_with("/v2/dst/blobs/uploads/"), "{session}");
        assert!(session.ends_with(r.header("docker-upload-uuid")));
        s.get(&session).await.status(204);
    }
    s.get(&format!("/v2/dst/blobs/{}", d.digest)).await.error(404, "BLOB_UNKNOWN");
    // The session a failed mount returned is usable for a normal upload.
    let r = s.send(Method::POST, &format!("/v2/dst/blobs/uploads/?mount={}&from=empty-src", d.digest), &[], None).await;
    let session = s.path_of(r.header("location"));
    s.finish(&session, &d.digest, Some(b"only in holder")).await.status(201);
    s.get(&format!("/v2/dst/blobs/{}", d.digest)).await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_without_from_when_blob_is_known() {
    let s = Server::start().await;
    let d = s.push_blob("anywhere", b"known somewhere").await;
    let r = s.send(Method::POST, &format!("/v2/elsewhere/blobs/uploads/?mount={}", d.digest), &[], None).await;
    r.status(201).has("docker-content-digest", &d.digest);
    assert_eq!(&s.blob_bytes("elsewhere", &d.digest).await[..], b"known somewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_in_odd_chunks() {
    let s = Server::start().await;
    let data: Vec<u8> = (0..(1 << 20) + 7u32).map(|i| (i * 7 % 253) as u8).collect();
    let digest = sha256(&data);
    let session = s.start_upload("large").await;
    let mut offset = 0;
    for len in [100_003, 400_000, 262_144] {
        let range = format!("{offset}-{}", offset + len - 1);
        let r = s.patch(&session, &data[offset..offset + len], Some(&range)).await;
        r.status(202).has("range", &format!("0-{}", offset + len - 1));
        offset += len;
    }
    s.finish(&session, &digest, Some(&data[offset..])).await.status(201);
    assert_eq!(s.blob_bytes("large", &digest).await, data);
    let path = format!("/v2/large/blobs/{digest}");
    let size = data.len();
    for (start, end) in [(262_000, 262_300), (0, 524_288), (size - 300_000, size - 1)] {
        let r = s.get_with(&path, &[("range", &format!("bytes={start}-{end}"))]).await;
        r.status(206).has("content-range", &format!("bytes {start}-{end}/{size}"));
        assert_eq!(&r.body[..], &data[start..=end]);
    }
}
