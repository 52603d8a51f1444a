//! Listing queries: `GET /v2/_catalog?n=..&last=..` and `GET /v2/<name>/tags/list?...`.
#![no_main]

use berth_proto::{decode_query, ListQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let map = decode_query(Some(s));
    match ListQuery::from_query(&map) {
        Ok(q) => {
            assert_eq!(q.n, map.get("n").map(|n| n.parse::<u32>().unwrap()));
            assert_eq!(q.last.as_ref(), map.get("last"));
        }
        Err(e) => {
            let n = map.get("n").expect("only `n` can be invalid");
            assert_eq!(&e.0, n);
            assert!(n.parse::<u32>().is_err());
        }
    }
    assert!(decode_query(None).is_empty());
});
