//! Many gateways, one policy: three gateways sharing a real `redis-server`, one connector
//! attached to all three. Rate limits, one WebSocket per user, opening attempts and
//! revocations hold across gateways; a Redis outage follows each route's `on_store_error`
//! and heals without a restart; a gateway killed under load leaves the others serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use http::StatusCode;
use netwall_tests::cluster::Cluster;
use netwall_tests::harness::*;
use netwall_tests::redis::Redis;
use serde_json::json;
use yawc::{Frame, OpCode, Options};

const SECRET: &str = "an-hs256-secret-shared-by-every-gateway-in-the-test";
/// Budget of `/limited`; its window is long, so the budget barely refills during a test.
const LIMITED: u32 = 30;
const LIMITED_WINDOW: Duration = Duration::from_secs(600);

fn token(sub: &str) -> String {
    let now = unix_now();
    hs256_token(
        SECRET,
        &json!({"sub": sub, "iat": now - 5, "exp": now + 600}),
    )
}

/// The routes every gateway serves.
fn routes(pki: &Pki) -> String {
    let secret = pki.dir.path().join("hs256.secret");
    std::fs::write(&secret, SECRET).expect("write secret");
    let auth = format!(
        "[route.auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{}\"\ntoken_sources = [\"query:token\"]\n",
        secret.display()
    );
    let route = |path: &str, rest: &str| {
        format!(
            "[[route]]\nhost = \"app.test\"\npath = \"{path}\"\ntunnel = \"app\"\nservice = \"web\"\n{rest}\n"
        )
    };
    [
        route(
            "/ws",
            &format!(
                "{auth}[route.websocket]\nmax_connections_per_user = 1\nconnect_attempts_per_user_per_minute = 1000\n"
            ),
        ),
        route(
            "/multi",
            &format!(
                "{auth}[route.websocket]\nmax_connections_per_user = 10\nconnect_attempts_per_user_per_minute = 1000\n"
            ),
        ),
        route(
            "/attempts",
            &format!(
                "{auth}[route.websocket]\nmax_connections_per_user = 10\nconnect_attempts_per_user_per_minute = 3\n"
            ),
        ),
        route(
            "/limited",
            &format!(
                "[route.rate_limit]\nrequests = {LIMITED}\nwindow = \"{}s\"\n",
                LIMITED_WINDOW.as_secs()
            ),
        ),
        route(
            "/strict",
            "[route.rate_limit]\nrequests = 100000\nwindow = \"60s\"\non_store_error = \"deny\"\n",
        ),
        route(
            "/push",
            "[route.websocket]\npush = true\nmax_connections_per_ip = 5000\n",
        ),
        route(
            "/pushauth",
            &format!(
                "{auth}[route.websocket]\npush = true\nmax_connections_per_user = 5\nconnect_attempts_per_user_per_minute = 1000\n"
            ),
        ),
        route(
            "/slow",
            "[route.websocket]\npush = true\npush_queue = 16\nheartbeat_interval = \"2s\"\nheartbeat_timeout = \"1s\"\n",
        ),
        route("/", ""),
    ]
    .concat()
}

/// Redis, three gateways, the sample service, and one connector attached to all three.
async fn cluster(name: &str) -> Cluster {
    init_logs();
    let pki = Pki::new();
    let routes = routes(&pki);
    Cluster::start(name, 3, pki, routes).await
}

/// What the tests ask of the cluster beyond what it offers.
trait ClusterExt {
    async fn ws(&self, i: usize, path: &str, sub: &str) -> Result<Wss, u16>;
}

impl ClusterExt for Cluster {
    async fn ws(&self, i: usize, path: &str, sub: &str) -> Result<Wss, u16> {
        wss(
            self.gateways[i].https_addr,
            &self.pki.ca_der,
            &format!("wss://app.test{path}?token={}", token(sub)),
            &[],
            Options::default(),
        )
        .await
    }
}

/// Whether `ws` still relays: the sample service echoes a text message.
async fn alive(ws: &mut Wss) -> bool {
    if ws.send(Frame::text("ping-through")).await.is_err() {
        return false;
    }
    let deadline = Duration::from_secs(5);
    tokio::time::timeout(deadline, async {
        loop {
            match ws.next_frame().await {
                Ok(f) if f.opcode() == OpCode::Text => return true,
                Ok(f) if f.opcode() == OpCode::Close => return false,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

async fn status(client: &HttpsClient, url: &str) -> StatusCode {
    tokio::time::timeout(Duration::from_secs(5), client.get(url))
        .await
        .unwrap_or_else(|_| panic!("GET {url} answered within 5 s"))
        .status
}

#[tokio::test]
async fn a_rate_limit_is_one_budget_across_three_gateways() {
    let c = cluster("shared-rate").await;
    let clients: Vec<HttpsClient> = (0..3).map(|i| c.client(i)).collect();
    let started = Instant::now();
    let mut allowed = [0u32; 3];
    for n in 0..(LIMITED * 3) as usize {
        let i = n % 3;
        match status(&clients[i], "https://app.test/limited").await {
            StatusCode::OK => allowed[i] += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("request {n} on gateway {i}: {other}"),
        }
    }
    let total: u32 = allowed.iter().sum();
    // GCRA in one script is exact; the only tolerance is what the budget refills while the
    // test runs (one request per window / LIMITED).
    let refill = (started.elapsed().as_secs_f64() / (LIMITED_WINDOW.as_secs_f64() / LIMITED as f64))
        .ceil() as u32;
    assert!(
        (LIMITED..=LIMITED + refill).contains(&total),
        "{total} allowed across three gateways ({allowed:?}) for a budget of {LIMITED}"
    );
    assert!(
        allowed.iter().all(|&a| a > 0),
        "every gateway drew from the budget: {allowed:?}"
    );
    // Separate from the unlimited route of the same host.
    assert_eq!(
        status(&clients[0], "https://app.test/").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_newest_websocket_of_a_user_wins_across_gateways() {
    let c = cluster("shared-newest").await;
    let mut first = c.ws(0, "/ws", "alice").await.expect("alice on gateway 0");
    assert!(alive(&mut first).await);
    let mut second = c.ws(1, "/ws", "alice").await.expect("alice on gateway 1");
    assert_eq!(
        close_code(&mut first, Duration::from_secs(1)).await,
        Some(4002),
        "the older connection on gateway 0 is replaced within 1 s"
    );
    assert!(alive(&mut second).await, "the newer one keeps working");
    let mut third = c.ws(2, "/ws", "alice").await.expect("alice on gateway 2");
    assert_eq!(
        close_code(&mut second, Duration::from_secs(1)).await,
        Some(4002)
    );
    assert!(alive(&mut third).await);
    // Another user is not touched.
    let mut bob = c.ws(0, "/ws", "bob").await.expect("bob");
    assert!(alive(&mut bob).await);
    assert!(alive(&mut third).await);
    // Sessions that end leave the shared set: it does not keep what is gone.
    assert_eq!(
        c.redis
            .cmd(&["ZCARD", "netwall:ws:app.test/ws:alice"])
            .await,
        "1",
        "the newest session only"
    );
    let _ = third
        .send(Frame::close(yawc::close::CloseCode::Normal, b"bye"))
        .await;
    let _ = bob
        .send(Frame::close(yawc::close::CloseCode::Normal, b"bye"))
        .await;
    drop((first, second, third, bob));
    let redis = &c.redis;
    wait_until(
        Duration::from_secs(5),
        "the session sets to empty",
        || async move { redis.cmd(&["KEYS", "netwall:ws:*"]).await.is_empty() },
    )
    .await;
}

#[tokio::test]
async fn opening_attempts_are_counted_across_gateways() {
    let c = cluster("shared-attempts").await;
    for i in 0..3 {
        let ws = c.ws(i, "/attempts", "carol").await;
        assert!(ws.is_ok(), "attempt {} on gateway {i} refused", i + 1);
    }
    assert_eq!(
        c.ws(0, "/attempts", "carol").await.err(),
        Some(429),
        "the fourth attempt in a minute is refused, whichever gateway it reaches"
    );
    assert!(
        c.ws(1, "/attempts", "dave").await.is_ok(),
        "others unaffected"
    );
}

#[tokio::test]
async fn revoking_on_one_gateway_closes_everywhere_and_outlives_a_restart() {
    let mut c = cluster("shared-revoke").await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut ws = c.ws(i, "/multi", "erin").await.expect("erin");
        assert!(alive(&mut ws).await);
        open.push(ws);
    }
    let mut frank = c.ws(2, "/multi", "frank").await.expect("frank");
    let (code, body) = admin_request(c.admin(1), http::Method::POST, "/revoke?sub=erin").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"shared\":true"), "{body}");
    for (i, ws) in open.iter_mut().enumerate() {
        assert_eq!(
            close_code(ws, Duration::from_secs(1)).await,
            Some(4003),
            "erin's connection on gateway {i} closed within 1 s"
        );
    }
    assert!(alive(&mut frank).await, "another user stays connected");
    let erin = format!("https://app.test/multi?token={}", token("erin"));
    for i in 0..3 {
        assert_eq!(
            status(&c.client(i), &erin).await,
            StatusCode::UNAUTHORIZED,
            "gateway {i} refuses the revoked user"
        );
    }

    // A gateway started afresh refuses her from its first request.
    let old = c.gateways.remove(2);
    let tunnel = old.tunnel_addr.to_string();
    assert!(old.shutdown().await);
    // On the same tunnel address, where the connector dials again.
    let fresh = start_gateway(&c.gateway_toml(2, &tunnel)).await;
    let client = HttpsClient::new(fresh.https_addr, &c.pki.ca_der, false);
    c.gateways.push(fresh);
    wait_tunnel(&c.gateways[2], 1).await;
    assert_eq!(status(&client, &erin).await, StatusCode::UNAUTHORIZED);
    let frank_url = format!("https://app.test/multi?token={}", token("frank"));
    assert_eq!(status(&client, &frank_url).await, StatusCode::OK);
    let stored = c.redis.cmd(&["TTL", "netwall:revoked:sub:erin"]).await;
    let ttl: i64 = stored.parse().expect("TTL");
    assert!(
        (86_000..=86_400).contains(&ttl),
        "kept for the retention (24 h by default), TTL {ttl}"
    );
}

#[tokio::test]
async fn a_redis_outage_follows_on_store_error_and_heals_without_a_restart() {
    let mut c = cluster("shared-outage").await;
    let client = c.client(0);
    assert_eq!(
        status(&client, "https://app.test/strict").await,
        StatusCode::OK
    );
    assert_eq!(
        metric(&metrics_text(c.admin(0)).await, "netwall_state_up"),
        1.0
    );

    // Load on every gateway while Redis dies under it: every request is answered, in time,
    // with a status the route's on_store_error allows.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for i in 0..3 {
        for path in ["limited", "strict"] {
            let (client, stop, answered) = (c.client(i), stop.clone(), answered.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let s = status(&client, &format!("https://app.test/{path}")).await;
                    assert!(
                        s == StatusCode::OK || s == StatusCode::TOO_MANY_REQUESTS,
                        "gateway {i} /{path}: {s}"
                    );
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let more_than = |n: usize| {
        let answered = answered.clone();
        move || {
            let answered = answered.clone();
            async move { answered.load(Ordering::Relaxed) > n }
        }
    };
    wait_until(
        Duration::from_secs(10),
        "load before the kill",
        more_than(30),
    )
    .await;
    c.redis.kill();
    let at_kill = answered.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(10),
        "load after the kill",
        more_than(at_kill + 60),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("no panic, no hang");
    }
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            status(&client, "https://app.test/limited").await,
            StatusCode::OK,
            "fail open while Redis is down"
        );
        assert_eq!(
            status(&client, "https://app.test/strict").await,
            StatusCode::TOO_MANY_REQUESTS,
            "fail closed while Redis is down"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "40 requests during the outage took {:?}",
        started.elapsed()
    );
    let text = metrics_text(c.admin(0)).await;
    assert!(
        metric(
            &text,
            "netwall_state_unavailable_total{op=\"rate_limit\",outcome=\"allowed\"}"
        ) >= 20.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "netwall_state_unavailable_total{op=\"rate_limit\",outcome=\"denied\"}"
        ) >= 20.0,
        "{text}"
    );
    // Sessions still open and refused tokens are still refused during the outage.
    let mut ws = c
        .ws(1, "/multi", "gail")
        .await
        .expect("a WebSocket opens without Redis");
    assert!(alive(&mut ws).await);

    c.redis.restart().await;
    wait_until(
        Duration::from_secs(15),
        "the strict route to recover",
        || {
            let client = client.clone();
            async move { status(&client, "https://app.test/strict").await == StatusCode::OK }
        },
    )
    .await;
    let admin = c.admin(0);
    wait_until(
        Duration::from_secs(15),
        "the subscription to return",
        || async move { metric(&metrics_text(admin).await, "netwall_state_up") == 1.0 },
    )
    .await;
    // Limits count in Redis again: the (fresh) budget runs out.
    let mut allowed = 0;
    for _ in 0..LIMITED + 10 {
        if status(&client, "https://app.test/limited").await == StatusCode::OK {
            allowed += 1;
        }
    }
    assert!(
        (LIMITED..=LIMITED + 1).contains(&allowed),
        "{allowed} allowed after recovery"
    );
    // And a revocation reaches the other gateways again.
    let (code, body) = admin_request(c.admin(0), http::Method::POST, "/revoke?sub=gail").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(1)).await,
        Some(4003)
    );
}

#[tokio::test]
async fn a_revocation_while_redis_is_down_says_it_was_not_shared() {
    let mut c = cluster("shared-unshared").await;
    let mut here = c.ws(0, "/multi", "hank").await.expect("hank");
    c.redis.kill();
    let (code, body) = admin_request(c.admin(0), http::Method::POST, "/revoke?sub=hank").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"shared\":false"), "{body}");
    assert!(body.contains("\"connections_closed\":1"), "{body}");
    assert_eq!(
        close_code(&mut here, Duration::from_secs(1)).await,
        Some(4003),
        "applied on this gateway all the same"
    );
}

#[tokio::test]
async fn a_gateway_killed_under_load_leaves_the_others_serving() {
    let c = cluster("shared-kill").await;
    // A fourth gateway as a process of its own, so it can be killed outright.
    let path = c.pki.dir.path().join("gateway-3.toml");
    std::fs::write(&path, c.gateway_toml(3, "127.0.0.1:0")).expect("write config");
    let (mut doomed, addrs) = spawn_gateway(&path, c.pki.dir.path().join("gateway-3.log"));
    let mut list: Vec<SocketAddr> = c.gateways.iter().map(|g| g.tunnel_addr).collect();
    list.push(addrs.tunnel);
    let sample = start_sample("shared-kill-2").await;
    let _second = start_connector(
        &c.pki
            .connector_toml(&list, &format!("web = \"http://{sample}\""), ""),
        &c.pki.credential,
    );
    for g in &c.gateways {
        wait_tunnel(g, 2).await;
    }
    // The process gateway has the second connector too before it is asked anything.
    let doomed_admin = addrs.admin;
    wait_until(
        Duration::from_secs(15),
        "the connector on the process gateway",
        || async move {
            metric(
                &metrics_text(doomed_admin).await,
                "netwall_tunnel_connections{tunnel=\"app\"}",
            ) == 1.0
        },
    )
    .await;
    let doomed_client = HttpsClient::new(addrs.https, &c.pki.ca_der, false);
    assert_eq!(
        status(&doomed_client, "https://app.test/").await,
        StatusCode::OK
    );

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for i in 0..3 {
        for _ in 0..4 {
            let (client, stop, done) = (c.client(i), stop.clone(), done.clone());
            load.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        client.get("https://app.test/"),
                    )
                    .await
                    {
                        Ok(a) if a.status == StatusCode::OK => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(a) => failures.push(format!("gateway {i}: {}", a.status)),
                        Err(_) => failures.push(format!("gateway {i}: no answer in 5 s")),
                    }
                }
                failures
            }));
        }
    }
    let before = done.load(Ordering::Relaxed);
    let d = done.clone();
    wait_until(Duration::from_secs(10), "load to run", || {
        let d = d.clone();
        async move { d.load(Ordering::Relaxed) > before + 200 }
    })
    .await;
    doomed.signal(nix::sys::signal::Signal::SIGKILL);
    doomed.wait_exit(Duration::from_secs(5));
    let at_kill = done.load(Ordering::Relaxed);
    let d = done.clone();
    wait_until(
        Duration::from_secs(15),
        "load to go on after the kill",
        || {
            let d = d.clone();
            async move { d.load(Ordering::Relaxed) > at_kill + 500 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for l in load {
        failures.extend(l.await.expect("load task"));
    }
    assert!(
        failures.is_empty(),
        "clients of the surviving gateways saw {failures:?}"
    );
    for g in &c.gateways {
        assert_eq!(
            g.registry.get("app").map(|t| t.live_count()),
            Some(2),
            "both connectors still attached"
        );
    }
    drop(c.connector);
}

#[tokio::test]
async fn redis_over_tls_with_the_password_from_the_environment() {
    init_logs();
    let pki = Pki::new();
    let (cert, key) = pki.issue("redis", &["localhost"]);
    let port = netwall_tests::pebble::free_tcp_port();
    let port_arg = port.to_string();
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let redis = Redis::start(&[
        "--tls-port",
        &port_arg,
        "--tls-cert-file",
        &cert_arg,
        "--tls-key-file",
        &key_arg,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "correct-horse",
    ])
    .await;
    let tls_state = format!(
        "[state]\ndriver = \"redis\"\nurl = \"rediss://localhost:{port}/0\"\nca_file = \"{}\"\npassword_env = \"NETWALL_REDIS_PASSWORD\"\n",
        pki.ca.display()
    );
    let config = |i: usize| {
        let path = pki.dir.path().join(format!("gateway-{i}.toml"));
        let text = pki
            .gateway_toml(&format!("{}\n{tls_state}", routes(&pki)))
            .replace("app.sock", &format!("app-{i}.sock"));
        std::fs::write(&path, text).expect("write config");
        path
    };
    let spawn = |i: usize, password: &str| {
        let mut cmd = std::process::Command::new(bin("netwall-gateway"));
        cmd.env("NETWALL_REDIS_PASSWORD", password);
        spawn_gateway_with(cmd, &config(i), pki.dir.path().join(format!("gw-{i}.log")))
    };
    let (_good, good) = spawn(0, "correct-horse");
    let (bad_proc, bad) = spawn(1, "wrong-horse");
    wait_until(
        Duration::from_secs(10),
        "the gateway to subscribe over TLS",
        || async move { metric(&metrics_text(good.admin).await, "netwall_state_up") == 1.0 },
    )
    .await;
    // Its budgets live in that Redis.
    let client = HttpsClient::new(good.https, &pki.ca_der, false);
    for _ in 0..3 {
        assert_eq!(
            status(&client, "https://app.test/limited").await,
            StatusCode::BAD_GATEWAY,
            "no connector here: the limiter runs first, then the tunnel is missing"
        );
    }
    let keys = redis.cmd(&["KEYS", "netwall:rl:*"]).await;
    assert!(keys.contains("http/app.test/limited"), "{keys:?}");
    // A wrong password: never subscribed, said so in the log, and the fail-open route
    // still answers.
    bad_proc.wait_line("state_unavailable", Duration::from_secs(10));
    assert_eq!(
        metric(&metrics_text(bad.admin).await, "netwall_state_up"),
        0.0
    );
    let client = HttpsClient::new(bad.https, &pki.ca_der, false);
    assert_eq!(
        status(&client, "https://app.test/limited").await,
        StatusCode::BAD_GATEWAY
    );
}

// === fan-out ===

/// `POST /publish` on the connector's local endpoint; the status.
async fn publish(addr: SocketAddr, channel: &str, message: &str) -> u16 {
    let body = json!({"channel": channel, "message": message}).to_string();
    local_request(addr, "POST", "/publish", &body).await
}

/// One HTTP/1.1 request to the connector's publish endpoint; the status.
async fn local_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: local\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("publish answered")
        .expect("read");
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The next `n` text messages on `ws`, within `limit`.
async fn texts(ws: &mut Wss, n: usize, limit: Duration) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let _ = tokio::time::timeout(limit, async {
        while out.len() < n {
            match ws.next_frame().await {
                Ok(f) if f.opcode() == OpCode::Text => {
                    out.push(String::from_utf8_lossy(f.payload()).into_owned())
                }
                Ok(f) if f.opcode() == OpCode::Close => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    out
}

/// A task per client reading its next `n` text messages (within a minute).
fn spawn_readers(clients: Vec<Wss>, n: usize) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { texts(&mut ws, n, Duration::from_secs(60)).await }))
        .collect()
}

async fn plain_ws(c: &Cluster, i: usize, path: &str) -> Wss {
    wss(
        c.gateways[i].https_addr,
        &c.pki.ca_der,
        &format!("wss://app.test{path}"),
        &[],
        Options::default(),
    )
    .await
    .expect("WebSocket")
}

/// Wait until `n` WebSockets are open on `route` across the cluster.
async fn wait_sessions(c: &Cluster, route: &str, n: f64) {
    let admins: Vec<SocketAddr> = (0..c.gateways.len()).map(|i| c.admin(i)).collect();
    let sample = format!("netwall_websocket_connections{{route=\"{route}\"}}");
    wait_until(
        Duration::from_secs(60),
        &format!("{n} sessions on {route}"),
        || {
            let (admins, sample) = (admins.clone(), sample.clone());
            async move {
                let mut sum = 0.0;
                for a in admins {
                    sum += metric(&metrics_text(a).await, &sample);
                }
                sum == n
            }
        },
    )
    .await;
}

#[tokio::test]
async fn one_publish_reaches_a_thousand_clients_on_three_gateways_in_order() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 20;
    let c = cluster("fanout-many").await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for batch in 0..CLIENTS / 100 {
        let opening: Vec<_> = (0..100)
            .map(|k| plain_ws(&c, (batch * 100 + k) % 3, "/push"))
            .collect();
        clients.extend(futures_util::future::join_all(opening).await);
    }
    wait_sessions(&c, "app.test/push", CLIENTS as f64).await;
    let addr = c.connector.publish_addr().expect("publish endpoint");
    let readers = spawn_readers(clients, MESSAGES);
    for m in 0..MESSAGES {
        assert_eq!(
            publish(addr, "route:app.test/push", &format!("m{m}")).await,
            202
        );
    }
    let want: Vec<String> = (0..MESSAGES).map(|m| format!("m{m}")).collect();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.expect("reader");
        assert_eq!(got, want, "client {i} (gateway {})", i % 3);
    }
}

#[tokio::test]
async fn a_thousand_messages_keep_their_order_and_channels_reach_only_their_clients() {
    const MESSAGES: usize = 1000;
    let c = cluster("fanout-order").await;
    let addr = c.connector.publish_addr().expect("publish endpoint");
    let mut route_clients = Vec::new();
    for i in 0..9 {
        route_clients.push(plain_ws(&c, i % 3, "/push").await);
    }
    let mut alice = c.ws(0, "/pushauth", "alice").await.expect("alice");
    let mut alice2 = c.ws(2, "/pushauth", "alice").await.expect("alice again");
    let mut bob = c.ws(1, "/pushauth", "bob").await.expect("bob");
    wait_sessions(&c, "app.test/push", 9.0).await;
    wait_sessions(&c, "app.test/pushauth", 3.0).await;
    let readers = spawn_readers(route_clients, MESSAGES);
    for m in 0..MESSAGES {
        assert_eq!(
            publish(addr, "route:app.test/push", &format!("{m}")).await,
            202
        );
    }
    for (i, r) in readers.into_iter().enumerate() {
        let got: Vec<usize> = r
            .await
            .expect("reader")
            .iter()
            .map(|s| s.parse().expect("a number"))
            .collect();
        assert_eq!(got, (0..MESSAGES).collect::<Vec<_>>(), "client {i}");
    }
    // A user's channel reaches that user's sessions on every gateway, no one else.
    assert_eq!(publish(addr, "user:alice", "for alice").await, 202);
    assert_eq!(
        texts(&mut alice, 1, Duration::from_secs(5)).await,
        ["for alice"]
    );
    assert_eq!(
        texts(&mut alice2, 1, Duration::from_secs(5)).await,
        ["for alice"]
    );
    // A connection's channel, by the name the service was given.
    bob.send(Frame::text("whoami")).await.expect("send");
    let who = texts(&mut bob, 1, Duration::from_secs(5)).await;
    let name = who
        .first()
        .and_then(|w| {
            w.split(';')
                .find_map(|kv| kv.split_once("x-netwall-connection="))
        })
        .map(|(_, v)| v.to_owned())
        .unwrap_or_else(|| panic!("the service learns the connection's name: {who:?}"));
    assert_eq!(
        publish(addr, &format!("connection:{name}"), "for this bob").await,
        202
    );
    assert_eq!(
        texts(&mut bob, 1, Duration::from_secs(5)).await,
        ["for this bob"]
    );
    assert!(
        texts(&mut alice, 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "alice got bob's message"
    );
    // What a service may not publish on.
    assert_eq!(publish(addr, "everyone", "x").await, 400);
    assert_eq!(publish(addr, "route:", "x").await, 400);
}

#[tokio::test]
async fn a_slow_client_is_closed_and_never_delays_the_others() {
    const MESSAGES: usize = 300;
    let c = cluster("fanout-slow").await;
    let addr = c.connector.publish_addr().expect("publish endpoint");
    // A client that never reads (with a small receive buffer, so the gateway notices soon),
    // and fast ones on the same gateway and the others.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket
        .connect(c.gateways[0].https_addr)
        .await
        .expect("connect");
    let slow = wss_over(
        tcp,
        &c.pki.ca_der,
        "wss://app.test/slow",
        &[],
        Options::default(),
    )
    .await
    .expect("slow client");
    let mut fast = Vec::new();
    for i in 0..6 {
        fast.push(plain_ws(&c, i % 3, "/slow").await);
    }
    wait_sessions(&c, "app.test/slow", 7.0).await;
    let readers = spawn_readers(fast, MESSAGES);
    let filler = "x".repeat(32 * 1024);
    for m in 0..MESSAGES {
        assert_eq!(
            publish(addr, "route:app.test/slow", &format!("{m} {filler}")).await,
            202
        );
    }
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.expect("reader");
        assert_eq!(got.len(), MESSAGES, "fast client {i} got every message");
        assert!(
            got.iter()
                .enumerate()
                .all(|(n, t)| t.starts_with(&format!("{n} ")))
        );
    }
    let admin = c.admin(0);
    wait_until(
        Duration::from_secs(10),
        "the slow client to be closed with 4005",
        || async move {
            metric(
                &metrics_text(admin).await,
                "netwall_websocket_closed_total{route=\"app.test/slow\",code=\"4005\"}",
            ) == 1.0
        },
    )
    .await;
    let text = metrics_text(admin).await;
    assert_eq!(
        metric(&text, "netwall_pushes_total{outcome=\"client_too_slow\"}"),
        1.0
    );
    drop(slow);
}

#[tokio::test]
async fn one_gateway_without_redis_fans_out_too() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("fanout-memory").await;
    let gateway = start_gateway(&pki.gateway_toml(&routes(&pki))).await;
    let connector = start_connector(
        &pki.connector_toml(
            &[gateway.tunnel_addr],
            &format!("web = \"http://{sample}\""),
            "publish_listen = \"127.0.0.1:0\"",
        ),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    let mut ws = wss(
        gateway.https_addr,
        &pki.ca_der,
        "wss://app.test/push",
        &[],
        Options::default(),
    )
    .await
    .expect("WebSocket");
    let admin = gateway.admin_addr.expect("admin");
    wait_until(Duration::from_secs(10), "the session", || async move {
        metric(
            &metrics_text(admin).await,
            "netwall_websocket_connections{route=\"app.test/push\"}",
        ) == 1.0
    })
    .await;
    let addr = connector.publish_addr().expect("publish endpoint");
    for m in ["one", "two", "three"] {
        assert_eq!(publish(addr, "route:app.test/push", m).await, 202);
    }
    assert_eq!(
        texts(&mut ws, 3, Duration::from_secs(5)).await,
        ["one", "two", "three"]
    );
    // What the endpoint refuses.
    let big = "x".repeat(netwall_proto::DEFAULT_MAX_PUBLISH_LEN);
    assert_eq!(publish(addr, "route:app.test/push", &big).await, 413);
    assert_eq!(
        local_request(addr, "POST", "/publish", "not json").await,
        400
    );
    assert_eq!(
        local_request(addr, "POST", "/publish", r#"{"channel":"route:x"}"#).await,
        400
    );
    assert_eq!(local_request(addr, "GET", "/publish", "").await, 405);
    assert_eq!(local_request(addr, "POST", "/other", "").await, 404);
    // None of that reached the client.
    assert!(
        texts(&mut ws, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    // Without a live tunnel there is nowhere to send it.
    assert!(gateway.shutdown().await);
    let live = connector.live_connections();
    wait_until(Duration::from_secs(10), "the tunnel to go", || {
        let live = live.clone();
        async move { *live.borrow() == 0 }
    })
    .await;
    assert_eq!(publish(addr, "route:app.test/push", "lost").await, 503);
}

#[tokio::test]
async fn a_redis_gone_silent_is_noticed_and_the_subscription_comes_back() {
    let c = cluster("shared-silent").await;
    let admin = c.admin(1);
    let up = |want: f64| {
        move || async move { metric(&metrics_text(admin).await, "netwall_state_up") == want }
    };
    wait_until(Duration::from_secs(10), "subscribed", up(1.0)).await;
    let mut ivy = c.ws(1, "/multi", "ivy").await.expect("ivy");
    // Frozen: its sockets stay open and say nothing, as across a partition.
    c.redis.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_until(
        Duration::from_secs(10),
        "the silence to be noticed",
        up(0.0),
    )
    .await;
    // Fail open while it is away, without a timeout per request.
    let started = Instant::now();
    assert_eq!(
        status(&c.client(1), "https://app.test/limited").await,
        StatusCode::OK
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    c.redis.signal(nix::sys::signal::Signal::SIGCONT);
    wait_until(Duration::from_secs(15), "subscribed again", up(1.0)).await;
    let (code, body) = admin_request(c.admin(0), http::Method::POST, "/revoke?sub=ivy").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        close_code(&mut ivy, Duration::from_secs(2)).await,
        Some(4003)
    );
    // One loss for the freeze, not a subscription that keeps starting over.
    let lost = metric(
        &metrics_text(admin).await,
        "netwall_state_unavailable_total{op=\"subscribe\",outcome=\"lost\"}",
    );
    assert_eq!(lost, 1.0, "subscriptions lost");
}
