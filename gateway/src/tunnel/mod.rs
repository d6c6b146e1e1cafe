//! Tunnels and their live connections.
//!
//! A [`Tunnel`] is declared in the config; connectors authenticate to it and each of their
//! connections becomes a [`TunnelConn`]. Requests [`Tunnel::pick`] the least-loaded live
//! connection (ties rotate, so idle replicas share load) and hold a [`Lease`] until the
//! response body is done. The relay code sees only [`TunnelConn::open_stream`], never which
//! transport carries it: [`listen`] accepts QUIC, TLS and Unix-socket connections and hands
//! each to the one [`server`] that runs the handshake and the control loop.

pub mod listen;
pub mod server;
pub mod throttle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use netwall_proto::Frame;
use netwall_tunnel::io::FrameWriter;
pub use netwall_tunnel::{Conn, Peer, StreamRead, StreamWrite, TransportKind};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, Notify};

use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, TransportLabel, TunnelLabel};

/// Parse a hex SHA-256 credential hash.
pub fn parse_credential_hash(hex_str: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_str.trim()).ok()?;
    v.try_into().ok()
}

/// SHA-256 of a credential, hex: what goes in `gateway.toml`.
pub fn credential_hash(credential: &[u8]) -> String {
    hex::encode(Sha256::digest(credential))
}

/// One authenticated connector connection.
pub struct TunnelConn {
    /// Unique within this gateway process.
    pub id: u64,
    /// Identity the connector gave.
    pub connector_id: String,
    /// Protocol version the connector speaks (what frames it understands).
    pub version: u16,
    /// Connector's address as seen here.
    pub remote: Peer,
    /// The connection; relay code opens request streams on it.
    pub transport: Conn,
    /// Control stream writer (go-away, drain-ack).
    pub control: Mutex<FrameWriter<StreamWrite>>,
    in_flight: AtomicUsize,
    opened: AtomicU64,
    draining: AtomicBool,
    idle: Notify,
    /// When the connection was accepted.
    pub since: std::time::Instant,
}

impl TunnelConn {
    /// Wrap an authenticated connection.
    pub fn new(
        id: u64,
        connector_id: String,
        version: u16,
        remote: Peer,
        transport: Conn,
        control: FrameWriter<StreamWrite>,
    ) -> Self {
        TunnelConn {
            id,
            connector_id,
            version,
            remote,
            transport,
            control: Mutex::new(control),
            in_flight: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            since: std::time::Instant::now(),
        }
    }

    /// Requests currently using this connection.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Request streams ever opened on this connection.
    pub fn streams_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Open a request stream to the connector.
    pub async fn open_stream(&self) -> std::io::Result<(StreamWrite, StreamRead)> {
        let s = self.transport.open().await?;
        Ok((s.send, s.recv))
    }

    /// Whether the connection has closed (or been declared dead).
    pub fn is_closed(&self) -> bool {
        self.transport.close_reason().is_some()
    }

    /// Whether the connector asked for no new requests on this connection.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once no request holds a lease on this connection. After a drain no new lease
    /// can be taken, so this is when every response has been received in full.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Send a control frame, ignoring a connection that is already gone.
    pub async fn send_control(&self, frame: &Frame) {
        let mut w = self.control.lock().await;
        if w.send(frame).await.is_ok() {
            let _ = w.flush().await;
        }
    }
}

/// A request's claim on a connection; releases the in-flight counts when dropped.
pub struct Lease {
    conn: Arc<TunnelConn>,
    gauge: Gauge,
}

impl Lease {
    /// The leased connection.
    pub fn conn(&self) -> &Arc<TunnelConn> {
        &self.conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.conn.is_draining() {
            self.conn.idle.notify_waiters();
        }
        self.gauge.dec();
    }
}

/// A declared tunnel and its live connections.
pub struct Tunnel {
    /// Name from the config.
    pub name: String,
    /// Replaced by a reload that rotated the credential; read once per handshake.
    credential_hash: RwLock<Option<[u8; 32]>>,
    in_flight: Gauge,
    live: RwLock<Vec<Arc<TunnelConn>>>,
    rotate: AtomicUsize,
    /// Set when a reload removed the tunnel: no connection may join it any more.
    retired: AtomicBool,
}

impl Tunnel {
    /// A tunnel accepting the credential whose SHA-256 is `credential_hash` (none: only
    /// its Unix socket, whose permissions authenticate, reaches it); `in_flight` counts its
    /// leased requests.
    pub fn new(name: String, credential_hash: Option<[u8; 32]>, in_flight: Gauge) -> Self {
        Tunnel {
            name,
            credential_hash: RwLock::new(credential_hash),
            in_flight,
            live: RwLock::new(Vec::new()),
            rotate: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        }
    }

    fn credential(&self) -> Option<[u8; 32]> {
        self.credential_hash.read().map(|h| *h).unwrap_or(None)
    }

    /// Constant-time check of a presented credential; a tunnel without one accepts none.
    pub fn verify(&self, credential: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(credential).into();
        match &self.credential() {
            Some(h) => presented.ct_eq(h).into(),
            None => {
                let _ = std::hint::black_box(presented.ct_eq(&[0u8; 32]));
                false
            }
        }
    }

    /// Whether a connection must present a credential (one is configured).
    pub fn requires_credential(&self) -> bool {
        self.credential().is_some()
    }

    /// Whether a reload removed this tunnel.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// The same work as [`Tunnel::verify`], for a tunnel name that does not exist.
    pub fn verify_nothing(credential: &[u8]) {
        let presented: [u8; 32] = Sha256::digest(credential).into();
        let _ = std::hint::black_box(presented.ct_eq(&[0u8; 32]));
    }

    /// Live connection count.
    pub fn live_count(&self) -> usize {
        self.live.read().map(|l| l.len()).unwrap_or(0)
    }

    /// Snapshot of the live connections.
    pub fn live(&self) -> Vec<Arc<TunnelConn>> {
        self.live.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Lease the least-loaded live connection; `None` when the tunnel is offline.
    pub fn pick(&self) -> Option<Lease> {
        let live = self.live.read().ok()?;
        let n = live.len();
        if n == 0 {
            return None;
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed) % n;
        let conn = (0..n)
            .map(|i| &live[(start + i) % n])
            .min_by_key(|c| c.in_flight())?;
        // Counted under the read lock: `drain` takes the write lock, so once it has removed a
        // connection every lease on it is already counted and no new one can be taken.
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        conn.opened.fetch_add(1, Ordering::Relaxed);
        self.in_flight.inc();
        Some(Lease {
            conn: conn.clone(),
            gauge: self.in_flight.clone(),
        })
    }

    fn add(&self, conn: Arc<TunnelConn>) {
        if let Ok(mut l) = self.live.write() {
            l.push(conn);
        }
    }

    /// Remove a connection from the live set; returns whether it was there.
    pub fn remove(&self, id: u64) -> bool {
        match self.live.write() {
            Ok(mut l) => {
                let before = l.len();
                l.retain(|c| c.id != id);
                l.len() != before
            }
            Err(_) => false,
        }
    }

    /// Stop picking `conn` for new requests; returns how many request streams were ever
    /// opened on it (for logs). Wait for [`TunnelConn::idle`] before closing it.
    pub fn drain(&self, conn: &TunnelConn) -> u64 {
        conn.draining.store(true, Ordering::SeqCst);
        self.remove(conn.id);
        conn.opened.load(Ordering::SeqCst)
    }
}

/// What a reload changed among the tunnels.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TunnelChanges {
    /// Tunnels declared anew.
    pub added: Vec<String>,
    /// Tunnels removed; their connections were closed.
    pub removed: Vec<String>,
    /// Tunnels whose credential changed (new handshakes need the new one).
    pub rotated: Vec<String>,
}

/// Every tunnel of the gateway.
pub struct Registry {
    /// Replaced whole by a reload that adds or removes a tunnel.
    tunnels: arc_swap::ArcSwap<HashMap<String, Arc<Tunnel>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// Tunnels from `(name, credential hash)` pairs.
    pub fn new(
        tunnels: impl IntoIterator<Item = (String, Option<[u8; 32]>)>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let tunnels = tunnels
            .into_iter()
            .map(|(name, hash)| (name.clone(), Self::tunnel(&metrics, name, hash)))
            .collect();
        Registry {
            tunnels: arc_swap::ArcSwap::from_pointee(tunnels),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    fn tunnel(metrics: &Metrics, name: String, hash: Option<[u8; 32]>) -> Arc<Tunnel> {
        let gauge = metrics
            .tunnel_in_flight
            .get_or_create(&TunnelLabel {
                tunnel: name.clone(),
            })
            .clone();
        Arc::new(Tunnel::new(name, hash, gauge))
    }

    /// The tunnel named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Tunnel>> {
        self.tunnels.load().get(name).cloned()
    }

    /// Every tunnel.
    pub fn all(&self) -> Vec<Arc<Tunnel>> {
        self.tunnels.load().values().cloned().collect()
    }

    /// Make the declared tunnels `(name, credential hash)`: add the new ones, update
    /// credentials, and remove the others, closing their connections with
    /// [`CLOSE_TUNNEL_REMOVED`](netwall_proto::wire::CLOSE_TUNNEL_REMOVED). Live
    /// connections of a tunnel whose credential changed keep running.
    pub fn reconcile(
        &self,
        declared: impl IntoIterator<Item = (String, Option<[u8; 32]>)>,
    ) -> TunnelChanges {
        let mut changes = TunnelChanges::default();
        let old = self.tunnels.load_full();
        let mut next = HashMap::new();
        for (name, hash) in declared {
            match old.get(&name) {
                Some(t) => {
                    if t.credential() != hash {
                        if let Ok(mut h) = t.credential_hash.write() {
                            *h = hash;
                        }
                        changes.rotated.push(name.clone());
                    }
                    next.insert(name, t.clone());
                }
                None => {
                    changes.added.push(name.clone());
                    next.insert(name.clone(), Self::tunnel(&self.metrics, name, hash));
                }
            }
        }
        let removed: Vec<Arc<Tunnel>> = old
            .iter()
            .filter(|(n, _)| !next.contains_key(*n))
            .map(|(_, t)| t.clone())
            .collect();
        self.tunnels.store(Arc::new(next));
        for t in removed {
            // Retired first: a handshake that found the tunnel before the swap registers
            // after this and is closed by `register`, or is here in the live set.
            t.retired.store(true, Ordering::SeqCst);
            for c in t.live() {
                c.transport.close(
                    netwall_proto::wire::CLOSE_TUNNEL_REMOVED,
                    b"tunnel removed from the gateway configuration",
                );
            }
            changes.removed.push(t.name.clone());
        }
        changes.added.sort();
        changes.removed.sort();
        changes.rotated.sort();
        changes
    }

    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Make an authenticated connection available to requests.
    pub fn register(&self, tunnel: &Tunnel, conn: Arc<TunnelConn>) {
        self.metrics
            .tunnel_transport_connections
            .get_or_create(&TransportLabel {
                tunnel: tunnel.name.clone(),
                transport: conn.transport.kind().as_str(),
            })
            .inc();
        tunnel.add(conn.clone());
        self.metrics
            .tunnel_connections
            .get_or_create(&TunnelLabel {
                tunnel: tunnel.name.clone(),
            })
            .inc();
        if tunnel.is_retired() {
            conn.transport.close(
                netwall_proto::wire::CLOSE_TUNNEL_REMOVED,
                b"tunnel removed from the gateway configuration",
            );
        }
    }

    /// Forget a closed connection.
    pub fn unregister(&self, tunnel: &Tunnel, conn: &TunnelConn) {
        tunnel.remove(conn.id);
        self.metrics
            .tunnel_transport_connections
            .get_or_create(&TransportLabel {
                tunnel: tunnel.name.clone(),
                transport: conn.transport.kind().as_str(),
            })
            .dec();
        self.metrics
            .tunnel_connections
            .get_or_create(&TunnelLabel {
                tunnel: tunnel.name.clone(),
            })
            .dec();
    }
}
