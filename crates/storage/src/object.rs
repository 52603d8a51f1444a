//! The object-store backend on Apache OpenDAL. S3, GCS, Azure Blob, Swift and the other
//! OpenDAL services differ only in how their `Operator` is built from configuration.
//!
//! Upload spools stay on local disk (appends, resumption and rehashing need random access
//! that object stores do not offer); a verified spool is streamed into the store under
//! the registry:2 key. Object stores make an object visible only once its upload
//! completes, which is the atomic publish the registry relies on.

use crate::local::read_file;
use crate::{blob_key, BlobStore, ByteRange, ByteStream, Spool};
use berth_proto::Digest;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, Operator};
use std::io;

pub struct ObjectBlobStore {
    op: Operator,
    /// The size of the parts a blob is uploaded in (multipart uploads): the memory one
    /// publish holds at most.
    part_size: usize,
    /// How long presigned download URLs live; `None`: downloads are not redirected.
    redirect_for: Option<std::time::Duration>,
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

/// S3's smallest part of a multipart upload (but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

impl ObjectBlobStore {
    pub fn new(op: Operator) -> ObjectBlobStore {
        ObjectBlobStore { op, part_size: MIN_PART_SIZE, redirect_for: None }
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
        ObjectBlobStore::on(Operator::new(b).map_err(io::Error::other)?, s.part_size, s.redirect)
    }

    /// A store on an Azure Blob Storage container, signed with the account key.
    /// Downloads are not redirected: OpenDAL signs every shared access signature with
    /// read, add, create, write and delete rights, and a download URL must not let its
    /// holder overwrite or delete the blob.
    pub fn azure(s: &AzureSettings) -> io::Result<ObjectBlobStore> {
        install_http_client();
        let b = opendal::services::Azblob::default()
            .account_name(&s.account_name)
            .account_key(&s.account_key)
            .container(&s.container)
            .endpoint(&s.endpoint)
            .root(&s.root);
        ObjectBlobStore::on(Operator::new(b).map_err(io::Error::other)?, s.part_size, false)
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
        ObjectBlobStore::on(Operator::new(b).map_err(io::Error::other)?, s.part_size, s.redirect)
    }

    /// Each attempt bounded in time; failures the store calls temporary (5xx, throttling,
    /// a dropped connection) retried with jittered backoff. Every write here is
    /// idempotent (content-addressed keys), so a retry never changes a result.
    fn on(op: Operator, part_size: usize, redirect: bool) -> io::Result<ObjectBlobStore> {
        let op = op
            .layer(opendal::layers::TimeoutLayer::new())
            .layer(opendal::layers::RetryLayer::new().with_jitter().with_max_times(4));
        let redirect_for = redirect.then_some(REDIRECT_FOR);
        Ok(ObjectBlobStore { op, part_size: part_size.max(MIN_PART_SIZE), redirect_for })
    }
}

#[async_trait::async_trait]
impl BlobStore for ObjectBlobStore {
    async fn publish(&self, spool: &Spool, id: &str, digest: &Digest, size: u64) -> io::Result<()> {
        if self.stat(digest).await?.is_none() {
            let range = (size > 0).then(|| ByteRange { start: 0, end: size - 1 });
            let mut data = if size > 0 { read_file(spool.path(id), range).await? } else { empty() };
            // In parts: a multipart upload whose memory is one part, whatever the size.
            let mut writer =
                self.op.writer_with(&blob_key(digest)).chunk(self.part_size).content_type(BLOB_TYPE).await?;
            while let Some(chunk) = data.try_next().await? {
                writer.write(chunk).await?;
            }
            writer.close().await?;
        }
        spool.delete(id).await
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()> {
        self.op.write_with(&blob_key(digest), data).content_type(BLOB_TYPE).await?;
        Ok(())
    }

    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match self.op.stat(&blob_key(digest)).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(&self, digest: &Digest, range: Option<ByteRange>) -> io::Result<ByteStream> {
        let reader = self.op.reader(&blob_key(digest)).await?;
        let stream = match range {
            Some(r) => reader.into_bytes_stream(r.start..r.end + 1).await?,
            None => reader.into_bytes_stream(..).await?,
        };
        Ok(stream.boxed())
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
            Err(e) => Err(e.into()),
        }
    }
}

/// OpenDAL's HTTP client for every object store, on rustls with the ring provider the
/// rest of the process uses. Both installs keep whatever was installed first.
fn install_http_client() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    opendal_http_transport_reqwest::install_default();
}

fn empty() -> ByteStream {
    futures_util::stream::empty().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::Algorithm;

    #[tokio::test]
    async fn conforms_on_opendal_memory() {
        let dir = tempfile::tempdir().unwrap();
        let op = Operator::new(opendal::services::Memory::default()).unwrap();
        let store = ObjectBlobStore::new(op.clone());
        let spool_dir = dir.path().join("uploads");
        crate::tests::conformance(&store, &Spool::open(&spool_dir).unwrap(), &spool_dir).await;
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
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("uploads");
        crate::tests::conformance(&store, &Spool::open(&spool_dir).unwrap(), &spool_dir).await;
        // An anonymous endpoint's download URLs need no signature, and serve the blob.
        let url = store.redirect_url(&Digest::of(Algorithm::Sha256, b"abc")).await.unwrap().expect("a download URL");
        let fetched = reqwest::get(&url).await.unwrap().error_for_status().unwrap().bytes().await.unwrap();
        assert_eq!(&fetched[..], b"abc");
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

    /// The backend suite, then a blob of two and a half parts (a multipart upload) read
    /// back whole and across a part boundary, and fetched through its redirect URL where
    /// the backend `redirects`.
    async fn conformance_with_large_blob(store: &ObjectBlobStore, redirects: bool) {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("uploads");
        let spool = Spool::open(&spool_dir).unwrap();
        crate::tests::conformance(store, &spool, &spool_dir).await;
        // Two and a half parts: a multipart upload, read back whole and by range.
        let data: Vec<u8> = (0..MIN_PART_SIZE * 5 / 2).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        spool.create("big").await.unwrap();
        let lock = spool.lock("big").await.unwrap().unwrap();
        let pieces: Vec<io::Result<Bytes>> = data.chunks(1 << 20).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let body = futures_util::stream::iter(pieces).boxed();
        spool.append(&lock, 0, berth_proto::Hasher::new(Algorithm::Sha256), body, None).await.unwrap();
        drop(lock);
        store.publish(&spool, "big", &digest, data.len() as u64).await.unwrap();
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
