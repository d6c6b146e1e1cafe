//! Codec properties: every frame round-trips, any byte sequence decodes to a frame, `None` or
//! an error (never a panic), and declared lengths are checked before allocation.

use bytes::{BufMut, Bytes, BytesMut};
use netwall_proto::*;
use proptest::prelude::*;

fn header() -> impl Strategy<Value = Header> {
    (
        "[a-z][a-z0-9-]{0,20}",
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(n, v)| Header {
            name: Bytes::from(n),
            value: Bytes::from(v),
        })
}

fn headers() -> impl Strategy<Value = Vec<Header>> {
    proptest::collection::vec(header(), 0..20)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u16>(),
            ".{0,40}",
            proptest::collection::vec(any::<u8>(), 0..64),
            ".{0,40}",
            proptest::collection::vec(".{0,20}", 0..10)
        )
            .prop_map(
                |(version, tunnel, cred, connector_id, services)| Frame::Hello(Hello {
                    version,
                    tunnel,
                    credential: Secret(Bytes::from(cred)),
                    connector_id,
                    services
                })
            ),
        (any::<u16>(), ".{0,40}").prop_map(|(version, gateway_id)| Frame::Welcome(Welcome {
            version,
            gateway_id
        })),
        (any::<u16>(), ".{0,80}").prop_map(|(c, reason)| Frame::Reject(Reject {
            code: RejectCode::from_u16(c),
            reason
        })),
        (
            ".{0,20}",
            "[A-Z]{1,10}",
            ".{0,200}",
            headers(),
            ".{0,40}",
            0u8..3
        )
            .prop_map(|(service, method, uri, headers, client_addr, mode)| {
                Frame::RequestHead(RequestHead {
                    service,
                    method,
                    uri,
                    headers,
                    client_addr,
                    upgrade: mode == 1,
                    websocket: mode == 2,
                })
            }),
        ".{0,300}".prop_map(|t| Frame::WsMessage {
            kind: WsKind::Text,
            payload: Bytes::from(t)
        }),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| Frame::WsMessage {
            kind: WsKind::Binary,
            payload: Bytes::from(b)
        }),
        (any::<u16>(), ".{0,40}").prop_map(|(code, reason)| Frame::WsClose { code, reason }),
        (100u16..1000, headers())
            .prop_map(|(status, headers)| Frame::ResponseHead(ResponseHead { status, headers })),
        proptest::collection::vec(any::<u8>(), 0..4096).prop_map(|d| Frame::Data(Bytes::from(d))),
        headers().prop_map(Frame::End),
        (any::<u16>(), ".{0,80}").prop_map(|(c, reason)| Frame::Reset(Reset {
            code: ResetCode::from_u16(c),
            reason
        })),
        (".{0,20}", ".{0,40}", ".{0,40}", ".{0,60}", any::<bool>()).prop_map(
            |(service, client_addr, server_addr, client_subject, proxy_protocol)| {
                Frame::TcpOpen(TcpOpen {
                    service,
                    client_addr,
                    server_addr,
                    client_subject,
                    proxy_protocol,
                })
            }
        ),
        Just(Frame::Drain),
        any::<u64>().prop_map(|streams_opened| Frame::DrainAck { streams_opened }),
        ".{0,80}".prop_map(|reason| Frame::GoAway { reason }),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        (".{0,40}", ".{0,200}").prop_map(|(channel, message)| Frame::Publish {
            channel,
            message: Bytes::from(message),
        }),
    ]
}

#[test]
fn a_publish_that_is_not_text_or_too_long_is_refused() {
    let codec = Codec::default();
    let mut buf = BytesMut::new();
    let binary = Frame::Publish {
        channel: "route:r".into(),
        message: Bytes::from_static(&[0xff, 0xfe]),
    };
    assert!(codec.encode(&binary, &mut buf).is_err());
    assert!(buf.is_empty(), "a refused frame leaves nothing behind");
    // Hand-made: tag, length, channel "c", then bytes that are not UTF-8.
    let mut raw = BytesMut::from(&[0x25u8, 0, 0, 0, 5, 0, 1, b'c', 0xc3, 0x28][..]);
    assert_eq!(
        codec.decode(&mut raw),
        Err(DecodeError::InvalidUtf8("publish"))
    );
    let big = Frame::Publish {
        channel: "route:r".into(),
        message: Bytes::from("x".repeat(DEFAULT_MAX_PUBLISH_LEN)),
    };
    assert!(matches!(
        codec.encode(&big, &mut buf),
        Err(EncodeError::TooLong {
            kind: "publish",
            ..
        })
    ));
}

proptest! {
    #[test]
    fn every_frame_round_trips(frames in proptest::collection::vec(frame(), 1..8)) {
        let codec = Codec::default();
        let mut buf = BytesMut::new();
        for f in &frames {
            codec.encode(f, &mut buf).unwrap();
        }
        for f in &frames {
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(f.clone()));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn frames_survive_any_split(f in frame(), cut in any::<prop::sample::Index>()) {
        let codec = Codec::default();
        let mut whole = BytesMut::new();
        codec.encode(&f, &mut whole).unwrap();
        let at = cut.index(whole.len() + 1);
        let mut buf = BytesMut::from(&whole[..at]);
        if at < whole.len() {
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), None);
            buf.extend_from_slice(&whole[at..]);
        }
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(f));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let codec = Codec::default();
        let mut buf = BytesMut::from(&data[..]);
        // Decode until the input is exhausted, incomplete or rejected; each success consumes bytes.
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn bit_flips_are_errors_or_frames(f in frame(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let codec = Codec::default();
        let mut buf = BytesMut::new();
        codec.encode(&f, &mut buf).unwrap();
        let i = pos.index(buf.len());
        buf[i] ^= 1 << bit;
        let _ = codec.decode(&mut buf);
    }
}

fn raw(t: u8, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(t);
    b.put_u32(payload.len() as u32);
    b.extend_from_slice(payload);
    b
}

#[test]
fn oversized_length_is_refused_before_any_allocation() {
    let codec = Codec::default();
    let mut buf = BytesMut::new();
    buf.put_u8(0x12);
    buf.put_u32(u32::MAX);
    let cap = buf.capacity();
    assert!(matches!(
        codec.decode(&mut buf),
        Err(DecodeError::TooLong { kind: "data", .. })
    ));
    assert_eq!(
        buf.capacity(),
        cap,
        "decoder reserved memory for a frame it refused"
    );
}

#[test]
fn malformed_frames_are_typed_errors() {
    let codec = Codec::default();
    let cases: Vec<(BytesMut, DecodeError)> = vec![
        (raw(0x7f, b""), DecodeError::UnknownType(0x7f)),
        (
            raw(0x02, &[0, 1, 0, 5, b'a']),
            DecodeError::Truncated("welcome"),
        ),
        (raw(0x21, &[0; 9]), DecodeError::TrailingBytes("drain_ack")),
        (
            raw(0x22, &[0, 2, 0xff, 0xfe]),
            DecodeError::InvalidUtf8("go_away"),
        ),
        (
            raw(0x11, &[0, 42, 0, 0]),
            DecodeError::InvalidValue("response_head"),
        ),
        (
            raw(0x13, &[0xff, 0xff]),
            DecodeError::TooMany {
                kind: "end",
                count: 65535,
                limit: DEFAULT_MAX_HEADERS,
            },
        ),
        // a header count that promises more than the frame holds
        (
            raw(0x13, &[0, 5, 0, 1, b'a']),
            DecodeError::Truncated("end"),
        ),
        (
            raw(0x10, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0]),
            DecodeError::InvalidValue("request_head"),
        ),
        (
            raw(0x10, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]),
            DecodeError::InvalidValue("request_head"),
        ),
        (
            raw(0x15, &[3, b'x']),
            DecodeError::InvalidValue("ws_message"),
        ),
        // tcp_open: four empty strings, then flags with an unknown bit
        (
            raw(0x17, &[0, 0, 0, 0, 0, 0, 0, 0, 2]),
            DecodeError::InvalidValue("tcp_open"),
        ),
        (
            raw(0x17, &[0, 0, 0, 0, 0, 0]),
            DecodeError::Truncated("tcp_open"),
        ),
        (
            raw(0x15, &[1, 0xff, 0xfe]),
            DecodeError::InvalidUtf8("ws_message"),
        ),
    ];
    for (mut buf, want) in cases {
        assert_eq!(codec.decode(&mut buf), Err(want));
    }
}

#[test]
fn wire_format_is_stable() {
    let codec = Codec::default();
    let mut buf = BytesMut::new();
    codec
        .encode(&Frame::Ping(0x0102030405060708), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &[0x23, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    buf.clear();
    codec
        .encode(
            &Frame::Reset(Reset {
                code: ResetCode::Refused,
                reason: "x".into(),
            }),
            &mut buf,
        )
        .unwrap();
    assert_eq!(&buf[..], &[0x14, 0, 0, 0, 5, 0, 1, 0, 1, b'x']);
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let codec = Codec::new(Limits {
        max_data_len: 16,
        ..Limits::default()
    });
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = codec
        .encode(&Frame::Data(Bytes::from(vec![0; 17])), &mut buf)
        .unwrap_err();
    assert!(matches!(
        err,
        EncodeError::TooLong {
            kind: "data",
            len: 17,
            limit: 16
        }
    ));
    assert_eq!(
        &buf[..],
        b"keep",
        "failed encode must leave the buffer untouched"
    );
    let huge = Frame::GoAway {
        reason: "x".repeat(DEFAULT_MAX_CONTROL_LEN),
    };
    assert!(matches!(
        codec.encode(&huge, &mut buf),
        Err(EncodeError::TooLong {
            kind: "go_away",
            ..
        })
    ));
}

#[test]
fn secrets_do_not_print() {
    let hello = Hello {
        version: 1,
        tunnel: "t".into(),
        credential: Secret(Bytes::from_static(b"hunter2")),
        connector_id: "c".into(),
        services: vec![],
    };
    let shown = format!("{hello:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn reject_codes_classify_retry() {
    for c in 0..=10u16 {
        assert_eq!(RejectCode::from_u16(c).to_u16(), c);
        assert_eq!(ResetCode::from_u16(c).to_u16(), c);
    }
    assert!(RejectCode::BadCredential.is_permanent());
    assert!(RejectCode::UnknownTunnel.is_permanent());
    assert!(!RejectCode::Overloaded.is_permanent());
    assert!(!RejectCode::ShuttingDown.is_permanent());
}

#[test]
fn publish_channels() {
    assert!(valid_channel("route:app.test/ws"));
    assert!(valid_channel("user:alice"));
    assert!(valid_channel("connection:gw/1f/7"));
    assert!(!valid_channel("route:"));
    assert!(!valid_channel("everyone"));
    assert!(!valid_channel("admin:x"));
    assert!(!valid_channel(&format!(
        "user:{}",
        "a".repeat(MAX_CHANNEL_LEN)
    )));
}

#[test]
fn a_bare_end_is_encoded_as_its_constant() {
    let mut buf = BytesMut::new();
    let codec = Codec::new(Limits::default());
    codec
        .encode(&Frame::End(Vec::new()), &mut buf)
        .expect("encode");
    assert_eq!(&buf[..], &BARE_END[..]);
    let mut with_trailer = BytesMut::new();
    let trailer = Header {
        name: Bytes::from_static(b"grpc-status"),
        value: Bytes::from_static(b"0"),
    };
    codec
        .encode(&Frame::End(vec![trailer]), &mut with_trailer)
        .expect("encode");
    assert!(!with_trailer.starts_with(&BARE_END));
}
