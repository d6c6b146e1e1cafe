//! Lingering close for public connections the edge ends with an error answer.
//!
//! When the edge answers before it has read the request body (`413`, a malformed body) and
//! closes the connection, the client may still be sending. Closing a socket with unread data
//! makes the kernel send a reset, and a client that writes its whole body before reading
//! then loses the answer it was sent. So such a connection is not dropped at once: after the
//! answer and the TLS close, what the client still sends is read and discarded, up to
//! [`LINGER_BYTES`] or [`LINGER_TIME`], whichever comes first (nginx's `lingering_close`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest a closing connection keeps reading (nginx's `lingering_time` is 30 s; the edge
/// needs only long enough for a body in flight to land).
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Most bytes a closing connection reads and discards.
pub const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// Set by the request handler when the connection must linger when it ends.
#[derive(Debug, Clone, Default)]
pub struct LingerFlag(Arc<AtomicBool>);

impl LingerFlag {
    /// Ask for a lingering close.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection that lingers on drop when its flag is set.
pub struct Lingering<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<T>,
    flag: LingerFlag,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<T> {
    /// Wrap `io`.
    pub fn new(io: T, flag: LingerFlag) -> Self {
        Lingering { io: Some(io), flag }
    }

    fn io(&mut self) -> io::Result<&mut T> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<T> {
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else {
            return;
        };
        if !self.flag.is_set() {
            return;
        }
        // Only inside a runtime (always, for the listeners); elsewhere the socket just closes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(LINGER_TIME, async {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut (&mut io).take(LINGER_BYTES), &mut sink).await;
                })
                .await;
            });
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_shutdown(cx)
    }
}
