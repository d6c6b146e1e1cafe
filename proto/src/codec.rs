//! Byte-level encoding of [`Frame`]s.
//!
//! Every frame is `type: u8 | length: u32 BE | payload`. Inside a payload, strings and byte
//! strings carry a `u16` (names, short text) or `u32` (header values, credentials) length
//! prefix, and lists a `u16` count. The decoder checks the frame length against [`Limits`]
//! before it reserves a byte, and every inner length against what the frame still holds, so a
//! hostile peer can make it allocate at most one bounded frame. Malformed input is a
//! [`DecodeError`], never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{
    Frame, Header, Hello, Reject, RejectCode, RequestHead, Reset, ResetCode, ResponseHead, Secret,
    TcpOpen, Welcome, WsKind,
};

/// Size of the fixed frame header.
pub const FRAME_HEADER_LEN: usize = 5;

/// Largest body chunk carried by one `Data` frame by default: big enough to amortise the
/// header, small enough that one frame never pins much memory per stream.
pub const DEFAULT_MAX_DATA_LEN: usize = 64 * 1024;

/// Most header bytes (names plus values) a public client may send in one request head: the
/// edge refuses more with `431` before anything is encoded (nginx's large buffers are 4 x 8
/// KiB; hyper's HTTP/1 buffer is about 400 KB, far more than any browser sends).
pub const MAX_CLIENT_HEADER_BYTES: usize = 64 * 1024;

/// Most header fields a public client may send in one request head (hyper's HTTP/1 default).
/// HTTP/2 `cookie` crumbs are joined into one field before they are counted.
pub const MAX_CLIENT_HEADERS: usize = 100;

/// Header fields the edge may add to a forwarded head (`Host`, four forwarding headers,
/// `x-netwall-sub` and the claims a route forwards).
pub const EDGE_ADDED_HEADERS: usize = 28;

/// Header bytes the edge may add to a forwarded head (forwarding and identity headers).
pub const EDGE_ADDED_HEADER_BYTES: usize = 8 * 1024;

/// Largest request/response head by default: every header a client may send, what the edge
/// adds, and room for method, URI (up to the same 64 KiB), service and client address. A head
/// the edge accepted therefore always encodes.
pub const DEFAULT_MAX_HEAD_LEN: usize =
    MAX_CLIENT_HEADER_BYTES + EDGE_ADDED_HEADER_BYTES + 64 * 1024 + 1024;

/// Largest control frame by default (a `Hello` lists service names; nothing else is large).
pub const DEFAULT_MAX_CONTROL_LEN: usize = 16 * 1024;

/// Largest relayed WebSocket message by default; routes set smaller limits at the edge.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// Largest `Publish` payload by default: a pushed message of up to 64 KiB (an update, not a
/// file) and its channel name.
pub const DEFAULT_MAX_PUBLISH_LEN: usize = 64 * 1024 + 1024;

/// Most header fields in one head: what a client may send plus what the edge adds.
pub const DEFAULT_MAX_HEADERS: usize = MAX_CLIENT_HEADERS + EDGE_ADDED_HEADERS;

/// Most service names in one `Hello`.
pub const DEFAULT_MAX_SERVICES: usize = 256;

/// How `Frame::End` without trailers is encoded: the end of every body that has none. A reader
/// that finds it right behind a request head knows the request has no body before reading on.
pub const BARE_END: [u8; FRAME_HEADER_LEN + 2] = [tag::END, 0, 0, 0, 2, 0, 0];

mod tag {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const REJECT: u8 = 0x03;
    pub const REQUEST_HEAD: u8 = 0x10;
    pub const RESPONSE_HEAD: u8 = 0x11;
    pub const DATA: u8 = 0x12;
    pub const END: u8 = 0x13;
    pub const RESET: u8 = 0x14;
    pub const WS_MESSAGE: u8 = 0x15;
    pub const WS_CLOSE: u8 = 0x16;
    pub const TCP_OPEN: u8 = 0x17;
    pub const DRAIN: u8 = 0x20;
    pub const DRAIN_ACK: u8 = 0x21;
    pub const GO_AWAY: u8 = 0x22;
    pub const PING: u8 = 0x23;
    pub const PONG: u8 = 0x24;
    pub const PUBLISH: u8 = 0x25;
}

/// Bounds the decoder enforces before allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `Data` payload.
    pub max_data_len: usize,
    /// Largest `RequestHead`/`ResponseHead`/`End` payload.
    pub max_head_len: usize,
    /// Largest `WsMessage` payload.
    pub max_message_len: usize,
    /// Largest payload of any other frame.
    pub max_control_len: usize,
    /// Most header fields in a head or trailer block.
    pub max_headers: usize,
    /// Most services in a `Hello`.
    pub max_services: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_data_len: DEFAULT_MAX_DATA_LEN,
            max_head_len: DEFAULT_MAX_HEAD_LEN,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            max_control_len: DEFAULT_MAX_CONTROL_LEN,
            max_headers: DEFAULT_MAX_HEADERS,
            max_services: DEFAULT_MAX_SERVICES,
        }
    }
}

/// Why bytes could not be decoded into a frame.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame type byte is not one this version knows.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The declared frame length is over the limit for its type.
    #[error("{kind} frame of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// Frame kind.
        kind: &'static str,
        /// Declared length.
        len: usize,
        /// Limit in force.
        limit: usize,
    },
    /// A field ran past the end of its frame.
    #[error("{0} frame is truncated")]
    Truncated(&'static str),
    /// A frame carried bytes after its last field.
    #[error("{0} frame has trailing bytes")]
    TrailingBytes(&'static str),
    /// A text field is not UTF-8.
    #[error("{0} frame has a field that is not UTF-8")]
    InvalidUtf8(&'static str),
    /// A list is longer than allowed.
    #[error("{kind} frame lists {count} items, more than the limit of {limit}")]
    TooMany {
        /// Frame kind.
        kind: &'static str,
        /// Declared count.
        count: usize,
        /// Limit in force.
        limit: usize,
    },
    /// A field has a value outside its domain.
    #[error("{0} frame has an invalid field value")]
    InvalidValue(&'static str),
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded frame would exceed the peer's limit for its type.
    #[error("{kind} frame of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// Frame kind.
        kind: &'static str,
        /// Encoded length.
        len: usize,
        /// Limit in force.
        limit: usize,
    },
    /// A field is longer than its length prefix can express.
    #[error("{0} frame has a field too long to encode")]
    FieldTooLong(&'static str),
    /// A list is longer than allowed.
    #[error("{0} frame has too many items")]
    TooMany(&'static str),
    /// Fields that cannot go together (a request both upgraded and WebSocket).
    #[error("{0} frame has an invalid combination of fields")]
    InvalidValue(&'static str),
}

/// Encoder and decoder, parameterised by [`Limits`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec {
    limits: Limits,
}

impl Codec {
    /// A codec enforcing `limits` on both encode and decode.
    pub fn new(limits: Limits) -> Self {
        Codec { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn limit_for(&self, t: u8) -> Option<(&'static str, usize)> {
        let l = &self.limits;
        Some(match t {
            tag::HELLO => ("hello", l.max_control_len),
            tag::WELCOME => ("welcome", l.max_control_len),
            tag::REJECT => ("reject", l.max_control_len),
            tag::REQUEST_HEAD => ("request_head", l.max_head_len),
            tag::RESPONSE_HEAD => ("response_head", l.max_head_len),
            tag::DATA => ("data", l.max_data_len),
            tag::END => ("end", l.max_head_len),
            tag::RESET => ("reset", l.max_control_len),
            tag::WS_MESSAGE => ("ws_message", l.max_message_len.saturating_add(1)),
            tag::WS_CLOSE => ("ws_close", l.max_control_len),
            tag::TCP_OPEN => ("tcp_open", l.max_control_len),
            tag::DRAIN => ("drain", l.max_control_len),
            tag::DRAIN_ACK => ("drain_ack", l.max_control_len),
            tag::GO_AWAY => ("go_away", l.max_control_len),
            tag::PING => ("ping", l.max_control_len),
            tag::PONG => ("pong", l.max_control_len),
            tag::PUBLISH => ("publish", DEFAULT_MAX_PUBLISH_LEN),
            _ => return None,
        })
    }

    /// Decode one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame (it then reserves room for
    /// the rest, never more than the frame's bounded length). Consumes the frame's bytes on
    /// success; on error the stream is unusable and must be abandoned.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let t = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let (kind, limit) = self.limit_for(t).ok_or(DecodeError::UnknownType(t))?;
        if len > limit {
            return Err(DecodeError::TooLong { kind, len, limit });
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        self.decode_payload(t, kind, payload).map(Some)
    }

    fn decode_payload(
        &self,
        t: u8,
        kind: &'static str,
        payload: Bytes,
    ) -> Result<Frame, DecodeError> {
        if t == tag::DATA {
            return Ok(Frame::Data(payload));
        }
        let mut r = Reader { buf: payload, kind };
        let frame = match t {
            tag::HELLO => {
                let version = r.u16()?;
                let tunnel = r.str16()?;
                let credential = Secret(r.bytes32()?);
                let connector_id = r.str16()?;
                let count = r.u16()? as usize;
                if count > self.limits.max_services {
                    return Err(DecodeError::TooMany {
                        kind,
                        count,
                        limit: self.limits.max_services,
                    });
                }
                let mut services = Vec::with_capacity(count.min(r.buf.len() / 2));
                for _ in 0..count {
                    services.push(r.str16()?);
                }
                Frame::Hello(Hello {
                    version,
                    tunnel,
                    credential,
                    connector_id,
                    services,
                })
            }
            tag::WELCOME => Frame::Welcome(Welcome {
                version: r.u16()?,
                gateway_id: r.str16()?,
            }),
            tag::REJECT => Frame::Reject(Reject {
                code: RejectCode::from_u16(r.u16()?),
                reason: r.str16()?,
            }),
            tag::REQUEST_HEAD => {
                let service = r.str16()?;
                let method = r.str16()?;
                let uri = r.str32()?;
                let client_addr = r.str16()?;
                let flags = r.u8()?;
                if flags & !0b11 != 0 || flags == 0b11 {
                    return Err(DecodeError::InvalidValue(kind));
                }
                let headers = r.headers(self.limits.max_headers)?;
                Frame::RequestHead(RequestHead {
                    service,
                    method,
                    uri,
                    headers,
                    client_addr,
                    upgrade: flags & 1 == 1,
                    websocket: flags & 2 == 2,
                })
            }
            tag::RESPONSE_HEAD => {
                let status = r.u16()?;
                if !(100..=999).contains(&status) {
                    return Err(DecodeError::InvalidValue(kind));
                }
                let headers = r.headers(self.limits.max_headers)?;
                Frame::ResponseHead(ResponseHead { status, headers })
            }
            tag::END => Frame::End(r.headers(self.limits.max_headers)?),
            tag::RESET => Frame::Reset(Reset {
                code: ResetCode::from_u16(r.u16()?),
                reason: r.str16()?,
            }),
            tag::WS_MESSAGE => {
                let kind = match r.u8()? {
                    1 => WsKind::Text,
                    2 => WsKind::Binary,
                    _ => return Err(DecodeError::InvalidValue(kind)),
                };
                let payload = r.buf.split_to(r.buf.len());
                if kind == WsKind::Text && std::str::from_utf8(&payload).is_err() {
                    return Err(DecodeError::InvalidUtf8("ws_message"));
                }
                Frame::WsMessage { kind, payload }
            }
            tag::WS_CLOSE => Frame::WsClose {
                code: r.u16()?,
                reason: r.str16()?,
            },
            tag::TCP_OPEN => {
                let service = r.str16()?;
                let client_addr = r.str16()?;
                let server_addr = r.str16()?;
                let client_subject = r.str16()?;
                let flags = r.u8()?;
                if flags & !1 != 0 {
                    return Err(DecodeError::InvalidValue(kind));
                }
                Frame::TcpOpen(TcpOpen {
                    service,
                    client_addr,
                    server_addr,
                    client_subject,
                    proxy_protocol: flags == 1,
                })
            }
            tag::DRAIN => Frame::Drain,
            tag::DRAIN_ACK => Frame::DrainAck {
                streams_opened: r.u64()?,
            },
            tag::GO_AWAY => Frame::GoAway { reason: r.str16()? },
            tag::PING => Frame::Ping(r.u64()?),
            tag::PONG => Frame::Pong(r.u64()?),
            tag::PUBLISH => {
                let channel = r.str16()?;
                let message = r.buf.split_to(r.buf.len());
                if std::str::from_utf8(&message).is_err() {
                    return Err(DecodeError::InvalidUtf8("publish"));
                }
                Frame::Publish { channel, message }
            }
            _ => return Err(DecodeError::UnknownType(t)),
        };
        if r.buf.has_remaining() {
            return Err(DecodeError::TrailingBytes(kind));
        }
        Ok(frame)
    }

    /// Append the header of a `Data` frame of `len` bytes; the caller writes the bytes after
    /// it. Lets body bytes go to the transport without being copied into a frame buffer.
    pub fn encode_data_header(&self, len: usize, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if len > self.limits.max_data_len {
            return Err(EncodeError::TooLong {
                kind: "data",
                len,
                limit: self.limits.max_data_len,
            });
        }
        dst.put_u8(tag::DATA);
        dst.put_u32(len as u32);
        Ok(())
    }

    /// Append `frame` to `dst`. On error `dst` is left as it was.
    pub fn encode(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = dst.len();
        let res = self.encode_inner(frame, dst);
        if res.is_err() {
            dst.truncate(start);
        }
        res
    }

    fn encode_inner(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let kind = frame.kind();
        if let Frame::Data(data) = frame {
            self.encode_data_header(data.len(), dst)?;
            dst.extend_from_slice(data);
            return Ok(());
        }
        let t = match frame {
            Frame::Hello(_) => tag::HELLO,
            Frame::Welcome(_) => tag::WELCOME,
            Frame::Reject(_) => tag::REJECT,
            Frame::RequestHead(_) => tag::REQUEST_HEAD,
            Frame::ResponseHead(_) => tag::RESPONSE_HEAD,
            Frame::TcpOpen(_) => tag::TCP_OPEN,
            Frame::Data(_) => tag::DATA,
            Frame::End(_) => tag::END,
            Frame::Reset(_) => tag::RESET,
            Frame::WsMessage { .. } => tag::WS_MESSAGE,
            Frame::WsClose { .. } => tag::WS_CLOSE,
            Frame::Drain => tag::DRAIN,
            Frame::DrainAck { .. } => tag::DRAIN_ACK,
            Frame::GoAway { .. } => tag::GO_AWAY,
            Frame::Ping(_) => tag::PING,
            Frame::Pong(_) => tag::PONG,
            Frame::Publish { .. } => tag::PUBLISH,
        };
        let header_at = dst.len();
        dst.put_u8(t);
        dst.put_u32(0);
        let body_at = dst.len();
        let mut w = Writer { dst, kind };
        match frame {
            Frame::Hello(h) => {
                w.u16(h.version);
                w.str16(&h.tunnel)?;
                w.bytes32(&h.credential.0)?;
                w.str16(&h.connector_id)?;
                if h.services.len() > self.limits.max_services {
                    return Err(EncodeError::TooMany(kind));
                }
                w.u16(h.services.len() as u16);
                for s in &h.services {
                    w.str16(s)?;
                }
            }
            Frame::Welcome(wl) => {
                w.u16(wl.version);
                w.str16(&wl.gateway_id)?;
            }
            Frame::Reject(rj) => {
                w.u16(rj.code.to_u16());
                w.str16(&rj.reason)?;
            }
            Frame::RequestHead(h) => {
                w.str16(&h.service)?;
                w.str16(&h.method)?;
                w.bytes32(h.uri.as_bytes())?;
                w.str16(&h.client_addr)?;
                if h.upgrade && h.websocket {
                    return Err(EncodeError::InvalidValue(kind));
                }
                w.u8(u8::from(h.upgrade) | (u8::from(h.websocket) << 1));
                w.headers(&h.headers, self.limits.max_headers)?;
            }
            Frame::ResponseHead(h) => {
                w.u16(h.status);
                w.headers(&h.headers, self.limits.max_headers)?;
            }
            Frame::TcpOpen(t) => {
                w.str16(&t.service)?;
                w.str16(&t.client_addr)?;
                w.str16(&t.server_addr)?;
                w.str16(&t.client_subject)?;
                w.u8(u8::from(t.proxy_protocol));
            }
            Frame::End(trailers) => w.headers(trailers, self.limits.max_headers)?,
            Frame::Reset(rs) => {
                w.u16(rs.code.to_u16());
                w.str16(&rs.reason)?;
            }
            Frame::WsMessage { kind: k, payload } => {
                w.u8(match k {
                    WsKind::Text => 1,
                    WsKind::Binary => 2,
                });
                w.dst.extend_from_slice(payload);
            }
            Frame::WsClose { code, reason } => {
                w.u16(*code);
                w.str16(reason)?;
            }
            Frame::Drain | Frame::Data(_) => {}
            Frame::DrainAck { streams_opened } => w.u64(*streams_opened),
            Frame::GoAway { reason } => w.str16(reason)?,
            Frame::Ping(v) | Frame::Pong(v) => w.u64(*v),
            Frame::Publish { channel, message } => {
                if std::str::from_utf8(message).is_err() {
                    return Err(EncodeError::InvalidValue(kind));
                }
                w.str16(channel)?;
                w.dst.extend_from_slice(message);
            }
        }
        let len = dst.len() - body_at;
        let limit = self.limit_for(t).map(|(_, l)| l).unwrap_or(0);
        if len > limit {
            return Err(EncodeError::TooLong { kind, len, limit });
        }
        dst[header_at + 1..body_at].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

// === impl Reader ===

/// Cursor over one frame's payload; every read checks what remains first.
struct Reader {
    buf: Bytes,
    kind: &'static str,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated(self.kind))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn bytes16(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    fn bytes32(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn utf8(&self, b: Bytes) -> Result<String, DecodeError> {
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::InvalidUtf8(self.kind))
    }

    fn str16(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes16()?;
        self.utf8(b)
    }

    fn str32(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes32()?;
        self.utf8(b)
    }

    fn headers(&mut self, max: usize) -> Result<Vec<Header>, DecodeError> {
        let count = self.u16()? as usize;
        if count > max {
            return Err(DecodeError::TooMany {
                kind: self.kind,
                count,
                limit: max,
            });
        }
        // Each header needs at least 6 bytes, so a lying count cannot over-allocate.
        let mut out = Vec::with_capacity(count.min(self.buf.remaining() / 6));
        for _ in 0..count {
            let name = self.bytes16()?;
            let value = self.bytes32()?;
            out.push(Header { name, value });
        }
        Ok(out)
    }
}

// === impl Writer ===

struct Writer<'a> {
    dst: &'a mut BytesMut,
    kind: &'static str,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.dst.put_u8(v);
    }

    fn u16(&mut self, v: u16) {
        self.dst.put_u16(v);
    }

    fn u64(&mut self, v: u64) {
        self.dst.put_u64(v);
    }

    fn bytes16(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(self.kind))?;
        self.dst.put_u16(n);
        self.dst.extend_from_slice(b);
        Ok(())
    }

    fn bytes32(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let n = u32::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(self.kind))?;
        self.dst.put_u32(n);
        self.dst.extend_from_slice(b);
        Ok(())
    }

    fn str16(&mut self, s: &str) -> Result<(), EncodeError> {
        self.bytes16(s.as_bytes())
    }

    fn headers(&mut self, headers: &[Header], max: usize) -> Result<(), EncodeError> {
        if headers.len() > max {
            return Err(EncodeError::TooMany(self.kind));
        }
        self.u16(headers.len() as u16);
        for h in headers {
            self.bytes16(&h.name)?;
            self.bytes32(&h.value)?;
        }
        Ok(())
    }
}
