//! permessage-deflate negotiation (RFC 7692) for WebSockets the edge terminates.
//!
//! The client may send several offers, in order of preference; the edge accepts the first one
//! it can honour and answers only with parameters that offer allows:
//!
//! | in the offer | in the answer |
//! | --- | --- |
//! | `server_no_context_takeover` | echoed (the edge resets its compressor per message) |
//! | `client_no_context_takeover` | echoed |
//! | `server_max_window_bits=N` | `server_max_window_bits=min(N, W)`; an offer with N below 9 is declined (zlib cannot compress with an 8-bit window) |
//! | `client_max_window_bits` (no value) | `client_max_window_bits=W` |
//! | `client_max_window_bits=N` | `client_max_window_bits=min(N, W)` |
//! | no `client_max_window_bits` | nothing: the client may use a 15-bit window (§7.1.2.2 forbids asking for less) |
//! | an unknown or repeated parameter, a bad value | that offer is declined |
//!
//! `W` is the route's `compression_window_bits`. Pure parsing: no I/O.

/// Smallest window zlib can compress with (it turns 8 into 9).
const MIN_SERVER_WINDOW_BITS: u8 = 9;
/// Window sizes RFC 7692 allows.
const WINDOW_BITS: std::ops::RangeInclusive<u8> = 8..=15;

/// What the edge agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Agreed {
    /// The edge resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// Announced bound on the edge's window (only when the offer asked for one).
    pub server_max_window_bits: Option<u8>,
    /// Announced bound on the client's window (only when the offer allowed one).
    pub client_max_window_bits: Option<u8>,
}

impl std::fmt::Display for Agreed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("permessage-deflate")?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if let Some(b) = self.server_max_window_bits {
            write!(f, "; server_max_window_bits={b}")?;
        }
        if let Some(b) = self.client_max_window_bits {
            write!(f, "; client_max_window_bits={b}")?;
        }
        Ok(())
    }
}

/// Parse a window-bits value (`10`, or `"10"` as a quoted string).
fn bits(value: &str) -> Option<u8> {
    let v = value.trim().trim_matches('"');
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| WINDOW_BITS.contains(b))
}

/// One offer's parameters, or `None` when it must be declined.
fn accept_offer(params: &str, window_bits: u8) -> Option<Agreed> {
    let mut agreed = Agreed::default();
    let mut seen: [bool; 4] = [false; 4];
    for param in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v)),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                agreed.server_no_context_takeover = true;
                0
            }
            "client_no_context_takeover" if value.is_none() => {
                agreed.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                let n = bits(value?)?;
                if n < MIN_SERVER_WINDOW_BITS {
                    return None;
                }
                agreed.server_max_window_bits = Some(n.min(window_bits));
                2
            }
            "client_max_window_bits" => {
                let n = match value {
                    Some(v) => bits(v)?,
                    None => 15,
                };
                agreed.client_max_window_bits = Some(n.min(window_bits));
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(agreed)
}

/// The first acceptable `permessage-deflate` offer among every `Sec-WebSocket-Extensions`
/// value the client sent, or `None` to go without compression.
pub fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a [u8]>,
    window_bits: u8,
) -> Option<Agreed> {
    for value in headers {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in text.split(',') {
            let (name, params) = offer.split_once(';').unwrap_or((offer, ""));
            if !name.trim().eq_ignore_ascii_case("permessage-deflate") {
                continue;
            }
            if let Some(a) = accept_offer(params, window_bits) {
                return Some(a);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offers: &[&str]) -> Option<String> {
        negotiate(offers.iter().map(|o| o.as_bytes()), 12).map(|a| a.to_string())
    }

    #[test]
    fn answers_only_with_what_was_offered() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["permessage-deflate"], Some("permessage-deflate")),
            (
                &["permessage-deflate; client_max_window_bits"],
                Some("permessage-deflate; client_max_window_bits=12"),
            ),
            (
                &["permessage-deflate; client_max_window_bits=9"],
                Some("permessage-deflate; client_max_window_bits=9"),
            ),
            (
                &["permessage-deflate; client_max_window_bits=8"],
                Some("permessage-deflate; client_max_window_bits=8"),
            ),
            (
                &["permessage-deflate; server_max_window_bits=15"],
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
            (
                &["permessage-deflate; server_max_window_bits=10"],
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            (&["permessage-deflate; server_max_window_bits=8"], None),
            (
                &["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
                Some("permessage-deflate"),
            ),
            (
                &["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            (
                &[
                    "x-webkit-deflate-frame",
                    "permessage-deflate; client_max_window_bits",
                ],
                Some("permessage-deflate; client_max_window_bits=12"),
            ),
            (&["permessage-deflate; server_max_window_bits"], None),
            (&["permessage-deflate; server_max_window_bits=16"], None),
            (&["permessage-deflate; client_max_window_bits=abc"], None),
            (&["permessage-deflate; unknown_param"], None),
            (&["permessage-deflate; server_no_context_takeover=1"], None),
            (
                &["permessage-deflate; client_max_window_bits; client_max_window_bits"],
                None,
            ),
            (
                &["permessage-deflate; client_max_window_bits=\"10\""],
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
            (&["foo, bar"], None),
            (&[], None),
        ];
        for (offers, want) in cases {
            assert_eq!(answer(offers).as_deref(), *want, "{offers:?}");
        }
    }
}
