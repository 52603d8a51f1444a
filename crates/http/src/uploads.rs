//! Blob uploads: `POST`, `PATCH`, `PUT`, `GET` and `DELETE` on `/v2/<name>/blobs/uploads/`.

use crate::error::ApiError;
use crate::route::UploadStart;
use crate::{edge, empty_response, header_value, request, App, DOCKER_CONTENT_DIGEST};
use axum::extract::Request;
use axum::http::{header, Extensions, HeaderName, StatusCode};
use axum::response::Response;
use berth_proto::{Digest, RepositoryName};
use berth_registry::UploadState;

const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");

/// `202`/`204` with where the session lives and what it holds (`Range: 0-<last byte>`,
/// `0-0` when empty, as registry:2 answers).
fn session_response(
    app: &App,
    extensions: &Extensions,
    repo: &RepositoryName,
    s: &UploadState,
    status: StatusCode,
) -> Response {
    let mut resp = empty_response(status);
    let location = edge::url(&app.options, extensions, &format!("/v2/{repo}/blobs/uploads/{}", s.id));
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&location));
    h.insert(header::RANGE, header_value(&format!("0-{}", s.offset.saturating_sub(1))));
    h.insert(UPLOAD_UUID, header_value(&s.id));
    resp
}

/// `201` for a blob that is now in the repository.
fn created_response(app: &App, extensions: &Extensions, repo: &RepositoryName, digest: &Digest) -> Response {
    let mut resp = empty_response(StatusCode::CREATED);
    let location = edge::url(&app.options, extensions, &format!("/v2/{repo}/blobs/{digest}"));
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&location));
    h.insert(DOCKER_CONTENT_DIGEST, header_value(digest.as_str()));
    resp
}

pub(crate) async fn start(
    app: &App,
    repo: RepositoryName,
    start: UploadStart,
    req: Request,
) -> Result<Response, ApiError> {
    match start {
        UploadStart::Mount(digest, from) => {
            if app.registry.mount_blob(&repo, &digest, from.as_ref()).await? {
                return Ok(created_response(app, req.extensions(), &repo, &digest));
            }
        }
        UploadStart::Monolithic(digest) => {
            let len = request::content_length(req.headers())?;
            let (parts, body) = req.into_parts();
            let body = request::body_stream(body, app.options.body_timeout);
            app.registry.upload_blob(&repo, &digest, len, body).await?;
            return Ok(created_response(app, &parts.extensions, &repo, &digest));
        }
        UploadStart::Session => {}
    }
    let session = app.registry.start_upload(&repo).await?;
    Ok(session_response(app, req.extensions(), &repo, &session, StatusCode::ACCEPTED))
}

pub(crate) async fn status(app: &App, repo: RepositoryName, id: &str, req: Request) -> Result<Response, ApiError> {
    let session = app.registry.upload_status(&repo, id).await?;
    Ok(session_response(app, req.extensions(), &repo, &session, StatusCode::NO_CONTENT))
}

pub(crate) async fn patch(app: &App, repo: RepositoryName, id: &str, req: Request) -> Result<Response, ApiError> {
    let range = request::chunk_range(req.headers())?;
    let len = request::content_length(req.headers())?;
    let (parts, body) = req.into_parts();
    let body = request::body_stream(body, app.options.body_timeout);
    let session = app.registry.append_chunk(&repo, id, range, len, body).await?;
    Ok(session_response(app, &parts.extensions, &repo, &session, StatusCode::ACCEPTED))
}

pub(crate) async fn put(
    app: &App,
    repo: RepositoryName,
    id: &str,
    digest: Digest,
    req: Request,
) -> Result<Response, ApiError> {
    let len = request::content_length(req.headers())?;
    let has_body = request::has_body(req.headers())?;
    let (parts, body) = req.into_parts();
    let body = has_body.then(|| request::body_stream(body, app.options.body_timeout));
    app.registry.finish_upload(&repo, id, &digest, len, body).await?;
    Ok(created_response(app, &parts.extensions, &repo, &digest))
}

pub(crate) async fn cancel(app: &App, repo: RepositoryName, id: &str) -> Result<Response, ApiError> {
    app.registry.cancel_upload(&repo, id).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}
