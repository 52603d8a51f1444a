//! Manifests, tags, the catalog and referrers.

use crate::edge::json_response;
use crate::error::ApiError;
use crate::{edge, empty_response, header_value, request, App, DOCKER_CONTENT_DIGEST};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use berth_proto::{media, Digest, ErrorCode, ListQuery, Reference, RepositoryName};
use berth_registry::{Actor, NameRange, Page};
use serde_json::json;

const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

pub(crate) async fn get(
    app: &App,
    repo: RepositoryName,
    reference: Reference,
    req: Request,
) -> Result<Response, ApiError> {
    let m = app.registry.get_manifest(&repo, &reference).await?;
    let accept = req.headers().get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
    if !media::accept_admits(accept, &m.media_type) {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("manifest is {}, which the Accept header does not admit", m.media_type),
        ));
    }
    let len = m.content.len();
    let body = if req.method() == Method::HEAD { Body::empty() } else { Body::from(m.content.clone()) };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&m.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(DOCKER_CONTENT_DIGEST, header_value(&m.digest));
    h.insert(header::ETAG, header_value(&format!("\"{}\"", m.digest)));
    Ok(resp)
}

pub(crate) async fn put(
    app: &App,
    repo: RepositoryName,
    reference: Reference,
    req: Request,
    actor: &Actor,
) -> Result<Response, ApiError> {
    let max = app.registry.settings().max_manifest_size;
    let too_large = || ApiError::new(ErrorCode::TooLarge, format!("manifest exceeds the limit of {max} bytes"));
    if request::content_length(req.headers())?.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large()
        } else {
            ApiError::new(ErrorCode::ManifestInvalid, format!("manifest body was not received completely: {e}"))
        }
    })?;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let put = app.registry.put_manifest(&repo, &reference, content_type, bytes, actor).await?;
    let mut resp = empty_response(StatusCode::CREATED);
    let location = edge::url(&app.options, &parts.extensions, &format!("/v2/{repo}/manifests/{}", put.digest));
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&location));
    h.insert(DOCKER_CONTENT_DIGEST, header_value(put.digest.as_str()));
    if let Some(subject) = put.subject {
        h.insert(OCI_SUBJECT, header_value(subject.as_str()));
    }
    Ok(resp)
}

pub(crate) async fn delete(
    app: &App,
    repo: RepositoryName,
    reference: Reference,
    actor: &Actor,
) -> Result<Response, ApiError> {
    app.registry.delete_manifest(&repo, &reference, actor).await?;
    Ok(empty_response(StatusCode::ACCEPTED))
}

/// A JSON page with a `Link` to the next one when more follow.
fn page_response(body: serde_json::Value, page: &Page, next: impl FnOnce(&str) -> String) -> Response {
    let mut resp = json_response(StatusCode::OK, body.to_string().into_bytes());
    if let (true, Some(last)) = (page.more, page.names.last()) {
        resp.headers_mut().insert(header::LINK, header_value(&format!("<{}>; rel=\"next\"", next(last))));
    }
    resp
}

pub(crate) async fn tags(app: &App, repo: RepositoryName, q: ListQuery) -> Result<Response, ApiError> {
    let n = q.n;
    let page = app.registry.tags(&repo, q.last.as_deref(), n).await?;
    let body = json!({ "name": repo.as_str(), "tags": page.names });
    let n = n.map_or(page.names.len(), |n| n as usize);
    Ok(page_response(body, &page, |last| format!("/v2/{repo}/tags/list?n={n}&last={last}")))
}

/// The catalog, limited to `within` (the name ranges the caller may see) if given.
pub(crate) async fn catalog(app: &App, q: ListQuery, within: Option<&[NameRange]>) -> Result<Response, ApiError> {
    let n = q.n;
    let page = app.registry.catalog(q.last.as_deref(), n, within).await?;
    let body = json!({ "repositories": page.names });
    let n = n.map_or(page.names.len(), |n| n as usize);
    Ok(page_response(body, &page, |last| format!("/v2/_catalog?n={n}&last={last}")))
}

pub(crate) async fn referrers(
    app: &App,
    repo: RepositoryName,
    digest: Digest,
    artifact_type: Option<String>,
) -> Result<Response, ApiError> {
    let referrers = app.registry.referrers(&repo, &digest, artifact_type.as_deref()).await?;
    let mut resp = Response::new(Body::from(referrers.body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media::OCI_INDEX));
    if referrers.filtered {
        h.insert(OCI_FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
