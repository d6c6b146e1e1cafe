//! `netwall-loadgen mux`: the two candidate multiplexers for byte-stream tunnels, yamux (what
//! netwall uses) and HTTP/2 (h2), measured alone over the same TLS 1.3 loopback connection.
//!
//! The accepting side ("gateway") opens the streams, as netwall's gateway opens one per
//! request; the dialing side ("connector") answers. yamux lets either side open streams; with
//! h2 only the client may, so the gateway plays the HTTP/2 client over the connection the
//! connector dialed. Each small request carries 64 bytes each way; the bulk transfer moves
//! `bulk_mib` MiB from the connector to the gateway on one stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use netwall_tunnel::mux::{self, MuxParams, Role};
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
    /// yamux (libp2p's), as netwall's TLS and Unix tunnels use it.
    Yamux,
    /// HTTP/2 (the h2 crate), the gateway as HTTP/2 client.
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    let opener: Arc<dyn Opener> = match a.kind {
        Kind::Yamux => yamux_pair(accepted, dialed),
        Kind::H2 => h2_pair(accepted, dialed).await?,
    };
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

// === yamux ===

struct YamuxOpener(Conn);

fn yamux_pair(
    accepted: server::TlsStream<TcpStream>,
    dialed: client::TlsStream<TcpStream>,
) -> Arc<dyn Opener> {
    let params = MuxParams {
        max_streams: 16_384,
        keep_alive: Duration::from_secs(30),
        accept_backlog: 256,
    };
    let gateway = mux::connect(
        accepted,
        Role::Server,
        TransportKind::Tls,
        Peer::Memory,
        params,
    );
    let connector = mux::connect(
        dialed,
        Role::Client,
        TransportKind::Tls,
        Peer::Memory,
        params,
    );
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
    Arc::new(YamuxOpener(gateway))
}

impl Opener for YamuxOpener {
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

// === h2 ===

struct H2Opener(h2::client::SendRequest<Bytes>);

async fn h2_pair(
    accepted: server::TlsStream<TcpStream>,
    dialed: client::TlsStream<TcpStream>,
) -> anyhow::Result<Arc<dyn Opener>> {
    // Windows as hyper's defaults for the same job: 1 MiB per stream and connection.
    let window = 1024 * 1024;
    let serve = tokio::spawn(async move {
        let mut conn = h2::server::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(window)
            .max_concurrent_streams(16_384)
            .handshake::<_, Bytes>(dialed)
            .await?;
        while let Some(r) = conn.accept().await {
            let (req, mut respond) = r?;
            tokio::spawn(async move {
                let bulk: Option<usize> = req
                    .uri()
                    .path()
                    .strip_prefix("/bulk/")
                    .and_then(|n| n.parse().ok());
                let mut body = req.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let Ok(chunk) = chunk else { return };
                    let _ = body.flow_control().release_capacity(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                let Ok(mut send) = respond.send_response(http::Response::new(()), false) else {
                    return;
                };
                let mut out = match bulk {
                    Some(n) => Bytes::from(vec![b'x'; n]),
                    None => Bytes::from(got),
                };
                while !out.is_empty() {
                    send.reserve_capacity(out.len().min(CHUNK));
                    let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(c)) => c,
                        _ => return,
                    };
                    if send
                        .send_data(out.split_to(cap.min(out.len())), false)
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = send.send_data(Bytes::new(), true);
            });
        }
        Ok::<_, anyhow::Error>(())
    });
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake::<_, Bytes>(accepted)
        .await
        .context("h2 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
        drop(serve);
    });
    Ok(Arc::new(H2Opener(send)))
}

impl H2Opener {
    async fn exchange(&self, path: String, body: Bytes) -> anyhow::Result<usize> {
        let mut send = self.0.clone().ready().await?;
        let req = http::Request::builder()
            .uri(format!("https://localhost{path}"))
            .body(())?;
        let (resp, mut stream) = send.send_request(req, false)?;
        stream.send_data(body, true)?;
        let mut body = resp.await?.into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            got += chunk.len();
            body.flow_control()
                .release_capacity(chunk.len())
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(got)
    }
}

impl Opener for H2Opener {
    fn small(&self) -> netwall_tunnel::BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let got = self
                .exchange("/small".into(), Bytes::from_static(&[b'S'; SMALL]))
                .await?;
            anyhow::ensure!(got == SMALL, "short answer: {got}");
            Ok(())
        })
    }

    fn bulk(&self, bytes: usize) -> netwall_tunnel::BoxFuture<'_, anyhow::Result<usize>> {
        Box::pin(async move { self.exchange(format!("/bulk/{bytes}"), Bytes::new()).await })
    }
}
