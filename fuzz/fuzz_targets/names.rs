//! Repository names, tags and manifest references from request paths.
//!
//! Besides "no panic", each parser is checked against the spec's grammar written as a
//! regular expression (a second, independent implementation), and every accepted value
//! must round-trip and be safe to use as a storage path.
#![no_main]

use berth_proto::{Reference, RepositoryName, Tag};
use libfuzzer_sys::fuzz_target;
use regex_lite::Regex;
use std::sync::OnceLock;

/// distribution-spec: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
fn name_grammar() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
        Regex::new(&format!(r"\A{component}(?:/{component})*\z")).unwrap()
    })
}

/// distribution-spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
fn tag_grammar() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\z").unwrap())
}

/// registry:2's limit on a whole repository name.
const MAX_NAME_LEN: usize = 255;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    // Repository names.
    let name = RepositoryName::parse(s);
    // (The length test first also keeps the regex off long inputs, which are slow to match.)
    let expected = s.len() <= MAX_NAME_LEN && name_grammar().is_match(s);
    assert_eq!(name.is_some(), expected, "RepositoryName::parse({s:?}) disagrees with the spec grammar");
    if let Some(name) = name {
        assert_eq!(name.as_str(), s);
        assert_eq!(name.to_string(), s);
        assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
        assert!(!s.starts_with('/') && !s.ends_with('/'));
        for component in s.split('/') {
            assert!(!component.is_empty(), "empty component in {s:?}");
            assert!(component != ".." && component != ".", "dot component in {s:?}");
            assert!(!component.starts_with('.'), "hidden component in {s:?}");
        }
        assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b)));
        assert_eq!(RepositoryName::parse(name.as_str()).as_ref(), Some(&name));
    }

    // Tags.
    let tag = Tag::parse(s);
    let expected = s.len() <= 128 && tag_grammar().is_match(s);
    assert_eq!(tag.is_some(), expected, "Tag::parse({s:?}) disagrees with the spec grammar");
    if let Some(tag) = &tag {
        assert_eq!(tag.as_str(), s);
        assert_eq!(tag.to_string(), s);
        assert!((1..=128).contains(&s.len()));
        assert!(!s.contains('/') && !s.contains(':'));
        assert!(s != "." && s != "..");
    }

    // References: a digest if it has the `alg:hex` shape, a tag otherwise.
    match Reference::parse(s) {
        Ok(reference) => {
            assert_eq!(reference.to_string(), s);
            match reference {
                Reference::Tag(t) => {
                    assert!(!s.contains(':'));
                    assert_eq!(Some(t), tag);
                }
                Reference::Digest(d) => {
                    assert!(s.contains(':'));
                    assert_eq!(d.as_str(), s);
                    assert_eq!(s.parse::<berth_proto::Digest>().as_ref(), Ok(&d));
                }
            }
        }
        // A string without ':' is a tag candidate: rejecting it means it is not a tag.
        Err(_) => assert!(s.contains(':') || tag.is_none(), "Reference::parse({s:?}) rejected a valid tag"),
    }
});
