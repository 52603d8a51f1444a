//! The HTTP edge: routes of the distribution API, headers, status codes and error JSON.
//!
//! Nothing here touches storage; handlers translate HTTP into calls on
//! [`berth_registry::Registry`] and its results back into the exact responses clients
//! expect.

mod blobs;
mod edge;
mod error;
mod manifests;
mod request;
mod route;
mod server;
mod tls;
mod uploads;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_registry::Registry;
use error::ApiError;
use route::Action;
use std::sync::Arc;

pub use edge::{log_panics, ClientIp, EdgeOptions};
pub use server::{serve, ClientAddr, ServerLimits};
pub use tls::{Tls, TlsSettings};

#[derive(Clone)]
struct App {
    registry: Arc<Registry>,
    options: Arc<EdgeOptions>,
}

/// The full router, with request ids, a span per request, panic recovery, access
/// logging and the API version header.
pub fn router(registry: Arc<Registry>, options: EdgeOptions) -> Router {
    let app = App { registry, options: Arc::new(options) };
    edge::wrap(Router::new().fallback(dispatch).with_state(app.clone()), app.options)
}

async fn dispatch(State(app): State<App>, req: Request<Body>) -> Response {
    let result = match Action::parse(req.method(), req.uri()) {
        Ok(action) => handle(&app, action, req).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(app: &App, action: Action, req: Request<Body>) -> Result<Response, ApiError> {
    match action {
        Action::Base => Ok(edge::json_response(axum::http::StatusCode::OK, b"{}".to_vec())),
        Action::Catalog(q) => manifests::catalog(app, q).await,
        Action::ListTags(repo, q) => manifests::tags(app, repo, q).await,
        Action::GetManifest(repo, reference) => manifests::get(app, repo, reference, req).await,
        Action::PutManifest(repo, reference) => manifests::put(app, repo, reference, req).await,
        Action::DeleteManifest(repo, reference) => manifests::delete(app, repo, reference).await,
        Action::Referrers(repo, digest, artifact_type) => manifests::referrers(app, repo, digest, artifact_type).await,
        Action::GetBlob(repo, digest) => blobs::get(app, repo, digest, req).await,
        Action::DeleteBlob(repo, digest) => blobs::delete(app, repo, digest).await,
        Action::StartUpload(repo, start) => uploads::start(app, repo, start, req).await,
        Action::UploadStatus(repo, id) => uploads::status(app, repo, &id, req).await,
        Action::UploadChunk(repo, id) => uploads::patch(app, repo, &id, req).await,
        Action::FinishUpload(repo, id, digest) => uploads::put(app, repo, &id, digest, req).await,
        Action::CancelUpload(repo, id) => uploads::cancel(app, repo, &id).await,
    }
}

/// A header value from a string we built ourselves (digests, URLs of valid names).
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

fn empty_response(status: axum::http::StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}
