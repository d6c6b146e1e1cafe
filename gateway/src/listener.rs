//! Public and private TCP listeners: HTTPS (HTTP/1.1 + HTTP/2), the HTTP listener that
//! redirects to HTTPS, and the admin listener.
//!
//! Each accepted connection is its own task, tracked so shutdown can wait for it; on shutdown
//! every connection is told to finish gracefully (HTTP/2 GOAWAY, HTTP/1 close after the
//! current response). TLS handshakes run in the connection task, under a deadline, never in
//! the accept loop. hyper is given a timer so the header-read timeout really applies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use netwall_tunnel::tls_stream::TlsStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use crate::acme::challenge::{ACME_TLS_ALPN, AcmeState, HTTP01_PREFIX};
use crate::config::HttpsConfig;
use crate::linger::{LingerFlag, Lingering};
use crate::metrics::Metrics;
use crate::policy::conn_limit::IpConnLimit;
use crate::policy::headers::request_host;
use crate::proxy::Proxy;
use crate::state::{Event, Store};
use crate::tcp::relay::TcpRoute;
use crate::tcp::sni;
use crate::tls::TUNNEL_ALPN;
use crate::tunnel::listen::Listeners;

/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// HTTP/2 keep-alive ping interval on public connections.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Drive a hyper connection to its end; when `shutdown` fires, finish gracefully (HTTP/2
/// GOAWAY, HTTP/1 close after the current response).
macro_rules! until_shutdown {
    ($conn:expr, $shutdown:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = $shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => return Some(v),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Claim a per-IP connection slot for `ip`, or count and log the refusal.
fn claim_slot(
    per_ip: &Arc<IpConnLimit>,
    ip: std::net::IpAddr,
    metrics: &Metrics,
) -> Option<crate::policy::conn_limit::IpConnSlot> {
    let slot = per_ip.claim(ip);
    if slot.is_none() {
        metrics.reject("per_ip_connections");
        // Per event at debug: a flood from one address must not flood the logs; the
        // counter carries the volume.
        crate::security_event!(event = "per_ip_connections", client = %ip, "connection closed at accept: too many from this address");
    }
    slot
}

/// Serve the public HTTPS listener until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    proxy: Arc<Proxy>,
    cfg: HttpsConfig,
    per_ip: Arc<IpConnLimit>,
    metrics: Arc<Metrics>,
    tunnels: Option<Listeners>,
    sni_routes: SniRoutes,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    // The protocol ALPN chose is the protocol spoken: no sniffing of the first bytes, so a
    // bad HTTP/2 preface gets a GOAWAY, not an HTTP/1.1 400. No ALPN means HTTP/1.1.
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // hyper's default of 100 header fields is `netwall_proto::MAX_CLIENT_HEADERS`; setting
        // it explicitly would move the parse buffer to the heap on every request.
        .max_buf_size(cfg.max_header_bytes);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(cfg.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(H2_KEEP_ALIVE));
    let builders = Arc::new((h1, h2));
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    while let Some((tcp, peer)) = accept(&listener, &shutdown).await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.reject("max_connections");
            continue;
        };
        // Behind a PROXY-protocol balancer every socket peer is the balancer: the client's
        // address, and so its slot, is known only once the header is read.
        let early_slot = if cfg.proxy_protocol {
            None
        } else {
            match claim_slot(&per_ip, peer.ip(), &metrics) {
                Some(s) => Some(s),
                None => continue,
            }
        };
        let _ = tcp.set_nodelay(true);
        let (tls, proxy, metrics, builders, shutdown, per_ip, tunnels, sni_routes) = (
            tls.clone(),
            proxy.clone(),
            metrics.clone(),
            builders.clone(),
            shutdown.clone(),
            per_ip.clone(),
            tunnels.clone(),
            sni_routes.clone(),
        );
        let handshake_timeout = cfg.tls_handshake_timeout;
        let proxy_protocol = cfg.proxy_protocol;
        let span = debug_span!("conn", client.addr = %peer);
        tasks.spawn(
            async move {
                let _permit = permit;
                let mut tcp = tcp;
                let peer = if proxy_protocol {
                    match tokio::time::timeout(handshake_timeout, read_proxy_v2(&mut tcp)).await {
                        Ok(Ok(Some(source))) => source,
                        Ok(Ok(None)) => peer,
                        Ok(Err(e)) => {
                            metrics.reject("proxy_protocol");
                            debug!(error = %e, "connection without a valid PROXY v2 header");
                            return;
                        }
                        Err(_) => {
                            metrics.reject("proxy_protocol");
                            return;
                        }
                    }
                } else {
                    peer
                };
                let slot = match early_slot {
                    Some(s) => s,
                    None => match claim_slot(&per_ip, peer.ip(), &metrics) {
                        Some(s) => s,
                        None => return,
                    },
                };
                let deadline = tokio::time::Instant::now() + handshake_timeout;
                let (tcp, received) = if sni_routes.is_empty() {
                    (tcp, Vec::new())
                } else {
                    // The ClientHello first: its server name may choose a TCP route.
                    let hello = match tokio::time::timeout_at(deadline, sni::read_client_hello(tcp))
                        .await
                    {
                        Ok(Ok(h)) => h,
                        Ok(Err(e)) => {
                            metrics.reject("tls_handshake_failed");
                            debug!(error = %e, "no ClientHello");
                            return;
                        }
                        Err(_) => {
                            metrics.reject("tls_handshake_timeout");
                            return;
                        }
                    };
                    if let Some(route) =
                        hello.server_name.as_deref().and_then(|n| sni_routes.get(n))
                    {
                        // The route's own per-IP cap and deadline apply from here; like any
                        // TCP session it is not cut at shutdown, only at the drain deadline.
                        drop(slot);
                        return route.clone().handle_hello(hello, peer).await;
                    }
                    // HTTP: the handshake starts over from the bytes already read.
                    (hello.tcp, hello.recorded)
                };
                let _slot = slot;
                let accept = TlsStream::accept(tcp, tls, received);
                let tls = match tokio::time::timeout_at(deadline, accept).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        metrics.reject("tls_handshake_failed");
                        debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.reject("tls_handshake_timeout");
                        return;
                    }
                };
                if tls.alpn_protocol() == Some(ACME_TLS_ALPN) {
                    // An ACME CA's TLS-ALPN-01 check: the handshake was the answer.
                    debug!("answered an ACME TLS-ALPN-01 check");
                    return;
                }
                if tls.alpn_protocol() == Some(TUNNEL_ALPN) {
                    // A connector whose network allows only outbound TCP: the tunnel server
                    // takes the connection over, with its own limits and deadline.
                    match &tunnels {
                        Some(t)
                            if tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) =>
                        {
                            t.hand_over_tls(tls, peer)
                        }
                        _ => metrics.reject("tunnel_alpn_refused"),
                    }
                    return;
                }
                metrics.public_connections.inc();
                let linger = LingerFlag::default();
                let flag = linger.clone();
                let svc = service_fn(move |req| {
                    let (proxy, flag) = (proxy.clone(), flag.clone());
                    // Boxed: a request's state is some 4 KB, and HTTP/2 runs every stream as
                    // a task of its own, which would otherwise hold it inline and copy it in.
                    Box::pin(async move {
                        let resp = proxy.handle(req, peer).await;
                        // An answer that closes the connection may leave a body unread.
                        if let Ok(r) = &resp
                            && r.headers()
                                .get(header::CONNECTION)
                                .is_some_and(|v| v == "close")
                        {
                            flag.set();
                        }
                        resp
                    })
                });
                let h2 = tls.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(Lingering::new(tls, linger));
                let res = if h2 {
                    until_shutdown!(builders.1.serve_connection(io, svc), shutdown)
                } else {
                    until_shutdown!(
                        builders.0.serve_connection(io, svc).with_upgrades(),
                        shutdown
                    )
                };
                metrics.public_connections.dec();
                if let Err(e) = res {
                    if e.is_parse_too_large() {
                        metrics.reject("header_too_large");
                    }
                    debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}

/// `[[tcp_route]]`s taken by TLS server name on this port, by lowercased name.
pub type SniRoutes = Arc<std::collections::HashMap<String, Arc<TcpRoute>>>;

/// PROXY protocol v2 signature.
const PROXY_V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest PROXY v2 address block accepted (addresses plus a few TLVs).
const PROXY_V2_MAX_LEN: usize = 512;

/// Read a PROXY protocol v2 header: `Some(source)` for a proxied connection, `None` for a
/// LOCAL one (a health check from the balancer itself).
async fn read_proxy_v2(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 16];
    tcp.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    if &head[..12] != PROXY_V2_SIGNATURE {
        return Err("no PROXY v2 signature".into());
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > PROXY_V2_MAX_LEN {
        return Err(format!("PROXY v2 header of {len} bytes is too long"));
    }
    let mut whole = Vec::with_capacity(16 + len);
    whole.extend_from_slice(&head);
    whole.resize(16 + len, 0);
    tcp.read_exact(&mut whole[16..])
        .await
        .map_err(|e| e.to_string())?;
    let header = ppp::v2::Header::try_from(&whole[..]).map_err(|e| e.to_string())?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        _ => Err("PROXY v2 header without an IP source".into()),
    }
}

/// A response of a local listener, made now or after some I/O (a revocation is stored first).
pub type LocalAnswer = std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// A handler for the small local listeners (redirect, admin).
pub type LocalHandler = Arc<dyn Fn(&Request<Incoming>) -> LocalAnswer + Send + Sync>;

fn now(resp: Response<Full<Bytes>>) -> LocalAnswer {
    Box::pin(std::future::ready(resp))
}

/// Serve plain HTTP/1.1 with `handler` until `shutdown`; with `per_ip` (the public redirect
/// listener) each client address holds a bounded number of connections.
pub async fn serve_plain(
    listener: TcpListener,
    handler: LocalHandler,
    header_read_timeout: Duration,
    per_ip: Option<(Arc<IpConnLimit>, Arc<Metrics>)>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    while let Some((tcp, peer)) = accept(&listener, &shutdown).await {
        let slot = match &per_ip {
            Some((limit, metrics)) => match claim_slot(limit, peer.ip(), metrics) {
                Some(s) => Some(s),
                None => continue,
            },
            None => None,
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let builder = builder.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let resp = handler(&req);
                async move { Ok::<_, std::convert::Infallible>(resp.await) }
            });
            let _ = until_shutdown!(builder.serve_connection(TokioIo::new(tcp), svc), shutdown);
        });
    }
}

/// The HTTP listener's handler: `308` to the same URL over HTTPS; with `acme` (HTTP-01), the
/// answers to the CA's checks under `/.well-known/acme-challenge/`.
pub fn redirect_handler(
    https_port: u16,
    metrics: Arc<Metrics>,
    acme: Option<Arc<AcmeState>>,
) -> LocalHandler {
    Arc::new(move |req| now(redirect(req, https_port, &metrics, acme.as_deref())))
}

fn redirect(
    req: &Request<Incoming>,
    https_port: u16,
    metrics: &Metrics,
    acme: Option<&AcmeState>,
) -> Response<Full<Bytes>> {
    if let Some(acme) = acme
        && let Some(token) = req.uri().path().strip_prefix(HTTP01_PREFIX)
    {
        return match acme.http_answer(token) {
            Some(answer) => plain(StatusCode::OK, answer),
            None => plain(
                StatusCode::NOT_FOUND,
                "404 not found: no such ACME challenge\n",
            ),
        };
    }
    let Ok(host) = request_host(req) else {
        metrics.reject("missing_host");
        return plain(StatusCode::BAD_REQUEST, "400 bad request: no host\n");
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    // Origin form only: `*` (asterisk form, for OPTIONS) names no resource to move to.
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if !pq.starts_with('/') {
        metrics.reject("bad_path");
        return plain(StatusCode::BAD_REQUEST, "400 bad request: invalid path\n");
    }
    let location = format!("https://{}{port}{pq}", host.name);
    let mut resp = plain(StatusCode::PERMANENT_REDIRECT, "308 permanent redirect\n");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "400 bad request\n"),
    }
}

/// The admin listener's handler: `/metrics`, `/healthz`, `/readyz`, and `POST /revoke` with
/// `?sub=USER` or `?jti=TOKEN_ID` (logout: every open WebSocket of that user or token is
/// closed with 4003 and the token is refused from now on, on every gateway sharing the
/// store; see [`crate::state`]).
pub fn admin_handler(
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    store: Arc<dyn Store>,
    status: StatusSource,
    reloader: Arc<crate::reload::Reloader>,
) -> LocalHandler {
    Arc::new(move |req| {
        if req.uri().path() == "/revoke" && req.method() == http::Method::POST {
            return Box::pin(revoke(
                store.clone(),
                req.uri().query().unwrap_or("").to_owned(),
            ));
        }
        now(admin(req, &metrics, &shutdown, &status, &reloader))
    })
}

/// `POST /revoke?sub=USER` or `?jti=TOKEN_ID`.
async fn revoke(store: Arc<dyn Store>, query: String) -> Response<Full<Bytes>> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let at = crate::auth::now_secs();
    let (what, event) = match params.first().map(|(k, v)| (k.as_str(), v.clone())) {
        Some(("sub", sub)) if !sub.is_empty() => {
            (format!("sub {sub}"), Event::RevokedSub { sub, at })
        }
        Some(("jti", jti)) if !jti.is_empty() => {
            (format!("jti {jti}"), Event::RevokedJti { jti, at })
        }
        _ => {
            return plain(
                StatusCode::BAD_REQUEST,
                "400 bad request: POST /revoke?sub=USER or ?jti=TOKEN_ID\n",
            );
        }
    };
    let (closed, stored) = store.publish(event).await;
    // Applied here but not kept or told to other gateways: the operator must know, and may
    // repeat the call.
    let (status, shared) = match stored {
        Ok(()) => (StatusCode::OK, true),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, false),
    };
    warn!(target: "netwall::security", event = "revoked", revoked = %what, connections_closed = closed, shared, driver = store.driver());
    let mut resp = Response::new(Full::new(Bytes::from(format!(
        "{{\"revoked\":{},\"connections_closed\":{closed},\"shared\":{shared}}}\n",
        serde_json::Value::String(what)
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Every admin path but `/revoke`.
fn admin(
    req: &Request<Incoming>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    status: &StatusSource,
    reloader: &crate::reload::Reloader,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/reload" if req.method() == http::Method::POST => {
            let outcome = reloader.reload();
            let status = if outcome.ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let body = serde_json::to_string(&outcome).unwrap_or_default() + "\n";
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/reload" => plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 method not allowed: POST /reload\n",
        ),
        "/status" => asset(crate::status::STATUS_HTML, "text/html; charset=utf-8"),
        "/status.js" => asset(crate::status::STATUS_JS, "text/javascript; charset=utf-8"),
        "/status.css" => asset(crate::status::STATUS_CSS, "text/css; charset=utf-8"),
        "/status.json" => {
            let snap = crate::status::snapshot(
                &status.registry,
                &status.proxy.routes(),
                &status.gateway_id,
                status.started,
                shutdown.is_cancelled(),
            );
            let mut resp = Response::new(Full::new(Bytes::from(snap.to_string())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" if shutdown.is_cancelled() => {
            plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        }
        "/readyz" => plain(StatusCode::OK, "ready\n"),
        _ => plain(StatusCode::NOT_FOUND, "404 not found\n"),
    }
}

/// What the status page reads.
#[derive(Clone)]
pub struct StatusSource {
    /// The tunnels.
    pub registry: Arc<crate::tunnel::Registry>,
    /// The routes in force (and their figures).
    pub proxy: Arc<Proxy>,
    /// This gateway's id.
    pub gateway_id: String,
    /// When it started.
    pub started: std::time::Instant,
}

/// A static part of the status page, under its Content-Security-Policy.
fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::status::STATUS_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
