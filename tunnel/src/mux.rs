//! Streams multiplexed over one ordered byte stream with yamux: the carrier of the TLS/TCP and
//! Unix-socket transports, and of the in-memory pipe the tunnel tests use.
//!
//! A driver task owns the yamux session: it reads and writes the byte stream, hands streams
//! the peer opened to [`Connection::accept`], and opens streams for [`Connection::open`]
//! through the session's control handle. The connection is gone when the byte stream ends,
//! fails, or [`Connection::close`] is called. yamux has no application close code: a peer sees
//! [`Closed::Lost`], and anything it must learn before the end (a reject, a drain) travels on
//! the control stream first.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_yamux::{Config, Control, Session, StreamHandle};
use tracing::debug;

use crate::transport::{BoxFuture, Closed, Conn, Connection, Peer, Stream, TransportKind};

/// Streams the peer may have opened that nobody accepted yet. Tunnel peers open one control
/// stream and, from the gateway, one stream per request that the connector accepts at once.
const ACCEPT_BACKLOG: usize = 256;

/// Per-stream receive window. yamux's 256 KiB minimum keeps a 1 Gbit/s stream moving at up
/// to about 2 ms of round trip; more would let one slow reader pin more gateway memory.
const STREAM_WINDOW: u32 = 256 * 1024;

/// A write the byte stream does not accept within this is a dead connection (yamux's own
/// default, kept: TCP retransmits long before).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which end of the byte stream this is: yamux numbers streams by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed (the connector).
    Client,
    /// The side that accepted (the gateway).
    Server,
}

/// Settings for one multiplexed connection.
#[derive(Debug, Clone, Copy)]
pub struct MuxParams {
    /// Streams open at once, both directions together.
    pub max_streams: usize,
    /// yamux ping interval (liveness of the byte stream itself).
    pub keep_alive: Duration,
}

struct MuxConn {
    kind: TransportKind,
    peer: Peer,
    control: Control,
    inbound: tokio::sync::Mutex<mpsc::Receiver<StreamHandle>>,
    state: watch::Sender<Option<Closed>>,
}

/// Multiplex `io` and return the connection; the driver task runs until it ends.
pub fn connect<T>(io: T, role: Role, kind: TransportKind, peer: Peer, params: MuxParams) -> Conn
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let config = Config {
        accept_backlog: ACCEPT_BACKLOG,
        enable_keepalive: true,
        keepalive_interval: params.keep_alive,
        connection_write_timeout: WRITE_TIMEOUT,
        max_stream_count: params.max_streams,
        max_stream_window_size: STREAM_WINDOW,
    };
    let session = match role {
        Role::Client => Session::new_client(io, config),
        Role::Server => Session::new_server(io, config),
    };
    let control = session.control();
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let (state, _) = watch::channel(None);
    let conn = std::sync::Arc::new(MuxConn {
        kind,
        peer,
        control,
        inbound: tokio::sync::Mutex::new(rx),
        state,
    });
    tokio::spawn(drive(session, tx, conn.state.clone()));
    conn
}

async fn drive<T>(
    mut session: Session<T>,
    inbound: mpsc::Sender<StreamHandle>,
    state: watch::Sender<Option<Closed>>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut closing = state.subscribe();
    let end = loop {
        tokio::select! {
            s = session.next() => match s {
                Some(Ok(stream)) => {
                    // A full backlog refuses the stream (dropping it resets it) rather
                    // than buffering without bound.
                    if inbound.try_send(stream).is_err() {
                        debug!("inbound stream refused: accept backlog full");
                    }
                }
                Some(Err(e)) => break Closed::Lost(e.to_string()),
                None => break Closed::Lost("the peer ended the connection".into()),
            },
            _ = closing.changed() => {
                // Closed locally: say goodbye to the peer, then drop the byte stream.
                let _ = std::future::poll_fn(|cx| std::task::Poll::Ready(session.shutdown(cx))).await;
                let _ = tokio::time::timeout(Duration::from_millis(100), async {
                    while session.next().await.is_some() {}
                }).await;
                return;
            }
        }
    };
    state.send_if_modified(|s| {
        if s.is_none() {
            *s = Some(end);
            true
        } else {
            false
        }
    });
}

/// The sending half of a yamux stream. yamux tells a reset only to a reader, so this never
/// reports the peer stopping.
struct MuxSend(tokio::io::WriteHalf<StreamHandle>);

impl tokio::io::AsyncWrite for MuxSend {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl crate::transport::SendHalf for MuxSend {
    fn stopped(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

fn split(h: StreamHandle) -> Stream {
    let (r, w) = tokio::io::split(h);
    Stream {
        send: Box::new(MuxSend(w)),
        recv: Box::new(r),
    }
}

impl MuxConn {
    fn ended(&self) -> Closed {
        self.state
            .borrow()
            .clone()
            .unwrap_or_else(|| Closed::Lost("session ended".into()))
    }
}

impl Connection for MuxConn {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn peer(&self) -> Peer {
        self.peer.clone()
    }

    fn open(&self) -> BoxFuture<'_, Result<Stream, Closed>> {
        Box::pin(async move {
            if let Some(c) = self.close_reason() {
                return Err(c);
            }
            let mut control = self.control.clone();
            match control.open_stream().await {
                Ok(h) => Ok(split(h)),
                Err(e) => Err(self
                    .close_reason()
                    .unwrap_or_else(|| Closed::Lost(format!("cannot open a stream: {e:?}")))),
            }
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<Stream, Closed>> {
        Box::pin(async move {
            let mut rx = self.inbound.lock().await;
            match rx.recv().await {
                Some(h) => Ok(split(h)),
                None => Err(self.ended()),
            }
        })
    }

    fn close(&self, _code: u32, _reason: &[u8]) {
        self.state.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(Closed::Locally);
                true
            } else {
                false
            }
        });
    }

    fn closed(&self) -> BoxFuture<'_, Closed> {
        Box::pin(async move {
            let mut rx = self.state.subscribe();
            match rx.wait_for(Option::is_some).await {
                Ok(c) => c.clone().unwrap_or(Closed::Locally),
                Err(_) => Closed::Locally,
            }
        })
    }

    fn close_reason(&self) -> Option<Closed> {
        self.state.borrow().clone()
    }
}
