//! `HEAD`/`GET`/`DELETE /v2/<name>/blobs/<digest>`.

use crate::error::ApiError;
use crate::{header_value, request, App, DOCKER_CONTENT_DIGEST};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use berth_proto::{Digest, RepositoryName};
use berth_registry::Actor;

pub(crate) async fn get(app: &App, repo: RepositoryName, digest: Digest, req: Request) -> Result<Response, ApiError> {
    if req.method() == Method::GET {
        // As registry:2 does on object stores: the bytes come from the store itself.
        if let Some(url) = app.registry.blob_redirect(&repo, &digest).await? {
            let mut resp = crate::empty_response(StatusCode::TEMPORARY_REDIRECT);
            resp.headers_mut().insert(header::LOCATION, header_value(&url));
            resp.headers_mut().insert(DOCKER_CONTENT_DIGEST, header_value(digest.as_str()));
            return Ok(resp);
        }
    }
    let size = app.registry.blob_size(&repo, &digest).await?;
    let range = match request::byte_range(req.headers(), size) {
        Ok(r) => r,
        Err(e) => {
            let mut resp = axum::response::IntoResponse::into_response(e);
            resp.headers_mut().insert(header::CONTENT_RANGE, header_value(&format!("bytes */{size}")));
            return Ok(resp);
        }
    };
    let len = range.map_or(size, |r| r.length());
    let body = if req.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(app.registry.read_blob(&repo, &digest, range).await?)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(DOCKER_CONTENT_DIGEST, header_value(digest.as_str()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content-addressed: the bytes behind a digest never change.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
    if let Some(r) = range {
        h.insert(header::CONTENT_RANGE, header_value(&format!("bytes {}-{}/{size}", r.start, r.end)));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}

pub(crate) async fn delete(
    app: &App,
    repo: RepositoryName,
    digest: Digest,
    actor: &Actor,
) -> Result<Response, ApiError> {
    app.registry.delete_blob(&repo, &digest, actor).await?;
    Ok(crate::empty_response(StatusCode::ACCEPTED))
}
