//! yamux (libp2p's) behind netwall's tunnel `Connection` trait, kept for `netwall-loadgen mux`
//! to measure against the HTTP/2 multiplexer netwall uses. Not part of the product.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::{CancellationToken, PollSender};

use netwall_tunnel::{BoxFuture, Closed, Conn, Connection, Peer, SendHalf, Stream, TransportKind};

/// Streams the gateway opened that the connector has not accepted yet; beyond this the
/// connection waits for the connector. The connector accepts each request stream at once.
pub const CONNECTOR_ACCEPT_BACKLOG: usize = 256;

/// Streams a connector may have opened that the gateway has not accepted: its control stream,
/// with room to spare (QUIC allows it 4 as well). Beyond this the connection stalls, so a peer
/// that opens streams pre-authentication pins at most this many stream windows.
pub const GATEWAY_ACCEPT_BACKLOG: usize = 4;

/// yamux's initial per-stream window: what each stream may have in flight before its reader
/// catches up; yamux grows it toward the bandwidth-delay product of a busy stream.
const STREAM_WINDOW: usize = 256 * 1024;

/// How long a local close waits to tell the peer before the byte stream is dropped.
const CLOSE_LINGER: Duration = Duration::from_millis(100);

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
    /// Streams open at once, both directions together; yamux refuses more.
    pub max_streams: usize,
    /// Interval of the tunnel's control-stream pings (liveness is checked there).
    pub keep_alive: Duration,
    /// Streams the peer may have opened that are not accepted yet.
    pub accept_backlog: usize,
}

type Opened = oneshot::Sender<Result<yamux::Stream, String>>;

struct MuxConn {
    kind: TransportKind,
    peer: Peer,
    opens: mpsc::UnboundedSender<Opened>,
    inbound: tokio::sync::Mutex<mpsc::Receiver<yamux::Stream>>,
    state: watch::Sender<Option<Closed>>,
    close: CancellationToken,
}

/// Multiplex `io` and return the connection; the driver task runs until it ends.
pub fn connect<T>(io: T, role: Role, kind: TransportKind, peer: Peer, params: MuxParams) -> Conn
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut config = yamux::Config::default();
    // yamux requires room for every stream's initial window in the connection's total.
    config.set_max_connection_receive_window(Some(
        params.max_streams.max(512).saturating_mul(STREAM_WINDOW),
    ));
    config.set_max_num_streams(params.max_streams);
    let mode = match role {
        Role::Client => yamux::Mode::Client,
        Role::Server => yamux::Mode::Server,
    };
    let connection = yamux::Connection::new(io.compat(), config, mode);
    let (opens, opens_rx) = mpsc::unbounded_channel();
    let (tx, rx) = mpsc::channel(params.accept_backlog.max(1));
    let (state, _) = watch::channel(None);
    let close = CancellationToken::new();
    let conn = Arc::new(MuxConn {
        kind,
        peer,
        opens,
        inbound: tokio::sync::Mutex::new(rx),
        state: state.clone(),
        close: close.clone(),
    });
    tokio::spawn(drive(connection, opens_rx, tx, state, close));
    conn
}

async fn drive<T>(
    mut connection: yamux::Connection<Compat<T>>,
    mut opens: mpsc::UnboundedReceiver<Opened>,
    inbound: mpsc::Sender<yamux::Stream>,
    state: watch::Sender<Option<Closed>>,
    close: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut waiting: VecDeque<Opened> = VecDeque::new();
    let mut inbound = PollSender::new(inbound);
    let closing = close.cancelled();
    tokio::pin!(closing);
    let end = std::future::poll_fn(|cx| {
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Closed::Locally);
        }
        while let Poll::Ready(Some(tx)) = opens.poll_recv(cx) {
            waiting.push_back(tx);
        }
        while !waiting.is_empty() {
            match connection.poll_new_outbound(cx) {
                Poll::Ready(r) => {
                    if let Some(tx) = waiting.pop_front() {
                        let _ = tx.send(r.map_err(|e| e.to_string()));
                    }
                }
                Poll::Pending => break,
            }
        }
        // Polling for inbound streams is also what drives every stream's I/O. A stream the
        // peer opens waits for room in the accept backlog: a burst of a thousand requests
        // pauses the connection for a moment instead of losing any of them, and a peer that
        // opens streams nobody accepts stalls only its own connection.
        loop {
            match inbound.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Closed::Locally),
                Poll::Pending => return Poll::Pending,
            }
            match connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(s))) => {
                    if inbound.send_item(s).is_err() {
                        return Poll::Ready(Closed::Locally);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Closed::Lost(e.to_string())),
                Poll::Ready(None) => {
                    return Poll::Ready(Closed::Lost("the peer ended the connection".into()));
                }
                Poll::Pending => {
                    inbound.abort_send();
                    return Poll::Pending;
                }
            }
        }
    })
    .await;
    if end == Closed::Locally {
        let _ = tokio::time::timeout(
            CLOSE_LINGER,
            std::future::poll_fn(|cx| connection.poll_close(cx)),
        )
        .await;
    }
    for tx in waiting {
        let _ = tx.send(Err(end.to_string()));
    }
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
struct MuxSend(tokio::io::WriteHalf<Compat<yamux::Stream>>);

impl AsyncWrite for MuxSend {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl SendHalf for MuxSend {
    fn stopped(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

fn split(s: Compat<yamux::Stream>) -> Stream {
    let (r, w) = tokio::io::split(s);
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
            .unwrap_or_else(|| Closed::Lost("connection ended".into()))
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
            let (tx, rx) = oneshot::channel();
            self.opens.send(tx).map_err(|_| self.ended())?;
            match rx.await {
                Ok(Ok(s)) => Ok(split(s.compat())),
                Ok(Err(e)) => Err(self
                    .close_reason()
                    .unwrap_or(Closed::Lost(format!("cannot open a stream: {e}")))),
                Err(_) => Err(self.ended()),
            }
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<Stream, Closed>> {
        Box::pin(async move {
            let mut rx = self.inbound.lock().await;
            loop {
                let s = rx.recv().await.ok_or_else(|| self.ended())?;
                // Acknowledge at once (an empty frame carries the ACK): yamux lets a peer
                // have only 256 streams unacknowledged, and a request is otherwise
                // acknowledged only by its response, so a thousand slow requests would
                // stall at the 257th. A stream the peer already gave up on is skipped: it
                // is that stream's end, not the connection's.
                let mut s = s.compat();
                if tokio::io::AsyncWriteExt::write(&mut s, &[]).await.is_ok() {
                    return Ok(split(s));
                }
            }
        })
    }

    fn close(&self, _code: u32, _reason: &[u8]) {
        self.close.cancel();
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
