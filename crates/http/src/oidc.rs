//! OpenID Connect sign-in for people.
//!
//! - `GET /auth/oidc/login`: the browser is sent to the provider, the signed sign-in
//!   state in a cookie; `GET /auth/oidc/callback` finishes and shows the registry
//!   password (JSON when asked for with `Accept: application/json`).
//! - `berth login`: `POST /auth/oidc/authorize` with its loopback `redirect_uri` gets the
//!   provider's URL and the signed state; `POST /auth/oidc/callback` with the state, code
//!   and `state` the browser brought to the loopback gets the password.

use crate::auth::{client_ip, refusal};
use crate::edge::{absolute_url, is_https, json_response};
use crate::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use berth_auth::{AuthError, Authenticator, OidcCredential};
use std::sync::Arc;

const COOKIE: &str = "berth_oidc";
/// The largest request body of the CLI's endpoints.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/auth/oidc/login", get(login))
        .route("/auth/oidc/authorize", post(authorize))
        .route("/auth/oidc/callback", get(callback).post(cli_callback))
}

/// The authenticator, which `routes` are merged only with.
fn authenticator(app: &App) -> Arc<Authenticator> {
    app.auth.clone().expect("the OIDC routes are served only with authentication on")
}

async fn login(State(app): State<App>, req: Request) -> Response {
    let auth = authenticator(&app);
    let (parts, _) = req.into_parts();
    let callback = absolute_url(&parts.extensions, "/auth/oidc/callback");
    match auth.oidc_begin(None, callback).await {
        Ok(start) => {
            let mut resp = StatusCode::FOUND.into_response();
            let headers = resp.headers_mut();
            headers.insert(header::LOCATION, value(&start.authorization_url));
            // Lax: the provider's redirect back is a top-level navigation from its site.
            let secure = if is_https(&parts.extensions) { "; Secure" } else { "" };
            let cookie =
                format!("{COOKIE}={}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=600{secure}", start.login);
            headers.insert(header::SET_COOKIE, value(&cookie));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => refusal(&auth, &parts.extensions, e, None),
    }
}

/// The provider sent the browser back: `code` and `state`, or `error`.
async fn callback(State(app): State<App>, req: Request) -> Response {
    let auth = authenticator(&app);
    let (parts, _) = req.into_parts();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let result = match (param("error"), param("code"), param("state"), cookie(&parts.headers)) {
        (Some(error), ..) => Err(AuthError::Unauthenticated(format!(
            "the provider refused the sign-in: {error}: {}",
            param("error_description").unwrap_or("")
        ))),
        (None, Some(code), Some(state), Some(login)) => {
            auth.oidc_finish(&login, code, state, client_ip(&parts.extensions)).await
        }
        (None, _, _, None) => Err(AuthError::Unauthenticated(
            "no sign-in in progress in this browser (cookies off, or it expired): start again at /auth/oidc/login"
                .into(),
        )),
        _ => Err(AuthError::BadRequest("the callback needs code and state".into())),
    };
    let mut resp = match result {
        Ok(credential) if wants_json(&parts.headers) => credential_json(&credential),
        Ok(credential) => credential_page(&credential, parts.headers.get(header::HOST)),
        Err(e) => refusal(&auth, &parts.extensions, e, None),
    };
    // The sign-in is over, done or failed: its state must not be replayed.
    let clear = format!("{COOKIE}=; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=0");
    resp.headers_mut().insert(header::SET_COOKIE, value(&clear));
    resp
}

#[derive(serde::Deserialize)]
struct AuthorizeRequest {
    redirect_uri: String,
}

#[derive(serde::Deserialize)]
struct CallbackRequest {
    login: String,
    code: String,
    state: String,
}

async fn authorize(State(app): State<App>, req: Request) -> Response {
    let auth = authenticator(&app);
    let (parts, body) = req.into_parts();
    let result = async {
        let request: AuthorizeRequest = json_body(body).await?;
        let start = auth.oidc_begin(Some(&request.redirect_uri), None).await?;
        let body = serde_json::json!({ "authorization_url": start.authorization_url, "login": start.login });
        Ok::<_, AuthError>(no_store(json_response(StatusCode::OK, body.to_string().into_bytes())))
    };
    result.await.unwrap_or_else(|e| refusal(&auth, &parts.extensions, e, None))
}

async fn cli_callback(State(app): State<App>, req: Request) -> Response {
    let auth = authenticator(&app);
    let (parts, body) = req.into_parts();
    let result = async {
        let request: CallbackRequest = json_body(body).await?;
        auth.oidc_finish(&request.login, &request.code, &request.state, client_ip(&parts.extensions)).await
    };
    match result.await {
        Ok(credential) => credential_json(&credential),
        Err(e) => refusal(&auth, &parts.extensions, e, None),
    }
}

async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, AuthError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| AuthError::BadRequest("the request body is too large or incomplete".into()))?;
    serde_json::from_slice(&bytes).map_err(|e| AuthError::BadRequest(format!("invalid request body: {e}")))
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
}

fn credential_json(credential: &OidcCredential) -> Response {
    let body = serde_json::to_vec(credential).expect("a credential serialises");
    no_store(json_response(StatusCode::OK, body))
}

/// What a person sees after signing in in a browser: the password and how to use it.
fn credential_page(credential: &OidcCredential, host: Option<&HeaderValue>) -> Response {
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or("REGISTRY");
    let (user, password, host) = (escape(&credential.username), escape(&credential.password), escape(host));
    let days = credential.expires_in / 86_400;
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signed in to Berth</title></head><body>\
         <h1>Signed in as {user}</h1><p>Your registry password, good for {days} days:</p><pre>{password}</pre>\
         <p>Use it with docker, podman, skopeo, helm or oras:</p>\
         <pre>docker login {host} -u {user} --password-stdin</pre></body></html>"
    );
    let mut resp = Response::new(Body::from(page));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    no_store(resp)
}

/// Credentials are in these answers: no cache may keep them.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Header values built from URLs and tokens made here, which are always visible ASCII.
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("URLs and signed tokens are visible ASCII")
}
