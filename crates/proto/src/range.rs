//! Byte ranges the API exchanges: `Range` on blob reads, `Content-Range` on upload chunks.
//!
//! Every number here comes from a client, so all arithmetic is checked: a range that
//! would overflow is simply not satisfiable.

/// A byte range, both ends inclusive as in HTTP. Always `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// How many bytes the range covers. Cannot overflow: `end - start < u64::MAX`
    /// unless the range is the whole `u64` space, which no blob can be.
    pub fn length(&self) -> u64 {
        (self.end - self.start).saturating_add(1)
    }
}

/// A `Range` the server cannot satisfy for the blob's size (416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Resolves a `Range` request header against a blob of `size` bytes: `bytes=a-b`,
/// `bytes=a-` or `bytes=-n`. `Ok(None)` means serve the whole blob: a header this server
/// does not interpret (another unit, several ranges), which RFC 9110 lets it ignore.
pub fn resolve_range(header: &str, size: u64) -> Result<Option<ByteRange>, Unsatisfiable> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| s.parse::<u64>().map_err(|_| Unsatisfiable);
    let last_byte = size.checked_sub(1).ok_or(Unsatisfiable)?;
    let (start, end) = match (first.is_empty(), last.is_empty()) {
        (true, false) => match number(last)? {
            0 => return Err(Unsatisfiable),
            n => (size.saturating_sub(n), last_byte),
        },
        (false, true) => (number(first)?, last_byte),
        (false, false) => (number(first)?, number(last)?.min(last_byte)),
        (true, true) => return Err(Unsatisfiable),
    };
    if start > end {
        return Err(Unsatisfiable);
    }
    Ok(Some(ByteRange { start, end }))
}

/// A `Content-Range` that is not `start-end` with `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidContentRange;

/// Parses the `Content-Range` of an upload chunk: `start-end`, tolerating the `bytes ` /
/// `bytes=` prefixes and `/total` suffix some clients send.
pub fn parse_content_range(header: &str) -> Result<ByteRange, InvalidContentRange> {
    let s = header.trim();
    let s = s.strip_prefix("bytes").map(|r| r.trim_start_matches([' ', '='])).unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (start, end) = s.split_once('-').ok_or(InvalidContentRange)?;
    let start: u64 = start.trim().parse().map_err(|_| InvalidContentRange)?;
    let end: u64 = end.trim().parse().map_err(|_| InvalidContentRange)?;
    if end < start {
        return Err(InvalidContentRange);
    }
    Ok(ByteRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str) -> Result<Option<(u64, u64)>, Unsatisfiable> {
        resolve_range(v, 100).map(|o| o.map(|r| (r.start, r.end)))
    }

    #[test]
    fn ranges() {
        assert_eq!(r("bytes=0-9"), Ok(Some((0, 9))));
        assert_eq!(r("bytes=90-"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-10"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-1000"), Ok(Some((0, 99))));
        assert_eq!(r("bytes=95-200"), Ok(Some((95, 99))));
        assert_eq!(r("bytes=0-18446744073709551615"), Ok(Some((0, 99))));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("items=0-1"), Ok(None));
        for bad in ["bytes=100-", "bytes=5-2", "bytes=-0", "bytes=x-1", "bytes=-", "bytes=18446744073709551616-"] {
            assert_eq!(r(bad), Err(Unsatisfiable), "{bad}");
        }
        assert_eq!(resolve_range("bytes=0-", 0), Err(Unsatisfiable));
        assert_eq!(ByteRange { start: 0, end: u64::MAX }.length(), u64::MAX);
    }

    #[test]
    fn content_ranges() {
        let c = |v: &str| parse_content_range(v).map(|r| (r.start, r.end));
        assert_eq!(c("0-99"), Ok((0, 99)));
        assert_eq!(c("bytes 100-199/*"), Ok((100, 199)));
        assert_eq!(c("bytes=5-5"), Ok((5, 5)));
        assert_eq!(c("0-18446744073709551615"), Ok((0, u64::MAX)));
        assert_eq!(c("9-1"), Err(InvalidContentRange));
        assert_eq!(c("abc"), Err(InvalidContentRange));
    }
}
