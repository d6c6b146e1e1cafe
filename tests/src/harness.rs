//! Test harness: real certificates, real listeners, real processes.
//!
//! Everything binds `127.0.0.1:0` and reports the port it got; nothing sleeps to
//! synchronise: [`wait_until`] polls a condition under a deadline and fails with a message.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Poll `cond` every 20 ms until it holds or `timeout` passes; panics naming `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Install a test log subscriber once (respects `RUST_LOG`, quiet by default).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Security events reach the status page as in the binary; they are logged at warn.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .finish()
        .with(netwall_gateway::security_log::RecentEvents)
        .try_init();
}

/// A throwaway PKI: one CA that signs the public certificate (`app.test`, `*.app.test`,
/// `localhost`) and the tunnel certificate (`localhost`).
pub struct Pki {
    /// Folder holding every file.
    pub dir: tempfile::TempDir,
    /// CA certificate (PEM file).
    pub ca: PathBuf,
    /// CA certificate (DER), for clients.
    pub ca_der: CertificateDer<'static>,
    /// Public certificate and key.
    pub https_cert: PathBuf,
    /// Public key.
    pub https_key: PathBuf,
    /// Tunnel certificate.
    pub tunnel_cert: PathBuf,
    /// Tunnel key.
    pub tunnel_key: PathBuf,
    /// A second public certificate, for `other.test` only.
    pub other_cert: PathBuf,
    /// Its key.
    pub other_key: PathBuf,
    /// Tunnel credential (plaintext, for connectors).
    pub credential: String,
    /// Its SHA-256, for gateways.
    pub credential_sha256: String,
    /// The gateway's WireGuard private key file.
    pub gateway_wg_key: PathBuf,
    /// The connector's WireGuard private key file.
    pub connector_wg_key: PathBuf,
    /// The connector's WireGuard public key, for gateways.
    pub connector_wg_public: String,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A leaf certificate for `names` signed by the CA: (certificate PEM, key PEM).
fn sign_leaf(
    names: Vec<String>,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let cert = rcgen::CertificateParams::new(names)
        .expect("leaf params")
        .signed_by(&key, ca, ca_key)
        .expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Generate everything into a fresh temporary folder.
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "netwall test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let leaf = |names: Vec<String>| sign_leaf(names, &ca_cert, &ca_key);
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write pki file");
            p
        };
        let (hc, hk) = leaf(vec![
            "app.test".into(),
            "*.app.test".into(),
            "*.b.app.test".into(),
            "localhost".into(),
        ]);
        let (tc, tk) = leaf(vec!["localhost".into()]);
        let (oc, ok) = leaf(vec!["other.test".into()]);
        let credential = hex::encode(rand_bytes());
        let (gateway_wg, _) = netwall_tunnel::wireguard::keys::generate();
        let (connector_wg, connector_wg_public) = netwall_tunnel::wireguard::keys::generate();
        Pki {
            gateway_wg_key: write("gateway-wg.key", &gateway_wg),
            connector_wg_key: write("connector-wg.key", &connector_wg),
            connector_wg_public,
            ca: write("ca.pem", &ca_cert.pem()),
            ca_der: ca_cert.der().clone(),
            https_cert: write("https.pem", &hc),
            https_key: write("https.key", &hk),
            tunnel_cert: write("tunnel.pem", &tc),
            tunnel_key: write("tunnel.key", &tk),
            other_cert: write("other.pem", &oc),
            other_key: write("other.key", &ok),
            credential_sha256: netwall_gateway::tunnel::credential_hash(credential.as_bytes()),
            credential,
            dir,
            ca_cert,
            ca_key,
        }
    }

    /// Write a fresh certificate for `names`, signed by the CA, to `stem.pem` and `stem.key`
    /// in the folder (replacing them); returns both paths.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = sign_leaf(
            names.iter().map(|n| (*n).to_owned()).collect(),
            &self.ca_cert,
            &self.ca_key,
        );
        let c = self.dir.path().join(format!("{stem}.pem"));
        let k = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&c, cert).expect("write certificate");
        std::fs::write(&k, key).expect("write key");
        (c, k)
    }

    /// A gateway config on ephemeral loopback ports with one tunnel `app`; `extra` appends
    /// routes or overrides sections.
    pub fn gateway_toml(&self, extra: &str) -> String {
        self.gateway_toml_at("127.0.0.1:0", extra)
    }

    /// Like [`Pki::gateway_toml`] with the tunnel listener on `tunnel_listen`.
    pub fn gateway_toml_at(&self, tunnel_listen: &str, extra: &str) -> String {
        format!(
            r#"
gateway_id = "test-gw"
[https]
listen = "127.0.0.1:0"
[[https.certificate]]
cert = "{hc}"
key = "{hk}"
hosts = ["app.test", "*.app.test", "localhost"]
[http]
listen = "127.0.0.1:0"
[tunnel_listener]
listen = "{tunnel_listen}"
cert = "{tc}"
key = "{tk}"
idle_timeout = "3s"
keep_alive = "500ms"
wireguard_listen = "127.0.0.1:0"
wireguard_private_key_file = "{wk}"
[admin]
listen = "127.0.0.1:0"
[shutdown]
drain_timeout = "10s"
[[tunnel]]
name = "app"
credential_sha256 = "{hash}"
unix_socket = "{sock}"
wireguard_public_key = "{wp}"
{extra}
"#,
            sock = self.dir.path().join("app.sock").display(),
            wk = self.gateway_wg_key.display(),
            wp = self.connector_wg_public,
            hc = self.https_cert.display(),
            hk = self.https_key.display(),
            tc = self.tunnel_cert.display(),
            tk = self.tunnel_key.display(),
            hash = self.credential_sha256,
        )
    }

    /// A connector config for tunnel `app` dialing `gateways` over QUIC, trusting the test
    /// CA, with `services` lines (`name = "url"`).
    pub fn connector_toml(&self, gateways: &[SocketAddr], services: &str, extra: &str) -> String {
        let list = gateways
            .iter()
            .map(|g| format!("\"{g}\""))
            .collect::<Vec<_>>()
            .join(", ");
        self.connector_toml_raw(&list, &format!("transport = \"quic\"\n{extra}"), services)
    }

    /// A connector config reaching `gateway` over the transport of the running test
    /// ([`via`]).
    pub fn connector_toml_for(
        &self,
        gateway: &netwall_gateway::RunningGateway,
        services: &str,
        extra: &str,
    ) -> String {
        let (list, transport) = match via() {
            Via::Quic => (format!("\"{}\"", gateway.tunnel_addr), "quic"),
            Via::Tls => (format!("\"{}\"", gateway.https_addr), "tls"),
            Via::Unix => {
                let path = &gateway
                    .tunnel_sockets
                    .first()
                    .expect("the test gateway binds a tunnel socket")
                    .1;
                (format!("\"unix:{}\"", path.display()), "unix")
            }
            Via::WireGuard => {
                let addr = gateway
                    .wireguard_addr
                    .expect("the test gateway listens for WireGuard");
                let key = gateway
                    .wireguard_public_key
                    .as_deref()
                    .expect("the test gateway has a WireGuard key");
                let keys = format!(
                    "gateway_wireguard_public_key = \"{key}\"\nwireguard_private_key_file = \"{}\"\n",
                    self.connector_wg_key.display()
                );
                return self.connector_toml_raw(
                    &format!("\"{addr}\""),
                    &format!("transport = \"wireguard\"\n{keys}{extra}"),
                    services,
                );
            }
        };
        self.connector_toml_raw(
            &list,
            &format!("transport = \"{transport}\"\n{extra}"),
            services,
        )
    }

    fn connector_toml_raw(&self, list: &str, extra: &str, services: &str) -> String {
        format!(
            r#"
connector_id = "test-connector"
tunnel = "app"
gateways = [{list}]
server_name = "localhost"
ca_file = "{ca}"
idle_timeout = "3s"
keep_alive = "500ms"
reconnect_min = "50ms"
reconnect_max = "500ms"
drain_timeout = "10s"
{extra}
[services]
{services}
"#,
            ca = self.ca.display()
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}

/// A tunnel transport end-to-end tests run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// QUIC to the tunnel listener.
    Quic,
    /// TLS over TCP to the public HTTPS port.
    Tls,
    /// The tunnel's Unix socket.
    Unix,
    /// WireGuard to the gateway's WireGuard port.
    WireGuard,
}

tokio::task_local! {
    /// The transport of the running test (set by [`over_every_transport!`]).
    pub static VIA: Via;
}

/// The transport of the running test; QUIC outside [`over_every_transport!`].
pub fn via() -> Via {
    VIA.try_with(|v| *v).unwrap_or(Via::Quic)
}

/// Run a test body once per transport: `over_every_transport! { #[tokio::test] async fn
/// name() { ... } }` becomes tests `name::quic`, `name::tls`, `name::unix` and
/// `name::wireguard`, each with the harness dialing over that transport.
#[macro_export]
macro_rules! over_every_transport {
    ($($(#[$m:meta])* async fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn the_test() $body
            $(#[$m])*
            async fn quic() {
                $crate::harness::VIA.scope($crate::harness::Via::Quic, the_test()).await
            }
            $(#[$m])*
            async fn tls() {
                $crate::harness::VIA.scope($crate::harness::Via::Tls, the_test()).await
            }
            $(#[$m])*
            async fn unix() {
                $crate::harness::VIA.scope($crate::harness::Via::Unix, the_test()).await
            }
            $(#[$m])*
            async fn wireguard() {
                $crate::harness::VIA.scope($crate::harness::Via::WireGuard, the_test()).await
            }
        }
    )*};
}

/// Start a gateway in this process from TOML text (relative paths resolve against `base`).
pub async fn start_gateway(toml: &str) -> netwall_gateway::RunningGateway {
    let config =
        netwall_gateway::config::GatewayConfig::parse(Path::new("test-gateway.toml"), toml)
            .unwrap_or_else(|e| panic!("gateway config: {e}"));
    netwall_gateway::start(netwall_gateway::config::Loaded::in_code(
        config,
        PathBuf::new(),
    ))
    .await
    .expect("gateway starts")
}

/// Start a connector in this process with `credential`.
pub fn start_connector(toml: &str, credential: &str) -> netwall_connector::RunningConnector {
    let resolved = netwall_connector::config::ConnectorConfig::parse(
        Path::new("test-connector.toml"),
        toml,
        Path::new(""),
        Some(credential.to_owned()),
    )
    .unwrap_or_else(|e| panic!("connector config: {e}"));
    netwall_connector::start(resolved).expect("connector starts")
}

/// A gateway with `routes` and a connector offering `services`, with its tunnel up.
pub async fn start_stack(
    pki: &Pki,
    routes: &str,
    services: &str,
) -> (
    netwall_gateway::RunningGateway,
    netwall_connector::RunningConnector,
) {
    let gateway = start_gateway(&pki.gateway_toml(routes)).await;
    let connector = start_connector(
        &pki.connector_toml_for(&gateway, services, ""),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    (gateway, connector)
}

/// Wait until `gateway` has `n` live connections on tunnel `app`.
pub async fn wait_tunnel(gateway: &netwall_gateway::RunningGateway, n: usize) {
    let registry = gateway.registry.clone();
    wait_until(
        Duration::from_secs(10),
        &format!("{n} live tunnel connection(s)"),
        || {
            let registry = registry.clone();
            async move { registry.get("app").is_some_and(|t| t.live_count() == n) }
        },
    )
    .await;
}

/// A loopback port that refuses connections for as long as the value lives: bound, never
/// listening, so the kernel answers every connection attempt with a reset. A port bound and
/// closed again refuses too, but only until the kernel hands it to the next socket bound to
/// port 0, which in a parallel test run is another test's listener.
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl RefusingPort {
    /// The refusing address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A fresh [`RefusingPort`] on 127.0.0.1.
pub fn refusing_port() -> RefusingPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    RefusingPort {
        _socket: socket,
        addr,
    }
}

/// Start the sample service on an ephemeral loopback port.
pub async fn start_sample(name: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sample");
    let addr = listener.local_addr().expect("sample addr");
    tokio::spawn(crate::sample::serve(listener, name.to_owned()));
    addr
}

// === HTTPS client ===

/// Request body type of [`HttpsClient`].
pub type ClientBody = BoxBody<Bytes, std::io::Error>;

/// A full body.
pub fn body(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A TLS stream for hyper.
pub struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        let h2 = self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Dials the gateway's address for every URI, with SNI from the URI host.
#[derive(Clone)]
pub struct GatewayDialer {
    addr: SocketAddr,
    tls: TlsConnector,
}

impl tower_service::Service<Uri> for GatewayDialer {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let host = uri.host().unwrap_or("localhost").to_owned();
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
            Ok(TlsIo(TokioIo::new(tls.connect(name, tcp).await?)))
        })
    }
}

/// rustls client config trusting `ca`, offering `alpn`.
pub fn client_tls(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("add CA");
    let mut cfg = rustls::ClientConfig::builder_with_provider(netwall_tunnel::crypto::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A pooled HTTPS client that always connects to one gateway.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<GatewayDialer, ClientBody>,
}

/// A complete response.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpsClient {
    /// HTTP/1.1 (`h2 = false`) or HTTP/2 (`h2 = true`) to the gateway at `addr`.
    pub fn new(addr: SocketAddr, ca: &CertificateDer<'static>, h2: bool) -> Self {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let dialer = GatewayDialer {
            addr,
            tls: TlsConnector::from(client_tls(ca, alpn)),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .pool_max_idle_per_host(1024)
            .build(dialer);
        HttpsClient { client }
    }

    /// Send `req` and read the whole response.
    pub async fn send(&self, req: Request<ClientBody>) -> Result<Answer, String> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e:?}"))?;
        let (parts, b) = resp.into_parts();
        let body = b
            .collect()
            .await
            .map_err(|e| format!("body failed: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Send `req`, returning the streaming response.
    pub async fn send_streaming(
        &self,
        req: Request<ClientBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e:?}"))
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> Answer {
        let req = Request::get(url).body(body(Bytes::new())).expect("request");
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// POST `data` to `url`.
    pub async fn post(&self, url: &str, data: impl Into<Bytes>) -> Answer {
        let req = Request::post(url).body(body(data)).expect("request");
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }
}

/// Open a raw TLS connection to the gateway (for exact-byte tests).
pub async fn raw_tls(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    sni: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    TlsConnector::from(client_tls(ca, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// A WebSocket client connection through the gateway.
pub type Wss = yawc::WebSocket<TlsStream<TcpStream>>;

/// Open a WebSocket through the gateway at `addr` to `url` (e.g. `wss://app.test/ws`), with
/// extra request headers; returns the socket or the refusal status.
pub async fn wss(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    url: &str,
    headers: &[(&str, &str)],
    options: yawc::Options,
) -> Result<Wss, u16> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    wss_over(tcp, ca, url, headers, options).await
}

/// Like [`wss`] over a TCP connection the caller made (e.g. with a small receive buffer).
pub async fn wss_over(
    tcp: TcpStream,
    ca: &CertificateDer<'static>,
    url: &str,
    headers: &[(&str, &str)],
    options: yawc::Options,
) -> Result<Wss, u16> {
    let parsed: url::Url = url.parse().expect("url");
    let host = parsed.host_str().expect("host").to_owned();
    let name = ServerName::try_from(host).expect("name");
    let tls = TlsConnector::from(client_tls(ca, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .expect("TLS");
    let mut request = yawc::HttpRequest::builder();
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let ws_url: url::Url = url.replacen("wss://", "ws://", 1).parse().expect("url");
    match yawc::WebSocket::handshake_with_request(ws_url, tls, options, request).await {
        Ok(ws) => Ok(ws),
        Err(yawc::WebSocketError::InvalidStatusCode(s)) => Err(s),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// The next text, binary or close frame (pings and pongs skipped), within 5 s.
pub async fn next_message(ws: &mut Wss) -> yawc::Frame {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let f = ws.next_frame().await.expect("frame");
            if matches!(
                f.opcode(),
                yawc::OpCode::Text | yawc::OpCode::Binary | yawc::OpCode::Close
            ) {
                return f;
            }
        }
    })
    .await
    .expect("a message in time")
}

/// Read frames until a close arrives (or `limit` passes); returns its code, or `None` when
/// the connection ended without one.
pub async fn close_code(ws: &mut Wss, limit: Duration) -> Option<u16> {
    tokio::time::timeout(limit, async {
        loop {
            match ws.next_frame().await {
                Ok(f) if f.opcode() == yawc::OpCode::Close => return f.close_code().map(u16::from),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("the connection was closed in time")
}

/// Send `method path` to the gateway's admin listener; the status and body.
pub async fn admin_request(admin: SocketAddr, method: http::Method, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(admin).await.expect("connect admin");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("admin handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("admin request");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Fetch the gateway's Prometheus text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    admin_request(admin, http::Method::GET, "/metrics").await.1
}

/// The value of a metric sample line `name{labels}` (exact prefix match), or 0.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().split(' ').next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

// === processes ===

/// Path of a workspace binary (built by `cargo build --workspace --bins`, which `ops/test` runs).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (ops/test does)",
        path.display()
    );
    path
}

/// A child process whose stderr is captured to a log file; killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Lines of stderr as they arrive.
    pub lines: mpsc::Receiver<String>,
    /// Where stderr is copied.
    pub log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stderr captured into `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, log }
    }

    /// Wait for a stderr line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; log: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// Send a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal child");
    }

    /// Wait for exit up to `timeout`; returns the exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}; log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_kib(self.child.id(), "VmHWM:") * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of a process, in bytes.
pub fn rss_of(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// Addresses a gateway process reported at start (JSON log).
#[derive(Debug, Clone)]
pub struct GatewayAddrs {
    /// HTTPS.
    pub https: SocketAddr,
    /// Tunnel (UDP).
    pub tunnel: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// HTTP redirect.
    pub http: SocketAddr,
    /// WireGuard (UDP), when the gateway listens for it.
    pub wireguard: Option<SocketAddr>,
    /// The gateway's WireGuard public key, when it listens for WireGuard.
    pub wireguard_public_key: Option<String>,
}

/// Run `netwall-gateway` on `config` (a file) with JSON logs; waits until it is listening.
pub fn spawn_gateway(config: &Path, log: PathBuf) -> (Proc, GatewayAddrs) {
    spawn_gateway_with(Command::new(bin("netwall-gateway")), config, log)
}

/// Like [`spawn_gateway`] with a prepared command (e.g. `ip netns exec ...`).
pub fn spawn_gateway_with(mut cmd: Command, config: &Path, log: PathBuf) -> (Proc, GatewayAddrs) {
    cmd.arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info");
    let p = Proc::spawn(cmd, log);
    let line = p.wait_line("gateway started", Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("startup line is not JSON ({e}): {line}"));
    let addr = |k: &str| -> SocketAddr {
        let s = v[k].as_str().unwrap_or_else(|| panic!("no {k} in {line}"));
        let s = s.trim_start_matches("Some(").trim_end_matches(')');
        s.parse().unwrap_or_else(|e| panic!("{k}={s}: {e}"))
    };
    let addrs = GatewayAddrs {
        https: addr("https"),
        tunnel: addr("tunnel"),
        admin: addr("admin"),
        http: addr("http"),
        wireguard: v["wireguard"]
            .as_str()
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse().ok()),
        wireguard_public_key: v["wireguard_public_key"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    };
    (p, addrs)
}

/// Run `netwall-connector` on `config` with `credential` in the environment.
pub fn spawn_connector(config: &Path, credential: &str, log: PathBuf) -> Proc {
    let mut cmd = Command::new(bin("netwall-connector"));
    cmd.arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("json")
        .env("NETWALL_CREDENTIAL", credential)
        .env("RUST_LOG", "info");
    Proc::spawn(cmd, log)
}

// === tokens ===

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 JWT of `claims` signed with `secret`.
pub fn hs256_token(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a token")
}
