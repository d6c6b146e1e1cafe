//! WebSockets towards the local service.
//!
//! The gateway terminated the client's WebSocket and relays whole messages. Here the connector
//! opens its own WebSocket to the service with the request's path and headers, answers the
//! gateway `101` once the service accepted (or the service's refusal status), then relays
//! messages both ways until either side closes.

use bytes::Bytes;
use http::header;
use netwall_proto::{
    DEFAULT_MAX_MESSAGE_LEN, Frame as TunnelFrame, RequestHead, ResetCode, ResponseHead, WsKind,
};
use netwall_tunnel::io::{FrameReader, FrameWriter};
use netwall_tunnel::{StreamRead, StreamWrite};
use tracing::debug;
use yawc::close::CloseCode;
use yawc::{Frame, HttpRequest, OpCode, Options, WebSocket};

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
    let url: url::Url = format!("ws://{authority}{}", head.uri)
        .parse()
        .map_err(|e| (ResetCode::Protocol, format!("bad request target: {e}")))?;
    let mut request = HttpRequest::builder();
    for h in &head.headers {
        let name = String::from_utf8_lossy(&h.name).to_ascii_lowercase();
        if HANDSHAKE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        request = request.header(h.name.as_ref(), h.value.as_ref());
    }
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
    // Boxed: the handshake's state is large and lives only until the answer; unboxed, it
    // would set the size of this future for as long as the WebSocket is open.
    let handshake = WebSocket::handshake_with_request(url, io, options, request);
    let mut ws = match Box::pin(handshake).await {
        Ok(ws) => ws,
        Err(yawc::WebSocketError::InvalidStatusCode(status)) => {
            // The service refused the upgrade: its status goes back to the client.
            let head = ResponseHead {
                status,
                headers: Vec::new(),
            };
            let _ = writer.send(&TunnelFrame::ResponseHead(head)).await;
            let _ = writer.send(&TunnelFrame::End(Vec::new())).await;
            let _ = writer.shutdown().await;
            return Ok(());
        }
        Err(e) => {
            return Err((
                ResetCode::ServiceError,
                format!("service WebSocket handshake: {e}"),
            ));
        }
    };
    let accepted = ResponseHead {
        status: 101,
        headers: vec![netwall_proto::Header {
            name: Bytes::from_static(header::UPGRADE.as_str().as_bytes()),
            value: Bytes::from_static(b"websocket"),
        }],
    };
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
