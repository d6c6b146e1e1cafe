//! Raw TCP services: a stream that starts with a `TcpOpen` is spliced to the service's socket,
//! bytes both ways under the tunnel's flow control, each direction closed on its own (a
//! client's half-close reaches the service as a FIN, and the service's answer still flows).

use netwall_proto::{Frame, Reset, ResetCode, ResponseHead, TcpOpen};
use netwall_tunnel::body::pipe_upgraded;
use netwall_tunnel::io::{FrameReader, FrameWriter};
use netwall_tunnel::{StreamRead, StreamWrite};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use crate::local::{LocalConnector, LocalIo};

/// Status of the `ResponseHead` that says the service accepted the connection.
pub const CONNECTED: u16 = 200;

/// Connect to the service and carry the stream until both directions have ended: the bytes
/// sent to the client and to the service. A service that cannot be reached gets the stream
/// reset with the reason, and the error back.
pub async fn relay(
    connector: &LocalConnector,
    open: TcpOpen,
    mut writer: FrameWriter<StreamWrite>,
    reader: FrameReader<StreamRead>,
) -> Result<(u64, u64), String> {
    let mut io = match connect(connector, &open).await {
        Ok(io) => io,
        Err((code, reason)) => {
            let reset = Frame::Reset(Reset {
                code,
                reason: reason.clone(),
            });
            let _ = writer.send(&reset).await;
            return Err(reason);
        }
    };
    let connected = Frame::ResponseHead(ResponseHead {
        status: CONNECTED,
        headers: Vec::new(),
    });
    if let Err(e) = writer.send(&connected).await {
        debug!(error = %e, "gateway left before the service answered");
        return Ok((0, 0));
    }
    let _ = io.flush().await;
    Ok(pipe_upgraded(io, writer, reader).await)
}

/// The service's socket, with the PROXY header written when the route asks for one.
async fn connect(
    connector: &LocalConnector,
    open: &TcpOpen,
) -> Result<LocalIo, (ResetCode, String)> {
    let mut io = connector.connect().await.map_err(|e| {
        (
            ResetCode::ServiceUnavailable,
            format!("service `{}`: {e}", open.service),
        )
    })?;
    if open.proxy_protocol {
        let header = crate::proxy_v2::header(
            open.client_addr.parse().ok(),
            open.server_addr.parse().ok(),
            &open.client_subject,
        );
        io.write_all(&header)
            .await
            .map_err(|e| (ResetCode::ServiceError, format!("PROXY header: {e}")))?;
    }
    Ok(io)
}
