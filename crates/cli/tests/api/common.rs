//! Test harness: a real Berth server on an ephemeral port, an HTTP client, and helpers
//! for the request shapes the API tests repeat (blobs, uploads, manifests, errors).

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// A `Basic` Authorization header value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// A running server. Dropping it stops the listener task; the root directory lives as
/// long as any server built on it.
pub struct Server {
    pub addr: SocketAddr,
    pub base: String,
    pub root: Arc<tempfile::TempDir>,
    pub registry: Arc<berth_registry::Registry>,
    client: reqwest::Client,
    task: Option<tokio::task::JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A collected response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn opt_header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("header is not ASCII"))
    }

    #[track_caller]
    pub fn header(&self, name: &str) -> &str {
        self.opt_header(name).unwrap_or_else(|| panic!("missing header {name} in {self:?}"))
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    #[track_caller]
    pub fn status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status; body: {}", String::from_utf8_lossy(&self.body));
        self
    }

    /// An error response: the status, the spec's JSON shape and the code.
    #[track_caller]
    pub fn error(&self, status: u16, code: &str) -> &Self {
        self.status(status);
        let v = self.json();
        let errors = v["errors"].as_array().unwrap_or_else(|| panic!("no errors array: {v}"));
        assert!(!errors.is_empty(), "empty errors array");
        assert_eq!(errors[0]["code"], code, "error body: {v}");
        assert!(errors[0]["message"].is_string(), "error body: {v}");
        assert!(self.header("content-type").starts_with("application/json"));
        self
    }

    /// Status and exactly the given header value.
    #[track_caller]
    pub fn has(&self, name: &str, value: &str) -> &Self {
        assert_eq!(self.header(name), value, "header {name}");
        self
    }
}

/// A blob or manifest descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Desc {
    pub fn of(media_type: &str, data: &[u8]) -> Desc {
        Desc { media_type: media_type.to_owned(), digest: sha256(data), size: data.len() }
    }

    pub fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An OCI image manifest (or, with Docker media types, a v2 schema 2 manifest).
pub fn image_manifest(media_type: &str, config: &Desc, layers: &[Desc]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.json(),
        "layers": layers.iter().map(Desc::json).collect::<Vec<_>>(),
    })
}

/// An OCI index or Docker manifest list.
pub fn index_manifest(media_type: &str, children: &[Desc]) -> Value {
    let manifests: Vec<Value> = children
        .iter()
        .map(|c| {
            let mut d = c.json();
            d["platform"] = json!({ "os": "linux", "architecture": "amd64" });
            d
        })
        .collect();
    json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests })
}

pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Whether the suite runs on PostgreSQL (`BERTH_TEST_POSTGRES` set to a server's URL)
/// rather than on the default SQLite.
#[allow(dead_code)] // for tests that only make sense on one engine
pub fn on_postgres() -> bool {
    std::env::var_os("BERTH_TEST_POSTGRES").is_some()
}

/// On PostgreSQL, the database that belongs to a server root: created on first use, so
/// a server restarted on the same root finds the same metadata, as with SQLite in the
/// root.
fn postgres_database_for(root: &Path) -> Option<String> {
    let admin = std::env::var("BERTH_TEST_POSTGRES").ok()?;
    let name: String = root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let name = format!("t{name}");
    let out = std::process::Command::new("psql")
        .args([admin.as_str(), "-qXc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || stderr.contains("already exists"), "CREATE DATABASE {name}: {stderr}");
    let (server, _) = admin.rsplit_once('/').expect("a URL with a database");
    Some(format!("{server}/{name}"))
}

/// Whether the suite keeps blobs in S3 (`BERTH_TEST_S3` set to an S3 server's endpoint
/// with a bucket `berth-test`, as `scripts/s3.sh` starts it) rather than on the filesystem.
pub fn on_s3() -> bool {
    std::env::var_os("BERTH_TEST_S3").is_some()
}

/// On S3, the settings that keep a server root's blobs under a prefix of its own, so a
/// server restarted on the same root finds them. Downloads are not redirected: the suite
/// checks what Berth answers (redirects have tests of their own).
fn s3_storage_for(root: &Path) -> Vec<(String, String)> {
    let Ok(endpoint) = std::env::var("BERTH_TEST_S3") else { return Vec::new() };
    let prefix = format!("/api-{}", root.file_name().unwrap().to_string_lossy());
    env(&[
        ("REGISTRY_STORAGE_S3_BUCKET", "berth-test"),
        ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
        ("REGISTRY_STORAGE_S3_REGIONENDPOINT", &endpoint),
        ("REGISTRY_STORAGE_S3_ACCESSKEY", "test"),
        ("REGISTRY_STORAGE_S3_SECRETKEY", "test"),
        ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", &prefix),
        ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
    ])
}

impl Server {
    /// A server with deletes enabled on a fresh root.
    pub async fn start() -> Server {
        Server::with_env(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]).await
    }

    /// A server on a fresh root with extra `REGISTRY_*` settings.
    pub async fn with_env(extra: &[(&str, &str)]) -> Server {
        Server::on_root(Arc::new(tempfile::tempdir().unwrap()), extra).await
    }

    /// A server on an existing root (a "restart" of another server).
    pub async fn on_root(root: Arc<tempfile::TempDir>, extra: &[(&str, &str)]) -> Server {
        let mut vars = env(&[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &root.path().display().to_string())]);
        if let Some(url) = postgres_database_for(root.path()) {
            vars.push(("REGISTRY_BERTH_DATABASE_URL".into(), url));
        }
        vars.extend(s3_storage_for(root.path()));
        vars.extend(env(extra));
        let config = berth::config::Config::load(None, vars).unwrap();
        let app = berth::build(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (router, limits) = (app.router, berth::server_limits(&config));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            berth_http::serve(listener, router, limits, None, async move { stop.await.unwrap_or(()) }).await.unwrap()
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Server {
            addr,
            base: format!("http://{addr}"),
            root,
            registry: app.registry,
            client,
            task: Some(task),
            shutdown: Some(shutdown),
        }
    }

    /// A handle on the same server whose client opens a new connection for every
    /// request: reads through it share nothing with earlier requests but the server.
    pub fn on_same(other: &Server) -> Server {
        Server {
            addr: other.addr,
            base: other.base.clone(),
            root: other.root.clone(),
            registry: other.registry.clone(),
            client: reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap(),
            task: None,
            shutdown: None,
        }
    }

    /// Another handle on the same server with the same client (and its headers).
    pub fn clone_handle(&self) -> Server {
        Server {
            addr: self.addr,
            base: self.base.clone(),
            root: self.root.clone(),
            registry: self.registry.clone(),
            client: self.client.clone(),
            task: None,
            shutdown: None,
        }
    }

    /// A handle on the same server whose every request carries `authorization`.
    pub fn as_caller(other: &Server, authorization: &str) -> Server {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, authorization.parse().unwrap());
        Server {
            addr: other.addr,
            base: other.base.clone(),
            root: other.root.clone(),
            registry: other.registry.clone(),
            client: reqwest::Client::builder().no_proxy().default_headers(headers).build().unwrap(),
            task: None,
            shutdown: None,
        }
    }

    /// Stops the server as SIGTERM does and waits until it let go of its root (its
    /// database lock), so that another server can open the same root.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        drop(self.shutdown.take());
        self.client = reqwest::Client::new();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.root.clone()
    }

    pub fn root_path(&self) -> &Path {
        self.root.path()
    }

    /// The path of an absolute `Location` this server issued.
    #[track_caller]
    pub fn path_of(&self, location: &str) -> String {
        location
            .strip_prefix(&self.base)
            .unwrap_or_else(|| panic!("Location {location:?} is not an absolute URL on {}", self.base))
            .to_owned()
    }

    /// Any request; every response must carry the API version header.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
        let mut rb = self.client.request(method.clone(), format!("{}{path}", self.base));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let r = rb.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let body = r.bytes().await.unwrap();
        let resp = Resp { status, headers, body };
        assert_eq!(
            resp.opt_header("docker-distribution-api-version"),
            Some("registry/2.0"),
            "{method} {path}: version header missing"
        );
        resp
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, path, headers, None).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send(Method::HEAD, path, &[], None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// A body sent with `Transfer-Encoding: chunked` (no `Content-Length`).
    pub async fn send_chunked(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        parts: Vec<Vec<u8>>,
    ) -> Resp {
        let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        Resp { status, headers, body: r.bytes().await.unwrap() }
    }

    // ---- blobs and uploads ----------------------------------------------------------

    /// Monolithic `POST ?digest=`.
    pub async fn post_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Resp {
        self.send(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"), &[], Some(data.to_vec())).await
    }

    /// Pushes a blob (monolithic) and returns its descriptor.
    pub async fn push_blob_as(&self, repo: &str, media_type: &str, data: &[u8]) -> Desc {
        let d = Desc::of(media_type, data);
        self.post_blob(repo, &d.digest, data).await.status(201);
        d
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Desc {
        self.push_blob_as(repo, OCI_LAYER, data).await
    }

    /// `POST` a new session; returns the path of its `Location`.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self.send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), &[], None).await;
        r.status(202);
        self.path_of(r.header("location"))
    }

    /// `PATCH` a chunk, with an optional `Content-Range`.
    pub async fn patch(&self, session: &str, data: &[u8], range: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = range.map(|r| ("content-range", r)).into_iter().collect();
        self.send(Method::PATCH, session, &headers, Some(data.to_vec())).await
    }

    /// `PUT ?digest=` on a session, with an optional final chunk.
    pub async fn finish(&self, session: &str, digest: &str, data: Option<&[u8]>) -> Resp {
        let sep = if session.contains('?') { '&' } else { '?' };
        self.send(Method::PUT, &format!("{session}{sep}digest={digest}"), &[], data.map(<[u8]>::to_vec)).await
    }

    /// `GET` of a blob's bytes, asserted 200.
    pub async fn blob_bytes(&self, repo: &str, digest: &str) -> Bytes {
        let r = self.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        r.status(200);
        r.body
    }

    // ---- manifests ------------------------------------------------------------------

    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Resp {
        let headers = [("content-type", media_type)];
        self.send(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"), &headers, Some(body.to_vec())).await
    }

    /// Pushes a manifest JSON value; asserts 201 and returns its descriptor.
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Value) -> Desc {
        let media_type = manifest["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned();
        let body = to_bytes(manifest);
        let d = Desc::of(&media_type, &body);
        self.put_manifest(repo, reference, &media_type, &body)
            .await
            .status(201)
            .has("docker-content-digest", &d.digest);
        d
    }

    /// Pushes the blobs of a small OCI image unique to `seed`; returns config and layer.
    pub async fn push_image_blobs(&self, repo: &str, seed: &str) -> (Desc, Desc) {
        let config = self.push_blob_as(repo, OCI_CONFIG, format!("{{\"seed\":\"{seed}\"}}").as_bytes()).await;
        let layer = self.push_blob(repo, format!("layer of {seed}").as_bytes()).await;
        (config, layer)
    }

    /// Pushes a complete small OCI image under `reference`; returns the manifest's descriptor.
    pub async fn push_image(&self, repo: &str, reference: &str, seed: &str) -> Desc {
        let (config, layer) = self.push_image_blobs(repo, seed).await;
        self.push_manifest(repo, reference, &image_manifest(OCI_MANIFEST, &config, &[layer])).await
    }

    // ---- raw HTTP -------------------------------------------------------------------

    /// Sends `head` (request line and headers, ending in a blank line) and `body` on a
    /// fresh connection, optionally closes the write side (a client that stops sending),
    /// and reads until the server closes. Returns the status (0 if none came back) and
    /// the response body.
    pub async fn raw(&self, head: &str, body: &[u8], close_write: bool) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        if close_write {
            s.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// A bodiless request with a path sent exactly as given (no client normalisation).
    pub async fn raw_request(&self, method: &str, path: &str) -> (u16, String) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        self.raw(&head, b"", false).await
    }
}
