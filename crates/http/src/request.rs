//! Parsing what a request names: repository, digest, reference, lengths, ranges, body.

use crate::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderMap};
use berth_proto::reference::ReferenceError;
use berth_proto::{range, ByteRange, Digest, DigestError, ErrorCode, ListQuery, Reference, RepositoryName};
use berth_storage::ByteStream;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::time::Duration;

pub(crate) fn name(s: &str) -> Result<RepositoryName, ApiError> {
    RepositoryName::parse(s).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NameInvalid,
            format!("invalid repository name {s:?}: lowercase alphanumeric components separated by '/', at most 255 characters"),
        )
    })
}

pub(crate) fn digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e: DigestError| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}

pub(crate) fn reference(s: &str) -> Result<Reference, ApiError> {
    Reference::parse(s).map_err(|e| match e {
        ReferenceError::Digest(d) => ApiError::new(ErrorCode::DigestInvalid, d.to_string()),
        ReferenceError::Tag(t) => ApiError::new(ErrorCode::TagInvalid, format!("invalid tag {t:?}")),
    })
}

/// `n` and `last` of a listing.
pub(crate) fn list_query(q: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    ListQuery::from_query(q).map_err(|e| {
        ApiError::new(ErrorCode::PaginationNumberInvalid, format!("invalid page size n={:?}: expected 0 or more", e.0))
    })
}

pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::new(ErrorCode::SizeInvalid, "invalid Content-Length"))
        })
        .transpose()
}

/// Whether the request carries a body at all (a length above zero, or chunked).
pub(crate) fn has_body(headers: &HeaderMap) -> Result<bool, ApiError> {
    Ok(match content_length(headers)? {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    })
}

/// The request body as a stream that fails when the client stalls for longer than
/// `idle`: a stalled upload must not hold its session and a disk thread forever.
pub(crate) fn body_stream(body: Body, idle: Duration) -> ByteStream {
    let body = body.into_data_stream().map_err(std::io::Error::other);
    Box::pin(futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(item)) => Some((item, Some(body))),
            Ok(None) => None,
            Err(_) => {
                let stalled = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no body data for {}s", idle.as_secs_f32()),
                );
                Some((Err(stalled), None))
            }
        }
    }))
}

/// The `Range` of a blob read, resolved against its size; `Ok(None)` serves it whole.
pub(crate) fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<ByteRange>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or("");
    range::resolve_range(value, size).map_err(|_| {
        ApiError::new(ErrorCode::RangeInvalid, format!("range {value:?} not satisfiable for {size} bytes"))
    })
}

/// The `Content-Range` of an upload chunk.
pub(crate) fn chunk_range(headers: &HeaderMap) -> Result<Option<ByteRange>, ApiError> {
    headers
        .get(header::CONTENT_RANGE)
        .map(|v| {
            range::parse_content_range(v.to_str().unwrap_or(""))
                .map_err(|_| ApiError::new(ErrorCode::RangeInvalid, "invalid Content-Range: expected start-end"))
        })
        .transpose()
}
