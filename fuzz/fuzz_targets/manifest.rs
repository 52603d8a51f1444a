//! Manifests pushed by clients: `PUT /v2/<name>/manifests/<reference>`.
//!
//! Input: the first byte picks the request's `Content-Type` (or none), the rest is the body.
//! The body, split into lines, is also used as `Accept` headers for `media::accept_admits`
//! (manifest content negotiation on `GET`).
#![no_main]

use berth_proto::{media, Digest, Manifest, ManifestKind};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some(media::OCI_MANIFEST),
    Some(media::OCI_INDEX),
    Some(media::DOCKER_MANIFEST),
    Some(media::DOCKER_MANIFEST_LIST),
    Some(media::DOCKER_MANIFEST_V1_SIGNED),
    Some(media::DOCKER_MANIFEST_V1),
    Some(media::OCI_EMPTY),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    Some(" application/vnd.oci.image.index.v1+json ;q=1"),
    Some("application/json"),
    Some(""),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    if let Ok(text) = std::str::from_utf8(body) {
        check_accept(text);
    }
    let Ok(m) = Manifest::parse(body, content_type) else {
        return;
    };

    assert!(media::MANIFEST_TYPES.contains(&m.media_type.as_str()), "{:?}", m.media_type);
    let essence = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim());
    if let Some(h) = essence.filter(|h| media::MANIFEST_TYPES.contains(h)) {
        assert_eq!(m.media_type, h, "accepted a body whose type differs from its Content-Type");
    }
    match m.kind {
        ManifestKind::Image => {
            assert!(m.media_type == media::OCI_MANIFEST || m.media_type == media::DOCKER_MANIFEST);
            assert!(!m.blobs.is_empty(), "an image manifest always references its config");
            assert!(m.children.is_empty());
        }
        ManifestKind::Index => {
            assert!(m.media_type == media::OCI_INDEX || m.media_type == media::DOCKER_MANIFEST_LIST);
            assert!(m.blobs.is_empty());
        }
    }
    for d in m.blobs.iter().chain(&m.children).chain(&m.subject) {
        assert!(!d.media_type.is_empty());
        assert_eq!(d.digest.as_str().parse::<Digest>().as_ref(), Ok(&d.digest));
        assert!(i64::try_from(d.size).is_ok());
    }
});

fn check_accept(text: &str) {
    let headers: Vec<&str> = text.split('\n').collect();
    let upper: Vec<String> = headers.iter().map(|h| h.to_ascii_uppercase()).collect();
    for ty in media::MANIFEST_TYPES.into_iter().chain([media::OCI_EMPTY]) {
        assert!(media::accept_admits([], ty));
        let admits = media::accept_admits(headers.iter().copied(), ty);
        // Media types compare case-insensitively.
        assert_eq!(media::accept_admits(upper.iter().map(String::as_str), ty), admits, "{text:?} {ty}");
        // Naming the type, in another header or the same one, always admits it.
        assert!(media::accept_admits(headers.iter().copied().chain([ty]), ty), "{text:?} {ty}");
        let appended = format!("{text}, {ty};q=0.1");
        assert!(media::accept_admits([appended.as_str()], ty), "{text:?} {ty}");
    }
}
