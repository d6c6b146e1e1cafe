//! netwall gateway: the only part of a netwall deployment that faces the Internet.
//!
//! It terminates HTTPS (HTTP/1.1 and HTTP/2) and plain HTTP (redirected), routes each request
//! by host and path to a tunnel, and relays it over a connection that a connector dialed out
//! to a [tunnel listener](tunnel::listen) (QUIC, TLS on the HTTPS port, or a Unix socket). [`start`] binds everything and returns a
//! [`RunningGateway`] whose [`shutdown`](RunningGateway::shutdown) drains gracefully; the
//! binary and the end-to-end tests both use it.

pub mod acme;
pub mod auth;
pub mod certs;
pub mod challenge;
pub mod config;
pub mod fanout;
pub mod linger;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod route;
pub mod security_log;
pub mod spike;
pub mod state;
pub mod status;
pub mod tcp;
pub mod tls;
pub mod tunnel;
pub mod ws;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use netwall_proto::Codec;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{GatewayConfig, Loaded};
use crate::metrics::Metrics;
use crate::route::RouteTable;
use crate::tls::{CertPair, CertStore, SniResolver};
use crate::tunnel::Registry;
use crate::tunnel::listen::{Listeners, MUX_MAX_STREAMS};
use crate::tunnel::server::{CLOSE_SHUTDOWN, TunnelServer};
use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::quic::{QuicListener, QuicParams};

/// How long tunnel connections may take to deliver their final close frames at shutdown.
const TUNNEL_CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The ACME storage could not be opened.
    #[error("[https.acme]: {0}")]
    Acme(String),
    /// A tunnel's Unix socket could not be bound.
    #[error("cannot listen on unix:{path}")]
    Socket {
        /// The socket file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A started gateway.
pub struct RunningGateway {
    /// Bound HTTPS address.
    pub https_addr: SocketAddr,
    /// Bound HTTP redirect address.
    pub http_addr: Option<SocketAddr>,
    /// Bound QUIC tunnel address.
    pub tunnel_addr: SocketAddr,
    /// Bound WireGuard address, when `wireguard_listen` is set.
    pub wireguard_addr: Option<SocketAddr>,
    /// The gateway's WireGuard public key (base64), for connectors' configs.
    pub wireguard_public_key: Option<String>,
    /// Unix sockets bound for tunnels: `(tunnel, path)`.
    pub tunnel_sockets: Vec<(String, std::path::PathBuf)>,
    /// Bound TCP-route addresses, in `[[tcp_route]]` order.
    pub tcp_addrs: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
    /// PEM of the tunnel certificate when it was generated at start.
    pub tunnel_cert_pem: Option<String>,
    /// SHA-256 fingerprint of the tunnel certificate.
    pub tunnel_fingerprint: String,
    /// PEM of the public certificate when it was generated at start.
    pub https_cert_pem: Option<String>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Tunnels.
    pub registry: Arc<Registry>,
    /// Revoked users and tokens (the admin listener's `/revoke` writes here).
    pub revocations: Arc<auth::Revocations>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    tunnel_tasks: TaskTracker,
    accept_loops: TaskTracker,
    endpoint: QuicListener,
    tunnel_server: Arc<TunnelServer>,
    drain_timeout: Duration,
    wireguard_stop: CancellationToken,
    reloader: Arc<reload::Reloader>,
}

impl RunningGateway {
    /// Stop accepting, tell connectors to go away, let in-flight requests finish up to the
    /// drain deadline, then close every tunnel. Returns whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        info!("shutting down: no new connections; draining in-flight requests");
        self.shutdown.cancel();
        self.accept_loops.close();
        self.accept_loops.wait().await;
        self.tasks.close();
        let drained = tokio::time::timeout(self.drain_timeout, self.tasks.wait())
            .await
            .is_ok();
        if !drained {
            warn!(deadline = ?self.drain_timeout, "drain deadline passed; closing remaining connections");
        }
        self.tunnel_server
            .close_all(CLOSE_SHUTDOWN, b"gateway shutting down");
        self.tunnel_tasks.close();
        let _ = tokio::time::timeout(TUNNEL_CLOSE_LINGER, async {
            self.tunnel_tasks.wait().await;
            self.endpoint
                .close(
                    CLOSE_SHUTDOWN,
                    b"gateway shutting down",
                    TUNNEL_CLOSE_LINGER,
                )
                .await;
        })
        .await;
        self.wireguard_stop.cancel();
        drained
    }

    /// Re-read the configuration file and apply it (see [`reload`]); an invalid file
    /// changes nothing.
    pub fn reload(&self) -> reload::Outcome {
        self.reloader.reload()
    }

    /// A token cancelled when shutdown begins.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "gateway".to_owned())
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}

/// Load certificates, bind every listener and start serving.
pub async fn start(loaded: Loaded) -> Result<RunningGateway, StartError> {
    let config = &loaded.config;
    let base = &loaded.base;
    // Relative paths in the config are relative to its folder; `join` keeps absolute ones.
    let resolve = |p: &Path| base.join(p);
    let metrics = Arc::new(Metrics::new());
    let codec = Codec::default();
    let gateway_id = config.gateway_id.clone().unwrap_or_else(host_name);
    let shutdown = CancellationToken::new();
    let users = Arc::new(ws::UserSessions::default());
    let revocations = Arc::new(auth::Revocations::new(config.state.revocation_retention));
    let local = Arc::new(state::Local::new(
        &gateway_id,
        revocations.clone(),
        users.clone(),
        metrics.clone(),
    ));
    let store = state::open(
        &config.state,
        base,
        local.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| StartError::Config(e.to_string()))?;
    let policy_state = Arc::new(state::PolicyState::new(store.clone()));
    let mut carry = policy_state.begin();
    let routes = RouteTable::build(config, base, &mut carry).map_err(StartError::Config)?;
    policy_state.commit(carry);

    // Public certificates.
    let public = certs::load(config, base, &routes, &metrics, None)?;
    let https_cert_pem = public
        .generated
        .as_ref()
        .and_then(|g| g.pair.generated_pem.clone());
    let generated = public.generated;
    let entries = public.entries;
    let expires = |listener: &'static str, file: String, pair: &CertPair| {
        certs::expiry(&metrics, listener, file, pair)
    };
    // Tunnel certificate.
    let tl = &config.tunnel_listener;
    let tunnel_pair = match (&tl.cert, &tl.key) {
        (Some(c), Some(k)) => {
            let pair = CertPair::load(&resolve(c.get_ref()), &resolve(k.get_ref()))?;
            expires("tunnel", c.get_ref().display().to_string(), &pair);
            pair
        }
        _ => {
            let pair = CertPair::self_signed(&tl.self_signed_names)?;
            expires("tunnel", "generated".into(), &pair);
            pair
        }
    };
    // Certificates from an ACME CA: the stored one now, orders once the listeners are up.
    let acme = match &config.https.acme {
        Some(a) => {
            let a = a.get_ref();
            Some(
                acme::Acme::prepare(a, a.names(config), base, metrics.clone())
                    .map_err(StartError::Acme)?,
            )
        }
        None => None,
    };
    let acme_state = acme.as_ref().map(acme::Acme::state);
    let tcp_certs =
        CertStore::new(SniResolver::new(entries.clone())?.with_acme(acme_state.clone()));
    let mut resolver = SniResolver::new(entries)?.with_acme(acme_state.clone());
    if tl.tls_on_https {
        resolver = resolver.with_tunnel(&tunnel_pair)?;
    }
    let public_certs = CertStore::new(resolver);
    let public_tls = tls::public_server_config(public_certs.clone())?;
    let tunnel_fingerprint = tunnel_pair.fingerprint();
    if let (Some(out), Some(pem)) = (&tl.self_signed_cert_out, &tunnel_pair.generated_pem) {
        let out = resolve(out);
        std::fs::write(&out, pem).map_err(|source| StartError::Write {
            path: out.display().to_string(),
            source,
        })?;
    }

    let tasks = TaskTracker::new();
    let tunnel_tasks = TaskTracker::new();
    // The public accept loops: shutdown waits for them, so their ports are free again when it
    // returns (a restart on the same ports must be able to bind).
    let accept_loops = TaskTracker::new();

    let registry = Arc::new(Registry::new(
        reload::declared_tunnels(config),
        metrics.clone(),
    ));
    let quic_params = QuicParams {
        idle_timeout: tl.idle_timeout,
        keep_alive: tl.keep_alive,
        max_peer_streams: 0,
    };
    let endpoint = tls::tunnel_server_config(&tunnel_pair)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|tls| QuicListener::bind(tl.listen, tls, &quic_params))
        .map_err(|source| StartError::Bind {
            addr: tl.listen,
            source,
        })?;
    let tunnel_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
        addr: tl.listen,
        source,
    })?;
    let server = Arc::new(
        TunnelServer::new(
            registry.clone(),
            metrics.clone(),
            codec,
            gateway_id.clone(),
            tl,
        )
        .with_publisher(fanout::Publisher::start(store.clone(), metrics.clone())),
    );
    // Tunnel connections are not part of the public drain: they must outlive it so in-flight
    // requests can finish; they are closed once the drain is over.
    let listeners = Listeners {
        server: server.clone(),
        mux: MuxParams {
            max_streams: MUX_MAX_STREAMS,
            accept_backlog: netwall_tunnel::mux::CONNECTOR_ACCEPT_BACKLOG,
        },
        tasks: tunnel_tasks.clone(),
        shutdown: shutdown.clone(),
    };
    tokio::spawn(
        listeners
            .clone()
            .serve_quic(endpoint.clone())
            .instrument(info_span!("tunnel_listener", transport = "quic")),
    );
    // WireGuard: its own UDP port, peers keyed by the tunnels' public keys. It stops only
    // after the tunnel connections are closed, so in-flight requests over it finish.
    let wireguard_stop = CancellationToken::new();
    let wireguard = match &tl.wireguard_listen {
        Some(listen) => {
            let addr = *listen.get_ref();
            let file = tl
                .wireguard_private_key_file
                .as_ref()
                .map(|f| resolve(f.get_ref()));
            let env = tl
                .wireguard_private_key_env
                .as_ref()
                .map(|e| e.get_ref().as_str());
            let key = netwall_tunnel::wireguard::keys::load_private(file.as_deref(), env)
                .map_err(|e| StartError::Config(format!("WireGuard private key: {e}")))?;
            let l = netwall_tunnel::wireguard::WgListener::bind(addr, key, Default::default())
                .map_err(|source| StartError::Bind { addr, source })?;
            l.set_peers(&tunnel::listen::wireguard_peers(&config.tunnels));
            let _ = metrics.wireguard.set(l.counters());
            let l = Arc::new(l);
            tokio::spawn(
                listeners
                    .clone()
                    .serve_wireguard(l.clone(), wireguard_stop.clone())
                    .instrument(info_span!("tunnel_listener", transport = "wireguard")),
            );
            Some(l)
        }
        None => None,
    };
    let wireguard_addr = match &wireguard {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
            addr: tunnel_addr,
            source,
        })?),
        None => None,
    };
    let wireguard_public_key = wireguard
        .as_ref()
        .map(|l| netwall_tunnel::wireguard::keys::public_base64(&l.public_key()));
    let https_listener = bind_tcp(config.https.listen).await?;
    let https_addr = local_addr(&https_listener, config.https.listen)?;
    let proxy = Arc::new(proxy::Proxy::new(
        routes,
        registry.clone(),
        metrics.clone(),
        codec,
        proxy::Sessions {
            local: local.clone(),
            store: store.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            spike: config.spike.clone(),
            max_header_bytes: config.https.max_header_bytes,
            max_requests_per_ip: config.https.max_requests_per_ip,
        },
    ));
    tokio::spawn(proxy::challenge_difficulty_gauges(
        proxy.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let (reloader, tunnel_sockets) = reload::Reloader::new(
        &loaded,
        reload::Parts {
            proxy: proxy.clone(),
            registry: registry.clone(),
            public_certs: public_certs.clone(),
            tcp_certs: tcp_certs.clone(),
            tunnel_pair: tl.tls_on_https.then(|| tunnel_pair.clone()),
            acme: acme_state.clone(),
            state: policy_state,
            listeners: listeners.clone(),
            wireguard: wireguard.clone(),
            metrics: metrics.clone(),
        },
        generated,
    )
    .map_err(|(path, source)| StartError::Socket { path, source })?;
    let reloader = Arc::new(reloader);
    // Raw TCP routes: on listeners of their own, or by server name on the HTTPS port.
    let mut tcp_addrs = Vec::new();
    let mut sni_routes = std::collections::HashMap::new();
    for r in &config.tcp_routes {
        let tls = if r.passthrough() || (r.listen.is_some() && r.client_ca.is_none()) {
            None
        } else {
            let ca = r.client_ca.as_ref().map(|ca| resolve(ca.get_ref()));
            Some(tls::tcp_server_config(tcp_certs.clone(), ca.as_deref())?)
        };
        let route = |name: String| {
            Arc::new(tcp::relay::TcpRoute::new(
                name,
                r.clone(),
                tls.clone(),
                config.https.tls_handshake_timeout,
                registry.clone(),
                metrics.clone(),
                codec,
            ))
        };
        match (&r.listen, r.server_name()) {
            (Some(listen), _) => {
                let addr = *listen.get_ref();
                let l = bind_tcp(addr).await?;
                let bound = local_addr(&l, addr)?;
                tcp_addrs.push(bound);
                accept_loops.spawn(tcp::serve(
                    route(bound.to_string()),
                    l,
                    shutdown.clone(),
                    tasks.clone(),
                ));
            }
            (None, Some(name)) => {
                sni_routes.insert(name.clone(), route(format!("sni:{name}")));
            }
            (None, None) => {}
        }
    }
    let sni_routes = Arc::new(sni_routes);

    let per_ip = policy::conn_limit::IpConnLimit::new(config.https.max_connections_per_ip);
    accept_loops.spawn(listener::serve_https(
        https_listener,
        public_tls,
        proxy.clone(),
        config.https.clone(),
        per_ip.clone(),
        metrics.clone(),
        tl.tls_on_https.then(|| listeners.clone()),
        sni_routes,
        shutdown.clone(),
        tasks.clone(),
    ));

    let mut http_addr = None;
    if let Some(http) = &config.http {
        let l = bind_tcp(http.listen).await?;
        http_addr = Some(local_addr(&l, http.listen)?);
        let port = http.https_port.unwrap_or(https_addr.port());
        let http01 = config
            .https
            .acme
            .as_ref()
            .filter(|a| a.get_ref().challenge == acme::config::ChallengeKind::Http01)
            .and(acme_state.clone());
        let handler = listener::redirect_handler(port, metrics.clone(), http01);
        accept_loops.spawn(listener::serve_plain(
            l,
            handler,
            config.https.header_read_timeout,
            Some((per_ip.clone(), metrics.clone())),
            shutdown.clone(),
            tasks.clone(),
        ));
    }

    let mut admin_addr = None;
    if let Some(addr) = config.admin.listen {
        let l = bind_tcp(addr).await?;
        admin_addr = Some(local_addr(&l, addr)?);
        let handler = listener::admin_handler(
            metrics.clone(),
            shutdown.clone(),
            store.clone(),
            listener::StatusSource {
                registry: registry.clone(),
                proxy: proxy.clone(),
                gateway_id: gateway_id.clone(),
                started: std::time::Instant::now(),
            },
            reloader.clone(),
        );
        // The admin listener outlives the drain so metrics stay readable during it.
        tokio::spawn(listener::serve_plain(
            l,
            handler,
            config.https.header_read_timeout,
            None,
            CancellationToken::new(),
            TaskTracker::new(),
        ));
    }

    if let Some(acme) = acme {
        tokio::spawn(acme.run(shutdown.clone()));
    }
    let wireguard_text = wireguard_addr.map(|a| a.to_string()).unwrap_or_default();
    let wireguard_key_text = wireguard_public_key.clone().unwrap_or_default();
    info!(%gateway_id, https = %https_addr, http = ?http_addr, tunnel = %tunnel_addr, wireguard = %wireguard_text, wireguard_public_key = %wireguard_key_text, admin = ?admin_addr, tunnel_fingerprint = %tunnel_fingerprint, "gateway started");
    Ok(RunningGateway {
        https_addr,
        http_addr,
        tunnel_addr,
        wireguard_addr,
        wireguard_public_key,
        tunnel_sockets,
        tcp_addrs,
        admin_addr,
        tunnel_cert_pem: tunnel_pair.generated_pem,
        tunnel_fingerprint,
        https_cert_pem,
        metrics,
        registry,
        revocations,
        shutdown,
        tasks,
        tunnel_tasks,
        accept_loops,
        endpoint,
        tunnel_server: server,
        drain_timeout: config.shutdown.drain_timeout,
        reloader,
        wireguard_stop,
    })
}

/// Parse a configuration file and load the keys it names, without binding anything
/// (`netwall-gateway check`).
pub fn check(path: &Path) -> Result<GatewayConfig, String> {
    let loaded = GatewayConfig::load(path).map_err(|e| e.to_string())?;
    RouteTable::new(&loaded.config, &loaded.base)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(loaded.config)
}
