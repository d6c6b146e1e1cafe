//! A Unix socket: the transport for containers started with no network at all. The socket
//! file is mounted into the container, and its permissions decide who may attach; no TLS,
//! streams multiplexed by [HTTP/2](crate::mux).

use std::path::Path;

use tokio::net::UnixStream;

use crate::mux::{self, MuxParams, Role};
use crate::transport::{Conn, Peer, TransportKind};

/// Connect to the gateway's socket at `path`.
pub async fn dial(path: &Path, params: MuxParams) -> Result<Conn, String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect unix:{}: {e}", path.display()))?;
    mux::connect(
        stream,
        Role::Client,
        TransportKind::Unix,
        Peer::Unix {
            path: path.to_owned(),
            uid: None,
        },
        params,
    )
    .await
}

/// The gateway's side of a connection accepted on the socket at `path`.
pub async fn accept(stream: UnixStream, path: &Path, params: MuxParams) -> Result<Conn, String> {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    mux::connect(
        stream,
        Role::Server,
        TransportKind::Unix,
        Peer::Unix {
            path: path.to_owned(),
            uid,
        },
        params,
    )
    .await
}
