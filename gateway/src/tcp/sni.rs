//! TCP routes on the shared HTTPS port: the ClientHello is read first (rustls parses it), its
//! server name chooses between HTTP and a `[[tcp_route]]` with `sni`, and the bytes read are
//! kept so a passed-through connection reaches its service exactly as the client sent it.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most a ClientHello may take before the connection is dropped: rustls bounds one
/// handshake message at 64 KiB, and a record header comes with every 16 KiB of it.
pub const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024 + 4 * 5;

/// Bytes read from the socket at a time while the ClientHello arrives: one read holds a
/// browser's (post-quantum key shares included).
const HELLO_READ: usize = 4096;

/// A connection whose ClientHello has been read.
pub struct Hello {
    /// The socket, positioned after the bytes in `recorded`.
    pub tcp: TcpStream,
    /// Every byte read so far, the hello and anything after it.
    pub recorded: Vec<u8>,
    /// The server name the client asked for, lowercased.
    pub server_name: Option<String>,
}

/// Read until rustls has a complete ClientHello.
pub async fn read_client_hello(mut tcp: TcpStream) -> Result<Hello, String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut recorded = Vec::with_capacity(HELLO_READ);
    let mut buf = [0u8; HELLO_READ];
    loop {
        let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before its ClientHello".into());
        }
        if recorded.len() + n > MAX_CLIENT_HELLO_BYTES {
            return Err("ClientHello too large".into());
        }
        recorded.extend_from_slice(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) => return Err("TLS record buffer full before a ClientHello".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted
                    .client_hello()
                    .server_name()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                return Ok(Hello {
                    tcp,
                    recorded,
                    server_name,
                });
            }
            Ok(None) => {}
            Err((e, _alert)) => return Err(e.to_string()),
        }
    }
}

/// A socket whose first bytes, already read, are read again: a passed-through connection.
pub struct Replayed {
    head: Vec<u8>,
    at: usize,
    tcp: TcpStream,
}

impl Replayed {
    /// `head` (read from `tcp` already) first, then `tcp`.
    pub fn new(head: Vec<u8>, tcp: TcpStream) -> Self {
        Replayed { head, at: 0, tcp }
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
