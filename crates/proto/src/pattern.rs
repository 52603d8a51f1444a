//! Patterns of names: the claims of federation rules, the repositories and tags of
//! immutability rules.

/// `*` matches any run of characters (including `/`); everything else matches itself.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_runs_of_characters() {
        for (pattern, value) in [
            ("refs/heads/main", "refs/heads/main"),
            ("refs/heads/*", "refs/heads/release/1.2"),
            ("*", ""),
            ("org/*", "org/"),
            ("*-prod", "eu-prod"),
            ("a*b*c", "aXXbYYc"),
            ("a*a", "aa"),
        ] {
            assert!(wildcard(pattern, value), "{pattern} should match {value}");
        }
        for (pattern, value) in [
            ("refs/heads/main", "refs/heads/main2"),
            ("refs/heads/main", "refs/heads/mai"),
            ("refs/heads/*", "refs/tags/v1"),
            ("org/*", "other/app"),
            ("a*a", "a"),
            ("a*b*c", "aXXcYYb"),
            ("", "x"),
        ] {
            assert!(!wildcard(pattern, value), "{pattern} should not match {value}");
        }
    }
}
