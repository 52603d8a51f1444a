//! Manifests: push and pull (byte for byte), the manifest kinds, validation errors, the
//! size limit, subjects, Accept negotiation and deletes.

use crate::common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_by_tag() {
    let s = Server::start().await;
    let (config, layer) = s.push_image_blobs("lib/web", "put").await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &config, &[layer]));
    let digest = sha256(&body);
    let r = s.put_manifest("lib/web", "v1.0", OCI_MANIFEST, &body).await;
    r.status(201).has("docker-content-digest", &digest);
    assert_eq!(s.path_of(r.header("location")), format!("/v2/lib/web/manifests/{digest}"));
    assert!(r.opt_header("oci-subject").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_return_the_exact_bytes() {
    let s = Server::start().await;
    let (c, l) = s.push_image_blobs("exact", "exact").await;
    let body = format!(
        "{{\n\t\"layers\" : [ {{ \"size\":{},  \"digest\" :\"{}\",\"mediaType\":\"{}\" }} ],\r\n  \"config\":{{\"digest\":\"{}\",\"size\" : {},\"mediaType\":\"{}\"}},   \"schemaVersion\":2 ,\n\"annotations\":{{\"z\":\"1\",\"a\":\"\\u00e9\"}},\"mediaType\":\"{}\"   }}\n\n",
        l.size, l.digest, l.media_type, c.digest, c.size, c.media_type, OCI_MANIFEST
    )
    .into_bytes();
    let digest = sha256(&body);
    s.put_manifest("exact", "latest", OCI_MANIFEST, &body).await.status(201).has("docker-content-digest", &digest);
    for reference in ["latest", digest.as_str()] {
        let path = format!("/v2/exact/manifests/{reference}");
        let get = s.get(&path).await;
        get.status(200)
            .has("content-type", OCI_MANIFEST)
            .has("content-length", &body.len().to_string())
            .has("docker-content-digest", &digest);
        assert_eq!(&get.body[..], &body[..], "GET {reference}");
        let head = s.head(&path).await;
        head.status(200)
            .has("content-type", OCI_MANIFEST)
            .has("content-length", &body.len().to_string())
            .has("docker-content-digest", &digest);
        assert!(head.body.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index() {
    let s = Server::start().await;
    let a = s.push_image("multi", "amd64", "a").await;
    let b = s.push_image("multi", "arm64", "b").await;
    let index = s.push_manifest("multi", "latest", &index_manifest(OCI_INDEX, &[a, b])).await;
    let r = s.get("/v2/multi/manifests/latest").await;
    r.status(200).has("content-type", OCI_INDEX).has("docker-content-digest", &index.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_manifest_and_manifest_list() {
    let s = Server::start().await;
    let config = s.push_blob_as("dock", DOCKER_CONFIG, b"{\"architecture\":\"amd64\"}").await;
    let layer = s.push_blob_as("dock", DOCKER_LAYER, b"docker layer").await;
    let m = s.push_manifest("dock", "v2", &image_manifest(DOCKER_MANIFEST, &config, &[layer])).await;
    s.get("/v2/dock/manifests/v2").await.status(200).has("content-type", DOCKER_MANIFEST);
    s.push_manifest("dock", "list", &index_manifest(DOCKER_LIST, &[m])).await;
    s.get("/v2/dock/manifests/list").await.status(200).has("content-type", DOCKER_LIST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_with_empty_config() {
    let s = Server::start().await;
    let empty = s.push_blob_as("art", EMPTY_TYPE, b"{}").await;
    assert_eq!(empty.digest, EMPTY_DIGEST);
    let layer = s.push_blob_as("art", "application/vnd.example.data", b"artifact payload").await;
    let mut m = image_manifest(OCI_MANIFEST, &empty, &[layer]);
    m["artifactType"] = json!("application/vnd.example.thing");
    let d = s.push_manifest("art", "v1", &m).await;
    let r = s.get(&format!("/v2/art/manifests/{}", d.digest)).await;
    r.status(200).has("content-type", OCI_MANIFEST);
    assert_eq!(r.json()["artifactType"], "application/vnd.example.thing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_by_digest() {
    let s = Server::start().await;
    let (c, l) = s.push_image_blobs("bydigest", "d").await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &c, &[l]));
    let digest = sha256(&body);
    let r = s.put_manifest("bydigest", &digest, OCI_MANIFEST, &body).await;
    r.status(201).has("docker-content-digest", &digest);
    assert_eq!(s.path_of(r.header("location")), format!("/v2/bydigest/manifests/{digest}"));
    assert_eq!(&s.get(&format!("/v2/bydigest/manifests/{digest}")).await.body[..], &body[..]);

    let d512 = sha512(&body);
    s.put_manifest("bydigest", &d512, OCI_MANIFEST, &body).await.status(201).has("docker-content-digest", &d512);
    let r = s.get(&format!("/v2/bydigest/manifests/{d512}")).await;
    r.status(200).has("docker-content-digest", &d512);
    assert_eq!(&r.body[..], &body[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_by_wrong_digest() {
    let s = Server::start().await;
    let (c, l) = s.push_image_blobs("wrongdigest", "w").await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &c, &[l]));
    let wrong = sha256(b"not the manifest");
    s.put_manifest("wrongdigest", &wrong, OCI_MANIFEST, &body).await.error(400, "DIGEST_INVALID");
    s.get(&format!("/v2/wrongdigest/manifests/{wrong}")).await.error(404, "MANIFEST_UNKNOWN");
    s.get(&format!("/v2/wrongdigest/manifests/{}", sha256(&body))).await.error(404, "MANIFEST_UNKNOWN");
    let md5 = "md5:d41d8cd98f00b204e9800998ecf8427e";
    s.put_manifest("wrongdigest", md5, OCI_MANIFEST, &body).await.error(400, "DIGEST_INVALID");
    s.get(&format!("/v2/wrongdigest/manifests/{md5}")).await.error(400, "DIGEST_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_scoped_to_their_repository() {
    let s = Server::start().await;
    let a = s.push_image("scope-a", "v1", "a").await;
    s.push_image("scope-b", "v1", "b").await;
    s.get(&format!("/v2/scope-b/manifests/{}", a.digest)).await.error(404, "MANIFEST_UNKNOWN");
    let index = to_bytes(&index_manifest(OCI_INDEX, &[a]));
    s.put_manifest("scope-b", "idx", OCI_INDEX, &index).await.error(400, "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_type_from_content_type() {
    let s = Server::start().await;
    let (c, l) = s.push_image_blobs("ctype", "c").await;
    let mut m = image_manifest(OCI_MANIFEST, &c, &[l]);
    m.as_object_mut().unwrap().remove("mediaType");
    let body = to_bytes(&m);
    s.put_manifest("ctype", "v1", OCI_MANIFEST, &body).await.status(201);
    s.get("/v2/ctype/manifests/v1").await.status(200).has("content-type", OCI_MANIFEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blobs() {
    let s = Server::start().await;
    let (c, l) = s.push_image_blobs("missing", "m").await;
    let absent = Desc::of(OCI_LAYER, b"never pushed");
    let elsewhere = s.push_blob("other-repo", b"pushed elsewhere").await;
    let absent_config = Desc::of(OCI_CONFIG, b"{\"never\":true}");
    for m in [
        image_manifest(OCI_MANIFEST, &c, &[l.clone(), absent.clone()]),
        image_manifest(OCI_MANIFEST, &c, &[elsewhere]),
        image_manifest(OCI_MANIFEST, &absent_config, &[l]),
    ] {
        s.put_manifest("missing", "t", OCI_MANIFEST, &to_bytes(&m)).await.error(400, "MANIFEST_BLOB_UNKNOWN");
    }
    s.get("/v2/missing/manifests/t").await.error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_with_missing_child() {
    let s = Server::start().await;
    let present = s.push_image("idx", "present", "p").await;
    let absent = Desc::of(OCI_MANIFEST, b"{\"schemaVersion\":2}");
    let index = to_bytes(&index_manifest(OCI_INDEX, &[present, absent]));
    s.put_manifest("idx", "all", OCI_INDEX, &index).await.error(400, "MANIFEST_BLOB_UNKNOWN");
    s.get("/v2/idx/manifests/all").await.error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests() {
    let s = Server::start().await;
    let (c, l) = s.push_image_blobs("invalid", "i").await;
    let good = image_manifest(OCI_MANIFEST, &c, &[l]);
    let mut v1 = good.clone();
    v1["schemaVersion"] = json!(1);
    let mut no_config = good.clone();
    no_config.as_object_mut().unwrap().remove("config");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (OCI_MANIFEST, b"{\"schemaVersion\":2,".to_vec()),
        (OCI_MANIFEST, b"not json at all".to_vec()),
        (OCI_MANIFEST, b"".to_vec()),
        (OCI_MANIFEST, to_bytes(&v1)),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1,"name":"invalid","tag":"t","architecture":"amd64","fsLayers":[],"history":[]}"#
                .to_vec(),
        ),
        (DOCKER_MANIFEST, to_bytes(&good)), // mediaType says OCI, Content-Type says Docker
        (OCI_INDEX, to_bytes(&good)),
        (OCI_MANIFEST, to_bytes(&no_config)),
    ];
    for (content_type, body) in cases {
        let r = s.put_manifest("invalid", "t", content_type, &body).await;
        r.error(400, "MANIFEST_INVALID");
    }
    s.get("/v2/invalid/manifests/t").await.error(404, "MANIFEST_UNKNOWN");
}

/// An image manifest padded with an annotation to exactly `len` bytes.
fn manifest_of_len(config: &Desc, layer: &Desc, len: usize) -> Vec<u8> {
    let mut m = image_manifest(OCI_MANIFEST, config, std::slice::from_ref(layer));
    m["annotations"] = json!({ "pad": "" });
    let base = to_bytes(&m).len();
    m["annotations"]["pad"] = json!("x".repeat(len - base));
    let bytes = to_bytes(&m);
    assert_eq!(bytes.len(), len);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_size_limit() {
    let s = Server::with_env(&[("REGISTRY_BERTH_MANIFESTS_MAXSIZE", "1024")]).await;
    let (c, l) = s.push_image_blobs("limit", "l").await;
    let at_limit = manifest_of_len(&c, &l, 1024);
    s.put_manifest("limit", "ok", OCI_MANIFEST, &at_limit).await.status(201);
    let over = manifest_of_len(&c, &l, 1025);
    s.put_manifest("limit", "big", OCI_MANIFEST, &over).await.error(413, "SIZE_INVALID");
    // Without a Content-Length the limit applies to the bytes as they arrive.
    let parts = over.chunks(100).map(<[u8]>::to_vec).collect();
    let r = s.send_chunked(Method::PUT, "/v2/limit/manifests/big", &[("content-type", OCI_MANIFEST)], parts).await;
    r.error(413, "SIZE_INVALID");
    s.get("/v2/limit/manifests/big").await.error(404, "MANIFEST_UNKNOWN");
    s.get("/v2/limit/manifests/ok").await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_header() {
    let s = Server::start().await;
    let subject = s.push_image("subj", "v1", "subject").await;
    let empty = s.push_blob_as("subj", EMPTY_TYPE, b"{}").await;
    let mut m = image_manifest(OCI_MANIFEST, &empty, std::slice::from_ref(&empty));
    m["artifactType"] = json!("application/vnd.example.sig");
    m["subject"] = subject.json();
    let body = to_bytes(&m);
    let r = s.put_manifest("subj", &sha256(&body), OCI_MANIFEST, &body).await;
    r.status(201).has("oci-subject", &subject.digest).has("docker-content-digest", &sha256(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_negotiation() {
    let s = Server::start().await;
    s.push_image("accept", "v1", "accept").await;
    let path = "/v2/accept/manifests/v1";
    s.get_with(path, &[("accept", DOCKER_MANIFEST)]).await.error(404, "MANIFEST_UNKNOWN");
    s.send(Method::HEAD, path, &[("accept", DOCKER_MANIFEST)], None).await.status(404);
    s.get_with(path, &[("accept", OCI_INDEX)]).await.error(404, "MANIFEST_UNKNOWN");
    for accept in ["*/*", OCI_MANIFEST, "application/json", &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}")] {
        s.get_with(path, &[("accept", accept)]).await.status(200).has("content-type", OCI_MANIFEST);
    }
    s.get(path).await.status(200).has("content-type", OCI_MANIFEST);
    // Several Accept header lines are one list.
    let r = s.get_with(path, &[("accept", DOCKER_MANIFEST), ("accept", OCI_MANIFEST)]).await;
    r.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retagging_moves_the_tag() {
    let s = Server::start().await;
    let first = s.push_image("retag", "latest", "one").await;
    let second = s.push_image("retag", "latest", "two").await;
    s.get("/v2/retag/manifests/latest").await.status(200).has("docker-content-digest", &second.digest);
    s.get(&format!("/v2/retag/manifests/{}", first.digest)).await.status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tag_keeps_the_manifest() {
    let s = Server::start().await;
    let m = s.push_image("deltag", "v1", "x").await;
    let body = s.get("/v2/deltag/manifests/v1").await.body;
    s.put_manifest("deltag", "stable", OCI_MANIFEST, &body).await.status(201);
    s.delete("/v2/deltag/manifests/v1").await.status(202);
    s.get("/v2/deltag/manifests/v1").await.error(404, "MANIFEST_UNKNOWN");
    s.get(&format!("/v2/deltag/manifests/{}", m.digest)).await.status(200);
    s.get("/v2/deltag/manifests/stable").await.status(200).has("docker-content-digest", &m.digest);
    assert_eq!(s.get("/v2/deltag/tags/list").await.json()["tags"], json!(["stable"]));
    s.delete("/v2/deltag/manifests/v1").await.error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_digest_removes_manifest_and_tags() {
    let s = Server::start().await;
    let m = s.push_image("deldigest", "v1", "y").await;
    let keep = s.push_image("deldigest", "keep", "z").await;
    let body = s.get("/v2/deldigest/manifests/v1").await.body;
    s.put_manifest("deldigest", "v1-alias", OCI_MANIFEST, &body).await.status(201);
    let path = format!("/v2/deldigest/manifests/{}", m.digest);
    s.delete(&path).await.status(202);
    s.get(&path).await.error(404, "MANIFEST_UNKNOWN");
    s.head(&path).await.status(404);
    for tag in ["v1", "v1-alias"] {
        s.get(&format!("/v2/deldigest/manifests/{tag}")).await.error(404, "MANIFEST_UNKNOWN");
    }
    assert_eq!(s.get("/v2/deldigest/tags/list").await.json()["tags"], json!(["keep"]));
    s.get(&format!("/v2/deldigest/manifests/{}", keep.digest)).await.status(200);
    s.delete(&path).await.error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_repository() {
    let s = Server::start().await;
    s.get("/v2/no/such/repo/manifests/latest").await.error(404, "NAME_UNKNOWN");
    s.get(&format!("/v2/no/such/repo/manifests/{}", sha256(b"x"))).await.error(404, "NAME_UNKNOWN");
    s.head("/v2/no/such/repo/manifests/latest").await.status(404);
    s.push_image("known", "v1", "k").await;
    s.get("/v2/known/manifests/v2").await.error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tag() {
    let s = Server::start().await;
    let (c, l) = s.push_image_blobs("tags", "t").await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &c, &[l]));
    let long = "a".repeat(129);
    for tag in [".hidden", "-dash", "a%2Fb", "tag%20space", long.as_str()] {
        s.put_manifest("tags", tag, OCI_MANIFEST, &body).await.error(400, "TAG_INVALID");
    }
    let longest = "a".repeat(128);
    for tag in ["_under", "v1.0.0-rc_1", "UPPER", longest.as_str()] {
        s.put_manifest("tags", tag, OCI_MANIFEST, &body).await.status(201);
    }
}
