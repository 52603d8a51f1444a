//! Blob upload sessions: monolithic and chunked pushes, session status, errors,
//! cancellation, digests, truncated bodies, restarts and purging.

use crate::common::*;
use reqwest::Method;

const UNKNOWN_SESSION: &str = "3f1b0f5e-8c1d-4a4e-9a57-2f0c1c7e9d11";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_opens_a_session() {
    let s = Server::start().await;
    let r = s.send(Method::POST, "/v2/up/blobs/uploads/", &[], None).await;
    r.status(202).has("range", "0-0").has("content-length", "0");
    let uuid = r.header("docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert_eq!(s.path_of(r.header("location")), format!("/v2/up/blobs/uploads/{uuid}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_post() {
    let s = Server::start().await;
    let data = b"monolithic blob";
    let digest = sha256(data);
    let r = s.post_blob("mono", &digest, data).await;
    r.status(201).has("docker-content-digest", &digest);
    assert_eq!(s.path_of(r.header("location")), format!("/v2/mono/blobs/{digest}"));
    assert_eq!(&s.blob_bytes("mono", &digest).await[..], data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_post_with_wrong_digest() {
    let s = Server::start().await;
    let wrong = sha256(b"other bytes");
    s.post_blob("mono", &wrong, b"these bytes").await.error(400, "DIGEST_INVALID");
    s.get(&format!("/v2/mono/blobs/{wrong}")).await.error(404, "BLOB_UNKNOWN");
    s.get(&format!("/v2/mono/blobs/{}", sha256(b"these bytes"))).await.error(404, "BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_with_and_without_content_range() {
    let s = Server::start().await;
    let session = s.start_upload("chunks").await;
    let r = s.patch(&session, b"hello ", None).await;
    r.status(202).has("range", "0-5");
    assert_eq!(s.path_of(r.header("location")), session);
    assert!(session.ends_with(r.header("docker-upload-uuid")));
    s.patch(&session, b"chunked ", Some("6-13")).await.status(202).has("range", "0-13");
    s.patch(&session, b"world", None).await.status(202).has("range", "0-18");
    let st = s.get(&session).await;
    st.status(204).has("range", "0-18");
    assert!(session.ends_with(st.header("docker-upload-uuid")));
    assert_eq!(s.path_of(st.header("location")), session);

    let data = b"hello chunked world";
    let digest = sha256(data);
    let r = s.finish(&session, &digest, None).await;
    r.status(201).has("docker-content-digest", &digest);
    assert_eq!(s.path_of(r.header("location")), format!("/v2/chunks/blobs/{digest}"));
    assert_eq!(&s.blob_bytes("chunks", &digest).await[..], data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_final_chunk() {
    let s = Server::start().await;
    let data = b"first part, final part";
    let session = s.start_upload("final").await;
    s.patch(&session, &data[..12], Some("0-11")).await.status(202).has("range", "0-11");
    s.finish(&session, &sha256(data), Some(&data[12..])).await.status(201);
    assert_eq!(&s.blob_bytes("final", &sha256(data)).await[..], data);

    // A whole blob in the PUT of a fresh session.
    let session = s.start_upload("final").await;
    s.finish(&session, &sha256(b"all at once"), Some(b"all at once")).await.status(201);
    assert_eq!(&s.blob_bytes("final", &sha256(b"all at once")).await[..], b"all at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_transfer_encoding_bodies() {
    let s = Server::start().await;
    let session = s.start_upload("te").await;
    let r = s.send_chunked(Method::PATCH, &session, &[], vec![b"ab".to_vec(), b"cd".to_vec()]).await;
    r.status(202).has("range", "0-3");
    let digest = sha256(b"abcdef");
    let r = s.send_chunked(Method::PUT, &format!("{session}?digest={digest}"), &[], vec![b"ef".to_vec()]).await;
    r.status(201);
    assert_eq!(&s.blob_bytes("te", &digest).await[..], b"abcdef");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blob() {
    let s = Server::start().await;
    let digest = sha256(b"");
    let session = s.start_upload("empty").await;
    s.finish(&session, &digest, None).await.status(201);
    s.head(&format!("/v2/empty/blobs/{digest}")).await.status(200).has("content-length", "0");
    assert!(s.blob_bytes("empty", &digest).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_ends_the_session() {
    let s = Server::start().await;
    let session = s.start_upload("wrong").await;
    s.patch(&session, b"actual bytes", None).await.status(202);
    let claimed = sha256(b"claimed bytes");
    s.finish(&session, &claimed, None).await.error(400, "DIGEST_INVALID");
    s.get(&session).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.get(&format!("/v2/wrong/blobs/{claimed}")).await.error(404, "BLOB_UNKNOWN");

    // Also when the wrong digest comes with a final chunk.
    let session = s.start_upload("wrong").await;
    s.finish(&session, &claimed, Some(b"actual bytes")).await.error(400, "DIGEST_INVALID");
    s.get(&session).await.error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_without_digest_is_rejected() {
    let s = Server::start().await;
    let session = s.start_upload("nodigest").await;
    s.patch(&session, b"abc", None).await.status(202);
    s.send(Method::PUT, &session, &[], None).await.error(400, "DIGEST_INVALID");
    s.get(&session).await.status(204).has("range", "0-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_overlapping_chunks() {
    let s = Server::start().await;
    let session = s.start_upload("order").await;
    s.patch(&session, b"01234", Some("0-4")).await.status(202).has("range", "0-4");
    for (range, body) in [
        ("10-14", &b"abcde"[..]), // gap
        ("0-4", b"01234"),        // repeat
        ("3-7", b"34567"),        // overlap
        ("6-8", b"678"),          // one byte gap
    ] {
        s.patch(&session, body, Some(range)).await.status(416);
        s.get(&session).await.status(204).has("range", "0-4");
    }
    // A Content-Range that disagrees with the Content-Length.
    s.patch(&session, b"567", Some("5-9")).await.status(416);
    s.get(&session).await.status(204).has("range", "0-4");
    s.patch(&session, b"56789", Some("5-9")).await.status(202).has("range", "0-9");
    s.finish(&session, &sha256(b"0123456789"), None).await.status(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_finished_sessions() {
    let s = Server::start().await;
    let data = b"done";
    let session = s.start_upload("sess").await;
    s.finish(&session, &sha256(data), Some(data)).await.status(201);
    let unknown = format!("/v2/sess/blobs/uploads/{UNKNOWN_SESSION}");
    for path in [session.as_str(), unknown.as_str(), "/v2/sess/blobs/uploads/not-a-uuid"] {
        s.get(path).await.error(404, "BLOB_UPLOAD_UNKNOWN");
        s.patch(path, b"more", None).await.error(404, "BLOB_UPLOAD_UNKNOWN");
        s.finish(path, &sha256(data), None).await.error(404, "BLOB_UPLOAD_UNKNOWN");
        s.finish(path, &sha256(b"x"), Some(b"x")).await.error(404, "BLOB_UPLOAD_UNKNOWN");
        s.delete(path).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_of_another_repository() {
    let s = Server::start().await;
    let session = s.start_upload("owner").await;
    s.patch(&session, b"abc", None).await.status(202);
    let foreign = session.replacen("/v2/owner/", "/v2/intruder/", 1);
    s.get(&foreign).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.patch(&foreign, b"def", None).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.finish(&foreign, &sha256(b"abc"), None).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.delete(&foreign).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.get(&format!("/v2/intruder/blobs/{}", sha256(b"abc"))).await.error(404, "BLOB_UNKNOWN");
    // The owner's session is untouched.
    s.get(&session).await.status(204).has("range", "0-2");
    s.finish(&session, &sha256(b"abcdef"), Some(b"def")).await.status(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_upload() {
    let s = Server::start().await;
    let session = s.start_upload("cancel").await;
    s.patch(&session, b"abandoned", None).await.status(202);
    s.delete(&session).await.status(204);
    s.get(&session).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.delete(&session).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.finish(&session, &sha256(b"abandoned"), None).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.get(&format!("/v2/cancel/blobs/{}", sha256(b"abandoned"))).await.error(404, "BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha512_end_to_end() {
    let s = Server::start().await;
    let data = b"hashed with sha512";
    let digest = sha512(data);
    s.post_blob("big-hash", &digest, data).await.status(201).has("docker-content-digest", &digest);
    let path = format!("/v2/big-hash/blobs/{digest}");
    s.head(&path).await.status(200).has("docker-content-digest", &digest).has("content-length", "18");
    assert_eq!(&s.get(&path).await.body[..], data);

    let chunked = b"chunked then sha512";
    let session = s.start_upload("big-hash").await;
    s.patch(&session, &chunked[..7], None).await.status(202);
    s.patch(&session, &chunked[7..], Some("7-18")).await.status(202).has("range", "0-18");
    s.finish(&session, &sha512(chunked), None).await.status(201).has("docker-content-digest", &sha512(chunked));
    assert_eq!(&s.blob_bytes("big-hash", &sha512(chunked)).await[..], chunked);

    s.post_blob("big-hash", &sha512(b"other"), b"mismatch").await.error(400, "DIGEST_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_digest_algorithm() {
    let s = Server::start().await;
    let md5 = "md5:d41d8cd98f00b204e9800998ecf8427e";
    s.post_blob("algo", md5, b"").await.error(400, "DIGEST_INVALID");
    let session = s.start_upload("algo").await;
    s.finish(&session, md5, Some(b"x")).await.error(400, "DIGEST_INVALID");
    s.get(&format!("/v2/algo/blobs/{md5}")).await.error(400, "DIGEST_INVALID");
    s.post_blob("algo", "sha256:abc", b"").await.error(400, "DIGEST_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_chunk_is_not_kept() {
    let s = Server::start().await;
    let session = s.start_upload("trunc").await;
    s.patch(&session, b"kept", None).await.status(202).has("range", "0-3");
    // Announce 100 bytes, send 10, close the write side.
    let head = format!(
        "PATCH {session} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n",
        s.addr
    );
    let (status, _) = s.raw(&head, b"0123456789", true).await;
    assert!(status == 0 || (400..500).contains(&status), "truncated PATCH answered {status}");
    s.get(&session).await.status(204).has("range", "0-3");
    // The session goes on from the old offset.
    s.patch(&session, b" and more", Some("4-12")).await.status(202).has("range", "0-12");
    s.finish(&session, &sha256(b"kept and more"), None).await.status(201);
    assert_eq!(&s.blob_bytes("trunc", &sha256(b"kept and more")).await[..], b"kept and more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_fails_and_keeps_the_session() {
    let s = Server::with_env(&[("REGISTRY_BERTH_HTTP_BODYTIMEOUT", "300ms")]).await;
    let session = s.start_upload("stall").await;
    s.patch(&session, b"kept", None).await.status(202).has("range", "0-3");
    // Announce 100 bytes, send 10, then neither send more nor close: the client stalls.
    let head = format!(
        "PATCH {session} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n",
        s.addr
    );
    let (status, body) = s.raw(&head, b"0123456789", false).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("BLOB_UPLOAD_INVALID"), "{body}");
    s.get(&session).await.status(204).has("range", "0-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_final_chunk_is_not_published() {
    let s = Server::start().await;
    let session = s.start_upload("trunc-put").await;
    s.patch(&session, b"abc", None).await.status(202);
    let digest = sha256(b"abcdefghij");
    let head = format!("PUT {session}?digest={digest} HTTP/1.1\r\nHost: {}\r\nContent-Length: 7\r\n\r\n", s.addr);
    let (status, _) = s.raw(&head, b"def", true).await;
    assert!(status == 0 || (400..500).contains(&status), "truncated PUT answered {status}");
    s.get(&format!("/v2/trunc-put/blobs/{digest}")).await.error(404, "BLOB_UNKNOWN");
    s.get(&session).await.status(204).has("range", "0-2");
    s.finish(&session, &digest, Some(b"defghij")).await.status(201);

    // A monolithic POST cut short publishes nothing either.
    let cut = sha256(b"cut");
    let head = format!(
        "POST /v2/trunc-put/blobs/uploads/?digest={cut} HTTP/1.1\r\nHost: {}\r\nContent-Length: 50\r\n\r\n",
        s.addr
    );
    let (status, _) = s.raw(&head, b"cu", true).await;
    assert!(status == 0 || (400..500).contains(&status), "truncated POST answered {status}");
    s.get(&format!("/v2/trunc-put/blobs/{cut}")).await.error(404, "BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_restart() {
    let first = Server::start().await;
    let session = first.start_upload("restart").await;
    first.patch(&session, b"before ", None).await.status(202).has("range", "0-6");
    let root = first.stop().await;

    let second = Server::on_root(root, &[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]).await;
    second.get(&session).await.status(204).has("range", "0-6");
    second.patch(&session, b"after", Some("7-11")).await.status(202).has("range", "0-11");
    let digest = sha256(b"before after");
    second.finish(&session, &digest, None).await.status(201);
    assert_eq!(&second.blob_bytes("restart", &digest).await[..], b"before after");
    let m = second.push_image("restart", "v1", "persisted").await;
    let root = second.stop().await;

    let third = Server::on_root(root, &[]).await;
    assert_eq!(&third.blob_bytes("restart", &digest).await[..], b"before after");
    third.get("/v2/restart/manifests/v1").await.status(200).has("docker-content-digest", &m.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_headers() {
    // Forwarded headers steer Location only when a trusted proxy sends them.
    let fwd = [("x-forwarded-proto", "https"), ("x-forwarded-host", "registry.example.com")];
    let s = Server::start().await;
    let r = s.send(Method::POST, "/v2/loc/blobs/uploads/", &fwd, None).await;
    r.status(202);
    let location = r.header("location");
    assert!(location.starts_with(&format!("http://{}/v2/loc/blobs/uploads/", s.addr)), "{location}");
    let proxied = Server::with_env(&[("REGISTRY_BERTH_HTTP_TRUSTEDPROXIES", "[10.0.0.0/8, 127.0.0.1]")]).await;
    let r = proxied.send(Method::POST, "/v2/loc/blobs/uploads/", &fwd, None).await;
    r.status(202);
    let location = r.header("location");
    assert!(location.starts_with("https://registry.example.com/v2/loc/blobs/uploads/"), "{location}");

    let rel = Server::with_env(&[("REGISTRY_HTTP_RELATIVEURLS", "true")]).await;
    let r = rel.send(Method::POST, "/v2/loc/blobs/uploads/", &[], None).await;
    let session = r.header("location").to_owned();
    assert!(session.starts_with("/v2/loc/blobs/uploads/"), "{session}");
    rel.patch(&session, b"rel", None).await.status(202).has("location", &session);
    rel.get(&session).await.status(204).has("location", &session);
    let digest = sha256(b"rel");
    rel.finish(&session, &digest, None).await.status(201).has("location", &format!("/v2/loc/blobs/{digest}"));
    let mono = sha256(b"mono");
    rel.post_blob("loc", &mono, b"mono").await.status(201).has("location", &format!("/v2/loc/blobs/{mono}"));
    let (c, l) = rel.push_image_blobs("loc", "loc").await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &c, &[l]));
    let r = rel.put_manifest("loc", "v1", OCI_MANIFEST, &body).await;
    r.status(201).has("location", &format!("/v2/loc/manifests/{}", sha256(&body)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_idle_uploads() {
    let s = Server::with_env(&[("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "0s")]).await;
    let session = s.start_upload("purge").await;
    s.patch(&session, b"idle", None).await.status(202);
    // Sessions idle for longer than 0s: the millisecond clock must move past the last
    // write, so purge until the session is reported (bounded, no sleeping).
    let mut purged = 0;
    for _ in 0..10_000 {
        purged += s.registry.purge_idle_uploads().await.unwrap();
        if purged > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(purged, 1);
    s.get(&session).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.patch(&session, b"more", None).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    if !on_s3() {
        let leftovers = std::fs::read_dir(s.root_path().join("berth/uploads")).unwrap().count();
        assert_eq!(leftovers, 0, "spool files remain after purge");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_are_reconciled_at_start_up() {
    if on_s3() {
        // What a crash leaves of spool files; leftovers in a bucket are listed and
        // removed through the same store calls, which the storage suite checks there.
        return;
    }
    let s = Server::start().await;
    let kept = s.start_upload("left").await;
    s.patch(&kept, b"kept", None).await.status(202);
    let lost = s.start_upload("left").await;
    let root = s.stop().await;
    let spools = root.path().join("berth/uploads");
    // What a power cut can leave: a session whose spool never became durable, and a
    // spool (or staged manifest) that no session owns.
    std::fs::remove_file(spools.join(lost.rsplit('/').next().unwrap())).unwrap();
    let stray = spools.join(UNKNOWN_SESSION);
    std::fs::write(&stray, b"half a blob").unwrap();

    // Within the grace period nothing is touched: it may belong to a request in flight.
    let s = Server::on_root(root, &[]).await;
    let r = s.registry.reconcile_uploads().await.unwrap();
    assert_eq!((r.spools, r.sessions), (0, 0));
    let root = s.stop().await;

    let s = Server::on_root(root, &[("REGISTRY_BERTH_UPLOADS_ORPHANGRACE", "0s")]).await;
    let r = s.registry.reconcile_uploads().await.unwrap();
    assert_eq!((r.spools, r.sessions), (1, 1));
    assert!(!stray.exists());
    s.get(&lost).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    s.get(&kept).await.status(204).has("range", "0-3");
    s.finish(&kept, &sha256(b"kept"), None).await.status(201);
}
