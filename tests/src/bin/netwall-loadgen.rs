//! `netwall-loadgen`: the benchmark's WebSocket and many-tunnel load generator.
//!
//! `ws` holds N idle WebSockets open through one path, reports the resident memory each watched
//! process gained per connection, then makes M of them active at a fixed message rate and
//! reports the round-trip latency. `tunnels` runs N connectors (one tunnel each) in this process
//! against one gateway, reports the gateway's resident memory per tunnel, then checks every
//! tunnel answers. `mux` measures the tunnel multiplexers alone; `tcp-copy` one bulk raw TCP
//! transfer (against `tcp-sink`). Each prints one JSON object on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
#[path = "../loadgen_challenge.rs"]
mod loadgen_challenge;
#[path = "../loadgen_handshakes.rs"]
mod loadgen_handshakes;
#[path = "../loadgen_mux.rs"]
mod loadgen_mux;
#[path = "../loadgen_shared.rs"]
mod loadgen_shared;
#[path = "../loadgen_tcp.rs"]
mod loadgen_tcp;

use clap::{Parser, Subcommand};
use futures_util::SinkExt as _;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsConnector;
use yawc::{Frame, OpCode};

#[derive(Parser)]
#[command(name = "netwall-loadgen", about = "netwall benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Idle and active WebSockets through one path.
    Ws(WsArgs),
    /// Many connectors, one tunnel each, on one gateway.
    Tunnels(TunnelArgs),
    /// The stream multiplexers (yamux, h2) alone over one TLS loopback connection.
    Mux(loadgen_mux::MuxArgs),
    /// A raw TCP service that sends or swallows bulk bytes (the walled service of `tcp-copy`).
    TcpSink(loadgen_tcp::SinkArgs),
    /// One bulk raw TCP transfer through a path.
    TcpCopy(loadgen_tcp::CopyArgs),
    /// The proof-of-work challenge: the gateway's cost per operation and solve times in
    /// headless Chromium at each difficulty.
    Challenge(loadgen_challenge::ChallengeArgs),
    /// New TLS connections per second through one HTTPS path, with a chosen key exchange.
    Handshakes(loadgen_handshakes::HandshakeArgs),
    /// Many gateways sharing Redis: rate-limit overhead by driver, fan-out latency, and
    /// Redis pub/sub alone.
    Shared(loadgen_shared::SharedArgs),
}

#[derive(clap::Args)]
struct WsArgs {
    /// `ws://` or `wss://` URL of the echo endpoint (certificates are not verified).
    #[arg(long)]
    url: String,
    /// Idle connections to hold.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Of those, connections that then send messages.
    #[arg(long, default_value_t = 1_000)]
    active: usize,
    /// Messages per second per active connection.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// How long the active phase lasts, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Handshakes in flight at once while opening.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// `name=pid[,pid...]`: processes whose resident memory is reported.
    #[arg(long = "watch")]
    watch: Vec<String>,
}

#[derive(clap::Args)]
struct TunnelArgs {
    /// Connectors (and tunnels) to run; tunnel `i` is named `t{i}`.
    #[arg(long, default_value_t = 1_000)]
    count: usize,
    /// The gateway's tunnel listener.
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway's HTTPS listener; tunnel `t{i}` is routed for host `t{i}.bench`.
    #[arg(long)]
    https: SocketAddr,
    /// The gateway's tunnel certificate (pinned by the connectors).
    #[arg(long)]
    pin_cert_file: PathBuf,
    /// The service every connector forwards to.
    #[arg(long)]
    service: String,
    /// The shared credential of the tunnels.
    #[arg(long)]
    credential: String,
    /// Connectors started at once.
    #[arg(long, default_value_t = 50)]
    parallel: usize,
    /// `name=pid[,pid...]`: processes whose resident memory is reported.
    #[arg(long = "watch")]
    watch: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        match cli.cmd {
            Cmd::Ws(a) => ws(a).await,
            Cmd::Tunnels(a) => tunnels(a).await,
            Cmd::Mux(a) => loadgen_mux::run(a).await,
            Cmd::TcpSink(a) => loadgen_tcp::sink(a).await,
            Cmd::TcpCopy(a) => loadgen_tcp::copy(a).await,
            Cmd::Challenge(a) => loadgen_challenge::run(a).await,
            Cmd::Shared(a) => loadgen_shared::run(a).await,
            Cmd::Handshakes(a) => {
                let client = client_config(a.key_exchange)?;
                loadgen_handshakes::run(a, client).await
            }
        }
    })?;
    println!("{report}");
    // Connections still open are not closed one by one: the process is done.
    rt.shutdown_background();
    Ok(())
}

// === resident memory ===

struct Watched {
    name: String,
    pids: Vec<u32>,
}

fn parse_watch(specs: &[String]) -> anyhow::Result<Vec<Watched>> {
    specs
        .iter()
        .map(|s| {
            let (name, pids) = s
                .split_once('=')
                .ok_or_else(|| anyhow!("--watch {s}: expected name=pid[,pid]"))?;
            let pids = pids
                .split(',')
                .map(|p| p.trim().parse::<u32>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--watch {s}"))?;
            Ok(Watched {
                name: name.to_owned(),
                pids,
            })
        })
        .collect()
}

/// Resident memory of a process in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("process {pid}: no VmRSS"))
}

fn sample(watched: &[Watched]) -> anyhow::Result<Vec<u64>> {
    watched
        .iter()
        .map(|w| w.pids.iter().map(|p| rss_kib(*p)).sum())
        .collect()
}

fn memory_report(
    watched: &[Watched],
    before: &[u64],
    after: &[u64],
    per: usize,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (i, w) in watched.iter().enumerate() {
        let grown = after[i].saturating_sub(before[i]) * 1024;
        out.insert(
            w.name.clone(),
            json!({
                "rss_before_kib": before[i],
                "rss_after_kib": after[i],
                "bytes_per_item": grown as f64 / per.max(1) as f64,
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// Resident memory settles after a burst (allocator purges); wait for two equal samples a
/// second apart, at most `limit`.
async fn settled(watched: &[Watched], limit: Duration) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + limit;
    let mut last = sample(watched)?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample(watched)?;
        if now == last || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

// === TLS without verification (a benchmark talks to self-signed local listeners) ===

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector(kx: loadgen_handshakes::KeyExchange) -> anyhow::Result<TlsConnector> {
    Ok(TlsConnector::from(Arc::new(client_config(kx)?)))
}

/// The benchmark's TLS client: no certificate verification, HTTP/1.1, the given key exchange,
/// rustls's default session cache (shared by every connection made with it).
fn client_config(kx: loadgen_handshakes::KeyExchange) -> anyhow::Result<rustls::ClientConfig> {
    // X25519 alone is the key exchange nginx (OpenSSL 3.0) and netwall both do, so their
    // figures compare like for like; the cipher code is netwall's own.
    let kx_groups = match kx {
        loadgen_handshakes::KeyExchange::X25519 => {
            vec![rustls::crypto::aws_lc_rs::kx_group::X25519]
        }
        loadgen_handshakes::KeyExchange::Hybrid => vec![
            rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
            rustls::crypto::aws_lc_rs::kx_group::X25519,
        ],
    };
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups,
        ..(*netwall_tunnel::crypto::provider()).clone()
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn dial(url: &url::Url, tls: &TlsConnector) -> anyhow::Result<Box<dyn Io>> {
    let host = url.host_str().ok_or_else(|| anyhow!("{url}: no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| anyhow!("{url}: no port"))?;
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    if matches!(url.scheme(), "wss" | "https") {
        let name = ServerName::try_from(host.to_owned())?;
        Ok(Box::new(tls.connect(name, tcp).await?))
    } else {
        Ok(Box::new(tcp))
    }
}

// === WebSockets ===

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Idle,
    Active,
    /// Send no more; wait for the echoes of messages already sent.
    Drain,
    Stop,
}

/// Longest a WebSocket may take to open (TCP, TLS, handshake), and the connections to finish
/// once told to stop.
const WS_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct ConnResult {
    rtts_us: Vec<u32>,
    sent: u64,
    lost: bool,
}

async fn ws(a: WsArgs) -> anyhow::Result<serde_json::Value> {
    let watched = parse_watch(&a.watch)?;
    let url: url::Url = a.url.parse().context("--url")?;
    let ws_url: url::Url = a.url.replacen("wss://", "ws://", 1).parse()?;
    let tls = tls_connector(loadgen_handshakes::KeyExchange::X25519)?;
    let before = settled(&watched, Duration::from_secs(5)).await?;

    let (phase_tx, phase) = watch::channel(Phase::Idle);
    let gate = Arc::new(Semaphore::new(a.parallel.max(1)));
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let payload = Bytes::from(vec![b'x'; a.size.max(8)]);
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    // Each active connection reports once it has no message in flight after the drain.
    let (drained, mut drained_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let active_opened = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.idle {
        let (url, ws_url, tls, gate) = (url.clone(), ws_url.clone(), tls.clone(), gate.clone());
        let (opened_tx, phase, payload) = (opened_tx.clone(), phase.clone(), payload.clone());
        let (drained, active_opened) = (drained.clone(), active_opened.clone());
        let active = i < a.active;
        // Spread the active connections' sends evenly over one period.
        let offset = period.mul_f64((i % a.active.max(1)) as f64 / a.active.max(1) as f64);
        tasks.spawn(async move {
            let open = async {
                let _permit = gate.acquire_owned().await?;
                // A path that accepts the TCP connection and never answers the handshake
                // counts as a failed open, not a run that waits forever.
                tokio::time::timeout(WS_OPEN_TIMEOUT, async {
                    let io = dial(&url, &tls).await?;
                    yawc::WebSocket::handshake(ws_url, io, yawc::Options::default())
                        .await
                        .map_err(|e| anyhow!("handshake: {e}"))
                })
                .await
                .map_err(|_| anyhow!("no WebSocket within {WS_OPEN_TIMEOUT:?}"))?
            };
            match open.await {
                Ok(ws) => {
                    if active {
                        active_opened.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = opened_tx.send(Ok(()));
                    Some(run_conn(ws, phase, active, offset, period, payload, drained).await)
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e.to_string()));
                    None
                }
            }
        });
    }
    drop(opened_tx);
    let (mut held, mut open_errors, mut first_error) = (0usize, 0usize, None);
    // Every task reports once; the senders live as long as the connections.
    for _ in 0..a.idle {
        let Some(r) = opened.recv().await else { break };
        match r {
            Ok(()) => held += 1,
            Err(e) => {
                open_errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    if held == 0 {
        bail!(
            "no WebSocket opened: {}",
            first_error.unwrap_or_else(|| "nothing attempted".into())
        );
    }
    let idle_after = settled(&watched, Duration::from_secs(10)).await?;
    let idle_memory = memory_report(&watched, &before, &idle_after, held);

    phase_tx.send_replace(Phase::Active);
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    // Every active connection finishes its round trip before any connection closes, so the
    // teardown of thousands of connections does not land in the latency figures.
    phase_tx.send_replace(Phase::Drain);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for _ in 0..active_opened.load(Ordering::Relaxed) {
        if !matches!(
            tokio::time::timeout_at(deadline, drained_rx.recv()).await,
            Ok(Some(()))
        ) {
            break;
        }
    }
    phase_tx.send_replace(Phase::Stop);
    let mut rtts = Vec::new();
    let (mut sent, mut lost) = (0u64, 0usize);
    // A connection stuck in a send to a path that stopped reading is given up with the rest.
    let stop_deadline = tokio::time::Instant::now() + WS_OPEN_TIMEOUT;
    while let Ok(Some(r)) = tokio::time::timeout_at(stop_deadline, tasks.join_next()).await {
        let Some(r) = r.map_err(|e| anyhow!("connection task failed: {e}"))? else {
            continue;
        };
        sent += r.sent;
        lost += usize::from(r.lost);
        rtts.extend(r.rtts_us);
    }
    rtts.sort_unstable();
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        let i = ((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1;
        rtts[i] as f64 / 1000.0
    };
    Ok(json!({
        "url": a.url,
        "idle": {
            "requested": a.idle,
            "open": held,
            "open_errors": open_errors,
            "first_error": first_error,
            "open_seconds": open_seconds,
            "memory": idle_memory,
        },
        "active": {
            "connections": a.active.min(held),
            "rate_per_connection": a.rate,
            "seconds": a.seconds,
            "sent": sent,
            "answered": rtts.len(),
            "connections_lost": lost,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "p999_ms": pct(0.999),
        },
    }))
}

/// One WebSocket: answer pings while idle; once active, send a message per period and time
/// its echo.
async fn run_conn<S>(
    mut ws: yawc::WebSocket<S>,
    mut phase: watch::Receiver<Phase>,
    active: bool,
    offset: Duration,
    period: Duration,
    payload: Bytes,
    drained: tokio::sync::mpsc::UnboundedSender<()>,
) -> ConnResult
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut res = ConnResult::default();
    let mut tick: Option<tokio::time::Interval> = None;
    let mut pending: Option<Instant> = None;
    let mut draining = false;
    loop {
        tokio::select! {
            changed = phase.changed() => {
                let now = *phase.borrow_and_update();
                if changed.is_err() || now == Phase::Stop {
                    break;
                }
                if now == Phase::Active && active {
                    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick = Some(t);
                }
                if now == Phase::Drain && active {
                    tick = None;
                    draining = true;
                    if pending.is_none() {
                        let _ = drained.send(());
                    }
                }
            }
            _ = async { tick.as_mut().map(|t| t.tick()).expect("guarded").await }, if tick.is_some() && pending.is_none() => {
                pending = Some(Instant::now());
                res.sent += 1;
                if ws.send(Frame::binary(payload.clone())).await.is_err() {
                    res.lost = true;
                    break;
                }
            }
            frame = ws.next_frame() => match frame {
                Ok(f) if f.opcode() == OpCode::Binary => {
                    if let Some(t) = pending.take() {
                        res.rtts_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if draining {
                            let _ = drained.send(());
                        }
                    }
                }
                Ok(f) if f.opcode() == OpCode::Close => { res.lost = true; break; }
                Ok(_) => {}
                Err(_) => { res.lost = true; break; }
            },
        }
    }
    if active && !draining {
        // Gone before the drain: nothing to wait for.
        let _ = drained.send(());
    }
    res
}

// === many tunnels ===

async fn tunnels(a: TunnelArgs) -> anyhow::Result<serde_json::Value> {
    let watched = parse_watch(&a.watch)?;
    let before = settled(&watched, Duration::from_secs(5)).await?;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(a.parallel.max(1)));
    let mut starting = tokio::task::JoinSet::new();
    let pin = a.pin_cert_file.display().to_string();
    for i in 0..a.count {
        let toml = format!(
            "tunnel = \"t{i}\"\ngateways = [\"{gw}\"]\nserver_name = \"localhost\"\npin_cert_file = {pin:?}\n[services]\nweb = {svc:?}\n",
            gw = a.gateway,
            svc = a.service,
        );
        let credential = a.credential.clone();
        let gate = gate.clone();
        starting.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let resolved = netwall_connector::config::ConnectorConfig::parse(
                std::path::Path::new("loadgen.toml"),
                &toml,
                std::path::Path::new("/"),
                Some(credential),
            )
            .map_err(|e| anyhow!("connector t{i}: {e}"))?;
            let running = netwall_connector::start(resolved).map_err(|e| anyhow!("t{i}: {e}"))?;
            let mut live = running.live_connections();
            tokio::time::timeout(Duration::from_secs(60), live.wait_for(|n| *n > 0))
                .await
                .map_err(|_| anyhow!("t{i}: no tunnel within 60 s"))?
                .map_err(|_| anyhow!("t{i}: connector stopped"))?;
            Ok::<_, anyhow::Error>(running)
        });
    }
    let mut running = Vec::with_capacity(a.count);
    while let Some(r) = starting.join_next().await {
        running.push(r.map_err(|e| anyhow!("start task failed: {e}"))??);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let after = settled(&watched, Duration::from_secs(10)).await?;
    let memory = memory_report(&watched, &before, &after, running.len());

    // Every tunnel answers through the gateway.
    let tls = tls_connector(loadgen_handshakes::KeyExchange::X25519)?;
    let mut ok = 0usize;
    let mut failures = Vec::new();
    for i in 0..a.count {
        match https_get(a.https, &format!("t{i}.bench"), &tls).await {
            Ok(200) => ok += 1,
            Ok(s) => failures.push(format!("t{i}: status {s}")),
            Err(e) => failures.push(format!("t{i}: {e}")),
        }
    }
    failures.truncate(5);
    Ok(json!({
        "tunnels": running.len(),
        "connect_seconds": connect_seconds,
        "memory": memory,
        "answered": ok,
        "failures": failures,
    }))
}

async fn https_get(addr: SocketAddr, host: &str, tls: &TlsConnector) -> anyhow::Result<u16> {
    let tcp = TcpStream::connect(addr).await?;
    let io = tls
        .connect(ServerName::try_from(host.to_owned())?, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| anyhow!("no answer within 10 s"))??;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}
