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
}

impl ObjectBlobStore {
    pub fn new(op: Operator) -> ObjectBlobStore {
        ObjectBlobStore { op }
    }
}

#[async_trait::async_trait]
impl BlobStore for ObjectBlobStore {
    async fn publish(&self, spool: &Spool, id: &str, digest: &Digest, size: u64) -> io::Result<()> {
        if self.stat(digest).await?.is_none() {
            let range = (size > 0).then(|| ByteRange { start: 0, end: size - 1 });
            let mut data = if size > 0 { read_file(spool.path(id), range).await? } else { empty() };
            let mut writer = self.op.writer(&blob_key(digest)).await?;
            while let Some(chunk) = data.try_next().await? {
                writer.write(chunk).await?;
            }
            writer.close().await?;
        }
        spool.delete(id).await
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()> {
        self.op.write(&blob_key(digest), data).await?;
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
}
