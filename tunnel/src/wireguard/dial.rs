//! The connector's side: one WireGuard link per gateway address, made on the first dial and
//! shared by every tunnel connection to that gateway (WireGuard knows one session per pair of
//! keys), each connection a TCP connection of its own inside the link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boringtun::noise::Tunn;
use boringtun::x25519::PublicKey;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::peer::{Driver, Inbox};
use super::stack::{Link, Shared, WgStream};
use super::udp::WgSocket;
use super::{CONNECTOR_ADDR, Counters, GATEWAY_ADDR, GATEWAY_PORT, PrivateKey, WgParams};
use crate::mux::{self, MuxParams, Role};
use crate::transport::{Conn, Peer, TransportKind};

struct LinkHandle {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// Dials gateways over WireGuard with this connector's key.
pub struct WgDialer {
    key: PrivateKey,
    params: WgParams,
    links: Mutex<HashMap<(SocketAddr, [u8; 32]), LinkHandle>>,
    counters: Arc<Counters>,
}

impl WgDialer {
    /// A dialer with private key `key`.
    pub fn new(key: PrivateKey, params: WgParams) -> WgDialer {
        WgDialer {
            key,
            params,
            links: Mutex::new(HashMap::new()),
            counters: Arc::default(),
        }
    }

    /// What happened on this dialer's links.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// A tunnel connection to the gateway at `target` whose WireGuard key is `gateway`. The
    /// handshake happens with the first packet; a gateway that does not know this key answers
    /// nothing, so that shows as the caller's dial timeout.
    pub async fn dial(
        &self,
        target: SocketAddr,
        gateway: &PublicKey,
        mux: MuxParams,
    ) -> Result<Conn, String> {
        let shared = self.link(target, gateway)?;
        let handle = shared.lock().connect(GATEWAY_PORT)?;
        shared.kick.notify_one();
        let stream = WgStream::new(shared, handle);
        stream.established().await?;
        mux::connect(
            stream,
            Role::Client,
            TransportKind::WireGuard,
            Peer::Addr(target),
            mux,
        )
        .await
    }

    fn link(&self, target: SocketAddr, gateway: &PublicKey) -> Result<Arc<Shared>, String> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let id = (target, *gateway.as_bytes());
        if let Some(l) = links.get(&id)
            && !l.shared.lock().has_ended()
        {
            l.shared
                .rehandshake
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(l.shared.clone());
        }
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let std_sock = crate::quic::udp_socket(bind).map_err(|e| format!("udp bind: {e}"))?;
        std_sock
            .connect(target)
            .map_err(|e| format!("udp connect {target}: {e}"))?;
        let mtu = self
            .params
            .mtu
            .unwrap_or_else(|| super::link_mtu(crate::route::mtu(&std_sock, target.is_ipv6())));
        let udp = Arc::new(WgSocket::new(std_sock).map_err(|e| format!("udp socket: {e}"))?);
        let epoch = Instant::now();
        let link = Link {
            local: CONNECTOR_ADDR,
            remote: GATEWAY_ADDR,
        };
        let shared = Shared::new(link, mtu, smoltcp::time::Instant::ZERO);
        let index = rand::random::<u32>() >> 8;
        let tunn = Tunn::new(
            self.key.0.clone(),
            *gateway,
            None,
            Some(self.params.persistent_keepalive),
            index,
            None,
        );
        let driver = Driver {
            tunn,
            shared: shared.clone(),
            link,
            udp,
            endpoint: Some(target),
            roaming: false,
            rekey_after: Some(self.params.rekey_after),
            accept: None,
            counters: self.counters.clone(),
            epoch,
        };
        let stop = CancellationToken::new();
        tokio::spawn(driver.run(Inbox::Socket, stop.clone()));
        links.insert(
            id,
            LinkHandle {
                shared: shared.clone(),
                _stop: stop.drop_guard(),
            },
        );
        Ok(shared)
    }
}
