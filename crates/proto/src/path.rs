//! Which endpoint of the API a request path names. Pure string splitting: the parts are
//! validated by the name, reference and digest grammars afterwards.
//!
//! Repository names contain `/`, so endpoints are recognised from the right end of the
//! path: the last one or two segments name the endpoint, the rest is the name. Paths are
//! never percent-decoded: `%2e%2e` is simply an invalid name.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

impl<'a> Endpoint<'a> {
    pub fn parse(path: &'a str) -> Option<Endpoint<'a>> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Endpoint::Base);
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Endpoint::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Endpoint::Tags(name));
        }
        if let Some(name) = rest.strip_suffix("/blobs/uploads/").or_else(|| rest.strip_suffix("/blobs/uploads")) {
            return Some(Endpoint::Uploads(name));
        }
        let (head, last) = rest.rsplit_once('/')?;
        let (name, kind) = head.rsplit_once('/')?;
        match kind {
            "manifests" => Some(Endpoint::Manifest(name, last)),
            "blobs" => Some(Endpoint::Blob(name, last)),
            "referrers" => Some(Endpoint::Referrers(name, last)),
            "uploads" => name.strip_suffix("/blobs").map(|name| Endpoint::Upload(name, last)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("/v2/"), Some(Endpoint::Base));
        assert_eq!(Endpoint::parse("/v2"), Some(Endpoint::Base));
        assert_eq!(Endpoint::parse("/v2/_catalog"), Some(Endpoint::Catalog));
        assert_eq!(Endpoint::parse("/v2/a/b/tags/list"), Some(Endpoint::Tags("a/b")));
        assert_eq!(Endpoint::parse("/v2/a/manifests/latest"), Some(Endpoint::Manifest("a", "latest")));
        assert_eq!(
            Endpoint::parse("/v2/x/manifests/y/manifests/sha256:ab"),
            Some(Endpoint::Manifest("x/manifests/y", "sha256:ab"))
        );
        assert_eq!(Endpoint::parse("/v2/a/blobs/sha256:00"), Some(Endpoint::Blob("a", "sha256:00")));
        assert_eq!(Endpoint::parse("/v2/a/b/blobs/uploads/"), Some(Endpoint::Uploads("a/b")));
        assert_eq!(Endpoint::parse("/v2/a/blobs/uploads/123"), Some(Endpoint::Upload("a", "123")));
        assert_eq!(Endpoint::parse("/v2/a/referrers/sha256:00"), Some(Endpoint::Referrers("a", "sha256:00")));
        assert_eq!(Endpoint::parse("/v2/a/other/x"), None);
        assert_eq!(Endpoint::parse("/v3/a/manifests/x"), None);
        assert_eq!(Endpoint::parse("/v2/uploads/x"), None);
    }
}
