//! The gate in front of every endpoint: credentials from the `Authorization` header,
//! the caller they prove, and whether the parsed [`Action`] is within what the caller
//! may do. Failures get the answers clients act on: 401 with a `WWW-Authenticate`
//! challenge naming the scope to ask for, 403 `DENIED` for a signed-in caller who may
//! not, 429 with `Retry-After` after too many failed sign-ins.

use crate::edge::{self, ClientIp};
use crate::error::ApiError;
use crate::route::Action;
use crate::server::ClientCertificate;
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use berth_auth::{Actions, AuthError, Authenticator, Caller, Challenge, Credentials, Principal};
use berth_proto::{Digest, ErrorCode, RepositoryName};
use std::net::{IpAddr, Ipv4Addr};

/// The credentials of a request, if it carries any.
/// What a request presents: its `Authorization` header, else the client certificate
/// of its connection (the header wins: a client that sends one means to use it).
pub(crate) fn credentials(headers: &HeaderMap, extensions: &Extensions) -> Result<Option<Credentials>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        let certificate = extensions.get::<ClientCertificate>();
        return Ok(certificate.map(|c| Credentials::Certificate(c.0.to_string())));
    };
    let malformed = || AuthError::Unauthenticated("malformed Authorization header".into());
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(malformed)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(rest).map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        let (user, password) = decoded.split_once(':').ok_or_else(malformed)?;
        Ok(Some(Credentials::Basic { user: user.to_owned(), password: password.to_owned() }))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Some(Credentials::Bearer(rest.to_owned())))
    } else {
        Err(AuthError::Unauthenticated(format!("unsupported authorization scheme {scheme:?}")))
    }
}

pub(crate) fn client_ip(extensions: &Extensions) -> IpAddr {
    extensions.get::<ClientIp>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0)
}

/// What an action needs on which repository; the catalog and the base endpoint need
/// only a signed-in caller, and mounts check their source separately.
fn needs(action: &Action) -> Option<(&RepositoryName, Actions)> {
    let push = Actions::PULL.union(Actions::PUSH);
    Some(match action {
        Action::Base | Action::Catalog(_) => return None,
        Action::ListTags(r, _) | Action::GetManifest(r, _) | Action::Referrers(r, ..) | Action::GetBlob(r, _) => {
            (r, Actions::PULL)
        }
        Action::PutManifest(r, _)
        | Action::StartUpload(r, _)
        | Action::UploadStatus(r, _)
        | Action::UploadChunk(r, _)
        | Action::FinishUpload(r, ..)
        | Action::CancelUpload(r, _) => (r, push),
        Action::DeleteManifest(r, _) | Action::DeleteBlob(r, _) => (r, Actions::DELETE),
    })
}

const CATALOG: &str = "registry:catalog:*";

/// Admits a request or answers it: the caller, when it may go on.
pub(crate) async fn admit(auth: &Authenticator, action: &Action, req: &Parts) -> Result<Caller, Response> {
    let refused = |e: AuthError, wanted: Option<Wanted>| refusal(auth, &req.extensions, e, wanted);
    let creds = credentials(&req.headers, &req.extensions).map_err(|e| refused(e, None))?;
    let caller = auth.authenticate(creds, client_ip(&req.extensions)).await.map_err(|e| refused(e, None))?;
    let anonymous = caller.principal == Principal::Anonymous;
    match needs(action) {
        // `/v2/` is how clients find out whether, and how, to sign in.
        None if anonymous && matches!(action, Action::Base) => {
            Err(refused(AuthError::Unauthenticated("sign in to use this registry".into()), None))
        }
        None if matches!(action, Action::Catalog(_))
            && anonymous
            && auth.catalog_view(&caller).await.ok().flatten().is_some_and(|ranges| ranges.is_empty()) =>
        {
            Err(refused(
                AuthError::Unauthenticated("sign in to list repositories".into()),
                Some(Wanted { scope: CATALOG.into(), insufficient: false }),
            ))
        }
        None if matches!(action, Action::Catalog(_)) && !auth.may_list_catalog(&caller) => Err(refused(
            AuthError::Unauthenticated("the caller's access does not include the catalog".into()),
            Some(Wanted { scope: CATALOG.into(), insufficient: true }),
        )),
        None => Ok(caller),
        Some((repo, wanted)) => {
            let allowed = auth.access(&caller, repo.as_str()).await.map_err(|e| refused(e, None))?;
            if allowed.contains(wanted) {
                return Ok(caller);
            }
            let scope = berth_auth::Scope::repository(repo.as_str(), wanted).to_string();
            let insufficient = caller.token.is_some();
            // Whoever can still get more access by signing in (or by asking for a token
            // with this scope) is told how; a signed-in password caller is refused.
            if anonymous || caller.token.is_some() {
                let e = AuthError::Unauthenticated(format!(
                    "access to {repo} ({}) requires more",
                    wanted.names().join(",")
                ));
                Err(refused(e, Some(Wanted { scope, insufficient })))
            } else {
                Err(ApiError::new(
                    ErrorCode::Denied,
                    format!("{} may not {} {repo}", caller.principal.name(), wanted.names().join(",")),
                )
                .into_response())
            }
        }
    }
}

/// The response to an authentication failure.
/// What a refused request would have needed: the scope for the challenge, and whether
/// the caller's token lacked it (`error="insufficient_scope"`, as Distribution says).
pub(crate) struct Wanted {
    scope: String,
    insufficient: bool,
}

pub(crate) fn refusal(auth: &Authenticator, extensions: &Extensions, e: AuthError, wanted: Option<Wanted>) -> Response {
    match e {
        AuthError::Unauthenticated(message) => {
            let mut resp = ApiError::new(ErrorCode::Unauthorized, message).into_response();
            if let Some(challenge) = challenge(auth, extensions, wanted.as_ref()) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            }
            resp
        }
        AuthError::TooManyAttempts { retry_after } => {
            let mut resp = ApiError::new(ErrorCode::TooManyRequests, e.to_string()).into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            resp
        }
        // A malformed token request: 400, in the spec's error shape.
        AuthError::BadRequest(message) => {
            let body = serde_json::json!({ "errors": [{ "code": ErrorCode::Unsupported.code(), "message": message }] });
            edge::json_response(StatusCode::BAD_REQUEST, body.to_string().into_bytes())
        }
        e @ AuthError::Backend(_) => internal(e).into_response(),
    }
}

fn challenge(auth: &Authenticator, extensions: &Extensions, wanted: Option<&Wanted>) -> Option<HeaderValue> {
    let quoted = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let value = match auth.challenge() {
        Challenge::Basic { realm } => format!("Basic realm=\"{}\"", quoted(realm)),
        Challenge::Bearer { realm, service } => {
            let realm = match realm {
                Some(r) => r.clone(),
                None => edge::absolute_url(extensions, "/auth/token")?,
            };
            let mut v = format!("Bearer realm=\"{}\",service=\"{}\"", quoted(&realm), quoted(service));
            if let Some(wanted) = wanted {
                v.push_str(&format!(",scope=\"{}\"", quoted(&wanted.scope)));
                if wanted.insufficient {
                    v.push_str(",error=\"insufficient_scope\"");
                }
            }
            v
        }
    };
    HeaderValue::from_str(&value).ok()
}

/// A failure of the authentication backend while serving a request.
pub(crate) fn internal(e: AuthError) -> ApiError {
    tracing::error!(error = %e, "authentication failed inside the registry");
    ApiError::new(ErrorCode::Unavailable, "authentication is unavailable, try again")
}

/// The repository a mount may take a blob from for this caller: `from` if the caller
/// may pull it, otherwise another repository holding the blob that the caller may pull.
/// `None` makes the mount an ordinary upload, so no caller learns of, or gains, a blob
/// it could not read.
pub(crate) async fn mount_source(
    app: &crate::App,
    auth: &Authenticator,
    caller: &Caller,
    digest: &Digest,
    from: Option<&RepositoryName>,
) -> Result<Option<RepositoryName>, ApiError> {
    let pullable = |repo: RepositoryName| async move {
        let access = auth.access(caller, repo.as_str()).await.map_err(internal)?;
        Ok::<_, ApiError>(access.contains(Actions::PULL).then_some(repo))
    };
    if let Some(from) = from {
        if let Some(source) = pullable(from.clone()).await? {
            return Ok(Some(source));
        }
    }
    for candidate in app.registry.repositories_holding(digest).await? {
        if let Some(source) = pullable(candidate).await? {
            return Ok(Some(source));
        }
    }
    Ok(None)
}
