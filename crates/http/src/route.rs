//! Splits `/v2/...` paths. Repository names contain `/`, so routes are recognised from
//! the right: the last one or two segments name the endpoint, the rest is the name.

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

impl<'a> Route<'a> {
    pub(crate) fn parse(path: &'a str) -> Option<Route<'a>> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Route::Base);
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Route::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Route::Tags(name));
        }
        if let Some(name) = rest.strip_suffix("/blobs/uploads/").or_else(|| rest.strip_suffix("/blobs/uploads")) {
            return Some(Route::Uploads(name));
        }
        let (head, last) = rest.rsplit_once('/')?;
        let (name, kind) = head.rsplit_once('/')?;
        match kind {
            "manifests" => Some(Route::Manifest(name, last)),
            "blobs" => Some(Route::Blob(name, last)),
            "referrers" => Some(Route::Referrers(name, last)),
            "uploads" => name.strip_suffix("/blobs").map(|name| Route::Upload(name, last)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v2/"), Some(Route::Base));
        assert_eq!(Route::parse("/v2"), Some(Route::Base));
        assert_eq!(Route::parse("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(Route::parse("/v2/a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(Route::parse("/v2/a/manifests/latest"), Some(Route::Manifest("a", "latest")));
        assert_eq!(
            Route::parse("/v2/x/manifests/y/manifests/sha256:ab"),
            Some(Route::Manifest("x/manifests/y", "sha256:ab"))
        );
        assert_eq!(Route::parse("/v2/a/blobs/sha256:00"), Some(Route::Blob("a", "sha256:00")));
        assert_eq!(Route::parse("/v2/a/b/blobs/uploads/"), Some(Route::Uploads("a/b")));
        assert_eq!(Route::parse("/v2/a/blobs/uploads/123"), Some(Route::Upload("a", "123")));
        assert_eq!(Route::parse("/v2/a/referrers/sha256:00"), Some(Route::Referrers("a", "sha256:00")));
        assert_eq!(Route::parse("/v2/a/other/x"), None);
        assert_eq!(Route::parse("/v3/a/manifests/x"), None);
        assert_eq!(Route::parse("/v2/uploads/x"), None);
    }
}
