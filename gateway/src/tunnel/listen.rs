//! Where connector connections come in: the QUIC endpoint, TLS connections on the public
//! HTTPS port whose handshake chose the tunnel ALPN, and one Unix socket per tunnel that
//! asks for one. Each accepted connection is handed to the [`TunnelServer`] in a task of
//! its own, tracked apart from public connections so it outlives the public drain.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::quic::QuicListener;
use netwall_tunnel::wireguard::{WgListener, WgPeer};
use netwall_tunnel::{Peer, tls, unix};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use super::server::{Binding, PendingSlot, TunnelServer};
use crate::config::TunnelConfig;
use netwall_tunnel::Conn;
use std::future::Future;

/// Streams one multiplexed connection may carry at once: the connector's default stream
/// limit (every open WebSocket holds one) plus its control stream. The connector announces
/// its own limit; this is the gateway's cap on what it offers.
pub const MUX_MAX_STREAMS: usize = 16_384 + 4;

/// WireGuard connections accepted but not yet taken over; beyond this the peer's new
/// connection is dropped and it dials again.
const WIREGUARD_ACCEPT_QUEUE: usize = 64;

/// Pause after a failed accept (EMFILE and the like), so it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What every tunnel listener shares.
#[derive(Clone)]
pub struct Listeners {
    /// The server connections are handed to.
    pub server: Arc<TunnelServer>,
    /// Multiplexer settings for TLS and Unix connections.
    pub mux: MuxParams,
    /// Tasks of tunnel connections.
    pub tasks: TaskTracker,
    /// Cancelled when the gateway shuts down (connectors are told to go away).
    pub shutdown: CancellationToken,
}

impl Listeners {
    /// Run one connection in a tracked task of its own.
    fn spawn<F>(
        &self,
        slot: Option<PendingSlot>,
        peer: Peer,
        binding: Binding,
        establish: F,
        span: tracing::Span,
    ) where
        F: Future<Output = Result<Conn, String>> + Send + 'static,
    {
        let run = self
            .server
            .clone()
            .run(slot, peer, binding, establish, self.shutdown.clone());
        self.tasks.spawn(run.instrument(span));
    }

    /// Accept QUIC connections until shutdown.
    pub async fn serve_quic(self, endpoint: QuicListener) {
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => match i { Some(i) => i, None => break },
                _ = self.shutdown.cancelled() => break,
            };
            let remote = incoming.remote();
            let slot = match self.server.admit(remote.ip()) {
                Ok(s) => s,
                Err(_) => {
                    incoming.refuse();
                    continue;
                }
            };
            let span = info_span!("tunnel_conn", remote = %remote, transport = "quic");
            self.spawn(
                Some(slot),
                Peer::Addr(remote),
                Binding::Any,
                incoming.establish(),
                span,
            );
        }
    }

    /// Take over a public TLS connection whose handshake chose the tunnel ALPN.
    pub fn hand_over_tls<T>(&self, stream: T, remote: SocketAddr)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Ok(slot) = self.server.admit(remote.ip()) else {
            return;
        };
        let params = self.mux;
        let span = info_span!("tunnel_conn", remote = %remote, transport = "tls");
        self.spawn(
            Some(slot),
            Peer::Addr(remote),
            Binding::Any,
            tls::accept(stream, remote, params),
            span,
        );
    }

    /// Take over the connections WireGuard peers open until `stop`. A peer's key picked its
    /// tunnel, so the connection is bound to it as a Unix socket's is.
    pub async fn serve_wireguard(self, listener: Arc<WgListener>, stop: CancellationToken) {
        let (tx, mut rx) = mpsc::channel(WIREGUARD_ACCEPT_QUEUE);
        tokio::spawn(listener.serve(tx, stop));
        while let Some(accepted) = rx.recv().await {
            let remote = accepted.remote;
            let binding = Binding::Tunnel(accepted.tunnel.clone());
            let span = info_span!("tunnel_conn", remote = %remote, transport = "wireguard");
            let establish = accepted.establish(self.mux);
            self.spawn(None, Peer::Addr(remote), binding, establish, span);
        }
    }

    /// Accept connections on tunnel `tunnel`'s Unix socket until `stop` (a child of the
    /// shutdown token; a reload that removes or moves the socket cancels it). Connections
    /// already accepted keep running.
    pub async fn serve_unix(
        self,
        listener: UnixListener,
        path: PathBuf,
        tunnel: String,
        stop: CancellationToken,
    ) {
        // The file this listener owns: a reload may bind a new socket at the same path.
        let inode = std::fs::symlink_metadata(&path).ok().map(|m| m.ino());
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!(error = %e, socket = %path.display(), "unix accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let peer = Peer::Unix {
                path: path.clone(),
                uid,
            };
            let (socket_path, params) = (path.clone(), self.mux);
            let span = info_span!("tunnel_conn", remote = %peer, transport = "unix");
            self.spawn(
                None,
                peer,
                Binding::Tunnel(tunnel.clone()),
                async move { unix::accept(stream, &socket_path, params).await },
                span,
            );
        }
        // The socket file goes with the listener, so a restart binds cleanly; a file another
        // listener has bound since is left alone.
        let still_ours = std::fs::symlink_metadata(&path)
            .ok()
            .is_some_and(|m| Some(m.ino()) == inode);
        if still_ours {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The WireGuard peers `tunnels` declare (keys were checked when the config was read).
pub fn wireguard_peers(tunnels: &[TunnelConfig]) -> Vec<WgPeer> {
    tunnels
        .iter()
        .filter_map(|t| {
            let key = t.wireguard_public_key.as_ref()?;
            Some(WgPeer {
                public: netwall_tunnel::wireguard::keys::parse_public(key.get_ref()).ok()?,
                tunnel: t.name.get_ref().clone(),
            })
        })
        .collect()
}

/// Who owns a tunnel socket file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwner {
    /// User id.
    pub uid: Option<u32>,
    /// Group id.
    pub gid: Option<u32>,
}

/// Bind a Unix socket at `path` with `mode` and `owner`. A stale socket file left by an
/// earlier run is replaced; any other file there is an error, never deleted.
pub fn bind_unix(path: &Path, mode: u32, owner: SocketOwner) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if owner.uid.is_some() || owner.gid.is_some() {
        std::os::unix::fs::chown(path, owner.uid, owner.gid)?;
    }
    Ok(listener)
}
