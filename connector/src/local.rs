//! Connections to local services, over TCP or a Unix socket.
//!
//! Each service gets its own dialer (and so its own keep-alive pool, [`crate::pool`]), which
//! always dials that service's address: a request only carries a path, so it can never steer
//! the connector to another address. WebSockets use the same dialer for a raw stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::ServiceTarget;

/// Dials one service.
#[derive(Clone)]
pub struct LocalConnector {
    target: Arc<ServiceTarget>,
    connect_timeout: Duration,
}

impl LocalConnector {
    /// A connector for `target`.
    pub fn new(target: ServiceTarget, connect_timeout: Duration) -> Self {
        LocalConnector {
            target: Arc::new(target),
            connect_timeout,
        }
    }

    /// A raw connection to the service, within the connect timeout.
    pub async fn connect(&self) -> io::Result<LocalIo> {
        let connect = async {
            match &*self.target {
                ServiceTarget::Tcp { authority } => {
                    let s = TcpStream::connect(authority.as_str()).await?;
                    let _ = s.set_nodelay(true);
                    Ok(LocalIo::Tcp(s))
                }
                ServiceTarget::Unix(path) => Ok(LocalIo::Unix(UnixStream::connect(path).await?)),
            }
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "service connect timed out"))?
    }
}

/// A raw connection to a local service.
pub enum LocalIo {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

impl AsyncRead for LocalIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            LocalIo::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LocalIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LocalIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            LocalIo::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            LocalIo::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            LocalIo::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
