//! Connections to local services, over TCP or a Unix socket, for hyper's pooled client.
//!
//! Each service gets its own client (and so its own keep-alive pool) whose connector always
//! dials that service's address, whatever the request URI says: the URI only carries the
//! path, so a request can never steer the connector to another address.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
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
}

impl tower_service::Service<Uri> for LocalConnector {
    type Response = LocalStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<LocalStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.target.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let connect = async {
                match &*target {
                    ServiceTarget::Tcp { authority } => {
                        let s = TcpStream::connect(authority.as_str()).await?;
                        let _ = s.set_nodelay(true);
                        Ok(LocalStream::Tcp(TokioIo::new(s)))
                    }
                    ServiceTarget::Unix(path) => Ok(LocalStream::Unix(TokioIo::new(
                        UnixStream::connect(path).await?,
                    ))),
                }
            };
            tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "service connect timed out"))?
        })
    }
}

/// A connection to a local service.
pub enum LocalStream {
    /// TCP.
    Tcp(TokioIo<TcpStream>),
    /// Unix socket.
    Unix(TokioIo<UnixStream>),
}

impl Connection for LocalStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for LocalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            LocalStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl Write for LocalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            LocalStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            LocalStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            LocalStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
