//! The object-store backend on Apache OpenDAL. S3, GCS, Azure Blob, Swift and the other
//! OpenDAL services differ only in how their `Operator` is built from configuration.
//!
//! An upload session's chunks are objects of their own, its parts, under
//! `berth/uploads/<id>/`, each written (in multipart pieces of `part_size`) while the
//! chunk arrives; the session's row records them in order with the hash state, so any
//! instance continues any session. Completing a session composes the parts at the blob's
//! registry:2 key: by a server-side copy where the store has one (S3, GCS), else by
//! streaming them through. Object stores make an object visible only once its upload
//! completes, which is the atomic publish the registry relies on.

use crate::swift::{SwiftAuth, SwiftLogin};
use crate::{
    blob_key, digest_of_key, AppendError, Appended, BlobStore, ByteRange, ByteStream, Staged, UploadLock, BLOBS,
};
use berth_proto::{Algorithm, Digest, Hasher};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, HttpTransporter, OperationContext, Operator};
use std::collections::HashMap;
use std::io;
use std::time::SystemTime;

pub struct ObjectBlobStore {
    op: Operator,
    /// The size of the parts a blob is uploaded in (multipart uploads): the memory one
    /// publish holds at most.
    part_size: usize,
    /// How long presigned download URLs live; `None`: downloads are not redirected.
    redirect_for: Option<std::time::Duration>,
    /// Whether the store copies objects (and ranges of them into a multipart upload)
    /// synchronously on its side, so that composing a blob moves no bytes through here.
    server_copy: bool,
    /// Swift's large objects: their segments, under `.segments/<root>/<key><id>/`, which
    /// deleting the object (a plain `DELETE` of its manifest) leaves behind.
    segments: Option<Operator>,
}

/// An S3 bucket (AWS, or an S3-compatible store: MinIO, Ceph RGW, ...), with what
/// registry:2's `storage.s3` says.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// A full URL (`http://minio:9000`), or a host for which `secure` picks the scheme;
    /// `None`: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// Static credentials; without them the standard chain (environment, profile files,
    /// web identity, instance metadata) is asked.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    /// The prefix every key goes under.
    pub root: String,
    /// Server-side encryption: with `key_id` a customer-managed KMS key, else S3's keys.
    pub encrypt: bool,
    pub key_id: Option<String>,
    pub secure: bool,
    /// `bucket.host/key` instead of `host/bucket/key`.
    pub virtual_host_style: bool,
    pub part_size: usize,
    pub storage_class: Option<String>,
    /// Answer downloads with a redirect to a presigned URL (registry:2's default).
    pub redirect: bool,
}

/// The content type objects are stored with: bytes (what registry:2 stores too).
const BLOB_TYPE: &str = "application/octet-stream";

/// How long a presigned download URL lives (registry:2's figure).
const REDIRECT_FOR: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// An Azure Blob Storage container, with what registry:2's `storage.azure` says.
#[derive(Debug, Clone, Default)]
pub struct AzureSettings {
    pub account_name: String,
    pub account_key: String,
    pub container: String,
    /// The account's blob endpoint (`https://<account>.blob.core.windows.net`, or an
    /// emulator's URL).
    pub endpoint: String,
    pub root: String,
    /// The size of the blocks a blob is uploaded in.
    pub part_size: usize,
}

/// A Google Cloud Storage bucket, with what registry:2's `storage.gcs` says.
#[derive(Debug, Clone, Default)]
pub struct GcsSettings {
    pub bucket: String,
    /// A service account key file (JSON); without it the standard chain (the
    /// `GOOGLE_APPLICATION_CREDENTIALS` file, the VM's metadata server) is asked.
    pub key_file: Option<String>,
    pub root: String,
    /// The JSON API's endpoint; `None`: Google's. An emulator's takes no credentials.
    pub endpoint: Option<String>,
    pub part_size: usize,
    pub redirect: bool,
}

/// An OpenStack Swift container, with what registry:2's `storage.swift` says.
#[derive(Debug, Clone, Default)]
pub struct SwiftSettings {
    pub login: SwiftLogin,
    pub container: String,
    /// The prefix every key goes under (registry:2's `<prefix>/files`).
    pub root: String,
    /// The segment size of large objects.
    pub part_size: usize,
    /// The TempURL key: set on the account (or, with `container_key`, on the container)
    /// at start-up, and with `redirect` used to sign download URLs.
    pub temp_url_key: Option<String>,
    pub container_key: bool,
    pub redirect: bool,
}

/// S3's smallest part of a multipart upload (but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

impl ObjectBlobStore {
    pub fn new(op: Operator) -> ObjectBlobStore {
        ObjectBlobStore { op, part_size: MIN_PART_SIZE, redirect_for: None, server_copy: false, segments: None }
    }

    /// A store on an S3 bucket.
    pub fn s3(s: &S3Settings) -> io::Result<ObjectBlobStore> {
        install_http_client();
        let mut b = opendal::services::S3::default().bucket(&s.bucket).region(&s.region).root(&s.root);
        if let Some(endpoint) = &s.endpoint {
            let scheme = if s.secure { "https" } else { "http" };
            let url = if endpoint.contains("://") { endpoint.clone() } else { format!("{scheme}://{endpoint}") };
            b = b.endpoint(&url);
        }
        if let (Some(id), Some(secret)) = (&s.access_key, &s.secret_key) {
            b = b.access_key_id(id).secret_access_key(secret);
        }
        if let Some(token) = &s.session_token {
            b = b.session_token(token);
        }
        if s.encrypt {
            b = match &s.key_id {
                Some(key) => b.server_side_encryption_with_customer_managed_kms_key(key),
                None => b.server_side_encryption_with_s3_key(),
            };
        }
        if s.virtual_host_style {
            b = b.enable_virtual_host_style();
        }
        if let Some(class) = &s.storage_class {
            b = b.default_storage_class(class);
        }
        ObjectBlobStore::on(Operator::new(b).map_err(io::Error::other)?, s.part_size, s.redirect, true)
    }

    /// A store on an Azure Blob Storage container, signed with the account key.
    /// Downloads are not redirected: OpenDAL signs every shared access signature with
    /// read, add, create, write and delete rights, and a download URL must not let its
    /// holder overwrite or delete the blob. Parts are composed by streaming them: Azure's
    /// Copy Blob may finish after it answers, and a blob must be whole once published.
    pub fn azure(s: &AzureSettings) -> io::Result<ObjectBlobStore> {
        install_http_client();
        let b = opendal::services::Azblob::default()
            .account_name(&s.account_name)
            .account_key(&s.account_key)
            .container(&s.container)
            .endpoint(&s.endpoint)
            .root(&s.root);
        ObjectBlobStore::on(Operator::new(b).map_err(io::Error::other)?, s.part_size, false, false)
    }

    /// A store on a Google Cloud Storage bucket.
    pub fn gcs(s: &GcsSettings) -> io::Result<ObjectBlobStore> {
        install_http_client();
        let mut b = opendal::services::Gcs::default().bucket(&s.bucket).root(&s.root);
        if let Some(path) = &s.key_file {
            b = b.credential_path(path);
        }
        if let Some(endpoint) = &s.endpoint {
            // A custom endpoint is an emulator or a proxy that authenticates by itself.
            b = b.endpoint(endpoint).skip_signature().disable_vm_metadata().disable_config_load();
        }
        ObjectBlobStore::on(Operator::new(b).map_err(io::Error::other)?, s.part_size, s.redirect, true)
    }

    /// A store on an OpenStack Swift container, logged in at once (so that a wrong
    /// password fails start-up, not the first push), the container created if missing.
    /// One part's copy is Swift's server-side `COPY`; several parts are streamed (Swift
    /// copies no ranges into a large object).
    pub async fn swift(s: &SwiftSettings) -> io::Result<ObjectBlobStore> {
        install_http_client();
        let http = HttpTransporter::default();
        let first = s.login.login(&http).await?;
        let storage_url = first.storage_url.trim_end_matches('/').to_owned();
        let auth = HttpTransporter::new(SwiftAuth::new(http, s.login.clone(), first));
        prepare_container(&auth, &storage_url, s).await?;
        let ctx = OperationContext::new().with_http_transport(auth);
        let on_container = |root: &str, key: Option<&str>| -> io::Result<Operator> {
            let mut b = opendal::services::Swift::default().endpoint(&storage_url).container(&s.container).root(root);
            if let Some(key) = key {
                b = b.temp_url_key(key);
            }
            Ok(Operator::new(b).map_err(io::Error::other)?.with_context(ctx.clone()))
        };
        let signing = s.temp_url_key.as_deref().filter(|_| s.redirect);
        let op = on_container(&s.root, signing)?;
        let segments = on_container(&format!("/.segments/{}/", s.root.trim_matches('/')), None)?;
        let mut store = ObjectBlobStore::on(op, s.part_size, signing.is_some(), true)?;
        store.segments = Some(layered(segments));
        Ok(store)
    }

    /// A store on `op`, behind the timeout and retry layers.
    fn on(op: Operator, part_size: usize, redirect: bool, server_copy: bool) -> io::Result<ObjectBlobStore> {
        let redirect_for = redirect.then_some(REDIRECT_FOR);
        let part_size = part_size.max(MIN_PART_SIZE);
        Ok(ObjectBlobStore { op: layered(op), part_size, redirect_for, server_copy, segments: None })
    }

    /// Deletes every object under `prefix`, and their segments where the store keeps
    /// them apart.
    async fn delete_under(&self, prefix: &str) -> io::Result<()> {
        self.op.delete_with(prefix).recursive(true).await.map_err(typed)?;
        if let Some(segments) = &self.segments {
            segments.delete_with(prefix).recursive(true).await.map_err(typed)?;
        }
        Ok(())
    }

    /// Writes `parts` in order at `key`: one part (of at most one copy's size) by a copy,
    /// parts that may each be a piece of a multipart upload (all but the last at least
    /// [`MIN_PART_SIZE`]) by copies into one, where the store copies on its side;
    /// otherwise by streaming them.
    async fn compose(&self, id: &str, parts: &[String], key: &str) -> io::Result<()> {
        let mut sized = Vec::with_capacity(parts.len());
        for p in parts {
            let k = part_key(id, p);
            let size = self.op.stat(&k).await.map_err(typed)?.content_length();
            sized.push((k, size));
        }
        if let ([(one, size)], true) = (&sized[..], self.server_copy) {
            if *size <= COPY_PIECE {
                self.op.copy(one, key).await.map_err(typed)?;
                return Ok(());
            }
        }
        let mut writer = self.op.writer_with(key).chunk(self.part_size).content_type(BLOB_TYPE).await.map_err(typed)?;
        let written = self.write_parts(&mut writer, &sized).await;
        match written {
            Ok(()) => writer.close().await.map(drop).map_err(typed),
            Err(e) => {
                writer.abort().await.ok();
                Err(e)
            }
        }
    }

    async fn write_parts(&self, writer: &mut opendal::Writer, parts: &[(String, u64)]) -> io::Result<()> {
        let copyable = self.server_copy
            && self.op.info().capability().write_can_copy_from
            && parts.iter().rev().skip(1).all(|&(_, n)| n >= MIN_PART_SIZE as u64);
        for (k, size) in parts {
            if copyable {
                for range in copy_pieces(*size) {
                    writer.copy_from(k, range).await.map_err(typed)?;
                }
            } else {
                let mut data = self.stream(k, ..).await?;
                while let Some(chunk) = data.try_next().await? {
                    writer.write(chunk).await.map_err(typed)?;
                }
            }
        }
        Ok(())
    }

    /// Streams a session's parts, in order.
    async fn read_parts(&self, id: &str, parts: &[String]) -> io::Result<ByteStream> {
        let mut streams = Vec::with_capacity(parts.len());
        for p in parts {
            streams.push(self.stream(&part_key(id, p), ..).await?);
        }
        Ok(futures_util::stream::iter(streams).flatten().boxed())
    }

    /// An object's bytes (or a range of them), with errors typed also when they happen in
    /// the middle of the stream: a store that throttles a read half-way is as retryable
    /// as one that throttles it at the start.
    async fn stream(&self, key: &str, range: impl std::ops::RangeBounds<u64>) -> io::Result<ByteStream> {
        let reader = self.op.reader(key).await.map_err(typed)?;
        Ok(reader.into_bytes_stream(range).await.map_err(typed)?.map_err(retyped).boxed())
    }
}

/// The largest range one server-side copy (or copy into a multipart upload) may take.
const COPY_PIECE: u64 = 5 << 30;

/// A part cut into ranges of equal size, each at most [`COPY_PIECE`]: equal, so that no
/// piece in the middle of a multipart upload falls below its smallest part.
fn copy_pieces(size: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    let count = size.div_ceil(COPY_PIECE).max(1);
    let piece = size.div_ceil(count).max(1);
    (0..size).step_by(usize::try_from(piece).unwrap_or(usize::MAX)).map(move |start| start..size.min(start + piece))
}

/// Where the parts of upload sessions live: registry:2 keeps its uploads elsewhere
/// (`repositories/<name>/_uploads`), so neither ever reads the other's.
const UPLOADS: &str = "berth/uploads/";

fn upload_prefix(id: &str) -> String {
    format!("{UPLOADS}{id}/")
}

fn part_key(id: &str, part: &str) -> String {
    format!("{UPLOADS}{id}/{part}")
}

#[async_trait::async_trait]
impl BlobStore for ObjectBlobStore {
    /// Nothing to make: a session's parts appear with its chunks.
    async fn create_upload(&self, _id: &str) -> io::Result<()> {
        Ok(())
    }

    /// The database's conditional update of the offset orders a session's chunks; each
    /// chunk writes a part of its own name, so racing chunks never touch each other's.
    /// A row with bytes but no parts kept them elsewhere (a spool of an earlier version):
    /// continuing it would publish a blob without them.
    async fn lock_upload(&self, upload: Staged<'_>) -> io::Result<Option<UploadLock>> {
        if upload.size > 0 && upload.parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(UploadLock { id: upload.id.to_owned(), spool: None }))
    }

    async fn append(
        &self,
        upload: &UploadLock,
        offset: u64,
        mut hasher: Hasher,
        mut body: ByteStream,
        max_len: Option<u64>,
    ) -> Result<Appended, AppendError> {
        let part = format!("{offset:020}-{}", uuid::Uuid::new_v4());
        let key = part_key(&upload.id, &part);
        let mut writer =
            self.op.writer_with(&key).chunk(self.part_size).content_type(BLOB_TYPE).await.map_err(typed)?;
        let mut received = 0u64;
        let streamed = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(AppendError::Body)?;
                received += chunk.len() as u64;
                if max_len.is_some_and(|m| received > m) {
                    return Err(AppendError::TooLong);
                }
                // Inline: SHA-256 with the CPU's instructions takes tens of microseconds
                // for a socket read's worth of bytes.
                hasher.update(&chunk);
                writer.write(chunk).await.map_err(typed)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            writer.abort().await.ok();
            return Err(e);
        }
        if received == 0 {
            writer.abort().await.ok();
            return Ok(Appended { offset, hasher, part: None });
        }
        writer.close().await.map_err(typed)?;
        Ok(Appended { offset: offset + received, hasher, part: Some(part) })
    }

    async fn drop_chunk(&self, upload: &UploadLock, chunk: &Appended) -> io::Result<()> {
        match &chunk.part {
            Some(part) => Ok(self.op.delete(&part_key(&upload.id, part)).await.map_err(typed)?),
            None => Ok(()),
        }
    }

    async fn rehash(&self, upload: Staged<'_>, algorithm: Algorithm) -> io::Result<Hasher> {
        let mut hasher = Hasher::new(algorithm);
        let mut data = self.read_parts(upload.id, upload.parts).await?;
        while let Some(chunk) = data.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hasher)
    }

    async fn complete(&self, upload: Staged<'_>, digest: &Digest) -> io::Result<()> {
        if self.stat(digest).await?.is_none() {
            match upload.parts {
                [] => self.put_bytes(digest, Bytes::new()).await?,
                parts => self.compose(upload.id, parts, &blob_key(digest)).await?,
            }
        }
        self.abort(upload.id).await
    }

    async fn abort(&self, id: &str) -> io::Result<()> {
        self.delete_under(&upload_prefix(id)).await
    }

    async fn staged_uploads(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let entries = self.op.list_with(UPLOADS).recursive(true).await.map_err(typed)?;
        let mut latest: HashMap<String, SystemTime> = HashMap::new();
        for entry in entries {
            let Some((id, _part)) = entry.path().strip_prefix(UPLOADS).and_then(|rest| rest.split_once('/')) else {
                continue;
            };
            let written = entry.metadata().last_modified().map(SystemTime::from).unwrap_or(SystemTime::UNIX_EPOCH);
            let at = latest.entry(id.to_owned()).or_insert(written);
            *at = (*at).max(written);
        }
        Ok(latest.into_iter().collect())
    }

    async fn has_staging(&self, _id: &str) -> io::Result<bool> {
        Ok(true)
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()> {
        self.op.write_with(&blob_key(digest), data).content_type(BLOB_TYPE).await.map_err(typed)?;
        Ok(())
    }

    /// The object first, then any segments: a blob is never visible without its bytes.
    async fn delete(&self, digest: &Digest) -> io::Result<()> {
        let key = blob_key(digest);
        self.op.delete(&key).await.map_err(typed)?;
        match &self.segments {
            // A large object's segments are `<key><id>/...`, all under the key's directory.
            Some(segments) => {
                let dir = &key[..=key.rfind('/').expect("blob keys have a directory")];
                segments.delete_with(dir).recursive(true).await.map_err(typed)
            }
            None => Ok(()),
        }
    }

    fn list_blobs(&self) -> BoxStream<'static, io::Result<(Digest, u64)>> {
        let op = self.op.clone();
        let listing = async move { op.lister_with(BLOBS).recursive(true).await.map_err(typed) };
        futures_util::stream::once(listing)
            .map_ok(|lister| lister.map_err(typed))
            .try_flatten()
            .try_filter_map(|entry| async move {
                Ok(digest_of_key(entry.path()).map(|d| (d, entry.metadata().content_length())))
            })
            .boxed()
    }

    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match self.op.stat(&blob_key(digest)).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(typed(e)),
        }
    }

    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> io::Result<ByteStream> {
        let key = blob_key(digest);
        match range {
            Some(r) => self.stream(&key, r.start..r.end + 1).await,
            None => self.stream(&key, ..).await,
        }
    }

    async fn redirect_url(&self, digest: &Digest) -> io::Result<Option<String>> {
        let Some(lifetime) = self.redirect_for else { return Ok(None) };
        match self.op.presign_read(&blob_key(digest), lifetime).await {
            Ok(presigned) => Ok(Some(presigned.uri().to_string())),
            // Credentials that cannot sign (GCS through the metadata server, anonymous):
            // the download streams through the registry instead.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Unsupported | ErrorKind::ConfigInvalid | ErrorKind::PermissionDenied
                ) =>
            {
                tracing::debug!(error = %e, "no presigned URL; streaming the blob");
                Ok(None)
            }
            Err(e) => Err(typed(e)),
        }
    }
}

/// Each attempt bounded in time; failures the store calls temporary (5xx, throttling,
/// a dropped connection) retried with jittered backoff, for about 1.5 s in all: past
/// that the client gets a 503 and retries by itself, instead of holding its request.
/// Every write here is idempotent (content-addressed keys, parts of unique names), so
/// a retry never changes a result.
fn layered(op: Operator) -> Operator {
    op.layer(opendal::layers::TimeoutLayer::new()).layer(
        opendal::layers::RetryLayer::new()
            .with_jitter()
            .with_min_delay(std::time::Duration::from_millis(100))
            .with_max_delay(std::time::Duration::from_secs(2))
            .with_max_times(4),
    )
}

/// Makes the container if it is missing (as registry:2 does), and sets the TempURL key
/// where one is configured: the same key on every instance, so they never undo each
/// other's. A key Berth may not set (a user without the operator role) is only logged:
/// an operator may have set it.
async fn prepare_container(http: &HttpTransporter, storage_url: &str, s: &SwiftSettings) -> io::Result<()> {
    let container = format!("{storage_url}/{}", percent_encode(&s.container));
    let head = swift_call(http, http::Method::HEAD, &container, None).await?;
    if head == http::StatusCode::NOT_FOUND {
        let made = swift_call(http, http::Method::PUT, &container, None).await?;
        if !made.is_success() {
            return Err(io::Error::other(format!("creating Swift container {:?}: {made}", s.container)));
        }
    } else if !head.is_success() {
        return Err(io::Error::other(format!("Swift container {:?}: {head}", s.container)));
    }
    let Some(key) = &s.temp_url_key else { return Ok(()) };
    let (url, header) = match s.container_key {
        true => (&container[..], "X-Container-Meta-Temp-URL-Key"),
        false => (storage_url, "X-Account-Meta-Temp-URL-Key"),
    };
    let set = swift_call(http, http::Method::POST, url, Some((header, key))).await?;
    if !set.is_success() {
        tracing::warn!(status = %set, "could not set Swift's TempURL key; download URLs need it set by an operator");
    }
    Ok(())
}

async fn swift_call(
    http: &HttpTransporter,
    method: http::Method,
    url: &str,
    header: Option<(&str, &str)>,
) -> io::Result<http::StatusCode> {
    let mut req = http::Request::builder().method(method).uri(url).header(http::header::CONTENT_LENGTH, "0");
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let req = req.body(opendal::Buffer::new()).map_err(io::Error::other)?;
    Ok(http.send(req).await.map_err(typed)?.status())
}

/// A container name in a URL path.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An object store's error as the kinds the registry tells apart: missing, a failed
/// precondition, throttled, timed out, unavailable (a failure OpenDAL calls temporary
/// that its retries did not get past), or anything else (a bug or a broken store).
fn typed(e: opendal::Error) -> io::Error {
    let kind = match e.kind() {
        ErrorKind::NotFound => io::ErrorKind::NotFound,
        ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
        ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
        ErrorKind::RateLimited => io::ErrorKind::ResourceBusy,
        // The timeout layer's own error.
        _ if e.to_string().contains("timeout reached") => io::ErrorKind::TimedOut,
        _ if e.is_temporary() || e.is_persistent() => io::ErrorKind::NetworkDown,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// [`typed`] for an error OpenDAL raised inside a stream, where it arrives as an
/// `io::Error` of kind `Other` around the OpenDAL error.
fn retyped(e: io::Error) -> io::Error {
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<opendal::Error>()) {
        Some(Ok(dal)) => typed(*dal),
        Some(Err(other)) => io::Error::new(kind, other),
        None => io::Error::from(kind),
    }
}

/// OpenDAL's HTTP client for every object store, on rustls with the ring provider the
/// rest of the process uses. Both installs keep whatever was installed first.
fn install_http_client() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    opendal_http_transport_reqwest::install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::Algorithm;

    #[test]
    fn errors_inside_a_stream_are_typed_like_the_others() {
        let throttled = io::Error::from(opendal::Error::new(ErrorKind::RateLimited, "slow down"));
        assert_eq!(throttled.kind(), io::ErrorKind::Other, "as OpenDAL's streams raise it");
        assert_eq!(retyped(throttled).kind(), io::ErrorKind::ResourceBusy);
        let lost = io::Error::from(opendal::Error::new(ErrorKind::NotFound, "gone"));
        assert_eq!(retyped(lost).kind(), io::ErrorKind::NotFound);
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "peer");
        assert_eq!(retyped(reset).kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(retyped(io::ErrorKind::TimedOut.into()).kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn copy_pieces_cover_a_part_in_equal_ranges_within_one_copy() {
        let pieces = |size| copy_pieces(size).collect::<Vec<_>>();
        assert_eq!(pieces(0), Vec::<std::ops::Range<u64>>::new());
        assert_eq!(pieces(7), vec![0..7]);
        assert_eq!(pieces(COPY_PIECE), vec![0..COPY_PIECE]);
        // One byte over: two halves, not a full copy and a one-byte piece.
        let half = COPY_PIECE / 2 + 1;
        assert_eq!(pieces(COPY_PIECE + 1), vec![0..half, half..COPY_PIECE + 1]);
        let big = pieces(3 * COPY_PIECE + 5);
        assert_eq!(big.len(), 4);
        assert!(big.windows(2).all(|w| w[0].end == w[1].start) && big[3].end == 3 * COPY_PIECE + 5);
        assert!(big.iter().all(|r| r.end - r.start <= COPY_PIECE && r.end - r.start >= MIN_PART_SIZE as u64));
    }

    #[tokio::test]
    async fn conforms_on_opendal_memory() {
        let op = Operator::new(opendal::services::Memory::default()).unwrap();
        let store = ObjectBlobStore::new(op.clone());
        crate::tests::conformance(&store).await;
        let digest = Digest::of(Algorithm::Sha256, b"hello world");
        let key = format!("docker/registry/v2/blobs/sha256/{}/{}/data", &digest.hex()[..2], digest.hex());
        assert_eq!(op.read(&key).await.unwrap().to_vec(), b"hello world");
    }

    /// The suite on Azurite, Microsoft's Azure Blob Storage emulator (`BERTH_TEST_AZURE`:
    /// the development account's blob endpoint, with a container `berth-test`, as
    /// `scripts/azurite.sh` starts it), then a blob of several blocks; no download URL.
    #[tokio::test]
    async fn conforms_on_azure_blob_storage() {
        let Ok(endpoint) = std::env::var("BERTH_TEST_AZURE") else {
            eprintln!("BERTH_TEST_AZURE is not set: skipped (scripts/test.sh starts Azurite)");
            return;
        };
        let store = ObjectBlobStore::azure(&AzureSettings {
            account_name: "devstoreaccount1".into(),
            account_key: AZURITE_KEY.into(),
            container: "berth-test".into(),
            endpoint,
            root: format!("/conformance-{}", uuid::Uuid::new_v4()),
            part_size: MIN_PART_SIZE,
        })
        .unwrap();
        conformance_with_large_blob(&store, false).await;
    }

    /// The suite on an emulator of Google Cloud Storage's JSON API (`BERTH_TEST_GCS`:
    /// its endpoint, with a bucket `berth-test`, as `scripts/gcs.sh` starts it).
    #[tokio::test]
    async fn conforms_on_google_cloud_storage() {
        let Ok(endpoint) = std::env::var("BERTH_TEST_GCS") else {
            eprintln!("BERTH_TEST_GCS is not set: skipped (scripts/test.sh starts a GCS emulator)");
            return;
        };
        let store = ObjectBlobStore::gcs(&GcsSettings {
            bucket: "berth-test".into(),
            root: format!("/conformance-{}", uuid::Uuid::new_v4()),
            endpoint: Some(endpoint),
            part_size: MIN_PART_SIZE,
            redirect: true,
            ..GcsSettings::default()
        })
        .unwrap();
        // Objects of one part only: the emulator lacks the XML API's multipart uploads
        // (`POST ?uploads`) that OpenDAL writes larger blobs with.
        crate::tests::conformance(&store).await;
        // An anonymous endpoint's download URLs need no signature, and serve the blob (one
        // the suite keeps).
        let kept = Digest::of(Algorithm::Sha256, b"hello world");
        let url = store.redirect_url(&kept).await.unwrap().expect("a download URL");
        let fetched = reqwest::get(&url).await.unwrap().error_for_status().unwrap().bytes().await.unwrap();
        assert_eq!(&fetched[..], b"hello world");
    }

    /// Azurite's published development key (no secret).
    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// The same suite on a real S3 server (`BERTH_TEST_S3`: its endpoint, with a bucket
    /// `berth-test`, as `scripts/s3.sh` starts it), through the settings `storage.s3`
    /// makes; then a blob larger than a part, and a presigned URL that serves it.
    #[tokio::test]
    async fn conforms_on_s3() {
        let Ok(endpoint) = std::env::var("BERTH_TEST_S3") else {
            eprintln!("BERTH_TEST_S3 is not set: skipped (scripts/test.sh starts an S3 server)");
            return;
        };
        let settings = S3Settings {
            bucket: "berth-test".into(),
            region: "us-east-1".into(),
            endpoint: Some(endpoint),
            access_key: Some("test".into()),
            secret_key: Some("test".into()),
            root: format!("/conformance-{}", uuid::Uuid::new_v4()),
            part_size: MIN_PART_SIZE,
            redirect: true,
            ..S3Settings::default()
        };
        let store = ObjectBlobStore::s3(&settings).unwrap();
        conformance_with_large_blob(&store, true).await;
    }

    /// The suite on OpenStack Swift (`BERTH_TEST_SWIFT`: TempAuth's URL of the
    /// single-node Swift `scripts/swift.sh` starts, user `test:tester`), then a large
    /// object and its TempURL; the segments of large parts and blobs are gone once the
    /// session completes and the blob is deleted. Then memcached, which holds
    /// TempAuth's tokens, forgets them all: the next request is refused with 401, and the
    /// store logs in again and goes on.
    #[tokio::test]
    async fn conforms_on_swift() {
        let Ok(auth_url) = std::env::var("BERTH_TEST_SWIFT") else {
            eprintln!("BERTH_TEST_SWIFT is not set: skipped (scripts/test.sh starts Swift)");
            return;
        };
        let login = SwiftLogin {
            auth_url: auth_url.clone(),
            username: "test:tester".into(),
            password: "testing".into(),
            interface: "public".into(),
            ..SwiftLogin::default()
        };
        let root = format!("/conformance-{}/files/", uuid::Uuid::new_v4());
        let settings = SwiftSettings {
            login,
            container: "berth-test".into(),
            root: root.clone(),
            part_size: MIN_PART_SIZE,
            temp_url_key: Some("conformance-key".into()),
            container_key: true,
            redirect: true,
        };
        let store = ObjectBlobStore::swift(&settings).await.unwrap();
        conformance_with_large_blob(&store, true).await;
        let segments = store.segments.clone().unwrap();
        let listed = |op: Operator| async move { op.list_with("").recursive(true).await.unwrap().len() };
        assert!(listed(segments.clone()).await > 0, "the large blob is made of segments");
        let data: Vec<u8> = (0..MIN_PART_SIZE * 5 / 2).map(|i| (i % 251) as u8).collect();
        store.delete(&Digest::of(Algorithm::Sha256, &data)).await.unwrap();
        assert_eq!(listed(segments).await, 0, "no segment of a part or a deleted blob is left");

        let port: u16 = auth_url.split(':').nth(2).and_then(|p| p.split('/').next()?.parse().ok()).unwrap();
        forget_tokens(port + 4).await;
        let m = Digest::of(Algorithm::Sha256, b"after the tokens went");
        store.put_bytes(&m, Bytes::from_static(b"after the tokens went")).await.unwrap();
        assert_eq!(store.stat(&m).await.unwrap(), Some(21));
    }

    /// The suite on Swift with a Keystone v3 login (`BERTH_TEST_KEYSTONE`: the v3 URL of
    /// `scripts/keystone.sh`, whose user `berth` is a member of project `berth`), the
    /// storage URL taken from the token's catalog.
    #[tokio::test]
    async fn conforms_on_swift_with_keystone() {
        let Ok(auth_url) = std::env::var("BERTH_TEST_KEYSTONE") else {
            eprintln!("BERTH_TEST_KEYSTONE is not set: skipped (scripts/test.sh starts Keystone)");
            return;
        };
        let login = SwiftLogin {
            auth_url,
            username: "berth".into(),
            password: "berth-secret".into(),
            project: Some("berth".into()),
            domain: Some(crate::Name::Name("Default".into())),
            region: Some("RegionOne".into()),
            interface: "public".into(),
            ..SwiftLogin::default()
        };
        let first = login.login(&HttpTransporter::default()).await.unwrap();
        assert!(first.storage_url.contains("/v1/AUTH_"), "{}", first.storage_url);
        let expires = first.expires.expect("Keystone says when its token expires");
        assert!(expires > SystemTime::now() && expires < SystemTime::now() + std::time::Duration::from_secs(86400));
        let settings = SwiftSettings {
            login,
            container: format!("berth-keystone-{}", uuid::Uuid::new_v4()),
            root: "/files/".into(),
            part_size: MIN_PART_SIZE,
            ..SwiftSettings::default()
        };
        let store = ObjectBlobStore::swift(&settings).await.unwrap();
        crate::tests::conformance(&store).await;
    }

    /// `flush_all` to the memcached at `port`.
    async fn forget_tokens(port: u16) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        conn.write_all(b"flush_all\r\n").await.unwrap();
        let mut answer = [0u8; 4];
        conn.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"OK\r\n");
    }

    /// The backend suite, then a blob of two and a half parts (a multipart upload) from
    /// two chunks, composed (by server-side copies where the store has them), read back
    /// whole and across a part boundary, and fetched through its redirect URL where the
    /// backend `redirects`.
    async fn conformance_with_large_blob(store: &ObjectBlobStore, redirects: bool) {
        crate::tests::conformance(store).await;
        let data: Vec<u8> = (0..MIN_PART_SIZE * 5 / 2).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        store.create_upload("big").await.unwrap();
        let lock = store.lock_upload(Staged { id: "big", size: 0, parts: &[] }).await.unwrap().unwrap();
        let (mut offset, mut hasher, mut parts) = (0, berth_proto::Hasher::new(Algorithm::Sha256), Vec::new());
        for chunk in [&data[..MIN_PART_SIZE * 3 / 2], &data[MIN_PART_SIZE * 3 / 2..]] {
            let pieces: Vec<io::Result<Bytes>> = chunk.chunks(1 << 20).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let a =
                store.append(&lock, offset, hasher, futures_util::stream::iter(pieces).boxed(), None).await.unwrap();
            (offset, hasher) = (a.offset, a.hasher);
            parts.extend(a.part);
        }
        assert_eq!(hasher.finish(), digest);
        store.complete(Staged { id: "big", size: offset, parts: &parts }, &digest).await.unwrap();
        assert_eq!(store.stat(&digest).await.unwrap(), Some(data.len() as u64));
        let whole = crate::tests::collect(store.read(&digest, None).await.unwrap()).await;
        assert!(whole == data, "the blob reads back as written");
        let end = MIN_PART_SIZE as u64 + 10;
        let range = ByteRange { start: MIN_PART_SIZE as u64 - 10, end };
        let part = crate::tests::collect(store.read(&digest, Some(range)).await.unwrap()).await;
        assert_eq!(part, &data[MIN_PART_SIZE - 10..=end as usize]);
        let Some(url) = store.redirect_url(&digest).await.unwrap() else {
            assert!(!redirects, "the store signs download URLs");
            return;
        };
        assert!(redirects, "no download URL where downloads are not redirected");
        let fetched = reqwest::get(&url).await.unwrap().error_for_status().unwrap().bytes().await.unwrap();
        assert!(fetched == data, "the signed URL serves the blob");
    }
}
