//! `netwall-loadgen mux`: the two candidate multiplexers for byte-stream tunnels, yamux (what
//! netwall uses) and HTTP/2 (h2), measured alone over the same TLS 1.3 loopback connection.
//!
//! Both run behind netwall's tunnel `Connection` trait: HTTP/2 as netwall's `mux` module (the
//! gateway as HTTP/2 client), yamux as it was before HTTP/2 replaced it. The accepting side
//! ("gateway") opens the streams, as netwall's gateway opens one per request; the dialing side
//! ("connector") answers. Each small request carries 64 bytes each way; the bulk transfer
//! moves `bulk_mib` MiB from the connector to the gateway on one stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use netwall_tunnel::mux::{self, MuxParams, Role};

#[path = "loadgen_yamux.rs"]
mod yamux_conn;
use netwall_tunnel::{Conn, Peer, TransportKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// Bytes of each small request and response.
const SMALL: usize = 64;
/// Chunk of the bulk transfer.
const CHUNK: usize = 64 * 1024;

/// Which multiplexer.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// yamux (libp2p's), the multiplexer measured against HTTP/2.
    Yamux,
    /// HTTP/2 (the h2 crate), as netwall's TLS and Unix tunnels use it.
    H2,
}

/// Arguments of `mux`.
#[derive(clap::Args)]
pub struct MuxArgs {
    /// The multiplexer.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Seconds of small requests.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Small requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// MiB of the bulk transfer.
    #[arg(long, default_value_t = 256)]
    bulk_mib: usize,
}

/// A TLS 1.3 connection over loopback: (accepting side, dialing side).
async fn tls_pair() -> anyhow::Result<(server::TlsStream<TcpStream>, client::TlsStream<TcpStream>)>
{
    let provider = netwall_tunnel::crypto::provider();
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    let der = cert.der().clone();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der.to_vec()))?;
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        TlsAcceptor::from(Arc::new(server_cfg)).accept(tcp).await
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let dialed = TlsConnector::from(Arc::new(client_cfg))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let accepted = accept.await??;
    Ok((accepted, dialed))
}

/// Run the measurement and return its JSON report.
pub async fn run(a: MuxArgs) -> anyhow::Result<serde_json::Value> {
    let (accepted, dialed) = tls_pair().await?;
    let opener = conn_pair(a.kind, accepted, dialed).await?;
    // Small requests: `concurrency` workers for `seconds`.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency {
        let (opener, stop) = (opener.clone(), stop.clone());
        workers.spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                opener.small().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    while let Some(r) = workers.join_next().await {
        lat.extend(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    // Bulk: one stream, connector to gateway.
    let bytes = a.bulk_mib * 1024 * 1024;
    let t = Instant::now();
    let got = opener.bulk(bytes).await?;
    let bulk_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(got == bytes, "bulk moved {got} of {bytes} bytes");
    Ok(json!({
        "kind": format!("{:?}", a.kind).to_lowercase(),
        "requests": lat.len(),
        "rps": lat.len() as f64 / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "bulk_mib_per_s": a.bulk_mib as f64 / bulk_secs,
    }))
}

/// The gateway's side of the measurement: open a stream for one exchange.
trait Opener: Send + Sync + 'static {
    fn small(&self) -> netwall_tunnel::BoxFuture<'_, anyhow::Result<()>>;
    fn bulk(&self, bytes: usize) -> netwall_tunnel::BoxFuture<'_, anyhow::Result<usize>>;
}

// === the connection pair ===

struct ConnOpener(Conn);

/// Connect both ends with `kind`; the connector side answers every stream the gateway opens.
async fn conn_pair(
    kind: Kind,
    accepted: server::TlsStream<TcpStream>,
    dialed: client::TlsStream<TcpStream>,
) -> anyhow::Result<Arc<dyn Opener>> {
    let (gateway, connector): (Conn, Conn) = match kind {
        Kind::Yamux => {
            let params = yamux_conn::MuxParams {
                max_streams: 16_384,
                keep_alive: Duration::from_secs(30),
                accept_backlog: 256,
            };
            (
                yamux_conn::connect(
                    accepted,
                    yamux_conn::Role::Server,
                    TransportKind::Tls,
                    Peer::Memory,
                    params,
                ),
                yamux_conn::connect(
                    dialed,
                    yamux_conn::Role::Client,
                    TransportKind::Tls,
                    Peer::Memory,
                    params,
                ),
            )
        }
        Kind::H2 => {
            let params = MuxParams {
                max_streams: 16_384,
                accept_backlog: 256,
            };
            let (g, c) = tokio::join!(
                mux::connect(
                    accepted,
                    Role::Server,
                    TransportKind::Tls,
                    Peer::Memory,
                    params
                ),
                mux::connect(
                    dialed,
                    Role::Client,
                    TransportKind::Tls,
                    Peer::Memory,
                    params
                ),
            );
            (g.map_err(|e| anyhow!(e))?, c.map_err(|e| anyhow!(e))?)
        }
    };
    tokio::spawn(async move {
        while let Ok(mut s) = connector.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; SMALL];
                if s.recv.read_exact(&mut req).await.is_err() {
                    return;
                }
                if req[0] == b'B' {
                    let n = u64::from_be_bytes(req[1..9].try_into().unwrap_or_default()) as usize;
                    let chunk = vec![b'x'; CHUNK];
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(CHUNK);
                        if s.send.write_all(&chunk[..k]).await.is_err() {
                            return;
                        }
                        left -= k;
                    }
                } else if s.send.write_all(&req).await.is_err() {
                    return;
                }
                let _ = s.send.shutdown().await;
            });
        }
    });
    Ok(Arc::new(ConnOpener(gateway)))
}

impl Opener for ConnOpener {
    fn small(&self) -> netwall_tunnel::BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let mut s = self.0.open().await?;
            s.send.write_all(&[b'S'; SMALL]).await?;
            let mut resp = [0u8; SMALL];
            s.recv.read_exact(&mut resp).await?;
            Ok(())
        })
    }

    fn bulk(&self, bytes: usize) -> netwall_tunnel::BoxFuture<'_, anyhow::Result<usize>> {
        Box::pin(async move {
            let mut s = self.0.open().await?;
            let mut req = [0u8; SMALL];
            req[0] = b'B';
            req[1..9].copy_from_slice(&(bytes as u64).to_be_bytes());
            s.send.write_all(&req).await?;
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0;
            loop {
                let n = s.recv.read(&mut buf).await?;
                if n == 0 {
                    return Ok(got);
                }
                got += n;
            }
        })
    }
}
