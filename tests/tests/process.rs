//! The real binaries as an operator runs them: signals, crashes, rolling restarts, memory.
//!
//! Gateways and connectors are separate processes; the sample service and the load generator
//! run in the test. Blocking waits on processes use `block_in_place` so the service keeps
//! answering meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use netwall_tests::harness::*;
use nix::sys::signal::Signal;
use tokio::task::block_in_place;

const ROUTE: &str = "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

struct Deployment {
    pki: Pki,
    gateway: Proc,
    addrs: GatewayAddrs,
    connector_config: PathBuf,
}

impl Deployment {
    async fn new(extra_gateway: &str) -> Deployment {
        init_logs();
        let pki = Pki::new();
        let sample = start_sample("web").await;
        let dir = pki.dir.path().to_path_buf();
        let gw_config = write(
            &dir,
            "gateway.toml",
            &pki.gateway_toml(&format!("{ROUTE}{extra_gateway}")),
        );
        let (gateway, addrs) =
            block_in_place(|| spawn_gateway(&gw_config, dir.join("gateway.log")));
        let connector_config = write(
            &dir,
            "connector.toml",
            &pki.connector_toml(&[addrs.tunnel], &format!("web = \"http://{sample}\""), ""),
        );
        Deployment {
            pki,
            gateway,
            addrs,
            connector_config,
        }
    }

    fn connector(&self, name: &str) -> Proc {
        spawn_connector(
            &self.connector_config,
            &self.pki.credential,
            self.pki.dir.path().join(format!("{name}.log")),
        )
    }

    /// Make the connector's config dial the gateway's WireGuard port instead of QUIC.
    fn dial_over_wireguard(&self) {
        let text = std::fs::read_to_string(&self.connector_config).expect("read");
        let wg = self
            .addrs
            .wireguard
            .expect("the gateway listens for WireGuard");
        let key = self
            .addrs
            .wireguard_public_key
            .as_deref()
            .expect("the gateway's WireGuard key");
        let text = text
            .replace(&format!("\"{}\"", self.addrs.tunnel), &format!("\"{wg}\""))
            .replace(
                "transport = \"quic\"",
                &format!(
                    "transport = \"wireguard\"\ngateway_wireguard_public_key = \"{key}\"\nwireguard_private_key_file = \"{}\"",
                    self.pki.connector_wg_key.display()
                ),
            );
        std::fs::write(&self.connector_config, text).expect("write");
    }

    fn client(&self, h2: bool) -> HttpsClient {
        HttpsClient::new(self.addrs.https, &self.pki.ca_der, h2)
    }

    async fn wait_live(&self, n: usize) {
        let admin = self.addrs.admin;
        wait_until(
            Duration::from_secs(15),
            &format!("{n} live tunnel connection(s)"),
            || async move {
                metric(
                    &metrics_text(admin).await,
                    "netwall_tunnel_connections{tunnel=\"app\"}",
                ) == n as f64
            },
        )
        .await;
    }
}

/// What one request of a load run came to.
#[derive(Debug)]
struct Outcome {
    what: &'static str,
    status: Option<StatusCode>,
    ok_body: bool,
    elapsed: Duration,
    #[allow(dead_code)] // shown in assertion messages through Debug
    error: Option<String>,
}

/// Workers that send requests in a loop until stopped: GETs of a slow page and POSTs whose
/// echoed body is checked.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<Vec<Outcome>>,
}

impl Load {
    fn start(client: HttpsClient, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..workers {
            let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
            tasks.spawn(async move {
                let mut out = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let post = (w + i as usize).is_multiple_of(2);
                    let payload = format!("worker {w} request {i}");
                    let req = if post {
                        Request::post("https://app.test/echo")
                            .body(body(payload.clone()))
                            .expect("req")
                    } else {
                        Request::get("https://app.test/slow?ms=30")
                            .body(body(Bytes::new()))
                            .expect("req")
                    };
                    let started = Instant::now();
                    let res = tokio::time::timeout(Duration::from_secs(20), client.send(req)).await;
                    let elapsed = started.elapsed();
                    let what = if post { "POST /echo" } else { "GET /slow" };
                    let outcome = match res {
                        Err(_) => Outcome {
                            what,
                            status: None,
                            ok_body: false,
                            elapsed,
                            error: Some("hung for 20 s".into()),
                        },
                        Ok(Err(e)) => Outcome {
                            what,
                            status: None,
                            ok_body: false,
                            elapsed,
                            error: Some(e),
                        },
                        Ok(Ok(a)) => {
                            let ok_body = if post {
                                a.text() == payload
                            } else {
                                a.text() == "slow\n"
                            };
                            Outcome {
                                what,
                                status: Some(a.status),
                                ok_body,
                                elapsed,
                                error: None,
                            }
                        }
                    };
                    if outcome.status == Some(StatusCode::OK) && outcome.ok_body {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    out.push(outcome);
                }
                out
            });
        }
        Load { stop, ok, tasks }
    }

    async fn wait_ok(&self, n: usize, what: &str) {
        let ok = self.ok.clone();
        let target = ok.load(Ordering::Relaxed) + n;
        wait_until(Duration::from_secs(60), what, || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) >= target }
        })
        .await;
    }

    async fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            all.extend(r.expect("load worker"));
        }
        all
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| o.status != Some(StatusCode::OK) || !o.ok_body)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_replica_mid_load_hangs_nothing_and_new_requests_succeed() {
    let d = Deployment::new("").await;
    let mut a = d.connector("replica-a");
    let _b = d.connector("replica-b");
    d.wait_live(2).await;
    let load = Load::start(d.client(false), 8);
    load.wait_ok(100, "load running on both replicas").await;

    block_in_place(|| a.signal(Signal::SIGKILL));
    let killed_at = Instant::now();
    // The gateway notices the silent connection within its idle timeout (3 s here).
    d.wait_live(1).await;
    let noticed = killed_at.elapsed();
    load.wait_ok(200, "requests after the kill").await;
    let outcomes = load.finish().await;
    assert_eq!(
        block_in_place(|| a.wait_exit(Duration::from_secs(5))),
        None,
        "replica A was killed by a signal"
    );

    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(10),
        "a request took {slowest:?}: clients must never hang"
    );
    // Requests caught on the dead replica: bodiless GETs are replayed on the live one; a POST
    // whose body was already sent may fail, and must fail fast with a 502, never hang.
    for f in failures(&outcomes) {
        assert_eq!(
            (f.what, f.status),
            ("POST /echo", Some(StatusCode::BAD_GATEWAY)),
            "unexpected failure: {f:?}"
        );
    }
    assert!(
        failures(&outcomes).len() <= 8,
        "more failures than requests in flight at the kill: {:?}",
        failures(&outcomes)
    );
    eprintln!(
        "killed replica noticed after {noticed:?}; {} requests, {} failed, slowest {slowest:?}",
        outcomes.len(),
        failures(&outcomes).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_two_replicas_loses_no_request() {
    let d = Deployment::new("").await;
    let mut a = d.connector("replica-a");
    let mut b = d.connector("replica-b");
    d.wait_live(2).await;
    let load = Load::start(d.client(false), 8);
    load.wait_ok(50, "load running").await;

    for (old, name) in [(&mut a, "replica-a2"), (&mut b, "replica-b2")] {
        block_in_place(|| old.signal(Signal::SIGTERM));
        let code = block_in_place(|| old.wait_exit(Duration::from_secs(15)));
        assert_eq!(code, Some(0), "connector drained and exited cleanly");
        let log = std::fs::read_to_string(&old.log).unwrap_or_default();
        assert!(
            log.contains("\"drained\""),
            "connector log shows the drain: {log}"
        );
        *old = d.connector(name);
        d.wait_live(2).await;
        load.wait_ok(50, "load on the replaced replica").await;
    }
    let outcomes = load.finish().await;
    assert!(outcomes.len() >= 150, "{}", outcomes.len());
    assert!(
        failures(&outcomes).is_empty(),
        "requests lost during the rolling restart: {:?}",
        failures(&outcomes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_the_gateway_finishes_in_flight_requests_then_exits() {
    let mut d = Deployment::new("").await;
    let c = d.connector("connector");
    d.wait_live(1).await;
    let client = d.client(false);
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let client = client.clone();
        slow.spawn(async move { client.get("https://app.test/slow?ms=1500").await });
    }
    let admin = d.addrs.admin;
    wait_until(
        Duration::from_secs(5),
        "5 requests in flight",
        || async move {
            metric(
                &metrics_text(admin).await,
                "netwall_tunnel_requests_in_flight{tunnel=\"app\"}",
            ) == 5.0
        },
    )
    .await;
    block_in_place(|| d.gateway.signal(Signal::SIGTERM));
    // New connections are refused at once while the old requests finish.
    let https = d.addrs.https;
    wait_until(
        Duration::from_secs(5),
        "the public listener to close",
        || async move { tokio::net::TcpStream::connect(https).await.is_err() },
    )
    .await;
    while let Some(r) = slow.join_next().await {
        let r = r.expect("task");
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::OK, "slow\n"),
            "in-flight request finished during the drain"
        );
    }
    assert_eq!(
        block_in_place(|| d.gateway.wait_exit(Duration::from_secs(10))),
        Some(0)
    );
    block_in_place(|| c.wait_line("gateway going away", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_gib_each_way_within_64_mib_per_process() {
    one_gib_each_way(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_gib_each_way_over_wireguard_within_64_mib_per_process() {
    one_gib_each_way(true).await;
}

async fn one_gib_each_way(wireguard: bool) {
    const GIB: u64 = 1 << 30;
    const BOUND: u64 = 64 << 20;
    // Appended to the route's table: lift its 10 MiB default body limit for the upload.
    let d = Deployment::new("max_body_bytes = 2147483648").await;
    if wireguard {
        d.dial_over_wireguard();
    }
    let c = d.connector("connector");
    d.wait_live(1).await;
    let client = d.client(false);

    let resp = client
        .send_streaming(
            Request::get(format!("https://app.test/bytes?n={GIB}"))
                .body(body(Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("download");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body_in = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body_in.frame().await {
        if let Ok(data) = frame.expect("download body").into_data() {
            got += data.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    let chunk = Bytes::from(vec![3u8; 256 * 1024]);
    let stream = futures_util::stream::iter(
        (0..GIB / chunk.len() as u64)
            .map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))),
    );
    let upload = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream));
    let r = client
        .send(
            Request::post("https://app.test/upload")
                .body(upload)
                .expect("req"),
        )
        .await
        .expect("upload");
    assert_eq!((r.status, r.text()), (StatusCode::OK, format!("{GIB}\n")));

    let (gw_peak, conn_peak) = (d.gateway.peak_rss(), c.peak_rss());
    eprintln!(
        "peak RSS: gateway {} MiB, connector {} MiB",
        gw_peak >> 20,
        conn_peak >> 20
    );
    assert!(gw_peak > 0 && conn_peak > 0, "could not read memory use");
    assert!(gw_peak < BOUND, "gateway peaked at {} MiB", gw_peak >> 20);
    assert!(
        conn_peak < BOUND,
        "connector peaked at {} MiB",
        conn_peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_exits_2_with_the_reason_on_a_bad_credential() {
    let d = Deployment::new("").await;
    let mut c = spawn_connector(
        &d.connector_config,
        "wrong-credential",
        d.pki.dir.path().join("bad.log"),
    );
    let code = block_in_place(|| c.wait_exit(Duration::from_secs(15)));
    assert_eq!(code, Some(2));
    let log = std::fs::read_to_string(&c.log).unwrap_or_default();
    assert!(log.contains("tunnel name or credential rejected"), "{log}");
    // The gateway logged a security event as one JSON line under one target.
    let log_path = d.gateway.log.clone();
    wait_until(
        Duration::from_secs(5),
        "the security event in the gateway log",
        || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move { text.contains("tunnel_auth_failed") }
        },
    )
    .await;
    let gateway_log = std::fs::read_to_string(&d.gateway.log).unwrap_or_default();
    let event = gateway_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "netwall::security" && v["event"] == "tunnel_auth_failed")
        .unwrap_or_else(|| panic!("no security event in the gateway's JSON log:\n{gateway_log}"));
    assert_eq!(event["level"], "WARN");
    assert!(
        !gateway_log.contains("wrong-credential"),
        "a presented credential reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_closes_every_websocket_with_1001_then_exits() {
    let mut d = Deployment::new("").await;
    let _c = d.connector("connector");
    d.wait_live(1).await;
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(
            wss(
                d.addrs.https,
                &d.pki.ca_der,
                "wss://app.test/ws",
                &[],
                yawc::Options::default(),
            )
            .await
            .expect("accepted"),
        );
    }
    block_in_place(|| d.gateway.signal(Signal::SIGTERM));
    for ws in &mut sockets {
        assert_eq!(close_code(ws, Duration::from_secs(5)).await, Some(1001));
    }
    assert_eq!(
        block_in_place(|| d.gateway.wait_exit(Duration::from_secs(10))),
        Some(0)
    );
}

/// `netwall-connector --config FILE --probe KIND`: (exit success, its line).
fn probe(config: &std::path::Path, credential: &str, kind: &str) -> (bool, String) {
    let out = std::process::Command::new(bin("netwall-connector"))
        .arg("--config")
        .arg(config)
        .args(["--probe", kind])
        .env("NETWALL_CREDENTIAL", credential)
        .output()
        .expect("netwall-connector --probe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reads_the_running_connectors_status_ready_only_with_a_live_tunnel() {
    init_logs();
    let pki = Pki::new();
    let status = pki.dir.path().join("connector.status");
    let gateway = start_gateway(&pki.gateway_toml("")).await;
    let toml = pki.connector_toml(
        &[gateway.tunnel_addr],
        "web = \"http://127.0.0.1:9\"",
        &format!("status_file = \"{}\"", status.display()),
    );
    let file = pki.dir.path().join("connector.toml");
    std::fs::write(&file, &toml).expect("write");
    let connector = start_connector(&toml, &pki.credential);
    wait_tunnel(&gateway, 1).await;
    let ask = |kind: &'static str| {
        let (file, credential) = (file.clone(), pki.credential.clone());
        async move {
            tokio::task::spawn_blocking(move || probe(&file, &credential, kind))
                .await
                .expect("probe task")
        }
    };
    wait_until(
        Duration::from_secs(10),
        "the probe to find the tunnel",
        || async { ask("ready").await.0 },
    )
    .await;
    let (ok, line) = ask("ready").await;
    assert!(
        ok && line.starts_with("ready: 1 tunnel connections"),
        "{line}"
    );

    // The gateway goes away: still live, no longer ready.
    let _drained = gateway.shutdown().await;
    wait_until(
        Duration::from_secs(15),
        "the probe to see the tunnel gone",
        || async { !ask("ready").await.0 },
    )
    .await;
    let (ok, line) = ask("live").await;
    assert!(ok, "{line}");
    drop(connector);

    // A status the connector stopped refreshing is not live, whatever it says.
    std::fs::write(&status, "live=3 updated=1000\n").expect("write");
    let (ok, line) = ask("live").await;
    assert!(!ok && line.starts_with("not live"), "{line}");
    std::fs::remove_file(&status).expect("remove");
    let (ok, line) = ask("ready").await;
    assert!(!ok && line.starts_with("not live"), "{line}");
}
