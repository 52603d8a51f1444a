//! Blob uploads: `POST`, `PATCH`, `PUT`, `GET` and `DELETE` on `/v2/<name>/blobs/uploads/`.

use crate::error::ApiError;
use crate::{edge, empty_response, header_value, request, App, DOCKER_CONTENT_DIGEST};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use berth_proto::{Digest, ErrorCode, RepositoryName};
use berth_registry::UploadState;

const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");

/// `202`/`204` with where the session lives and what it holds (`Range: 0-<last byte>`,
/// `0-0` when empty, as registry:2 answers).
fn session_response(
    app: &App,
    headers: &HeaderMap,
    repo: &RepositoryName,
    s: &UploadState,
    status: StatusCode,
) -> Response {
    let mut resp = empty_response(status);
    let location = edge::url(&app.options, headers, &format!("/v2/{repo}/blobs/uploads/{}", s.id));
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&location));
    h.insert(header::RANGE, header_value(&format!("0-{}", s.offset.saturating_sub(1))));
    h.insert(UPLOAD_UUID, header_value(&s.id));
    resp
}

/// `201` for a blob that is now in the repository.
fn created_response(app: &App, headers: &HeaderMap, repo: &RepositoryName, digest: &Digest) -> Response {
    let mut resp = empty_response(StatusCode::CREATED);
    let location = edge::url(&app.options, headers, &format!("/v2/{repo}/blobs/{digest}"));
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&location));
    h.insert(DOCKER_CONTENT_DIGEST, header_value(digest.as_str()));
    resp
}

pub(crate) async fn start(app: &App, name: &str, req: Request) -> Result<Response, ApiError> {
    let repo = request::name(name)?;
    let q = request::query(req.uri());
    if let Some(mount) = q.get("mount") {
        let digest = request::digest(mount)?;
        let from = q.get("from").map(|f| request::name(f)).transpose()?;
        if app.registry.mount_blob(&repo, &digest, from.as_ref()).await? {
            return Ok(created_response(app, req.headers(), &repo, &digest));
        }
    } else if let Some(digest) = q.get("digest") {
        let digest = request::digest(digest)?;
        let len = request::content_length(req.headers())?;
        let (parts, body) = req.into_parts();
        app.registry.upload_blob(&repo, &digest, len, request::body_stream(body, app.options.body_timeout)).await?;
        return Ok(created_response(app, &parts.headers, &repo, &digest));
    }
    let session = app.registry.start_upload(&repo).await?;
    Ok(session_response(app, req.headers(), &repo, &session, StatusCode::ACCEPTED))
}

pub(crate) async fn status(app: &App, name: &str, id: &str, req: Request) -> Result<Response, ApiError> {
    let repo = request::name(name)?;
    let session = app.registry.upload_status(&repo, id).await?;
    Ok(session_response(app, req.headers(), &repo, &session, StatusCode::NO_CONTENT))
}

pub(crate) async fn patch(app: &App, name: &str, id: &str, req: Request) -> Result<Response, ApiError> {
    let repo = request::name(name)?;
    let range = request::chunk_range(req.headers())?;
    let len = request::content_length(req.headers())?;
    let (parts, body) = req.into_parts();
    let session =
        app.registry.append_chunk(&repo, id, range, len, request::body_stream(body, app.options.body_timeout)).await?;
    Ok(session_response(app, &parts.headers, &repo, &session, StatusCode::ACCEPTED))
}

pub(crate) async fn put(app: &App, name: &str, id: &str, req: Request) -> Result<Response, ApiError> {
    let repo = request::name(name)?;
    let q = request::query(req.uri());
    let digest = q
        .get("digest")
        .ok_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "the digest query parameter is required"))?;
    let digest = request::digest(digest)?;
    let len = request::content_length(req.headers())?;
    let has_body = request::has_body(req.headers())?;
    let (parts, body) = req.into_parts();
    let body = has_body.then(|| request::body_stream(body, app.options.body_timeout));
    app.registry.finish_upload(&repo, id, &digest, len, body).await?;
    Ok(created_response(app, &parts.headers, &repo, &digest))
}

pub(crate) async fn cancel(app: &App, name: &str, id: &str) -> Result<Response, ApiError> {
    let repo = request::name(name)?;
    app.registry.cancel_upload(&repo, id).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}
