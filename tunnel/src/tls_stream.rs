//! A TLS server connection over any byte stream, on rustls's unbuffered API: the buffers are
//! this module's, and each is given back as soon as it is empty.
//!
//! rustls's buffered connection (what tokio-rustls drives) keeps a 4 KiB receive buffer for a
//! connection's whole life. Here there are three buffers, and a connection that waits (an idle
//! keep-alive, an open WebSocket, an idle tunnel) holds none of them:
//! - ciphertext received and not yet processed: the first read after a pause goes onto the
//!   stack, and only a partial record is kept on the heap;
//! - plaintext decrypted and not yet read: written straight into the reader's buffer, only the
//!   part that does not fit is kept;
//! - ciphertext encrypted and not yet sent: freed once the transport took it all.
//!
//! Reads ask the transport for up to [`READ_CHUNK`] bytes, so a bulk upload's 16 KiB records
//! cost one system call each (rustls reads 4 KiB at a time). What is buffered is bounded:
//! received ciphertext by [`MAX_INCOMING`], unsent ciphertext by [`MAX_WRITE`] of plaintext per
//! write call, unread plaintext by what was already received.
//!
//! Semantics follow tokio-rustls: a clean end of stream is the peer's `close_notify`; a
//! transport that ends without one is an `UnexpectedEof` error; a TLS failure is `InvalidData`
//! after a last attempt to send the alert rustls queued for the peer.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read onto the stack by the first read after a pause: a small request or message
/// whole. When it fills, the rest is read into a heap buffer of [`READ_CHUNK`].
const IDLE_READ: usize = 4096;

/// Bytes asked of the transport per read once data is flowing: two full TLS records.
const READ_CHUNK: usize = 32 * 1024;

/// The most received ciphertext held while a record or handshake message is incomplete:
/// rustls bounds a handshake message at 64 KiB, which may span several records, plus one
/// read beyond it. A peer that sends more without completing anything is refused.
const MAX_INCOMING: usize = 64 * 1024 + READ_CHUNK;

/// The most plaintext one write call accepts: bounds the ciphertext a connection holds when
/// the transport takes less, which any further write waits on.
const MAX_WRITE: usize = 64 * 1024;

/// Times a failed connection is asked for the alert it queued: one alert, and a margin.
const ALERT_DRAIN_STEPS: usize = 4;

/// A TLS server connection over `IO`.
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received ciphertext; `incoming[in_start..]` is not processed yet.
    incoming: Vec<u8>,
    in_start: usize,
    /// Decrypted bytes the reader did not take yet: `plain[plain_start..]`.
    plain: Vec<u8>,
    plain_start: usize,
    /// Ciphertext the transport has not taken yet: `outgoing.buf[out_start..outgoing.end]`.
    outgoing: Ciphertext,
    out_start: usize,
    /// `outgoing.end` when it holds only the TLS 1.3 session tickets written at the end of the
    /// handshake: they wait for this side's first write (or its close) and go out in the
    /// same system call, instead of a segment of their own that wakes the client for
    /// nothing. Anything else queued after them sends them at once. (A connection that has
    /// not answered yet holds these few hundred bytes.)
    tickets_held: Option<usize>,
    /// The peer sent `close_notify`: reads end here.
    peer_closed: bool,
    /// The transport's read side ended.
    eof: bool,
    /// This side sent `close_notify`.
    close_sent: bool,
    /// A TLS error ended the connection; every later call fails with it.
    failed: Option<String>,
}

/// Ciphertext being built: `buf[..end]`. The buffer's length is its initialised size, so
/// encrypting into a buffer that already grew needs no zeroing.
#[derive(Default)]
struct Ciphertext {
    buf: Vec<u8>,
    end: usize,
}

impl Ciphertext {
    /// Run `f` on the unused part of the buffer; when it needs more room, grow the buffer to
    /// what it asked for and run it once more. Returns the bytes `f` wrote.
    fn append<E: std::fmt::Display>(
        &mut self,
        mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> io::Result<usize> {
        let written = match f(&mut self.buf[self.end..]) {
            Ok(n) => n,
            Err(e) => {
                let Some(required) = needs(&e) else {
                    return Err(io::Error::other(e.to_string()));
                };
                if self.buf.is_empty() {
                    // A fresh buffer: the allocator may hand out memory known to be zero.
                    self.buf = vec![0; required];
                } else {
                    self.buf.resize(self.end + required, 0);
                }
                f(&mut self.buf[self.end..]).map_err(|e| io::Error::other(e.to_string()))?
            }
        };
        self.end += written;
        Ok(written)
    }
}

thread_local! {
    /// Where the slices of a vectored write are joined into one plaintext.
    static JOINED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// Where a write's ciphertext is built when nothing is waiting before it: handed to the
    /// transport from here, so a connection holds none of it unless the transport leaves
    /// some (one buffer per runtime thread, grown once, never zeroed again).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What the caller of one processing step wants sent, if the connection can take it.
enum Outbound<'a> {
    /// Nothing: only process what was received.
    Nothing,
    /// Encrypt this plaintext.
    Data(&'a [u8]),
    /// Queue `close_notify`.
    CloseNotify,
}

/// What one processing step did.
enum Step {
    /// Something changed (plaintext or ciphertext produced, a state passed): step again.
    Progress,
    /// Nothing more can happen without more input from the peer.
    NeedInput,
    /// The plaintext (or close) asked for was encrypted: this many bytes of it.
    Sent(usize),
    /// Both sides closed: nothing will be read or written again.
    Closed,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Complete a server handshake on `io` with `config`. `received` holds bytes already read
    /// from `io` (a ClientHello looked at first), processed before anything else is read.
    pub async fn accept(io: IO, config: Arc<ServerConfig>, received: Vec<u8>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = TlsStream {
            io,
            conn,
            incoming: received,
            in_start: 0,
            plain: Vec::new(),
            plain_start: 0,
            outgoing: Ciphertext::default(),
            out_start: 0,
            tickets_held: None,
            peer_closed: false,
            eof: false,
            close_sent: false,
            failed: None,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The application protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The certificate chain the client presented, leaf first, if it was asked for one.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The TLS version agreed.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The transport underneath.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Bytes held in this connection's buffers now (received, decrypted and unsent).
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.buf.capacity()
    }

    /// A failed step's error, after a last attempt to send what rustls queued for the peer
    /// (its alert).
    fn failed_with(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        if self.out_start < self.outgoing.end {
            let _ = self.poll_send(cx);
        }
        e
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = match self.step_own(None, Outbound::Nothing) {
                Ok(s) => s,
                Err(e) => return Poll::Ready(Err(self.failed_with(cx, e))),
            };
            match step {
                Step::Progress => continue,
                Step::NeedInput if !self.conn.is_handshaking() => {
                    // Done, and everything already received is processed. A TLS 1.3 server's
                    // last flight is its session tickets, which no client waits for: they go
                    // out with the first response. Any other last flight (TLS 1.2's Finished)
                    // is awaited by the peer and goes out now.
                    if self.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
                        && self.out_start < self.outgoing.end
                    {
                        self.tickets_held = Some(self.outgoing.end);
                        return Poll::Ready(Ok(()));
                    }
                    return self.poll_send(cx);
                }
                Step::NeedInput => {
                    // The peer needs our flight before it sends anything more.
                    ready!(self.poll_send(cx))?;
                    let filled = match ready!(self.poll_fill(cx)) {
                        Ok(n) => n,
                        Err(e) => return Poll::Ready(Err(self.failed_with(cx, e))),
                    };
                    if filled == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed during the TLS handshake",
                        )));
                    }
                }
                Step::Sent(_) | Step::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "connection closed during the TLS handshake",
                    )));
                }
            }
        }
    }

    /// [`Self::step`] with ciphertext going to this connection's own buffer.
    fn step_own(&mut self, read: Option<&mut ReadBuf<'_>>, send: Outbound<'_>) -> io::Result<Step> {
        let mut out = std::mem::take(&mut self.outgoing);
        let step = self.step(read, send, &mut out);
        self.outgoing = out;
        step
    }

    /// One call into rustls with what was received; `read` takes plaintext first (then
    /// `plain`), `send` is encrypted if the connection can take application data now, and
    /// ciphertext produced goes to `out`.
    fn step(
        &mut self,
        mut read: Option<&mut ReadBuf<'_>>,
        send: Outbound<'_>,
        out: &mut Ciphertext,
    ) -> io::Result<Step> {
        if let Some(why) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let UnbufferedStatus { mut discard, state } = self
            .conn
            .process_tls_records(&mut self.incoming[self.in_start..]);
        let step = match state {
            Err(e) => {
                self.in_start += discard;
                return Err(self.fail(e.to_string(), out));
            }
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                while let Some(record) = traffic.next_record() {
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            let why = e.to_string();
                            drop(traffic);
                            self.in_start += discard;
                            return Err(self.fail(why, out));
                        }
                    };
                    discard += record.discard;
                    let mut payload = record.payload;
                    if let Some(buf) = read.as_deref_mut()
                        && self.plain_start == self.plain.len()
                    {
                        let n = payload.len().min(buf.remaining());
                        buf.put_slice(&payload[..n]);
                        payload = &payload[n..];
                    }
                    self.plain.extend_from_slice(payload);
                }
                Step::Progress
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                out.append(
                    |o| encode.encode(o),
                    |e| match e {
                        EncodeError::InsufficientSize(s) => Some(s.required_size),
                        _ => None,
                    },
                )?;
                Step::Progress
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                // The flight is queued in `outgoing`, which goes out in order before anything
                // produced later: for rustls it is as good as sent.
                transmit.done();
                Step::Progress
            }
            Ok(ConnectionState::WriteTraffic(mut traffic)) => match send {
                Outbound::Nothing => Step::NeedInput,
                Outbound::Data(data) => {
                    out.append(
                        |o| traffic.encrypt(data, o),
                        |e| match e {
                            EncryptError::InsufficientSize(s) => Some(s.required_size),
                            _ => None,
                        },
                    )?;
                    Step::Sent(data.len())
                }
                Outbound::CloseNotify => {
                    out.append(
                        |o| traffic.queue_close_notify(o),
                        |e| match e {
                            EncryptError::InsufficientSize(s) => Some(s.required_size),
                            _ => None,
                        },
                    )?;
                    Step::Sent(0)
                }
            },
            Ok(ConnectionState::BlockedHandshake) => Step::NeedInput,
            Ok(ConnectionState::PeerClosed) => {
                self.peer_closed = true;
                Step::Progress
            }
            Ok(ConnectionState::Closed) => {
                self.peer_closed = true;
                Step::Closed
            }
            // Early data is never enabled on these connections, and new states are not ours
            // to guess at.
            Ok(_) => {
                self.in_start += discard;
                return Err(self.fail("unexpected TLS connection state".into(), out));
            }
        };
        self.in_start += discard;
        if self.in_start == self.incoming.len() {
            // Everything received is processed; the capacity stays while data flows and is
            // given back when a read finds nothing (`poll_fill`).
            self.incoming.clear();
            self.in_start = 0;
        }
        Ok(step)
    }

    /// Record a TLS failure and queue the alert rustls prepared for the peer in `out` (sent
    /// with it, best effort).
    fn fail(&mut self, why: String, out: &mut Ciphertext) -> io::Error {
        self.failed = Some(why.clone());
        for _ in 0..ALERT_DRAIN_STEPS {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut encode)) = state else {
                break;
            };
            let encoded = out.append(
                |o| encode.encode(o),
                |e| match e {
                    EncodeError::InsufficientSize(s) => Some(s.required_size),
                    _ => None,
                },
            );
            if encoded.is_err() {
                break;
            }
        }
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Whether ciphertext waits that must go out before this side waits for the peer: anything
    /// but the held session tickets.
    fn owes_peer(&self) -> bool {
        self.out_start < self.outgoing.end && self.tickets_held != Some(self.outgoing.end)
    }

    /// Write the unsent ciphertext; the buffer is freed once the transport took it all.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tickets_held = None;
        while self.out_start < self.outgoing.end {
            let unsent = &self.outgoing.buf[self.out_start..self.outgoing.end];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_start += n;
        }
        if !self.outgoing.buf.is_empty() {
            self.outgoing = Ciphertext::default();
            self.out_start = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Read from the transport into `incoming`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.in_start > 0 {
            // Only an incomplete record remains: move it to the front.
            self.incoming.drain(..self.in_start);
            self.in_start = 0;
        }
        if self.incoming.is_empty() {
            // Between records: read onto the stack first, so a connection that waits holds
            // no buffer at all.
            let mut first = [MaybeUninit::<u8>::uninit(); IDLE_READ];
            let mut rb = ReadBuf::uninit(&mut first);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    self.incoming = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(r) => r?,
            }
            let n = rb.filled().len();
            if n == 0 {
                self.eof = true;
                return Poll::Ready(Ok(0));
            }
            let want = if n == IDLE_READ { READ_CHUNK } else { n };
            if self.incoming.capacity() < want {
                self.incoming = Vec::with_capacity(want);
            }
            self.incoming.extend_from_slice(rb.filled());
            return Poll::Ready(Ok(n));
        }
        let held = self.incoming.len();
        if held >= MAX_INCOMING {
            let mut out = std::mem::take(&mut self.outgoing);
            let e = self.fail(
                format!("{held} bytes received without a complete TLS record or handshake message"),
                &mut out,
            );
            self.outgoing = out;
            return Poll::Ready(Err(e));
        }
        let want = READ_CHUNK.min(MAX_INCOMING - held);
        self.incoming.reserve(want);
        let spare = &mut self.incoming.spare_capacity_mut()[..want];
        let mut rb = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
        unsafe { self.incoming.set_len(held + n) };
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Give the reader what `plain` holds; `true` if it held anything.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let unread = &self.plain[self.plain_start..];
        if unread.is_empty() {
            return false;
        }
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        self.plain_start += n;
        if self.plain_start == self.plain.len() {
            self.plain = Vec::new();
            self.plain_start = 0;
        }
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.take_plain(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let step = match this.step_own(Some(buf), Outbound::Nothing) {
                Ok(s) => s,
                Err(e) => return Poll::Ready(Err(this.failed_with(cx, e))),
            };
            match step {
                Step::Progress | Step::Sent(_) => {
                    if buf.filled().len() > before {
                        // Output produced on the way (a key update, an alert) goes out too.
                        if this.owes_peer()
                            && let Poll::Ready(Err(e)) = this.poll_send(cx)
                        {
                            return Poll::Ready(Err(e));
                        }
                        return Poll::Ready(Ok(()));
                    }
                }
                Step::Closed => return Poll::Ready(Ok(())),
                Step::NeedInput => {
                    // What the peer is owed (a key update, an alert) goes out before waiting.
                    if this.owes_peer()
                        && let Poll::Ready(Err(e)) = this.poll_send(cx)
                    {
                        return Poll::Ready(Err(e));
                    }
                    if this.eof {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed connection without sending TLS close_notify",
                        )));
                    }
                    if let Err(e) = ready!(this.poll_fill(cx)) {
                        return Poll::Ready(Err(this.failed_with(cx, e)));
                    }
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Encrypt up to [`MAX_WRITE`] bytes of `buf` and hand them to the transport.
    fn poll_write_plain(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &buf[..buf.len().min(MAX_WRITE)];
        if self.tickets_held.take().is_some() {
            // The held tickets and this write's records leave in one system call; what the
            // transport does not take now waits here, as for any write.
            let mut out = std::mem::take(&mut self.outgoing);
            let sent = self.encrypt(data, &mut out);
            self.outgoing = out;
            return match (self.poll_send(cx), sent) {
                (Poll::Ready(Err(e)), _) | (_, Err(e)) => Poll::Ready(Err(e)),
                (_, Ok(n)) => Poll::Ready(Ok(n)),
            };
        }
        // Earlier ciphertext goes first: while the transport has not taken it, nothing more
        // is accepted, so a connection holds at most one write's ciphertext.
        if self.out_start < self.outgoing.end {
            ready!(self.poll_send(cx))?;
        }
        // Nothing waits: the ciphertext is built in the thread's scratch buffer and handed to
        // the transport from there.
        let mut out = Ciphertext {
            buf: SCRATCH.take(),
            end: 0,
        };
        let sent = self.encrypt(data, &mut out);
        // Hand it over (an alert after a failure too); what the transport does not take now
        // is this connection's to send before anything else.
        let mut at = 0;
        let mut transport_failed = None;
        while at < out.end {
            match Pin::new(&mut self.io).poll_write(cx, &out.buf[at..out.end]) {
                Poll::Ready(Ok(0)) => {
                    transport_failed = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Poll::Ready(Ok(n)) => at += n,
                Poll::Ready(Err(e)) => {
                    transport_failed = Some(e);
                    break;
                }
                Poll::Pending => break,
            }
        }
        if at < out.end && transport_failed.is_none() {
            let rest = out.buf[at..out.end].to_vec();
            self.outgoing = Ciphertext {
                end: rest.len(),
                buf: rest,
            };
            self.out_start = 0;
        }
        SCRATCH.set(out.buf);
        match (transport_failed, sent) {
            (Some(e), _) | (None, Err(e)) => Poll::Ready(Err(e)),
            (None, Ok(n)) => Poll::Ready(Ok(n)),
        }
    }

    /// Encrypt `data` (all of it: at most [`MAX_WRITE`] bytes) as records appended to `out`.
    fn encrypt(&mut self, data: &[u8], out: &mut Ciphertext) -> io::Result<usize> {
        loop {
            break match self.step(None, Outbound::Data(data), out) {
                Ok(Step::Sent(n)) => Ok(n),
                Ok(Step::Progress) => continue,
                Ok(Step::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
                Ok(Step::NeedInput) => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "TLS connection cannot send application data",
                )),
                Err(e) => Err(e),
            };
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plain(cx, buf)
    }

    /// Slices are joined before they are encrypted, so an HTTP/2 frame's header and payload
    /// (or a response head and its body) become full records and one system call, not a
    /// record and a write each.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), None) = (parts.next(), parts.clone().next()) else {
            let mut joined = JOINED.take();
            joined.clear();
            for b in bufs {
                let room = MAX_WRITE - joined.len();
                if room == 0 {
                    break;
                }
                joined.extend_from_slice(&b[..b.len().min(room)]);
            }
            let written = this.poll_write_plain(cx, &joined);
            JOINED.set(joined);
            return written;
        };
        this.poll_write_plain(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Sends what was written. Held session tickets stay held: HTTP servers flush each time
    /// they look for work, before the first response exists.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.owes_peer() {
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.failed.is_none() {
            // Until sent, or nothing more can be said on this connection.
            while let Ok(Step::Progress) = this.step_own(None, Outbound::CloseNotify) {}
            this.close_sent = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
