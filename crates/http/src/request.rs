//! Parsing what a request names: repository, digest, reference, lengths, ranges, body.

use crate::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderMap, Uri};
use berth_proto::reference::ReferenceError;
use berth_proto::{Digest, DigestError, ErrorCode, Reference, RepositoryName};
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

pub(crate) fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default()
}

/// `n` of a listing: a non-negative integer.
pub(crate) fn page_size(q: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    q.get("n")
        .map(|n| {
            n.parse::<u32>()
                .map_err(|_| ApiError::new(ErrorCode::PaginationNumberInvalid, format!("invalid page size n={n:?}")))
        })
        .transpose()
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

/// A single `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` request, resolved against a
/// blob of `size` bytes. `Ok(None)` means serve the whole blob: no header, or one this
/// server does not interpret (several ranges), which RFC 9110 lets it ignore.
pub(crate) fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || ApiError::new(ErrorCode::RangeInvalid, format!("range not satisfiable for {size} bytes"));
    let spec = value.to_str().ok().and_then(|v| v.trim().strip_prefix("bytes="));
    let Some(spec) = spec.filter(|s| !s.contains(',')) else {
        return Ok(None);
    };
    let (first, last) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| unsatisfiable());
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => {
            let n = parse(last)?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, true) => (parse(first)?, size.saturating_sub(1)),
        (false, false) => (parse(first)?, parse(last)?.min(size.saturating_sub(1))),
        (true, true) => return Err(unsatisfiable()),
    };
    if start >= size || start > end {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

/// The `Content-Range` of an upload chunk: `start-end`, tolerating the `bytes ` /
/// `bytes=` prefixes and `/total` suffix some clients send.
pub(crate) fn chunk_range(headers: &HeaderMap) -> Result<Option<berth_registry::ChunkRange>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || ApiError::new(ErrorCode::RangeInvalid, "invalid Content-Range");
    let s = value.to_str().map_err(|_| invalid())?.trim();
    let s = s.strip_prefix("bytes").map(|r| r.trim_start_matches([' ', '='])).unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (start, end) = s.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    Ok(Some(berth_registry::ChunkRange { start, end: Some(end) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn ranges() {
        let r = |v: &str| byte_range(&with(header::RANGE, v), 100).map_err(|_| ());
        assert_eq!(r("bytes=0-9"), Ok(Some((0, 9))));
        assert_eq!(r("bytes=90-"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-10"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=95-200"), Ok(Some((95, 99))));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("items=0-1"), Ok(None));
        for bad in ["bytes=100-", "bytes=5-2", "bytes=-0", "bytes=x-1", "bytes=-"] {
            assert_eq!(r(bad), Err(()), "{bad}");
        }
        assert_eq!(byte_range(&HeaderMap::new(), 100).map_err(|_| ()), Ok(None));
    }

    #[test]
    fn content_ranges() {
        let c =
            |v: &str| chunk_range(&with(header::CONTENT_RANGE, v)).map(|r| r.map(|r| (r.start, r.end))).map_err(|_| ());
        assert_eq!(c("0-99"), Ok(Some((0, Some(99)))));
        assert_eq!(c("bytes 100-199/*"), Ok(Some((100, Some(199)))));
        assert_eq!(c("bytes=5-5"), Ok(Some((5, Some(5)))));
        assert_eq!(c("9-1"), Err(()));
        assert_eq!(c("abc"), Err(()));
    }
}
