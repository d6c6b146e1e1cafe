//! The hello handshake, written once for every transport.
//!
//! The connector opens the control stream and sends `Hello`; the gateway answers `Welcome`
//! or `Reject`, and the control stream then carries drain, go-away and ping frames for the
//! life of the connection. Which tunnel and credential are acceptable is the gateway's
//! business; this module only moves the frames and reads the outcome.

use std::time::Duration;

use netwall_proto::wire::CLOSE_REJECTED;
use netwall_proto::{
    Codec, Frame, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Reject, RejectCode, Welcome,
};

use crate::io::{FrameReader, FrameWriter};
use crate::transport::{Closed, Conn, StreamRead, StreamWrite};

/// The control stream's halves.
pub type ControlWriter = FrameWriter<StreamWrite>;
/// The control stream's receiving half.
pub type ControlReader = FrameReader<StreamRead>;

/// A connection whose handshake succeeded, as the connector sees it.
pub struct Session {
    /// The connection.
    pub conn: Conn,
    /// Control stream, sending half.
    pub control_w: ControlWriter,
    /// Control stream, receiving half.
    pub control_r: ControlReader,
    /// The gateway's id from its welcome.
    pub gateway_id: String,
    /// The protocol version the gateway welcomed this connector in.
    pub version: u16,
}

/// Why the connector's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The gateway refused this connector.
    #[error("{reason}")]
    Rejected {
        /// Machine-readable reason.
        code: RejectCode,
        /// The gateway's explanation.
        reason: String,
    },
    /// The connection failed before an answer.
    #[error("{0}")]
    Transport(String),
}

/// Connector side: open the control stream on `conn`, say `hello`, wait for the answer.
pub async fn say_hello(conn: Conn, hello: Hello, codec: Codec) -> Result<Session, HelloError> {
    let t = |e: &dyn std::fmt::Display| HelloError::Transport(e.to_string());
    let stream = conn.open().await.map_err(|e| t(&e))?;
    let mut control_w = FrameWriter::new(stream.send, codec);
    let mut control_r = FrameReader::new(stream.recv, codec);
    control_w
        .send(&Frame::Hello(hello))
        .await
        .map_err(|e| t(&e))?;
    match control_r.next().await {
        Ok(Some(Frame::Welcome(w))) => Ok(Session {
            conn,
            control_w,
            control_r,
            gateway_id: w.gateway_id,
            version: w.version,
        }),
        Ok(Some(Frame::Reject(r))) => {
            conn.close(0, b"rejected");
            Err(HelloError::Rejected {
                code: r.code,
                reason: r.reason,
            })
        }
        Ok(Some(other)) => {
            conn.close(0, b"protocol error");
            Err(t(&format!(
                "unexpected {} frame instead of a welcome",
                other.kind()
            )))
        }
        // The reject frame can be lost with the connection; its close code still says why.
        Ok(None) | Err(_) => Err(match conn.close_reason() {
            Some(Closed::ByPeer { code, reason }) if code > CLOSE_REJECTED => {
                HelloError::Rejected {
                    code: RejectCode::from_u16(
                        u16::try_from(code - CLOSE_REJECTED).unwrap_or(u16::MAX),
                    ),
                    reason,
                }
            }
            Some(c) => t(&c),
            None => t(&"connection ended during the handshake"),
        }),
    }
}

/// A hello the gateway received, with the control stream to answer on.
pub struct Greeting {
    /// The connector's hello.
    pub hello: Hello,
    /// Control stream, sending half.
    pub control_w: ControlWriter,
    /// Control stream, receiving half.
    pub control_r: ControlReader,
}

/// Gateway side: accept the control stream on `conn` and read a hello in a version this
/// gateway speaks. A malformed or foreign hello has been rejected on the wire when this
/// returns its error.
pub async fn read_hello(
    conn: &Conn,
    codec: Codec,
    linger: Duration,
) -> Result<Greeting, HelloError> {
    let stream = conn
        .accept()
        .await
        .map_err(|e| HelloError::Transport(e.to_string()))?;
    let mut control_r = FrameReader::new(stream.recv, codec);
    let mut control_w = FrameWriter::new(stream.send, codec);
    let hello = match control_r.next().await {
        Ok(Some(Frame::Hello(h))) => h,
        Ok(_) | Err(_) => {
            return Err(reject(
                conn,
                &mut control_w,
                RejectCode::Malformed,
                "expected a hello frame".into(),
                linger,
            )
            .await);
        }
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        let reason = format!(
            "protocol version {} is not supported (this gateway speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
            hello.version
        );
        return Err(reject(
            conn,
            &mut control_w,
            RejectCode::UnsupportedVersion,
            reason,
            linger,
        )
        .await);
    }
    Ok(Greeting {
        hello,
        control_w,
        control_r,
    })
}

/// Gateway side: accept the connector, in the version it spoke (`version`, from its hello).
pub async fn welcome(
    w: &mut ControlWriter,
    gateway_id: &str,
    version: u16,
) -> Result<(), HelloError> {
    let welcome = Frame::Welcome(Welcome {
        version,
        gateway_id: gateway_id.to_owned(),
    });
    let t = |e: &dyn std::fmt::Display| HelloError::Transport(e.to_string());
    w.send(&welcome).await.map_err(|e| t(&e))?;
    w.flush().await.map_err(|e| t(&e))
}

/// Gateway side: refuse the connector with `code`, give it up to `linger` to read the reject
/// and leave, then close with [`CLOSE_REJECTED`] plus the code.
pub async fn reject(
    conn: &Conn,
    w: &mut ControlWriter,
    code: RejectCode,
    reason: String,
    linger: Duration,
) -> HelloError {
    let _ = w
        .send(&Frame::Reject(Reject {
            code,
            reason: reason.clone(),
        }))
        .await;
    let _ = w.shutdown().await;
    let _ = tokio::time::timeout(linger, conn.closed()).await;
    conn.close(CLOSE_REJECTED + u32::from(code.to_u16()), reason.as_bytes());
    HelloError::Rejected { code, reason }
}
