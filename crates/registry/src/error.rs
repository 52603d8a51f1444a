use berth_proto::{Digest, ErrorCode};
use serde_json::Value;
use std::io;

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

    /// A write of `digest`'s bytes that met its garbage collection: nothing was
    /// recorded, and a retry succeeds once the collected bytes are gone.
    pub fn collecting(digest: &Digest) -> RegistryError {
        RegistryError::new(
            ErrorCode::Unavailable,
            format!("{digest} is being garbage-collected at this moment: retry shortly"),
        )
        .with_detail(serde_json::json!({ "digest": digest.as_str() }))
    }

    pub fn upload_unknown() -> RegistryError {
        RegistryError::new(ErrorCode::BlobUploadUnknown, ErrorCode::BlobUploadUnknown.message())
    }

    /// A failure of a store, told apart by what the client can do about it: wait for
    /// room (507), retry later (503), or nothing (500, a bug or a broken store). The
    /// cause goes to the log; the client learns only the class.
    fn from_store(what: &str, code: ErrorCode, err: &dyn std::fmt::Display) -> RegistryError {
        match code {
            ErrorCode::Internal => tracing::error!(error = %err, "{what} failed"),
            _ => tracing::warn!(error = %err, "{what} failed"),
        }
        RegistryError::new(code, code.message())
    }

    /// The error for an internal invariant that did not hold (never the client's fault).
    pub(crate) fn internal(what: &str, err: &dyn std::fmt::Display) -> RegistryError {
        RegistryError::from_store(what, ErrorCode::Internal, err)
    }
}

fn io_class(e: &io::Error) -> ErrorCode {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::StorageFull,
        // A store that is slow, throttles or cannot be reached: the client may retry.
        io::ErrorKind::TimedOut
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::Interrupted
        | io::ErrorKind::ResourceBusy
        | io::ErrorKind::NetworkDown
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// SQLite reports (extended) numeric result codes, PostgreSQL five-character SQLSTATEs.
fn database_class(code: &str) -> ErrorCode {
    match code {
        // PostgreSQL: disk full; shutdown, connection failure, serialization failure.
        "53100" => ErrorCode::StorageFull,
        "57P01" | "57P02" | "57P03" | "08000" | "08001" | "08003" | "08006" | "40001" | "40P01" => {
            ErrorCode::Unavailable
        }
        // SQLite: the primary code is the low byte. 13 = FULL, 5 = BUSY, 6 = LOCKED.
        _ => match code.parse::<i64>().map(|c| c & 0xff) {
            Ok(13) => ErrorCode::StorageFull,
            Ok(5 | 6) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        },
    }
}

impl From<berth_metadata::Error> for RegistryError {
    fn from(e: berth_metadata::Error) -> Self {
        use berth_metadata::Error as E;
        let code = match &e {
            E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => ErrorCode::Unavailable,
            E::Io(io) => io_class(io),
            E::Database(d) => database_class(d.code().as_deref().unwrap_or("")),
            _ => ErrorCode::Internal,
        };
        RegistryError::from_store("metadata store", code, &e)
    }
}

impl From<io::Error> for RegistryError {
    fn from(e: io::Error) -> Self {
        RegistryError::from_store("blob store", io_class(&e), &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_are_told_apart_by_what_the_client_can_do() {
        let io = |kind| RegistryError::from(io::Error::from(kind)).code;
        assert_eq!(io(io::ErrorKind::StorageFull), ErrorCode::StorageFull);
        assert_eq!(io(io::ErrorKind::TimedOut), ErrorCode::Unavailable);
        assert_eq!(io(io::ErrorKind::PermissionDenied), ErrorCode::Internal);
        assert_eq!(database_class("13"), ErrorCode::StorageFull);
        assert_eq!(database_class("517"), ErrorCode::Unavailable, "SQLITE_BUSY_SNAPSHOT");
        assert_eq!(database_class("53100"), ErrorCode::StorageFull);
        assert_eq!(database_class("40001"), ErrorCode::Unavailable);
        assert_eq!(database_class("2067"), ErrorCode::Internal, "a constraint violation is a bug");
        let pool = RegistryError::from(berth_metadata::Error::PoolTimedOut);
        assert_eq!((pool.code, pool.code.status()), (ErrorCode::Unavailable, 503));
        assert_eq!(ErrorCode::StorageFull.status(), 507);
    }
}
