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
mod uploads;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_registry::Registry;
use error::ApiError;
use route::Route;
use std::sync::Arc;

pub use edge::EdgeOptions;

#[derive(Clone)]
struct App {
    registry: Arc<Registry>,
    options: Arc<EdgeOptions>,
}

/// The full router, with request ids, access logging and the API version header.
pub fn router(registry: Arc<Registry>, options: EdgeOptions) -> Router {
    let app = App { registry, options: Arc::new(options) };
    edge::wrap(Router::new().fallback(dispatch).with_state(app.clone()), app.options)
}

async fn dispatch(State(app): State<App>, req: Request<Body>) -> Response {
    let path = req.uri().path().to_owned();
    let result = match Route::parse(&path) {
        Some(route) => handle(&app, route, req).await,
        None => Err(ApiError::not_found()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(app: &App, route: Route<'_>, req: Request<Body>) -> Result<Response, ApiError> {
    let method = req.method().clone();
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(edge::json_response(axum::http::StatusCode::OK, b"{}".to_vec()))
        }
        (Route::Catalog, Method::GET) => manifests::catalog(app, req).await,
        (Route::Tags(name), Method::GET) => manifests::tags(app, name, req).await,
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            manifests::get(app, name, reference, req).await
        }
        (Route::Manifest(name, reference), Method::PUT) => manifests::put(app, name, reference, req).await,
        (Route::Manifest(name, reference), Method::DELETE) => manifests::delete(app, name, reference).await,
        (Route::Referrers(name, digest), Method::GET) => manifests::referrers(app, name, digest, req).await,
        (Route::Blob(name, digest), Method::GET | Method::HEAD) => blobs::get(app, name, digest, req).await,
        (Route::Blob(name, digest), Method::DELETE) => blobs::delete(app, name, digest).await,
        (Route::Uploads(name), Method::POST) => uploads::start(app, name, req).await,
        (Route::Upload(name, id), Method::GET) => uploads::status(app, name, id, req).await,
        (Route::Upload(name, id), Method::PATCH) => uploads::patch(app, name, id, req).await,
        (Route::Upload(name, id), Method::PUT) => uploads::put(app, name, id, req).await,
        (Route::Upload(name, id), Method::DELETE) => uploads::cancel(app, name, id).await,
        _ => Err(ApiError::method_not_allowed()),
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
