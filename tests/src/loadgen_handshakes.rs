//! `netwall-loadgen handshakes`: new TLS connections per second through one HTTPS path, each a
//! full TCP connect, TLS handshake and one GET, then closed by the client (as `oha
//! --disable-keepalive` does).
//!
//! What it adds over oha is control of the two things that decide a handshake's cost. The key
//! exchange: `x25519` offers only X25519, the exchange every path under test supports, so two
//! servers' handshakes do the same work; `hybrid` offers X25519MLKEM768 first, as browsers and
//! oha do. And sessions: `fresh` makes every connection a new client (a full handshake each);
//! `returning` gives each of the concurrent clients its own ticket cache, as separate users
//! have. oha shares one client's cache (eight tickets per server) among all its connections,
//! so how often it resumes depends on how its connections happen to bunch up, and differs
//! from server to server for reasons that are not the server's cost.
//!
//! Prints oha's JSON shape (summary, latency percentiles, status and error counts) so the
//! benchmark report reads both alike, plus how many handshakes were full or resumed and how
//! many session tickets the server sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Which key exchange the client offers.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KeyExchange {
    /// X25519 alone (what OpenSSL 3.0, hence Debian's nginx, supports).
    X25519,
    /// The X25519MLKEM768 post-quantum hybrid first, then X25519.
    Hybrid,
}

/// Whether a connection may resume an earlier one's TLS session.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Sessions {
    /// Every connection is a new client: full handshakes only.
    Fresh,
    /// Each of the `concurrency` clients keeps its own ticket cache and resumes its last
    /// session, as a returning browser does.
    Returning,
}

/// Arguments of `handshakes`.
#[derive(clap::Args)]
pub struct HandshakeArgs {
    /// `https://` URL to GET on every new connection (certificates are not verified).
    #[arg(long)]
    url: String,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The key exchange offered.
    #[arg(long, value_enum, default_value_t = KeyExchange::X25519)]
    pub key_exchange: KeyExchange,
    /// New clients every time, or returning ones.
    #[arg(long, value_enum, default_value_t = Sessions::Fresh)]
    sessions: Sessions,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    /// Handshakes the server completed in full, and by resuming a session.
    full: u64,
    resumed: u64,
    /// Session tickets the server sent.
    tickets: u64,
    errors: BTreeMap<String, u64>,
}

/// Open connections until the time is up; report as oha does.
pub async fn run(
    a: HandshakeArgs,
    client: rustls::ClientConfig,
) -> anyhow::Result<serde_json::Value> {
    let url: url::Url = a.url.parse().context("--url")?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("{url}: no host"))?
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| anyhow!("{url}: no port"))?;
    let name = ServerName::try_from(host.clone())?;
    let path = url.path().to_owned();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.seconds.max(0.1));
    let mut workers = Vec::with_capacity(a.concurrency);
    for _ in 0..a.concurrency.max(1) {
        let mut client = client.clone();
        client.resumption = match a.sessions {
            Sessions::Fresh => rustls::client::Resumption::disabled(),
            Sessions::Returning => rustls::client::Resumption::default(),
        };
        let tls = TlsConnector::from(Arc::new(client));
        let (host, name, path) = (host.clone(), name.clone(), path.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match tokio::time::timeout_at(
                    deadline.into(),
                    one(&tls, &host, port, name.clone(), &path),
                )
                .await
                {
                    // Cut off by the end of the run: not counted, as oha does not.
                    Err(_) => break,
                    Ok(Ok(done)) => {
                        if done.resumed {
                            tally.resumed += 1;
                        } else {
                            tally.full += 1;
                        }
                        tally.tickets += u64::from(done.tickets);
                        let us = t0.elapsed().as_micros().min(u128::from(u32::MAX));
                        tally.latencies_us.push(us as u32);
                        *tally.statuses.entry(done.status).or_default() += 1;
                    }
                    Ok(Err(e)) => *tally.errors.entry(format!("{e:#}")).or_default() += 1,
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.map_err(|e| anyhow!("worker failed: {e}"))?;
        all.latencies_us.extend(t.latencies_us);
        for (k, v) in t.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        all.full += t.full;
        all.resumed += t.resumed;
        all.tickets += t.tickets;
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |q: f64| -> f64 {
        let n = all.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        f64::from(all.latencies_us[i]) / 1e6
    };
    let answered: u64 = all.statuses.values().sum();
    let failed: u64 = all.errors.values().sum();
    Ok(json!({
        "summary": {
            "requestsPerSec": answered as f64 / seconds,
            "total": seconds,
            "successRate": if answered + failed == 0 { 0.0 } else { answered as f64 / (answered + failed) as f64 },
        },
        "latencyPercentiles": { "p50": pct(0.50), "p99": pct(0.99), "p99.9": pct(0.999) },
        "statusCodeDistribution": all.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errorDistribution": all.errors,
        "keyExchange": format!("{:?}", a.key_exchange),
        "sessions": format!("{:?}", a.sessions),
        "handshakes": { "full": all.full, "resumed": all.resumed, "ticketsSent": all.tickets },
    }))
}

/// One finished connection.
struct Done {
    status: u16,
    resumed: bool,
    tickets: u32,
}

/// One connection: connect, handshake, GET, read the whole answer, close.
async fn one(
    tls: &TlsConnector,
    host: &str,
    port: u16,
    name: ServerName<'static>,
    path: &str,
) -> anyhow::Result<Done> {
    let tcp = TcpStream::connect((host, port)).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(name, tcp).await.context("tls")?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("http")?;
    let conn = tokio::spawn(conn.without_shutdown());
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await.context("request")?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.context("body")?;
    drop(send);
    // The connection hands its stream back once the exchange is over; dropping it closes.
    let parts = conn.await??;
    let tickets = parts.io.inner().get_ref().1.tls13_tickets_received();
    Ok(Done {
        status,
        resumed,
        tickets,
    })
}
