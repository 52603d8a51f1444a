//! The built-in token service's endpoints: `GET /auth/token` (Docker's token flow, with
//! basic auth or anonymous), `POST /auth/token` (the OAuth2 form docker and containerd
//! use for `grant_type=password` and `grant_type=refresh_token`), and `GET /auth/jwks`.

use crate::auth::{client_ip, credentials, refusal};
use crate::edge::json_response;
use crate::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_auth::{AuthError, Authenticator, Credentials, TokenRequest};
use std::sync::Arc;

/// The largest token request form accepted.
const MAX_FORM: usize = 64 * 1024;

pub(crate) async fn token(State(app): State<App>, req: Request) -> Response {
    let Some(auth) = app.auth.clone() else { return crate::error::ApiError::not_found().into_response() };
    let (parts, body) = req.into_parts();
    match issue(&auth, &parts, body).await {
        Ok(resp) => resp,
        Err(e) => refusal(&auth, &parts.extensions, e, None),
    }
}

async fn issue(auth: &Arc<Authenticator>, parts: &Parts, body: Body) -> Result<Response, AuthError> {
    let (request, creds) = if parts.method == axum::http::Method::POST {
        let bytes = axum::body::to_bytes(body, MAX_FORM)
            .await
            .map_err(|_| AuthError::BadRequest("the token request form is too large or incomplete".into()))?;
        form_request(&bytes)?
    } else {
        (query_request(parts.uri.query()), credentials(&parts.headers, &parts.extensions)?)
    };
    let issued = auth.issue(request, creds, client_ip(&parts.extensions)).await?;
    let body = serde_json::to_vec(&issued).expect("a token response serialises");
    let mut resp = json_response(StatusCode::OK, body);
    // Tokens are credentials: no cache may keep them.
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `GET ?service=…&scope=…&scope=…&offline_token=true`.
fn query_request(query: Option<&str>) -> TokenRequest {
    let mut request = TokenRequest::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "service" => request.service = Some(v.into_owned()),
            "scope" => request.scopes.push(v.into_owned()),
            "offline_token" => request.offline = v == "true",
            _ => {}
        }
    }
    request
}

/// The OAuth2 form: `grant_type=password` with `username`/`password`, or
/// `grant_type=refresh_token` with `refresh_token`; `scope` is space-separated.
fn form_request(body: &[u8]) -> Result<(TokenRequest, Option<Credentials>), AuthError> {
    let mut request = TokenRequest::default();
    let (mut grant, mut user, mut password, mut refresh) = (String::new(), None, None, None);
    for (k, v) in form_urlencoded::parse(body) {
        match &*k {
            "grant_type" => grant = v.into_owned(),
            "username" => user = Some(v.into_owned()),
            "password" => password = Some(v.into_owned()),
            "refresh_token" => refresh = Some(v.into_owned()),
            "service" => request.service = Some(v.into_owned()),
            "scope" => request.scopes.push(v.into_owned()),
            "access_type" => request.offline = v == "offline",
            _ => {}
        }
    }
    let missing = |what: &str| AuthError::BadRequest(format!("grant_type={grant} needs {what}"));
    match grant.as_str() {
        "password" => {
            let user = user.ok_or_else(|| missing("username"))?;
            let password = password.ok_or_else(|| missing("password"))?;
            Ok((request, Some(Credentials::Basic { user, password })))
        }
        "refresh_token" => {
            request.refresh_token = Some(refresh.ok_or_else(|| missing("refresh_token"))?);
            Ok((request, None))
        }
        other => Err(AuthError::BadRequest(format!("unsupported grant_type {other:?}"))),
    }
}

pub(crate) async fn jwks(State(app): State<App>) -> Response {
    match app.auth.as_ref().and_then(|a| a.jwks()) {
        Some(keys) => json_response(StatusCode::OK, keys.to_string().into_bytes()),
        None => crate::error::ApiError::not_found().into_response(),
    }
}
