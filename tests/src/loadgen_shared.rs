//! `netwall-loadgen shared`: what sharing policy across gateways costs.
//!
//! In one process, with a real `redis-server`:
//! - the request overhead of a rate limit: the same route with no limit, with the memory
//!   driver and with the Redis driver (64 connections, HTTP/1.1, one gateway each);
//! - fan-out: WebSocket clients spread over three gateways sharing Redis, messages published
//!   through the connector, latency from publish to receipt (p50/p99);
//! - for reference, Redis pub/sub alone: publish to receipt on one subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use netwall_tests::cluster::{gateway_toml, redis_state};
use netwall_tests::harness::{
    HttpsClient, Pki, Proc, spawn_gateway_with, start_connector, start_gateway, start_sample,
    wait_tunnel, wss,
};
use netwall_tests::redis::Redis;
use serde_json::json;

#[derive(clap::Args)]
pub struct SharedArgs {
    /// Seconds of each rate-limit pass.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Rounds of the four rate-limit passes (the median of each is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent HTTP connections of each pass.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// WebSocket clients across the three gateways.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Messages published to all of them.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    /// Redis pub/sub round trips measured alone.
    #[arg(long, default_value_t = 2_000)]
    pubsub: usize,
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn quantiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    json!({"samples": v.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)})
}

const ROUTES: &str = "[[route]]\nhost = \"app.test\"\npath = \"/open\"\ntunnel = \"app\"\nservice = \"web\"\n\
    [[route]]\nhost = \"app.test\"\npath = \"/limited\"\ntunnel = \"app\"\nservice = \"web\"\n\
    [route.rate_limit]\nrequests = 1000000\nwindow = \"1s\"\n\
    [[route]]\nhost = \"app.test\"\npath = \"/push\"\ntunnel = \"app\"\nservice = \"web\"\n\
    [route.websocket]\npush = true\nmax_connections_per_ip = 20000\npush_queue = 4096\n";

/// Requests per second on `url` through `client` for `seconds` with `concurrency` workers.
async fn rate(client: HttpsClient, url: &str, seconds: f64, concurrency: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, stop, done, url) =
                (client.clone(), stop.clone(), done.clone(), url.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if client.get(&url).await.status == http::StatusCode::OK {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// One gateway and connector serving [`ROUTES`] with `state` as its `[state]`.
async fn single(
    pki: &Pki,
    state: &str,
) -> (
    netwall_gateway::RunningGateway,
    netwall_connector::RunningConnector,
) {
    let sample = start_sample("bench-shared").await;
    let gateway = start_gateway(
        &pki.gateway_toml(&format!("{ROUTES}\n{state}"))
            .replace("[https]\n", "[https]\nmax_connections_per_ip = 20000\n"),
    )
    .await;
    let connector = start_connector(
        &pki.connector_toml(
            &[gateway.tunnel_addr],
            &format!("web = \"http://{sample}\""),
            "",
        ),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    (gateway, connector)
}

async fn rate_limits(a: &SharedArgs) -> anyhow::Result<serde_json::Value> {
    let pki = Pki::new();
    let (memory, _c1) = single(&pki, "").await;
    let redis = Redis::start(&[]).await;
    let (shared, _c2) = single(&pki, &redis_state(&redis)).await;
    let mem = HttpsClient::new(memory.https_addr, &pki.ca_der, false);
    let red = HttpsClient::new(shared.https_addr, &pki.ca_der, false);
    // Warm the connection pools.
    let _ = rate(mem.clone(), "https://app.test/open", 1.0, a.concurrency).await;
    let _ = rate(red.clone(), "https://app.test/open", 1.0, a.concurrency).await;
    // Passes interleaved, each kind's median kept: on a shared 2-core machine the rate drifts
    // more between minutes than a rate limit costs.
    let mut runs: [Vec<f64>; 4] = Default::default();
    for _ in 0..a.rounds.max(1) {
        let passes = [
            (&mem, "https://app.test/open"),
            (&mem, "https://app.test/limited"),
            (&red, "https://app.test/open"),
            (&red, "https://app.test/limited"),
        ];
        for (k, (client, url)) in passes.into_iter().enumerate() {
            runs[k].push(rate(client.clone(), url, a.seconds, a.concurrency).await);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let [n, m, nr, r] = runs;
    let (none, with_memory, none_redis_gw, with_redis) =
        (median(n), median(m), median(nr), median(r));
    let per_req = |r: f64| 1e6 / r;
    Ok(json!({
        "rounds": a.rounds,
        "none_rps": none,
        "memory_rps": with_memory,
        "none_on_redis_gateway_rps": none_redis_gw,
        "redis_rps": with_redis,
        "memory_added_us": per_req(with_memory) - per_req(none),
        "redis_added_us": per_req(with_redis) - per_req(none_redis_gw),
    }))
}

/// A workspace binary beside this one (`ops/bench --shared` builds them all).
fn sibling(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow::anyhow!("no folder for {name}"))?;
    anyhow::ensure!(path.exists(), "{} is missing", path.display());
    Ok(path)
}

async fn fanout(a: &SharedArgs) -> anyhow::Result<serde_json::Value> {
    // Every part its own process: 10,000 WebSockets need some 40,000 sockets in all, more than
    // one process may hold here.
    let pki = Pki::new();
    let redis = Redis::start(&[]).await;
    let dir = pki.dir.path().to_path_buf();
    let backend = netwall_tests::pebble::free_tcp_port();
    let mut sample = std::process::Command::new(sibling("netwall-sample")?);
    sample.args([
        "--listen",
        &format!("127.0.0.1:{backend}"),
        "--name",
        "bench-fanout",
    ]);
    let _sample = Proc::spawn(sample, dir.join("sample.log"));
    let mut gateways = Vec::new();
    for i in 0..3 {
        let config = dir.join(format!("gateway-{i}.toml"));
        std::fs::write(
            &config,
            gateway_toml(&pki, &redis, ROUTES, i, "127.0.0.1:0").replace(
                "max_connections_per_ip = 5000",
                "max_connections_per_ip = 20000",
            ),
        )?;
        gateways.push(spawn_gateway_with(
            std::process::Command::new(sibling("netwall-gateway")?),
            &config,
            dir.join(format!("gateway-{i}.log")),
        ));
    }
    let publish_port = netwall_tests::pebble::free_tcp_port();
    let tunnels: Vec<std::net::SocketAddr> = gateways.iter().map(|(_, g)| g.tunnel).collect();
    let config = dir.join("connector.toml");
    std::fs::write(
        &config,
        pki.connector_toml(
            &tunnels,
            &format!("web = \"http://127.0.0.1:{backend}\""),
            &format!("publish_listen = \"127.0.0.1:{publish_port}\""),
        ),
    )?;
    let mut connector = std::process::Command::new(sibling("netwall-connector")?);
    connector
        .arg("--config")
        .arg(&config)
        .env("NETWALL_CREDENTIAL", &pki.credential)
        .env("RUST_LOG", "info");
    let connector = Proc::spawn(connector, dir.join("connector.log"));
    for _ in 0..3 {
        connector.wait_line("tunnel connected", Duration::from_secs(20));
    }
    let https: Vec<std::net::SocketAddr> = gateways.iter().map(|(_, g)| g.https).collect();
    let admins: Vec<std::net::SocketAddr> = gateways.iter().map(|(_, g)| g.admin).collect();
    let mut readers = Vec::with_capacity(a.clients);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let opened = Arc::new(AtomicU64::new(0));
    for batch in (0..a.clients).collect::<Vec<_>>().chunks(200) {
        let opening: Vec<_> = batch
            .iter()
            .map(|&i| {
                wss(
                    https[i % 3],
                    &pki.ca_der,
                    "wss://app.test/push",
                    &[],
                    yawc::Options::default(),
                )
            })
            .collect();
        for ws in futures_util::future::join_all(opening).await {
            let mut ws = ws.map_err(|s| anyhow::anyhow!("WebSocket refused: {s}"))?;
            let (tx, messages, opened) = (tx.clone(), a.messages, opened.clone());
            opened.fetch_add(1, Ordering::Relaxed);
            readers.push(tokio::spawn(async move {
                let mut got = 0;
                while got < messages {
                    match tokio::time::timeout(Duration::from_secs(60), ws.next_frame()).await {
                        Ok(Ok(f)) if f.opcode() == yawc::OpCode::Text => {
                            let sent: u64 = std::str::from_utf8(f.payload())
                                .ok()
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                            let _ = tx.send(micros_now().saturating_sub(sent) as f64 / 1000.0);
                            got += 1;
                        }
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                }
            }));
        }
    }
    drop(tx);
    // Every session subscribed before the first message.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut open = 0.0;
        for admin in &admins {
            open += netwall_tests::harness::metric(
                &netwall_tests::harness::metrics_text(*admin).await,
                "netwall_websocket_connections{route=\"app.test/push\"}",
            );
        }
        if open as usize >= a.clients {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {open} of {} sessions opened",
            a.clients
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = publisher(std::net::SocketAddr::from(([127, 0, 0, 1], publish_port)));
    for _ in 0..a.messages {
        client(micros_now().to_string()).await?;
        // Spaced so each message's latency is its own, not a queue's.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies = Vec::new();
    for r in readers {
        let _ = r.await;
    }
    while let Some(l) = rx.recv().await {
        latencies.push(l);
    }
    let expected = a.clients * a.messages;
    Ok(json!({
        "clients": a.clients,
        "messages": a.messages,
        "received": latencies.len(),
        "expected": expected,
        "latency": quantiles(latencies),
    }))
}

/// A publisher posting to the connector's endpoint.
fn publisher(
    addr: std::net::SocketAddr,
) -> impl Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>> {
    move |message: String| {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let body = json!({"channel": "route:app.test/push", "message": message}).to_string();
            let mut tcp = tokio::net::TcpStream::connect(addr).await?;
            let req = format!(
                "POST /publish HTTP/1.1\r\nhost: local\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(req.as_bytes()).await?;
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await?;
            anyhow::ensure!(
                answer.starts_with(b"HTTP/1.1 202"),
                "publish: {}",
                String::from_utf8_lossy(&answer)
            );
            Ok(())
        })
    }
}

async fn pubsub_alone(n: usize) -> anyhow::Result<serde_json::Value> {
    let redis = Redis::start(&[]).await;
    let client = redis::Client::open(redis.url())?;
    let mut sub = client.get_async_pubsub().await?;
    sub.subscribe("bench").await?;
    let mut publisher = client.get_multiplexed_async_connection().await?;
    let mut messages = sub.into_on_message();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("bench")
            .arg("x")
            .query_async(&mut publisher)
            .await?;
        if tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await?
            .is_none()
        {
            anyhow::bail!("subscription ended");
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(quantiles(latencies))
}

pub async fn run(a: SharedArgs) -> anyhow::Result<serde_json::Value> {
    let limits = rate_limits(&a).await?;
    let pubsub = pubsub_alone(a.pubsub).await?;
    let fan = fanout(&a).await?;
    Ok(json!({"rate_limit": limits, "fanout": fan, "redis_pubsub": pubsub}))
}
