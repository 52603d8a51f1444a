//! Requests parsed once into a typed [`Action`]: the path names the endpoint
//! ([`Endpoint`]), the method picks the action, and every name, reference and digest it
//! carries is validated here. Dispatch uses it, and so will authorization: both see the
//! same description of the request.

use crate::error::ApiError;
use crate::request;
use axum::http::{Method, Uri};
use berth_proto::path::Endpoint;
use berth_proto::{decode_query, Digest, ErrorCode, ListQuery, Reference, RepositoryName};

/// What a request asks the registry to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Base,
    Catalog(ListQuery),
    ListTags(RepositoryName, ListQuery),
    /// `GET` or `HEAD` of a manifest.
    GetManifest(RepositoryName, Reference),
    PutManifest(RepositoryName, Reference),
    DeleteManifest(RepositoryName, Reference),
    Referrers(RepositoryName, Digest, Option<String>),
    /// `GET` or `HEAD` of a blob.
    GetBlob(RepositoryName, Digest),
    DeleteBlob(RepositoryName, Digest),
    StartUpload(RepositoryName, UploadStart),
    UploadStatus(RepositoryName, String),
    UploadChunk(RepositoryName, String),
    FinishUpload(RepositoryName, String, Digest),
    CancelUpload(RepositoryName, String),
}

/// How a `POST .../blobs/uploads/` starts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UploadStart {
    /// A session for chunks.
    Session,
    /// A whole blob in this request (`?digest=`).
    Monolithic(Digest),
    /// A cross-repository mount (`?mount=`, optional `from=`).
    Mount(Digest, Option<RepositoryName>),
}

impl Action {
    pub(crate) fn parse(method: &Method, uri: &Uri) -> Result<Action, ApiError> {
        use Endpoint as E;
        let endpoint = Endpoint::parse(uri.path()).ok_or_else(ApiError::not_found)?;
        let query = || decode_query(uri.query());
        let name = request::name;
        let is = |m: &Method| method == m;
        let get = is(&Method::GET) || is(&Method::HEAD);
        Ok(match endpoint {
            E::Base if get => Action::Base,
            E::Catalog if is(&Method::GET) => Action::Catalog(request::list_query(&query())?),
            E::Tags(n) if is(&Method::GET) => Action::ListTags(name(n)?, request::list_query(&query())?),
            // A reference that is not a valid tag cannot name a stored manifest: on reads
            // that is "unknown" (the spec's endpoint table allows only 404), on a push it
            // is an invalid tag.
            E::Manifest(n, r) if get => Action::GetManifest(name(n)?, lookup_reference(r)?),
            E::Manifest(n, r) if is(&Method::DELETE) => Action::DeleteManifest(name(n)?, lookup_reference(r)?),
            E::Manifest(n, r) if is(&Method::PUT) => Action::PutManifest(name(n)?, request::reference(r)?),
            E::Referrers(n, d) if is(&Method::GET) => {
                Action::Referrers(name(n)?, request::digest(d)?, query().remove("artifactType"))
            }
            E::Blob(n, d) if get => Action::GetBlob(name(n)?, request::digest(d)?),
            E::Blob(n, d) if is(&Method::DELETE) => Action::DeleteBlob(name(n)?, request::digest(d)?),
            E::Uploads(n) if is(&Method::POST) => Action::StartUpload(name(n)?, upload_start(query())?),
            E::Upload(n, id) if is(&Method::GET) => Action::UploadStatus(name(n)?, id.to_owned()),
            E::Upload(n, id) if is(&Method::PATCH) => Action::UploadChunk(name(n)?, id.to_owned()),
            E::Upload(n, id) if is(&Method::PUT) => {
                let digest = query()
                    .remove("digest")
                    .ok_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "the digest query parameter is required"))?;
                Action::FinishUpload(name(n)?, id.to_owned(), request::digest(&digest)?)
            }
            E::Upload(n, id) if is(&Method::DELETE) => Action::CancelUpload(name(n)?, id.to_owned()),
            _ => return Err(ApiError::method_not_allowed()),
        })
    }
}

fn lookup_reference(r: &str) -> Result<Reference, ApiError> {
    request::reference(r).map_err(|e| match e.code() {
        ErrorCode::TagInvalid => ApiError::new(ErrorCode::ManifestUnknown, format!("no manifest is named {r:?}")),
        _ => e,
    })
}

fn upload_start(mut q: std::collections::HashMap<String, String>) -> Result<UploadStart, ApiError> {
    if let Some(mount) = q.remove("mount") {
        let from = q.remove("from").map(|f| request::name(&f)).transpose()?;
        return Ok(UploadStart::Mount(request::digest(&mount)?, from));
    }
    match q.remove("digest") {
        Some(d) => Ok(UploadStart::Monolithic(request::digest(&d)?)),
        None => Ok(UploadStart::Session),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Result<Action, ErrorCode> {
        Action::parse(&method, &path.parse().unwrap()).map_err(|e| e.code())
    }

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn actions_carry_validated_parts() {
        let tag = Reference::parse("v1").unwrap();
        assert_eq!(parse(Method::HEAD, "/v2/a/b/manifests/v1"), Ok(Action::GetManifest(name("a/b"), tag.clone())));
        assert_eq!(parse(Method::PUT, "/v2/a/manifests/v1"), Ok(Action::PutManifest(name("a"), tag)));
        assert_eq!(
            parse(Method::POST, &format!("/v2/a/blobs/uploads/?mount={D}&from=b%2Fc")),
            Ok(Action::StartUpload(name("a"), UploadStart::Mount(D.parse().unwrap(), Some(name("b/c")))))
        );
        assert_eq!(
            parse(Method::GET, "/v2/a/tags/list?n=2&last=x"),
            Ok(Action::ListTags(name("a"), ListQuery { n: Some(2), last: Some("x".into()) }))
        );
    }

    #[test]
    fn invalid_parts_get_the_spec_errors() {
        assert_eq!(parse(Method::GET, "/v2/a/manifests/-bad"), Err(ErrorCode::ManifestUnknown));
        assert_eq!(parse(Method::DELETE, "/v2/a/manifests/-bad"), Err(ErrorCode::ManifestUnknown));
        assert_eq!(parse(Method::PUT, "/v2/a/manifests/-bad"), Err(ErrorCode::TagInvalid));
        assert_eq!(parse(Method::GET, "/v2/a/manifests/sha256:zz"), Err(ErrorCode::DigestInvalid));
        assert_eq!(parse(Method::GET, "/v2/A/manifests/x"), Err(ErrorCode::NameInvalid));
        assert_eq!(parse(Method::POST, "/v2/a/manifests/x"), Err(ErrorCode::Unsupported));
        assert_eq!(parse(Method::PUT, "/v2/a/blobs/uploads/x"), Err(ErrorCode::DigestInvalid));
        assert_eq!(parse(Method::GET, "/v2/_catalog?n=x"), Err(ErrorCode::PaginationNumberInvalid));
        assert_eq!(parse(Method::GET, "/v2/a/nothing/x"), Err(ErrorCode::NameUnknown));
    }
}
