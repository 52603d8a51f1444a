//! The HTTP edge: routes of the distribution API, headers, status codes and error JSON.
//!
//! Nothing here touches storage; handlers translate HTTP into calls on
//! [`berth_registry::Registry`] and its results back into the exact responses clients
//! expect.

mod admin;
mod auth;
mod blobs;
mod edge;
mod error;
mod manifests;
mod oidc;
mod request;
mod route;
mod server;
mod tls;
mod token;
mod uploads;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use berth_auth::{Authenticator, Caller};
use berth_registry::{Actor, Registry};
use error::ApiError;
use route::{Action, UploadStart};
use std::sync::Arc;

pub use edge::{log_panics, ClientIp, EdgeOptions};
pub use server::{serve, ClientCertificate, ConnectionInfo, ServerLimits};
pub use tls::{Tls, TlsSettings};

#[derive(Clone)]
struct App {
    registry: Arc<Registry>,
    options: Arc<EdgeOptions>,
    /// `None` when authentication is off: every request is admitted.
    auth: Option<Arc<Authenticator>>,
}

/// The full router, with request ids, a span per request, panic recovery, access
/// logging and the API version header; with `auth`, every endpoint is checked and
/// the token service's endpoints are served.
pub fn router(registry: Arc<Registry>, options: EdgeOptions, auth: Option<Arc<Authenticator>>) -> Router {
    let app = App { registry, options: Arc::new(options), auth };
    let mut routes = Router::new();
    if app.auth.is_some() {
        routes = routes.merge(admin::routes());
    }
    if app.auth.as_ref().is_some_and(|a| a.issues_tokens()) {
        routes =
            routes.route("/auth/token", get(token::token).post(token::token)).route("/auth/jwks", get(token::jwks));
    }
    if app.auth.as_ref().is_some_and(|a| a.oidc_enabled()) {
        routes = routes.merge(oidc::routes());
    }
    edge::wrap(routes.fallback(dispatch).with_state(app.clone()), app.options)
}

async fn dispatch(State(app): State<App>, req: Request<Body>) -> Response {
    let action = match Action::parse(req.method(), req.uri()) {
        Ok(action) => action,
        Err(e) => return e.into_response(),
    };
    let (parts, body) = req.into_parts();
    let caller = match &app.auth {
        Some(auth) => match auth::admit(auth, &action, &parts).await {
            Ok(caller) => Some(caller),
            Err(refused) => return refused,
        },
        None => None,
    };
    handle(&app, action, caller, Request::from_parts(parts, body)).await.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(app: &App, action: Action, caller: Option<Caller>, req: Request<Body>) -> Result<Response, ApiError> {
    let mut actor =
        Actor::new(caller.as_ref().map_or("", |c| c.principal.name()), auth::client_ip(req.extensions()).to_string());
    // Immutable tags move or go only when a registry admin (anyone, with authentication
    // off) asks for it on the request itself; each override is audited.
    let admin = match &caller {
        Some(c) => matches!(c.principal, berth_auth::Principal::User { admin: true, .. }),
        None => app.auth.is_none(),
    };
    actor.overrides_immutability = admin && req.headers().get(OVERRIDE_IMMUTABILITY).is_some_and(|v| v == "true");
    let actor = &actor;
    match action {
        Action::Base => Ok(edge::json_response(axum::http::StatusCode::OK, b"{}".to_vec())),
        Action::Catalog(q) => {
            let within = match (&app.auth, &caller) {
                (Some(auth), Some(caller)) => auth.catalog_view(caller).await.map_err(auth::internal)?,
                _ => None,
            };
            manifests::catalog(app, q, within.as_deref()).await
        }
        Action::ListTags(repo, q) => manifests::tags(app, repo, q).await,
        Action::GetManifest(repo, reference) => manifests::get(app, repo, reference, req).await,
        Action::PutManifest(repo, reference) => manifests::put(app, repo, reference, req, actor).await,
        Action::DeleteManifest(repo, reference) => manifests::delete(app, repo, reference, actor).await,
        Action::Referrers(repo, digest, artifact_type) => manifests::referrers(app, repo, digest, artifact_type).await,
        Action::GetBlob(repo, digest) => blobs::get(app, repo, digest, req).await,
        Action::DeleteBlob(repo, digest) => blobs::delete(app, repo, digest, actor).await,
        Action::StartUpload(repo, start) => {
            let start = match (&app.auth, &caller, start) {
                (Some(auth), Some(caller), UploadStart::Mount(digest, from)) => {
                    match auth::mount_source(app, auth, caller, &digest, from.as_ref()).await? {
                        Some(source) => UploadStart::Mount(digest, Some(source)),
                        None => UploadStart::Session,
                    }
                }
                (_, _, start) => start,
            };
            uploads::start(app, repo, start, req).await
        }
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

/// `Berth-Override-Immutability: true`: see [`handle`].
const OVERRIDE_IMMUTABILITY: HeaderName = HeaderName::from_static("berth-override-immutability");

fn empty_response(status: axum::http::StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}
