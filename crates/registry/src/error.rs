use berth_proto::{Digest, ErrorCode};
use serde_json::Value;

/// An error with the spec's code, a message for the client and optional detail.
#[derive(Debug)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<Value>,
}

pub type Result<T> = std::result::Result<T, RegistryError>;

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError { code, message: message.into(), detail: None }
    }

    pub fn with_detail(mut self, detail: Value) -> RegistryError {
        self.detail = Some(detail);
        self
    }

    pub fn blob_unknown(digest: &Digest) -> RegistryError {
        RegistryError::new(ErrorCode::BlobUnknown, ErrorCode::BlobUnknown.message())
            .with_detail(serde_json::json!({ "digest": digest.as_str() }))
    }

    pub fn upload_unknown() -> RegistryError {
        RegistryError::new(ErrorCode::BlobUploadUnknown, ErrorCode::BlobUploadUnknown.message())
    }

    fn internal(what: &str, err: &dyn std::fmt::Display) -> RegistryError {
        // The cause goes to the log; clients learn only that it was not their fault.
        tracing::error!(error = %err, "{what} failed");
        RegistryError::new(ErrorCode::Internal, ErrorCode::Internal.message())
    }
}

impl From<berth_metadata::Error> for RegistryError {
    fn from(e: berth_metadata::Error) -> Self {
        RegistryError::internal("metadata store", &e)
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::internal("blob store", &e)
    }
}
