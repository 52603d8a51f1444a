//! The query of a listing (`tags/list`, `_catalog`): `n` (page size) and `last`.

use std::collections::HashMap;

/// What a listing request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Page size; `None` when the client did not ask for one.
    pub n: Option<u32>,
    /// The last name of the previous page; the page starts after it.
    pub last: Option<String>,
}

/// An `n` that is not a non-negative integer (registry:2's `PAGINATION_NUMBER_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPageSize(pub String);

/// Decodes a URL query string (`a=1&b=x%20y`). Never fails: invalid UTF-8 becomes U+FFFD
/// (which no name, tag or digest grammar accepts), and the last occurrence of a key wins.
pub fn decode_query(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect()
}

impl ListQuery {
    pub fn from_query(q: &HashMap<String, String>) -> Result<ListQuery, InvalidPageSize> {
        let n = q.get("n").map(|n| n.parse::<u32>().map_err(|_| InvalidPageSize(n.clone()))).transpose()?;
        Ok(ListQuery { n, last: q.get("last").cloned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_queries() {
        let q = |s: &str| ListQuery::from_query(&decode_query(Some(s)));
        assert_eq!(q("n=10&last=a%2Fb"), Ok(ListQuery { n: Some(10), last: Some("a/b".into()) }));
        assert_eq!(q(""), Ok(ListQuery::default()));
        assert_eq!(q("n=-1"), Err(InvalidPageSize("-1".into())));
        assert_eq!(q("n=99999999999"), Err(InvalidPageSize("99999999999".into())));
        assert_eq!(ListQuery::from_query(&decode_query(None)), Ok(ListQuery::default()));
    }
}
