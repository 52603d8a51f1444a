//! Bounded resources under abuse and the operator's switches: session limits, unknown
//! sessions, rejected manifests, blob size limits, read-only mode, hostile ranges and
//! slow or oversized request heads.

use crate::common::*;
use reqwest::Method;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Files under the blob store.
fn stored_files(root: &Path) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map_or(0, |entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
    }
    walk(&root.join("docker/registry/v2/blobs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_upload_sessions_create_no_state() {
    let s = Server::start().await;
    let chunk = vec![7u8; 8192];
    for i in 0..300u32 {
        let id = format!("3f1b0f5e-8c1d-4a4e-9a57-{i:012}");
        s.patch(&format!("/v2/probe/blobs/uploads/{id}"), &chunk, None).await.error(404, "BLOB_UPLOAD_UNKNOWN");
        s.patch(&format!("/v2/probe/blobs/uploads/not-a-uuid-{i}"), &chunk, None)
            .await
            .error(404, "BLOB_UPLOAD_UNKNOWN");
    }
    assert_eq!(s.registry.session_state_entries(), 0);
    // A real session keeps no state in the process between requests either: its hash
    // state is saved with its offset in the database.
    let session = s.start_upload("probe").await;
    s.patch(&session, b"abc", None).await.status(202);
    assert_eq!(s.registry.session_state_entries(), 0);
    s.patch(&session, b"def", None).await.status(202);
    s.finish(&session, &sha256(b"abcdef"), None).await.status(201);
    assert_eq!(s.registry.session_state_entries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_are_limited_per_repository_and_in_total() {
    let s = Server::with_env(&[
        ("REGISTRY_BERTH_UPLOADS_MAXSESSIONSPERREPOSITORY", "2"),
        ("REGISTRY_BERTH_UPLOADS_MAXSESSIONS", "3"),
    ])
    .await;
    let a1 = s.start_upload("a").await;
    s.start_upload("a").await;
    let r = s.send(Method::POST, "/v2/a/blobs/uploads/", &[], None).await;
    r.error(429, "TOOMANYREQUESTS");
    assert!(r.header("retry-after").parse::<u32>().is_ok());
    // A monolithic push needs a session too.
    let d = sha256(b"x");
    s.post_blob("a", &d, b"x").await.error(429, "TOOMANYREQUESTS");
    s.start_upload("b").await;
    s.send(Method::POST, "/v2/c/blobs/uploads/", &[], None).await.error(429, "TOOMANYREQUESTS");
    s.delete(&a1).await.status(204);
    s.post_blob("a", &d, b"x").await.status(201);
    if !on_s3() {
        // Spool files are the filesystem's; in a bucket a session has parts only once it
        // has bytes (the storage suite checks those on every backend).
        let spools = std::fs::read_dir(s.root_path().join("berth/uploads")).unwrap().count();
        assert_eq!(spools, 2, "only the two open sessions have spools: refused ones left none");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_manifests_write_nothing_to_storage() {
    let s = Server::start().await;
    let (config, _) = s.push_image_blobs("rej", "x").await;
    let before = stored_files(s.root_path());
    let unknown = Desc::of(OCI_LAYER, b"never pushed");
    for i in 0..20 {
        let mut m = image_manifest(OCI_MANIFEST, &config, std::slice::from_ref(&unknown));
        m["annotations"] = serde_json::json!({ "pad": "x".repeat(400_000), "n": i });
        s.put_manifest("rej", "t", OCI_MANIFEST, &to_bytes(&m)).await.error(400, "MANIFEST_BLOB_UNKNOWN");
    }
    s.put_manifest("rej", "t", OCI_MANIFEST, b"{not json").await.error(400, "MANIFEST_INVALID");
    // Too large, announced and not: refused before anything is stored.
    let head = "PUT /v2/rej/manifests/t HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n";
    assert_eq!(s.raw(head, b"", true).await.0, 413);
    // Just over the limit: the part the server leaves unread fits in the socket's
    // buffers, so the client is not reset while it still sends and reads the answer.
    let mut parts = vec![vec![b' '; 1024 * 1024]; 4];
    parts.push(vec![b' '; 16 * 1024]);
    s.send_chunked(Method::PUT, "/v2/rej/manifests/t", &[("content-type", OCI_MANIFEST)], parts)
        .await
        .error(413, "SIZE_INVALID");
    assert_eq!(stored_files(s.root_path()), before, "a rejected manifest reached storage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_over_the_size_limit_are_refused() {
    let s = Server::with_env(&[("REGISTRY_BERTH_BLOBS_MAXSIZE", "1000")]).await;
    let small = vec![1u8; 1000];
    s.post_blob("big", &sha256(&small), &small).await.status(201);
    let large = vec![2u8; 1001];
    s.post_blob("big", &sha256(&large), &large).await.error(413, "SIZE_INVALID");
    // Refused from the header alone: no body is ever sent.
    let head = format!(
        "POST /v2/big/blobs/uploads/?digest={} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n",
        sha256(b"y")
    );
    let (status, body) = s.raw(&head, b"", true).await;
    assert_eq!(status, 413, "{body}");
    // Chunks add up; a chunked body without a length is cut at the limit.
    let session = s.start_upload("big").await;
    s.patch(&session, &small[..600], None).await.status(202);
    s.patch(&session, &small[..600], Some("600-1199")).await.error(413, "SIZE_INVALID");
    let r = s.send_chunked(Method::PATCH, &session, &[], vec![vec![3u8; 300], vec![3u8; 300]]).await;
    r.error(413, "SIZE_INVALID");
    s.get(&session).await.status(204).has("range", "0-599");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_ranges_are_refused_without_overflow() {
    let s = Server::start().await;
    let session = s.start_upload("ranges").await;
    let max = u64::MAX;
    for range in [format!("0-{max}"), format!("{max}-{max}"), "0-18446744073709551616".to_owned()] {
        let r = s.patch(&session, b"abc", Some(&range)).await;
        assert!(r.status == 416 || r.status == 400, "{range}: {}", r.status);
    }
    s.get(&session).await.status(204).has("range", "0-0");
    let blob = s.push_blob("ranges", b"0123456789").await;
    let path = format!("/v2/ranges/blobs/{}", blob.digest);
    let r = s.get_with(&path, &[("range", &format!("bytes=0-{max}"))]).await;
    r.status(206).has("content-range", "bytes 0-9/10");
    s.get_with(&path, &[("range", &format!("bytes={max}-"))]).await.status(416);
    s.get_with(&path, &[("range", "bytes=-18446744073709551615")]).await.status(206);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_refuses_every_write() {
    let s = Server::start().await;
    let m = s.push_image("ro", "v1", "ro").await;
    let session = s.start_upload("ro").await;
    let root = s.stop().await;
    let s = Server::on_root(
        root,
        &[("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true"), ("REGISTRY_STORAGE_DELETE_ENABLED", "true")],
    )
    .await;
    s.get("/v2/ro/manifests/v1").await.status(200);
    s.get("/v2/ro/tags/list").await.status(200);
    s.get(&session).await.status(204);
    let d = sha256(b"z");
    s.post_blob("ro", &d, b"z").await.error(405, "UNSUPPORTED");
    s.send(Method::POST, "/v2/ro/blobs/uploads/", &[], None).await.error(405, "UNSUPPORTED");
    s.patch(&session, b"z", None).await.error(405, "UNSUPPORTED");
    s.finish(&session, &d, Some(b"z")).await.error(405, "UNSUPPORTED");
    s.delete(&session).await.error(405, "UNSUPPORTED");
    let body = s.get("/v2/ro/manifests/v1").await.body;
    s.put_manifest("ro", "v2", OCI_MANIFEST, &body).await.error(405, "UNSUPPORTED");
    s.delete("/v2/ro/manifests/v1").await.error(405, "UNSUPPORTED");
    s.delete(&format!("/v2/ro/manifests/{}", m.digest)).await.error(405, "UNSUPPORTED");
    let mount = format!("/v2/other/blobs/uploads/?mount={}&from=ro", m.digest);
    s.send(Method::POST, &mount, &[], None).await.error(405, "UNSUPPORTED");
    s.get("/v2/ro/manifests/v1").await.status(200).has("docker-content-digest", &m.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_reads_of_invalid_tags_are_unknown() {
    let s = Server::start().await;
    s.push_image("tags", "v1", "t").await;
    s.get("/v2/tags/manifests/-invalid").await.error(404, "MANIFEST_UNKNOWN");
    s.head("/v2/tags/manifests/.invalid").await.status(404);
    s.put_manifest("tags", "-invalid", OCI_MANIFEST, b"{}").await.error(400, "TAG_INVALID");
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("the server kept the connection open")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let s = Server::with_env(&[
        ("REGISTRY_BERTH_HTTP_HEADERTIMEOUT", "300ms"),
        ("REGISTRY_BERTH_HTTP_IDLETIMEOUT", "600ms"),
    ])
    .await;
    // Slowloris: a head that never ends.
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    read_to_close(&mut slow).await;
    // Idle: a connection that never sends a byte.
    let mut idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    read_to_close(&mut idle).await;
    // Keep-alive after a request: answered, then closed once idle.
    let mut kept = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    kept.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut kept).await.starts_with("HTTP/1.1 200"));
    s.get("/v2/").await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused() {
    let s = Server::with_env(&[("REGISTRY_BERTH_HTTP_MAXHEADERBYTES", "16384")]).await;
    let head = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let (status, _) = s.raw(&head, b"", false).await;
    assert!(status == 431 || status == 0, "status {status}");
    s.get("/v2/").await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_one() {
    let s = Server::with_env(&[("REGISTRY_BERTH_HTTP_MAXCONNECTIONS", "2")]).await;
    let mut held: Vec<tokio::net::TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    // The third connection is accepted by the kernel but not served...
    let mut third = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    third.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut buf)).await;
    assert!(early.is_err(), "a connection beyond the limit was served");
    // ...until one of the others goes away.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(20), third.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}
