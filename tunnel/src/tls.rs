//! TLS 1.3 over TCP: the transport for networks that block UDP. The gateway accepts it on its
//! public HTTPS port, told apart from browsers by ALPN, so a connector that may dial only
//! 443/tcp still gets through. Streams are multiplexed by [HTTP/2](crate::mux).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::mux::{self, MuxParams, Role};
use crate::transport::{Conn, Peer, TransportKind};

/// Connect to `target` over TCP and TLS (`tls` must carry the tunnel ALPN), checking the
/// certificate for `server_name`.
pub async fn dial(
    target: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    params: MuxParams,
) -> Result<Conn, String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("tcp connect {target}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("server name `{server_name}`: {e}"))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    if stream.get_ref().1.alpn_protocol() != Some(netwall_proto::wire::TUNNEL_ALPN) {
        return Err("the server did not agree to the tunnel protocol (ALPN)".into());
    }
    mux::connect(
        stream,
        Role::Client,
        TransportKind::Tls,
        Peer::Addr(target),
        params,
    )
    .await
}

/// The gateway's side of a TLS connection whose handshake chose the tunnel ALPN.
pub async fn accept<T>(stream: T, remote: SocketAddr, params: MuxParams) -> Result<Conn, String>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    mux::connect(
        stream,
        Role::Server,
        TransportKind::Tls,
        Peer::Addr(remote),
        params,
    )
    .await
}
