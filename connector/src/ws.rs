//! WebSockets towards the local service.
//!
//! The gateway terminated the client's WebSocket and relays whole messages. Here the connector
//! opens its own WebSocket to the service with the request's path and headers, answers the
//! gateway `101` once the service accepted (or the service's refusal status), then relays
//! messages both ways until either side closes.

use base64::Engine as _;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use netwall_proto::{
    DEFAULT_MAX_MESSAGE_LEN, Frame as TunnelFrame, RequestHead, ResetCode, ResponseHead, WsKind,
};
use netwall_tunnel::io::{FrameReader, FrameWriter};
use netwall_tunnel::{StreamRead, StreamWrite};
use tracing::debug;
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, Options, Role, WebSocket};

use crate::local::LocalConnector;

/// Read and write buffer of the WebSocket to the service, each, while idle: a small message's
/// frame fits; a larger one grows the buffer while it passes.
const IDLE_BUFFER_BYTES: usize = 256;

/// Headers that belong to the client's handshake with the edge, not to this one.
const HANDSHAKE_HEADERS: [&str; 6] = [
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

/// A fresh `Sec-WebSocket-Key`: sixteen random bytes in base64 (RFC 6455 §4.1).
fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with (RFC 6455 §4.2.2).
fn accept_for(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Whether a service's `101` completes the handshake made with `key` (RFC 6455 §4.1): the
/// upgrade to `websocket`, the accept key, and no extension (none was offered).
fn check_accepted(headers: &http::HeaderMap, key: &str) -> Result<(), String> {
    let has = |name: header::HeaderName, want: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err("service 101 without Upgrade: websocket and Connection: upgrade".into());
    }
    let accept = headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes());
    if accept != Some(accept_for(key).as_bytes()) {
        return Err("service 101 with a wrong Sec-WebSocket-Accept".into());
    }
    if headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        return Err("service 101 agreed to an extension that was not offered".into());
    }
    Ok(())
}

/// Open a WebSocket to the service and relay messages until either side closes.
pub async fn relay(
    connector: &LocalConnector,
    authority: &str,
    head: RequestHead,
    writer: &mut FrameWriter<StreamWrite>,
    reader: &mut FrameReader<StreamRead>,
) -> Result<(), (ResetCode, String)> {
    use futures_util::SinkExt;
    let io = connector.connect().await.map_err(|e| {
        (
            ResetCode::ServiceUnavailable,
            format!("service connect: {e}"),
        )
    })?;
    let mut request = http::Request::get(head.uri.as_str());
    for h in &head.headers {
        let name = String::from_utf8_lossy(&h.name).to_ascii_lowercase();
        if HANDSHAKE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        request = request.header(h.name.as_ref(), h.value.as_ref());
    }
    let key = new_key();
    if !request
        .headers_ref()
        .is_some_and(|h| h.contains_key(header::HOST))
    {
        request = request.header(header::HOST, authority);
    }
    let request = request
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| (ResetCode::Protocol, format!("bad request head: {e}")))?;
    // yawc's limits are exclusive (a message of exactly the limit is refused), and the edge
    // relays messages of up to the maximum inclusive: allow one byte more.
    let options = Options::default()
        .with_max_payload_read(DEFAULT_MAX_MESSAGE_LEN + 1)
        .with_max_read_buffer(DEFAULT_MAX_MESSAGE_LEN + 1)
        .without_compression()
        .with_no_delay()
        // Sized for idle connections: the buffers grow for large messages and shrink back.
        .with_read_buffer_capacity(IDLE_BUFFER_BYTES)
        .with_write_buffer_capacity(IDLE_BUFFER_BYTES);
    // The request's head holds the tunnel's read buffer; an open WebSocket needs neither.
    drop(head);
    // The handshake is made here rather than by the WebSocket library so the service's answer
    // can be read: the subprotocol it chose goes back to the client, whose browser fails a
    // WebSocket that offered subprotocols and got none. Boxed: its state is large and lives
    // only until the answer; unboxed, it would set the size of this future for as long as
    // the WebSocket is open.
    let service_error = |e: String| (ResetCode::ServiceError, e);
    let handshake = Box::pin(async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| service_error(format!("service WebSocket handshake: {e}")))?;
        tokio::spawn(async move {
            // Ends once the connection is handed over to the WebSocket (or closed).
            let _ = conn.with_upgrades().await;
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| service_error(format!("service WebSocket handshake: {e}")))
    });
    let answered = tokio::select! {
        answered = handshake => answered?,
        // The gateway gave up (its open timeout, the client gone): so does the handshake, and
        // dropping it closes the connection to a service that never answered.
        () = writer.get_mut().stopped() => return Ok(()),
    };
    if answered.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The service refused the upgrade: its status goes back to the client.
        let head = ResponseHead {
            status: answered.status().as_u16(),
            headers: Vec::new(),
        };
        let _ = writer.send(&TunnelFrame::ResponseHead(head)).await;
        let _ = writer.send(&TunnelFrame::End(Vec::new())).await;
        let _ = writer.shutdown().await;
        return Ok(());
    }
    check_accepted(answered.headers(), &key).map_err(service_error)?;
    let mut accepted = ResponseHead {
        status: 101,
        headers: vec![netwall_proto::Header {
            name: Bytes::from_static(header::UPGRADE.as_str().as_bytes()),
            value: Bytes::from_static(b"websocket"),
        }],
    };
    // The gateway checks it against the client's offer.
    if let Some(chosen) = answered.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
        accepted.headers.push(netwall_proto::Header {
            name: Bytes::from_static(header::SEC_WEBSOCKET_PROTOCOL.as_str().as_bytes()),
            value: Bytes::copy_from_slice(chosen.as_bytes()),
        });
    }
    let upgraded = hyper::upgrade::on(answered)
        .await
        .map_err(|e| service_error(format!("service WebSocket upgrade: {e}")))?;
    let mut ws = WebSocket::from_stream(TokioIo::new(upgraded), Role::Client, options)
        .map_err(|e| service_error(format!("service WebSocket: {e}")))?;
    writer
        .send(&TunnelFrame::ResponseHead(accepted))
        .await
        .map_err(|e| (ResetCode::Cancelled, e.to_string()))?;

    loop {
        tokio::select! {
            frame = ws.next_frame() => {
                let Ok(frame) = frame else {
                    let _ = writer.send(&TunnelFrame::WsClose { code: 1011, reason: "service connection lost".into() }).await;
                    break;
                };
                match frame.opcode() {
                    OpCode::Text | OpCode::Binary => {
                        let kind = if frame.opcode() == OpCode::Text { WsKind::Text } else { WsKind::Binary };
                        if writer.send(&TunnelFrame::WsMessage { kind, payload: frame.into_payload() }).await.is_err() {
                            break;
                        }
                    }
                    OpCode::Close => {
                        let code = frame.close_code().map_or(1000, u16::from);
                        let reason = frame.close_reason().ok().flatten().unwrap_or_default().to_owned();
                        let _ = writer.send(&TunnelFrame::WsClose { code, reason }).await;
                        break;
                    }
                    _ => {}
                }
            }
            frame = reader.next() => match frame {
                Ok(Some(TunnelFrame::WsMessage { kind, payload })) => {
                    let frame = match kind {
                        WsKind::Text => Frame::text(payload),
                        WsKind::Binary => Frame::binary(payload),
                    };
                    if ws.send(frame).await.is_err() {
                        let _ = writer.send(&TunnelFrame::WsClose { code: 1011, reason: "service connection lost".into() }).await;
                        break;
                    }
                }
                Ok(Some(TunnelFrame::WsClose { code, reason })) => {
                    let code = if CloseCode::from(code).is_allowed() { code } else { 1000 };
                    let _ = ws.send(Frame::close(CloseCode::from(code), reason)).await;
                    break;
                }
                other => {
                    debug!(frame = ?other.as_ref().map(|f| f.as_ref().map(TunnelFrame::kind)), "tunnel side of a WebSocket ended");
                    let _ = ws.send(Frame::close(CloseCode::Away, "tunnel closed")).await;
                    break;
                }
            },
        }
    }
    let _ = writer.shutdown().await;
    Ok(())
}
