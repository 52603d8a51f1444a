//! Request paths: `Endpoint::parse` splits `/v2/<name>/<endpoint>/<ref>` from the right.
#![no_main]

use berth_proto::path::Endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Some(endpoint) = Endpoint::parse(path) else {
        return;
    };
    assert!(path.starts_with("/v2"));
    // Every part is a slice of the path, in order, and the parts and the fixed segments
    // rebuild it exactly: nothing is decoded, dropped or invented.
    let rebuilt = match endpoint {
        Endpoint::Base => return assert!(path == "/v2" || path == "/v2/"),
        Endpoint::Catalog => "/v2/_catalog".to_owned(),
        Endpoint::Tags(n) => format!("/v2/{n}/tags/list"),
        Endpoint::Manifest(n, r) => format!("/v2/{n}/manifests/{r}"),
        Endpoint::Blob(n, d) => format!("/v2/{n}/blobs/{d}"),
        Endpoint::Referrers(n, d) => format!("/v2/{n}/referrers/{d}"),
        Endpoint::Upload(n, id) => format!("/v2/{n}/blobs/uploads/{id}"),
        Endpoint::Uploads(n) => {
            return assert!(path == format!("/v2/{n}/blobs/uploads") || path == format!("/v2/{n}/blobs/uploads/"))
        }
    };
    assert_eq!(rebuilt, path);
});
