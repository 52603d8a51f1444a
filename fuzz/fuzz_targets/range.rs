//! `Range` (blob reads) and `Content-Range` (upload chunks) headers.
//!
//! Input: 8 bytes little-endian blob size, then the header value. The header is also
//! resolved against a few fixed sizes so that short inputs reach the interesting edges.
#![no_main]

use berth_proto::range::{parse_content_range, resolve_range};
use libfuzzer_sys::fuzz_target;

fn check_range(header: &str, size: u64) {
    match resolve_range(header, size) {
        Ok(Some(r)) => {
            assert!(r.start <= r.end && r.end < size, "{header:?} size {size}: {r:?}");
            assert!(r.length() >= 1 && r.length() <= size, "{header:?} size {size}: {r:?}");
            assert!(header.trim().starts_with("bytes="));
        }
        // Serving the whole blob is only for headers the server does not interpret.
        Ok(None) => {
            let h = header.trim();
            assert!(!h.starts_with("bytes=") || h.contains(','), "{header:?} size {size}: ignored");
        }
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let (size, header) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (Some(u64::from_le_bytes(*size)), rest),
        None => (None, data),
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    for s in size.into_iter().chain([0, 1, 2, 100, u64::MAX - 1, u64::MAX]) {
        check_range(header, s);
    }

    if let Ok(r) = parse_content_range(header) {
        assert!(r.start <= r.end, "{header:?}: {r:?}");
        let len = r.length();
        assert!(len >= 1);
        assert_eq!(len, (r.end - r.start).saturating_add(1));
    }
});
