//! Repository names that must be refused (and must never reach the filesystem), and
//! requests that match no endpoint or method.

use crate::common::*;
use reqwest::Method;
use std::path::Path;

const UUID: &str = "3f1b0f5e-8c1d-4a4e-9a57-2f0c1c7e9d11";

fn bad_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "..",
        "../..",
        "../../etc",
        "a/../b",
        "a/./b",
        ".",
        "Upper",
        "lib/Ubuntu",
        "a//b",
        "a/",
        "-lead",
        "trailing-",
        "a/b-",
        "%2e%2e",
        "a/%2e%2e/b",
        "%2E%2E/x",
        "a%2fb",
        "a%2F..%2Fb",
        "a%20b",
        "%C3%A4",
        "a___b",
        "a.-b",
        "_a",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push("a".repeat(256));
    names.push(format!("{}/{}", "a".repeat(200), "b".repeat(55)));
    names
}

/// Every entry under the root must be inside `docker/` or `berth/`.
fn assert_confined(root: &Path) {
    for entry in std::fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(name == "docker" || name == "berth", "unexpected entry {name:?} in the storage root");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused() {
    let s = Server::start().await;
    let digest = sha256(b"x");
    let known = s.push_blob("ok", b"mountable").await;
    for name in bad_names() {
        let requests = [
            ("GET", format!("/v2/{name}/tags/list")),
            ("GET", format!("/v2/{name}/manifests/latest")),
            ("HEAD", format!("/v2/{name}/manifests/{digest}")),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("DELETE", format!("/v2/{name}/manifests/latest")),
            ("GET", format!("/v2/{name}/blobs/{digest}")),
            ("DELETE", format!("/v2/{name}/blobs/{digest}")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
            ("POST", format!("/v2/{name}/blobs/uploads/?digest={digest}")),
            ("POST", format!("/v2/{name}/blobs/uploads/?mount={}&from=ok", known.digest)),
            ("POST", format!("/v2/ok/blobs/uploads/?mount={}&from={name}", known.digest)),
            ("GET", format!("/v2/{name}/blobs/uploads/{UUID}")),
            ("PATCH", format!("/v2/{name}/blobs/uploads/{UUID}")),
            ("PUT", format!("/v2/{name}/blobs/uploads/{UUID}?digest={digest}")),
            ("DELETE", format!("/v2/{name}/blobs/uploads/{UUID}")),
            ("GET", format!("/v2/{name}/referrers/{digest}")),
        ];
        for (method, path) in requests {
            if name == "a%2fb" && path.contains("from=") {
                continue; // in a query string this is "a/b", a valid name
            }
            let (status, body) = s.raw_request(method, &path).await;
            assert_eq!(status, 400, "{method} {path}: {body}");
            if method != "HEAD" {
                let v: serde_json::Value =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
                assert_eq!(v["errors"][0]["code"], "NAME_INVALID", "{method} {path}");
            }
        }
    }
    assert_confined(s.root_path());
    // Nothing was created for any of those names.
    let catalog = s.get("/v2/_catalog").await.json();
    assert_eq!(catalog["repositories"], serde_json::json!(["ok"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_valid_name() {
    let s = Server::start().await;
    for name in ["a".repeat(255), format!("{}/{}", "a".repeat(200), "b".repeat(54))] {
        assert_eq!(name.len(), 255);
        let d = s.push_blob(&name, b"long name").await;
        s.get(&format!("/v2/{name}/blobs/{}", d.digest)).await.status(200);
        s.push_image(&name, "latest", "long").await;
        s.get(&format!("/v2/{name}/tags/list")).await.status(200);
    }
    assert_confined(s.root_path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_and_methods() {
    let s = Server::start().await;
    s.push_image("repo", "v1", "m").await;
    for path in ["/v1/", "/v2/repo/unknown/x", "/other"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 404, "{path}");
    }
    for (method, path) in [
        (Method::POST, "/v2/repo/manifests/v1"),
        (Method::PATCH, "/v2/repo/manifests/v1"),
        (Method::POST, "/v2/repo/tags/list"),
        (Method::PUT, "/v2/_catalog"),
        (Method::DELETE, "/v2/"),
    ] {
        s.send(method.clone(), path, &[], None).await.error(405, "UNSUPPORTED");
    }
}

/// An object store that cannot be reached is an outage, not a bug: writes and reads
/// answer 503 `UNAVAILABLE` with `Retry-After`, after the store's retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_object_store_answers_503_with_retry_after() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::with_env(&[
        ("REGISTRY_STORAGE_S3_BUCKET", "berth-test"),
        ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
        ("REGISTRY_STORAGE_S3_REGIONENDPOINT", &endpoint),
        ("REGISTRY_STORAGE_S3_ACCESSKEY", "test"),
        ("REGISTRY_STORAGE_S3_SECRETKEY", "test"),
    ])
    .await;
    let data = b"a layer that cannot be stored";
    let path = format!("/v2/down/blobs/uploads/?digest={}", sha256(data));
    let resp = server.send(Method::POST, &path, &[], Some(data.to_vec())).await;
    resp.error(503, "UNAVAILABLE").has("retry-after", "5");
    let resp = server.get(&format!("/v2/down/blobs/{}", sha256(data))).await;
    assert_eq!(resp.status, 404, "nothing was recorded, so the blob is unknown without asking the store");
    let resp = server.send(Method::POST, "/v2/down/blobs/uploads/", &[], None).await;
    resp.status(202);
    let location = resp.header("location").to_owned();
    let resp = server.send(Method::PATCH, &server.path_of(&location), &[], Some(data.to_vec())).await;
    resp.error(503, "UNAVAILABLE").has("retry-after", "5");
}
