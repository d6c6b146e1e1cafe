//! The messages a service's protocol exchanges before TLS starts, read and written as bytes
//! (the I/O is in [`super::relay`]). PostgreSQL: a client sends an 8-byte SSLRequest (or
//! GSSENCRequest) and starts its TLS handshake once the server answers `S`.

/// Length of a PostgreSQL SSLRequest or GSSENCRequest: a 4-byte length, a 4-byte code.
pub const PG_REQUEST_LEN: usize = 8;

/// The request code of an SSLRequest (1234 << 16 | 5679).
const PG_SSL_REQUEST: u32 = 80_877_103;

/// The request code of a GSSENCRequest (1234 << 16 | 5680).
const PG_GSSENC_REQUEST: u32 = 80_877_104;

/// The server's answer that TLS follows.
pub const PG_TLS_YES: u8 = b'S';

/// The server's answer that an encryption it was asked for is not offered.
pub const PG_NO: u8 = b'N';

/// How many GSSENCRequests a client may send before its SSLRequest: libpq tries GSS
/// encryption once, then TLS.
pub const PG_MAX_GSSENC_REQUESTS: usize = 1;

/// What a PostgreSQL client opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgOpening {
    /// SSLRequest: answer [`PG_TLS_YES`] and start TLS.
    Tls,
    /// GSSENCRequest: answer [`PG_NO`]; the client goes on to an SSLRequest.
    GssEnc,
    /// Anything else, a plaintext StartupMessage among them.
    Plaintext,
}

/// Classify the first [`PG_REQUEST_LEN`] bytes a client sent.
pub fn pg_opening(head: &[u8; PG_REQUEST_LEN]) -> PgOpening {
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    match (len, code) {
        (8, PG_SSL_REQUEST) => PgOpening::Tls,
        (8, PG_GSSENC_REQUEST) => PgOpening::GssEnc,
        _ => PgOpening::Plaintext,
    }
}

/// A PostgreSQL ErrorResponse (severity FATAL, SQLSTATE 28000, invalid authorization) with
/// `message`, which libpq shows its user before the connection closes.
pub fn pg_fatal(message: &str) -> Vec<u8> {
    let mut fields = Vec::with_capacity(message.len() + 32);
    for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "28000")] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(b'M');
    // A NUL would end the field early; the message is ours, but keep the frame well formed.
    fields.extend(message.bytes().filter(|b| *b != 0));
    fields.push(0);
    fields.push(0);
    let len = u32::try_from(fields.len() + 4).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(fields.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_and_gssenc_requests_are_told_apart_from_a_startup_message() {
        assert_eq!(pg_opening(&[0, 0, 0, 8, 4, 210, 22, 47]), PgOpening::Tls);
        assert_eq!(pg_opening(&[0, 0, 0, 8, 4, 210, 22, 48]), PgOpening::GssEnc);
        // StartupMessage, protocol 3.0: its length is never 8 with a user in it.
        assert_eq!(pg_opening(&[0, 0, 0, 41, 0, 3, 0, 0]), PgOpening::Plaintext);
        // The SSLRequest code with a wrong length is not an SSLRequest.
        assert_eq!(
            pg_opening(&[0, 0, 0, 9, 4, 210, 22, 47]),
            PgOpening::Plaintext
        );
        assert_eq!(pg_opening(b"GET / HT"), PgOpening::Plaintext);
    }

    #[test]
    fn the_error_response_is_framed_as_libpq_reads_it() {
        let e = pg_fatal("TLS required");
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len, e.len() - 1);
        assert!(e.ends_with(b"MTLS required\0\0"));
        assert!(e.windows(7).any(|w| w == b"C28000\0"));
        assert!(pg_fatal("a\0b").ends_with(b"Mab\0\0"));
    }
}
