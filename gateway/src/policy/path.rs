//! Request path normalisation: the one form of the path that routing, auth, limits and the
//! service all read.
//!
//! Backends resolve paths in different ways (servlet containers drop `;params` and resolve
//! `..;`, Go's mux cleans `//` and `..`, PHP and WSGI decode escapes). If the edge routed on
//! the raw path and the service resolved it, `/public/../private` would be checked as
//! `/public` and served as `/private`. So the edge rewrites the path into one canonical form
//! before routing and forwards exactly that form, and refuses what it cannot rewrite safely.
//!
//! | input | outcome |
//! | --- | --- |
//! | `%41`..`%7E` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) | decoded |
//! | other escapes (`%c3%a9`) | kept, hex digits upper-cased |
//! | `.` and `..` segments | removed (RFC 3986 §5.2.4); `..` never climbs above `/` |
//! | empty segments (`//`) | merged |
//! | `;params` in a segment | kept and forwarded; ignored for route matching |
//! | `%2F`, `%5C` (encoded `/` and `\`), `%00`-`%1F`, `%7F` | refused |
//! | an escape of an escape (`%25` followed by two hex digits: double encoding) | refused |
//! | an escaped dot segment (`%2e`, `.%2e`, `%2e%2e`) | refused |
//! | a dot segment with parameters (`..;x`, `.;x`) | refused |
//! | a raw `\`, a control byte, a malformed escape (`%zz`, `%4`) | refused |
//! | a path that does not start with `/` (`*`, authority form) | refused |
//!
//! This module only parses: no I/O, no allocation beyond the output string.

/// Why a path was refused (the request gets `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path (`*`, empty, authority form).
    #[error("the path is not absolute")]
    NotAbsolute,
    /// `%2F` or `%5C`: a separator hidden from the edge that a backend may decode.
    #[error("the path contains an encoded separator")]
    EncodedSeparator,
    /// An escape of a control byte or NUL.
    #[error("the path contains an encoded control byte")]
    EncodedControl,
    /// `%25XX`: an escape that decodes to another escape.
    #[error("the path is encoded twice")]
    DoubleEncoded,
    /// A `.` or `..` segment written with escapes, or with `;` parameters.
    #[error("the path contains a disguised dot segment")]
    DisguisedDotSegment,
    /// A raw backslash.
    #[error("the path contains a backslash")]
    Backslash,
    /// A raw control byte, space or non-ASCII byte.
    #[error("the path contains a control byte")]
    Control,
    /// `%` not followed by two hex digits.
    #[error("the path contains a malformed escape")]
    BadEscape,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// One segment after escape normalisation: its text and whether any `.` in its name part
/// came from an escape.
struct Segment {
    text: String,
    escaped_dot: bool,
}

/// Decode unreserved escapes in one raw segment, upper-case the rest, refuse the dangerous
/// ones.
fn normalise_segment(raw: &[u8]) -> Result<Segment, PathError> {
    let mut text = String::with_capacity(raw.len());
    let mut escaped_dot = false;
    let mut in_params = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(&h), Some(&l)) = (raw.get(i + 1), raw.get(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let (Some(h), Some(l)) = (hex_val(h), hex_val(l)) else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    v if is_unreserved(v) => {
                        if v == b'.' && !in_params {
                            escaped_dot = true;
                        }
                        text.push(char::from(v));
                    }
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        text.push('%');
                        text.push(char::from(HEX[usize::from(v >> 4)]));
                        text.push(char::from(HEX[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0x00..=0x20 | 0x7f..=0xff => return Err(PathError::Control),
            _ => {
                if b == b';' {
                    in_params = true;
                }
                text.push(char::from(b));
                i += 1;
            }
        }
    }
    // `%25` followed by two hex digits, however they were written (`%252e`, `%25%32%65`),
    // decodes to another escape at a backend that decodes twice.
    let t = text.as_bytes();
    if t.windows(5).any(|w| {
        w[..3].eq_ignore_ascii_case(b"%25") && hex_val(w[3]).is_some() && hex_val(w[4]).is_some()
    }) {
        return Err(PathError::DoubleEncoded);
    }
    Ok(Segment { text, escaped_dot })
}

/// The part of a segment that names it (before any `;params`).
pub fn segment_name(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

/// Whether `raw` is already in normal form and needs no rewriting: the common case, checked
/// without allocating (plain bytes, no escapes, no empty or dot segments).
fn is_normal(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.first() == Some(&b'/')
        && b.iter().all(|&c| {
            c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&c)
        })
        && !b.windows(2).any(|w| w == b"//")
        // With no `//`, the only empty segment is a trailing one (`/dir/`, `/`), which the
        // normal form keeps.
        && raw[1..].split('/').all(|seg| {
            let name = segment_name(seg);
            name != "." && name != ".."
        })
}

/// Normalise an absolute request path (no query). The result starts with `/`, has no empty,
/// `.` or `..` segments, and normalising it again gives it back unchanged. A path already in
/// normal form is returned as it is, without allocating.
pub fn normalize(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    if is_normal(raw) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    rewrite(raw).map(std::borrow::Cow::Owned)
}

/// [`normalize`] for a path that needs it.
fn rewrite(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out: Vec<String> = Vec::new();
    let raw_segments: Vec<&[u8]> = bytes[1..].split(|&b| b == b'/').collect();
    let last = raw_segments.len().saturating_sub(1);
    // Whether the normalised path ends with `/` (a trailing empty segment, or a final dot
    // segment, which RFC 3986 resolves to a directory).
    let mut trailing_slash = false;
    for (i, raw_seg) in raw_segments.iter().enumerate() {
        let seg = normalise_segment(raw_seg)?;
        let name = segment_name(&seg.text);
        let is_dot = name == "." || name == "..";
        if is_dot && (seg.escaped_dot || name.len() != seg.text.len()) {
            return Err(PathError::DisguisedDotSegment);
        }
        match name {
            "" => {
                if seg.text.is_empty() {
                    // `//` merged; a trailing one keeps the path a directory.
                    if i == last {
                        trailing_slash = true;
                    }
                    continue;
                }
                // `/;x`: parameters on an empty name are a segment of their own.
                out.push(seg.text);
                trailing_slash = false;
            }
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg.text);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// The path as routes match it: every segment's `;params` removed. A route's prefix
/// therefore matches `/private;x` as it matches `/private`.
pub fn route_key(normalized: &str) -> std::borrow::Cow<'_, str> {
    if !normalized.contains(';') {
        return std::borrow::Cow::Borrowed(normalized);
    }
    let mut key = String::with_capacity(normalized.len());
    for seg in normalized.split('/').skip(1) {
        key.push('/');
        key.push_str(segment_name(seg));
    }
    std::borrow::Cow::Owned(key)
}

/// A path prefix without its trailing slash (`/` stays `/`).
pub fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_owned()
    } else {
        t.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/private", Ok("/private")),
            ("/private/", Ok("/private/")),
            ("/public/../private", Ok("/private")),
            ("//private", Ok("/private")),
            ("/./private", Ok("/private")),
            ("/%70rivate", Ok("/private")),
            ("/%70%72%69%76%61%74%65", Ok("/private")),
            ("/public/%2e%2e/private", Err(DisguisedDotSegment)),
            ("/public/%2E%2E/private", Err(DisguisedDotSegment)),
            ("/public/.%2e/private", Err(DisguisedDotSegment)),
            ("/public/%2e/private", Err(DisguisedDotSegment)),
            ("/private%2f", Err(EncodedSeparator)),
            ("/private%2F..", Err(EncodedSeparator)),
            ("/a%5cb", Err(EncodedSeparator)),
            ("/private;x", Ok("/private;x")),
            ("/public/..;/private", Err(DisguisedDotSegment)),
            ("/public/.;x/private", Err(DisguisedDotSegment)),
            ("/a/b/../../private", Ok("/private")),
            ("/../../../private", Ok("/private")),
            ("/..", Ok("/")),
            ("/a/..", Ok("/")),
            ("/a/.", Ok("/a/")),
            ("/a/b/..", Ok("/a/")),
            ("/a//b///c", Ok("/a/b/c")),
            ("/a/b//", Ok("/a/b/")),
            ("/%252e%252e/private", Err(DoubleEncoded)),
            ("/%252f", Err(DoubleEncoded)),
            ("/%25%32%65%25%32%65/private", Err(DoubleEncoded)),
            ("/%25%32e", Err(DoubleEncoded)),
            ("/100%25", Ok("/100%25")),
            ("/%25zz", Ok("/%25zz")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/%7e~user", Ok("/~~user")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%00", Err(EncodedControl)),
            ("/a%0d%0aX:%20y", Err(EncodedControl)),
            ("/a%7f", Err(EncodedControl)),
            ("/a\\..\\private", Err(Backslash)),
            ("/a\tb", Err(Control)),
            ("/a\u{e9}", Err(Control)),
            ("/a%", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%zz", Err(BadEscape)),
            ("*", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("private", Err(NotAbsolute)),
            ("/.well-known/acme", Ok("/.well-known/acme")),
            ("/...", Ok("/...")),
            ("/a/...b/c", Ok("/a/...b/c")),
            ("/%41PI/%7Ev1", Ok("/API/~v1")),
        ];
        for (input, want) in cases {
            let got = normalize(input);
            assert_eq!(got.as_deref(), want.as_deref(), "{input:?}");
        }
        let long = format!("/{}", "a/".repeat(20_000));
        assert_eq!(normalize(&long).map(|p| p.len()), Ok(long.len()));
        let climb = format!("{}/private", "/..".repeat(10_000));
        assert_eq!(normalize(&climb).as_deref(), Ok("/private"));
    }

    proptest::proptest! {
        /// Whatever comes in, an accepted path is in normal form: absolute, no empty, `.` or
        /// `..` segments, no escape of an unreserved byte, no double encoding, and normalising
        /// it again changes nothing (so the route chosen for the request is the route chosen
        /// for the path the service receives).
        #[test]
        fn normal_form_is_a_fixed_point(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "/", "/", "/", ".", "..", "a", "b", "private", "%2e", "%2E", "%2f", "%5c",
                "%41", "%61", "%7e", "%25", "%", "2", "e", "f", ";", ";x=1", "%c3%a9", "~",
                "%00", "%20", "\\", "?",
            ]),
            0..24,
        )) {
            let raw = format!("/{}", parts.concat());
            if is_normal(&raw) {
                let slow = rewrite(&raw);
                proptest::prop_assert_eq!(slow.as_deref(), Ok(raw.as_str()));
            }
            if let Ok(n) = normalize(&raw) {
                proptest::prop_assert!(n.starts_with('/'), "{raw} -> {n}");
                proptest::prop_assert!(!n.contains("//"), "{raw} -> {n}");
                for seg in n.split('/').skip(1) {
                    let name = segment_name(seg);
                    proptest::prop_assert!(name != "." && name != "..", "{raw} -> {n}");
                }
                for (i, _) in n.match_indices('%') {
                    let hex = &n[i + 1..i + 3];
                    let v = u8::from_str_radix(hex, 16);
                    proptest::prop_assert!(v.is_ok_and(|v| !is_unreserved(v)), "{raw} -> {n}");
                    proptest::prop_assert_eq!(hex.to_ascii_uppercase(), hex, "{} -> {}", raw, n);
                }
                let again = normalize(&n).map(|c| c.into_owned());
                proptest::prop_assert_eq!(again.as_deref(), Ok(&*n), "{}", raw);
                let key = route_key(&n);
                proptest::prop_assert_eq!(route_key(&key), key.clone());
            }
        }
    }

    #[test]
    fn route_keys_ignore_params() {
        assert_eq!(route_key("/private;x"), "/private");
        assert_eq!(route_key("/a;b/c;d=e/f"), "/a/c/f");
        assert_eq!(route_key("/plain/path"), "/plain/path");
    }
}
