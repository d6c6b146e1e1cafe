//! The PROXY protocol v2 header the connector writes before a raw TCP client's bytes, so a
//! database behind the wall logs the real client, not the connector (haproxy's
//! proxy-protocol.txt, section 2.2). Pure: addresses in, bytes out.

use std::net::SocketAddr;

/// The twelve bytes every v2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;

/// Version 2, command LOCAL: the connection is the proxy's own (no client known).
const VERSION_LOCAL: u8 = 0x20;

/// TLV type: TLS client information; its subtype SSL_CN carries the certificate subject.
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;

/// Longest subject passed on. X.509 subjects run to a few hundred bytes; a longer one is
/// left out rather than cut, and the header's 16-bit length can never overflow.
const MAX_SUBJECT: usize = 1024;

/// Client flag of a TLS TLV: the client connected over TLS and presented a certificate.
const PP2_CLIENT_SSL_CERT: u8 = 0x01 | 0x02 | 0x04;

/// Header for a client at `source` that connected to `destination`, with the subject of its
/// certificate when it showed one. Mixed families (never produced by one socket) and
/// unparsable addresses give a LOCAL header: the service then sees the connector.
pub fn header(
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    subject: &str,
) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    let mut addrs = Vec::new();
    let family = match (source, destination) {
        (Some(SocketAddr::V4(s)), Some(SocketAddr::V4(d))) => {
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
            0x11
        }
        (Some(SocketAddr::V6(s)), Some(SocketAddr::V6(d))) => {
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
            0x21
        }
        _ => {
            out.extend_from_slice(&[VERSION_LOCAL, 0x00, 0, 0]);
            return out;
        }
    };
    let mut tlvs = Vec::new();
    if !subject.is_empty() && subject.len() <= MAX_SUBJECT {
        let mut ssl = vec![PP2_CLIENT_SSL_CERT, 0, 0, 0, 0];
        ssl.push(PP2_SUBTYPE_SSL_CN);
        ssl.extend_from_slice(&(subject.len() as u16).to_be_bytes());
        ssl.extend_from_slice(subject.as_bytes());
        tlvs.push(PP2_TYPE_SSL);
        tlvs.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        tlvs.extend_from_slice(&ssl);
    }
    out.push(VERSION_PROXY);
    out.push(family);
    out.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
    out.extend_from_slice(&addrs);
    out.extend_from_slice(&tlvs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_the_specified_layout() {
        let h = header(
            Some("192.0.2.7:40000".parse().expect("addr")),
            Some("198.51.100.1:5432".parse().expect("addr")),
            "",
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&5432u16.to_be_bytes());
        assert_eq!(h, want);
    }

    #[test]
    fn subject_travels_in_an_ssl_tlv() {
        let h = header(
            Some("[2001:db8::1]:1".parse().expect("addr")),
            Some("[2001:db8::2]:2".parse().expect("addr")),
            "CN=admin",
        );
        assert_eq!(h[13], 0x21, "TCP over IPv6");
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(h.len(), 16 + len);
        let tlv = &h[16 + 36..];
        assert_eq!(tlv[0], PP2_TYPE_SSL);
        assert_eq!(&tlv[tlv.len() - 8..], b"CN=admin");
        assert_eq!(tlv[3], PP2_CLIENT_SSL_CERT);
    }

    #[test]
    fn an_overlong_subject_is_left_out_and_the_length_stays_true() {
        let v4 = Some("192.0.2.7:1".parse().expect("addr"));
        let h = header(v4, v4, &"x".repeat(70_000));
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(h.len(), 16 + 12);
    }

    #[test]
    fn unknown_or_mixed_addresses_give_a_local_header() {
        let v4 = Some("192.0.2.7:1".parse().expect("addr"));
        let v6 = Some("[2001:db8::2]:2".parse().expect("addr"));
        for (s, d) in [(v4, v6), (None, v4), (v4, None)] {
            let h = header(s, d, "CN=x");
            assert_eq!(&h[12..], &[VERSION_LOCAL, 0, 0, 0]);
        }
    }
}
