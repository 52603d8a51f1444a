//! Digests as clients send them (`?digest=`, URL paths, manifest descriptors).
#![no_main]

use berth_proto::{Algorithm, Digest, DigestError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        match s.parse::<Digest>() {
            Ok(d) => {
                assert_eq!(d.as_str(), s);
                assert_eq!(d.to_string(), s);
                let hex_len = match d.algorithm() {
                    Algorithm::Sha256 => 64,
                    Algorithm::Sha512 => 128,
                };
                assert_eq!(d.hex().len(), hex_len, "{s:?}");
                assert!(d.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s:?}");
                assert_eq!(format!("{}:{}", d.algorithm().name(), d.hex()), s);
                assert!(Digest::looks_like_digest(s));
                assert_eq!(s.parse::<Digest>().as_ref(), Ok(&d));
                // Safe as a path component or a header value.
                assert!(!s.contains('/') && !s.contains('.') && !s.contains(char::is_whitespace));
            }
            Err(DigestError::UnsupportedAlgorithm(alg)) => {
                assert!(alg != "sha256" && alg != "sha512", "{s:?}");
                assert!(s.starts_with(&format!("{alg}:")), "{s:?}");
            }
            Err(DigestError::Invalid(_)) => {}
        }
    }
    // Whatever the hasher produces is a digest the parser accepts.
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        let d = Digest::of(algorithm, data);
        assert_eq!(d.algorithm(), algorithm);
        assert_eq!(d.as_str().parse::<Digest>(), Ok(d));
    }
});
