//! Streams multiplexed over one ordered byte stream with HTTP/2 (the h2 crate): the carrier of
//! the TLS/TCP and Unix-socket transports, and of the in-memory pipe the tunnel tests use.
//!
//! HTTP/2 lets only its client open streams, and in a tunnel the gateway (the side that
//! accepted the byte stream) opens one per request. So the roles are turned around: the
//! gateway is the HTTP/2 client over the connection the connector dialed, and the connector is
//! the HTTP/2 server. The connector's one stream of its own, the control stream, is the first
//! stream the gateway opens: [`Connection::open`] on the connector side returns it, and
//! [`Connection::accept`] on the gateway side hands it over. Each tunnel stream is one HTTP/2
//! stream (a `POST /` and its `200`), its bytes DATA frames under HTTP/2 flow control; a reset
//! stream tells the sender its peer stopped ([`SendHalf::stopped`]). h2 is the multiplexer
//! hyper uses: ops/bench measured it at 3.3x yamux's small-stream rate (see the README).
//!
//! HTTP/2 has no application close code a client can send: a peer sees [`Closed::Lost`], and
//! anything it must learn before the end (a reject, a drain) travels on the control stream.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::transport::{
    BoxFuture, Closed, Conn, Connection, Peer, SendHalf, Stream, TransportKind,
};

/// Receive window of one stream: what a sender may have in flight before its reader catches
/// up. 1 MiB, as hyper's HTTP/2 default, keeps a bulk stream moving at loopback speed while a
/// stalled reader pins at most this much.
const STREAM_WINDOW: u32 = 1024 * 1024;

/// Receive window of the whole connection, across its streams: see [`crate::CONNECTION_WINDOW`].
const CONNECTION_WINDOW: u32 = crate::CONNECTION_WINDOW;

/// Largest DATA frame sent: fewer frames per bulk byte than HTTP/2's 16 KiB default.
const MAX_FRAME: u32 = 64 * 1024;

/// Writes are gathered up to this until HTTP/2 flushes: h2 hands a frame's header and its
/// payload over as separate writes, and unbuffered each would be its own TLS record and
/// syscall. One buffer per tunnel connection, so its size costs next to nothing.
const WRITE_BUFFER: usize = 32 * 1024;

/// h2 ends a connection after 1,024 streams it reset itself (a defence of public servers
/// against clients that provoke resets). In a tunnel every request stream a relay drops
/// before reading its peer's end is such a reset, and both peers are authenticated tunnel
/// ends (the gateway opens only the control stream before the hello), so the count is off.
const MAX_LOCAL_RESETS: Option<usize> = None;

/// h2 also ends a connection once more than 20 streams its peer reset are still waiting to be
/// accepted. In a tunnel that is a burst of clients giving up together (a load generator's
/// deadline, a closed browser) while the connector is busy: one client's abandoned requests
/// must not take down the tunnel every other client shares. The gateway is the only peer and
/// opens a stream only for a request its own limits admitted, so the count is off too.
const MAX_PENDING_ACCEPT_RESETS: usize = usize::MAX;

/// Streams the gateway opened that the connector has not accepted yet; beyond this the
/// connection waits for the connector, which accepts each request stream at once.
pub const CONNECTOR_ACCEPT_BACKLOG: usize = 256;

/// Which end of the byte stream this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed (the connector): HTTP/2 server.
    Client,
    /// The side that accepted (the gateway): HTTP/2 client.
    Server,
}

/// Settings for one multiplexed connection.
#[derive(Debug, Clone, Copy)]
pub struct MuxParams {
    /// Request streams the gateway may have open at once (set by the connector).
    pub max_streams: usize,
    /// Streams the gateway opened that are not accepted yet (connector side).
    pub accept_backlog: usize,
}

/// Shared end-of-connection state.
struct State {
    reason: watch::Sender<Option<Closed>>,
    close: CancellationToken,
}

impl State {
    fn new() -> Arc<State> {
        Arc::new(State {
            reason: watch::channel(None).0,
            close: CancellationToken::new(),
        })
    }

    fn end(&self, why: Closed) {
        self.reason.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(why);
                true
            } else {
                false
            }
        });
    }

    fn reason(&self) -> Option<Closed> {
        self.reason.borrow().clone()
    }

    async fn closed(&self) -> Closed {
        let mut rx = self.reason.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(c) => c.clone().unwrap_or(Closed::Locally),
            Err(_) => Closed::Locally,
        }
    }
}

fn lost(e: &h2::Error) -> Closed {
    Closed::Lost(e.to_string())
}

/// Multiplex `io`: the HTTP/2 handshake runs here (the gateway also opens the control stream).
pub async fn connect<T>(
    io: T,
    role: Role,
    kind: TransportKind,
    peer: Peer,
    params: MuxParams,
) -> Result<Conn, String>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = Gather::new(io);
    match role {
        Role::Server => gateway_side(io, kind, peer).await,
        Role::Client => connector_side(io, kind, peer, params).await,
    }
}

/// The byte stream under HTTP/2, gathering its writes. h2 writes each frame as it is
/// queued and flushes at the end of every turn of its connection task, and that task is
/// woken by every stream that queues a frame: with many requests in flight, most flushes
/// would carry one request's frames. A flush here first waits one turn of the scheduler, so
/// the stream tasks already runnable queue theirs and the turn after sends them together:
/// one write and one TLS record for many requests, as QUIC batches its packets. An idle
/// connection is not delayed: with nothing else runnable, that turn comes at once.
struct Gather<T> {
    inner: tokio::io::BufWriter<T>,
    /// The flush has waited its turn.
    waited: bool,
}

impl<T: AsyncWrite> Gather<T> {
    fn new(io: T) -> Self {
        Gather {
            inner: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, io),
            waited: false,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gather<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gather<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.inner.buffer().is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.waited = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === gateway side: HTTP/2 client ===

/// One multiplexed connection, either end.
struct MuxConn {
    kind: TransportKind,
    peer: Peer,
    state: Arc<State>,
    side: Side,
}

/// What differs between the ends: who opens streams, and where the control stream is.
enum Side {
    /// The gateway: opens request streams; the control stream it opened waits for `accept`.
    Gateway {
        send: h2::client::SendRequest<Bytes>,
        control: Mutex<Option<Stream>>,
    },
    /// The connector: accepts request streams; the control stream waits for `open`.
    Connector {
        control: Mutex<Option<oneshot::Receiver<Stream>>>,
        inbound: Mutex<mpsc::Receiver<Stream>>,
    },
}

async fn gateway_side<T>(io: T, kind: TransportKind, peer: Peer) -> Result<Conn, String>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_local_error_reset_streams(MAX_LOCAL_RESETS)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("http/2 handshake: {e}"))?;
    let state = State::new();
    let driver = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = connection => driver.end(match r {
                Ok(()) => Closed::Lost("the peer ended the connection".into()),
                Err(e) => lost(&e),
            }),
            _ = driver.close.cancelled() => driver.end(Closed::Locally),
        }
    });
    // The connector's control stream, opened on its behalf.
    let control = open_request(&send, &state)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(MuxConn {
        kind,
        peer,
        state,
        side: Side::Gateway {
            send,
            control: Mutex::new(Some(control)),
        },
    }))
}

/// Gateway side: open a stream as an HTTP/2 request.
async fn open_request(
    send: &h2::client::SendRequest<Bytes>,
    state: &State,
) -> Result<Stream, Closed> {
    if let Some(c) = state.reason() {
        return Err(c);
    }
    let fail = |e: h2::Error| state.reason().unwrap_or_else(|| lost(&e));
    // Waits while the connector's stream limit is reached.
    let mut send = send.clone().ready().await.map_err(fail)?;
    let request = Request::post("http://tunnel/")
        .body(())
        .map_err(|e| Closed::Lost(e.to_string()))?;
    let (response, body) = send.send_request(request, false).map_err(fail)?;
    Ok(Stream {
        send: Box::new(H2Send::Open(body)),
        recv: Box::new(H2Recv::Waiting(response)),
    })
}

// === connector side: HTTP/2 server ===

async fn connector_side<T>(
    io: T,
    kind: TransportKind,
    peer: Peer,
    params: MuxParams,
) -> Result<Conn, String>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(u32::try_from(params.max_streams).unwrap_or(u32::MAX))
        .max_local_error_reset_streams(MAX_LOCAL_RESETS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("http/2 handshake: {e}"))?;
    let state = State::new();
    let (control_tx, control_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(params.accept_backlog.max(1));
    let driver = state.clone();
    tokio::spawn(async move {
        let mut control_tx = Some(control_tx);
        let end = loop {
            let next = tokio::select! {
                n = connection.accept() => n,
                _ = driver.close.cancelled() => {
                    connection.abrupt_shutdown(Reason::NO_ERROR);
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(100),
                        std::future::poll_fn(|cx| connection.poll_closed(cx)),
                    )
                    .await;
                    break Closed::Locally;
                }
            };
            let (request, respond) = match next {
                Some(Ok(v)) => v,
                Some(Err(e)) => break lost(&e),
                None => break Closed::Lost("the peer ended the connection".into()),
            };
            // The response head goes out with the first bytes the connector sends, in one
            // flush with them: one frame and one wakeup less per request.
            let stream = Stream {
                send: Box::new(H2Send::Respond(Some(respond))),
                recv: Box::new(H2Recv::Body(request.into_body(), Bytes::new())),
            };
            match control_tx.take() {
                Some(c) => {
                    let _ = c.send(stream);
                }
                // A full backlog pauses the connection until the connector accepts.
                None => {
                    if tx.send(stream).await.is_err() {
                        break Closed::Locally;
                    }
                }
            }
        };
        driver.end(end);
    });
    Ok(Arc::new(MuxConn {
        kind,
        peer,
        state,
        side: Side::Connector {
            control: Mutex::new(Some(control_rx)),
            inbound: Mutex::new(rx),
        },
    }))
}

impl Connection for MuxConn {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn peer(&self) -> Peer {
        self.peer.clone()
    }

    /// Gateway: a new request stream. Connector: its control stream (the gateway opened it
    /// on this side's behalf), once only.
    fn open(&self) -> BoxFuture<'_, Result<Stream, Closed>> {
        Box::pin(async move {
            match &self.side {
                Side::Gateway { send, .. } => open_request(send, &self.state).await,
                Side::Connector { control, .. } => {
                    if let Some(c) = self.state.reason() {
                        return Err(c);
                    }
                    let rx = control.lock().await.take().ok_or_else(|| {
                        Closed::Lost("a connector opens only its control stream".into())
                    })?;
                    match rx.await {
                        Ok(s) => Ok(s),
                        Err(_) => Err(self.state.closed().await),
                    }
                }
            }
        })
    }

    /// Gateway: the connector's control stream, then nothing (a connector opens nothing
    /// else). Connector: the next request stream.
    fn accept(&self) -> BoxFuture<'_, Result<Stream, Closed>> {
        Box::pin(async move {
            let next = match &self.side {
                Side::Gateway { control, .. } => control.lock().await.take(),
                Side::Connector { inbound, .. } => inbound.lock().await.recv().await,
            };
            match next {
                Some(s) => Ok(s),
                None => Err(self.state.closed().await),
            }
        })
    }

    fn close(&self, _code: u32, _reason: &[u8]) {
        self.state.close.cancel();
    }

    fn closed(&self) -> BoxFuture<'_, Closed> {
        Box::pin(self.state.closed())
    }

    fn close_reason(&self) -> Option<Closed> {
        self.state.reason()
    }
}

// === stream halves ===

/// Sending half: bytes become DATA frames as HTTP/2 flow control allows. Dropped without a
/// shutdown, it still ends the stream (END_STREAM), as a dropped QUIC stream finishes: the
/// frames on it say whether the exchange was complete.
enum H2Send {
    /// The connector's side before its first bytes: the response head is not sent yet.
    Respond(Option<h2::server::SendResponse<Bytes>>),
    /// A stream whose head is out.
    Open(SendStream<Bytes>),
}

impl H2Send {
    /// The stream, sending the response head first if it has not gone out.
    fn stream(&mut self) -> std::io::Result<&mut SendStream<Bytes>> {
        if let H2Send::Respond(respond) = self {
            let mut r = respond
                .take()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            let s = r
                .send_response(Response::new(()), false)
                .map_err(std::io::Error::other)?;
            *self = H2Send::Open(s);
        }
        match self {
            H2Send::Open(s) => Ok(s),
            H2Send::Respond(_) => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl Drop for H2Send {
    fn drop(&mut self) {
        match self {
            H2Send::Respond(Some(r)) => {
                let _ = r.send_response(Response::new(()), true);
            }
            H2Send::Respond(None) => {}
            H2Send::Open(s) => {
                let _ = s.send_data(Bytes::new(), true);
            }
        }
    }
}

fn reset_error(r: Result<Reason, h2::Error>) -> std::io::Error {
    match r {
        Ok(reason) => std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            format!("stream reset by peer: {reason}"),
        ),
        Err(e) => std::io::Error::other(e),
    }
}

impl H2Send {
    /// Send up to `len` bytes as flow control allows; `take(n)` hands over the first `n`.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<std::io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let s = self.stream()?;
        s.reserve_capacity(len);
        match ready!(s.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(len);
                match s.send_data(take(n), false) {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(_) => Poll::Ready(Err(reset_error(ready!(s.poll_reset(cx))))),
                }
            }
            // No window yet: try again on the next turn.
            Some(Ok(_)) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Err(_)) | None => Poll::Ready(Err(reset_error(ready!(s.poll_reset(cx))))),
        }
    }
}

impl AsyncWrite for H2Send {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_send(cx, buf.len(), |n| Bytes::copy_from_slice(&buf[..n]))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Frames go out as the connection is driven; there is nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // END_STREAM; a stream already ended or reset has nothing left to close.
        if let Ok(s) = self.stream() {
            let _ = s.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

impl SendHalf for H2Send {
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<std::io::Result<usize>> {
        // h2 queues DATA frames as `Bytes`: a slice of `data` goes as it is.
        let len = data.len();
        self.poll_send(cx, len, |n| data.split_to(n))
    }

    fn stopped(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = std::future::poll_fn(|cx| match self {
                H2Send::Respond(Some(r)) => r.poll_reset(cx).map(|_| ()),
                H2Send::Respond(None) => Poll::Ready(()),
                H2Send::Open(s) => s.poll_reset(cx).map(|_| ()),
            })
            .await;
        })
    }
}

/// Receiving half: DATA frames as bytes; the window is returned as each frame arrives, so at
/// most one frame waits here unread.
enum H2Recv {
    /// The gateway's stream, until the connector's response head arrives.
    Waiting(h2::client::ResponseFuture),
    /// The body, and what is left of the last frame.
    Body(RecvStream, Bytes),
    /// Ended.
    Done,
}

impl AsyncRead for H2Recv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            match &mut *self {
                H2Recv::Waiting(response) => match ready!(Pin::new(response).poll(cx)) {
                    Ok(r) => *self = H2Recv::Body(r.into_body(), Bytes::new()),
                    Err(e) => {
                        *self = H2Recv::Done;
                        return Poll::Ready(Err(std::io::Error::other(e)));
                    }
                },
                H2Recv::Body(body, left) => {
                    if !left.is_empty() {
                        let n = left.len().min(buf.remaining());
                        buf.put_slice(&left[..n]);
                        left.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    match ready!(body.poll_data(cx)) {
                        Some(Ok(chunk)) => {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            *left = chunk;
                        }
                        Some(Err(e)) => {
                            *self = H2Recv::Done;
                            return Poll::Ready(Err(std::io::Error::other(e)));
                        }
                        None => {
                            *self = H2Recv::Done;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                H2Recv::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
