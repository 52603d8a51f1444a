//! Media types the registry recognises.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Every manifest media type a client may negotiate with `Accept`.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// Layer types whose blobs live elsewhere (Windows base layers): their presence in this
/// registry is not required when a manifest is pushed.
pub const FOREIGN_LAYER_TYPES: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
];

/// Whether an `Accept` header value admits a manifest of `media_type`.
///
/// A header that names no manifest type at all (absent, `*/*`, `application/json`) admits
/// every manifest: those clients take what is stored. A header that lists manifest types
/// is a real negotiation, and a stored type outside it is not served (as registry:2 does).
pub fn accept_admits<'a>(accept: impl IntoIterator<Item = &'a str>, media_type: &str) -> bool {
    let mut negotiates = false;
    for range in accept.into_iter().flat_map(|h| h.split(',')) {
        let ty = range.split(';').next().unwrap_or("").trim();
        if ty.eq_ignore_ascii_case(media_type) {
            return true;
        }
        negotiates |= MANIFEST_TYPES.iter().any(|m| m.eq_ignore_ascii_case(ty));
    }
    !negotiates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(accept_admits([], OCI_MANIFEST));
        assert!(accept_admits(["*/*"], OCI_MANIFEST));
        assert!(accept_admits([DOCKER_MANIFEST, "application/vnd.oci.image.manifest.v1+json; q=0.5"], OCI_MANIFEST));
        assert!(accept_admits([&*format!("{DOCKER_MANIFEST}, {OCI_INDEX}")], OCI_INDEX));
        assert!(!accept_admits([DOCKER_MANIFEST], OCI_MANIFEST));
    }
}
