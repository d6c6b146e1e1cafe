//! The wall, proven with Linux network namespaces.
//!
//! ```text
//!  internet 198.51.100.2 --veth-- 198.51.100.1  edge  203.0.113.1 --veth-- 203.0.113.2 container
//!   (client, scanner)               (gateway; forwards IP)          (connector, service on lo)
//! ```
//! The edge forwards packets, so the container's address is reachable from the internet host
//! at the network level: the proof is that every one of its 65,535 TCP ports answers with a
//! reset (nothing listening, nothing silently filtered) while HTTPS from the internet host
//! reaches the service through the tunnel, over QUIC and over TLS/TCP. The connector's UDP
//! socket answers strangers nothing at all. With UDP to the gateway dropped inside the
//! container (nftables), `transport = "auto"` falls back to TLS and returns to QUIC once UDP
//! passes, losing no request. A container with no network but loopback reaches the gateway
//! through a Unix socket. The container also runs Redis and PostgreSQL on its loopback:
//! `redis-cli` and `psql` on the internet host reach them through the edge's TCP routes with
//! a client certificate, are refused without one, and the scan still finds every port closed.
//! Killing the connector mid-session closes the client's connection within the tunnel's idle
//! timeout. Needs root, `ip` (iproute2), `nft`, Redis and PostgreSQL, as CI has.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use netwall_tests::databases::{ClientCerts, Postgres, psql};
use netwall_tests::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EDGE_PUBLIC: &str = "198.51.100.1";
const INTERNET: &str = "198.51.100.2";
const EDGE_PRIVATE: &str = "203.0.113.1";
const CONTAINER: &str = "203.0.113.2";

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces and their links; removed on drop.
struct Topology {
    inet: String,
    edge: String,
    ctr: String,
}

impl Topology {
    fn new() -> Topology {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the wall test builds network namespaces and must run as root (CI does)"
        );
        // Unique per topology: the tests of this file build theirs in parallel.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let t = Topology {
            inet: format!("nwi{id}"),
            edge: format!("nwe{id}"),
            ctr: format!("nwc{id}"),
        };
        for ns in [&t.inet, &t.edge, &t.ctr] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // internet <-> edge
        let (a, b) = (format!("nwa{id}"), format!("nwb{id}"));
        sh(&[
            "ip", "link", "add", &a, "netns", &t.inet, "type", "veth", "peer", "name", &b, "netns",
            &t.edge,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.inet,
            "addr",
            "add",
            &format!("{INTERNET}/24"),
            "dev",
            &a,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.edge,
            "addr",
            "add",
            &format!("{EDGE_PUBLIC}/24"),
            "dev",
            &b,
        ]);
        sh(&["ip", "-n", &t.inet, "link", "set", &a, "up"]);
        sh(&["ip", "-n", &t.edge, "link", "set", &b, "up"]);
        // edge <-> container
        let (c, d) = (format!("nwc{id}x"), format!("nwd{id}"));
        sh(&[
            "ip", "link", "add", &c, "netns", &t.edge, "type", "veth", "peer", "name", &d, "netns",
            &t.ctr,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.edge,
            "addr",
            "add",
            &format!("{EDGE_PRIVATE}/24"),
            "dev",
            &c,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.ctr,
            "addr",
            "add",
            &format!("{CONTAINER}/24"),
            "dev",
            &d,
        ]);
        sh(&["ip", "-n", &t.edge, "link", "set", &c, "up"]);
        sh(&["ip", "-n", &t.ctr, "link", "set", &d, "up"]);
        // Full reachability: the internet host can route to the container through the edge.
        sh(&[
            "ip",
            "-n",
            &t.inet,
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            EDGE_PUBLIC,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.ctr,
            "route",
            "add",
            "default",
            "via",
            EDGE_PRIVATE,
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &t.edge,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        t
    }

    fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.inet, &self.edge, &self.ctr] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Start `f` on a thread that has entered namespace `ns`, with its own tokio runtime.
fn spawn_in_netns<T, F, Fut>(ns: &str, f: F) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f())
    })
}

/// Run `f` in namespace `ns` (see [`spawn_in_netns`]) and wait for it.
fn in_netns<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    spawn_in_netns(ns, f).join().expect("namespace thread")
}

#[derive(Debug, Default)]
struct Scan {
    open: Vec<u16>,
    refused: usize,
    silent: Vec<u16>,
}

/// Try a TCP connection to every port of `ip`.
async fn scan(ip: IpAddr) -> Scan {
    const CONCURRENCY: usize = 256;
    let next = Arc::new(AtomicUsize::new(1));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let next = next.clone();
        workers.spawn(async move {
            let mut s = Scan::default();
            loop {
                let port = next.fetch_add(1, Ordering::Relaxed);
                let Ok(port) = u16::try_from(port) else {
                    return s;
                };
                if port == 0 {
                    return s;
                }
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::TcpStream::connect(SocketAddr::new(ip, port)),
                )
                .await
                {
                    Ok(Ok(_)) => s.open.push(port),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        s.refused += 1
                    }
                    Ok(Err(_)) | Err(_) => s.silent.push(port),
                }
            }
        });
    }
    let mut total = Scan::default();
    while let Some(s) = workers.join_next().await {
        let s = s.expect("scan worker");
        total.open.extend(s.open);
        total.silent.extend(s.silent);
        total.refused += s.refused;
    }
    total
}

/// The gateway on the edge, public on every edge address; its tunnel socket in `dir`.
fn edge_gateway(topo: &Topology, pki: &Pki, dir: &Path) -> (Proc, GatewayAddrs) {
    edge_gateway_with(topo, pki, dir, "")
}

/// [`edge_gateway`] with more routes (`[[tcp_route]]`s).
fn edge_gateway_with(topo: &Topology, pki: &Pki, dir: &Path, routes: &str) -> (Proc, GatewayAddrs) {
    let gw_toml = pki
        .gateway_toml(&format!(
            "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n{routes}"
        ))
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"", 1)
        .replace(
            "[tunnel_listener]\nlisten = \"127.0.0.1:0\"",
            "[tunnel_listener]\nlisten = \"0.0.0.0:0\"",
        )
        .replace(
            "wireguard_listen = \"127.0.0.1:0\"",
            "wireguard_listen = \"0.0.0.0:0\"",
        );
    std::fs::write(dir.join("gateway.toml"), gw_toml).expect("write");
    spawn_gateway_with(
        topo.exec(&topo.edge, &bin("netwall-gateway")),
        &dir.join("gateway.toml"),
        dir.join("gateway.log"),
    )
}

/// The connector in the container, dialing `gateway` with `extra` settings.
fn container_connector(topo: &Topology, pki: &Pki, dir: &Path, gateway: &str, extra: &str) -> Proc {
    container_connector_with(topo, pki, dir, gateway, extra, "")
}

/// [`container_connector`] with more `[services]` lines.
fn container_connector_with(
    topo: &Topology,
    pki: &Pki,
    dir: &Path,
    gateway: &str,
    extra: &str,
    services: &str,
) -> Proc {
    let c_toml = pki
        .connector_toml(
            &[],
            &format!("web = \"http://127.0.0.1:3000\"\n{services}"),
            "",
        )
        .replace(
            "gateways = []",
            &format!("gateways = [\"{gateway}\"]\n{extra}"),
        )
        .replace("transport = \"quic\"\n", "");
    std::fs::write(dir.join("connector.toml"), c_toml).expect("write");
    let mut c_cmd = topo.exec(&topo.ctr, &bin("netwall-connector"));
    c_cmd
        .arg("--config")
        .arg(dir.join("connector.toml"))
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info")
        .env("NETWALL_CREDENTIAL", &pki.credential);
    Proc::spawn(c_cmd, dir.join("connector.log"))
}

/// The sample service inside the container, on the container's loopback only.
fn container_service(topo: &Topology, dir: &Path) -> Proc {
    let mut sample_cmd = topo.exec(&topo.ctr, &bin("netwall-sample"));
    sample_cmd.args(["--listen", "127.0.0.1:3000", "--name", "walled"]);
    let sample = Proc::spawn(sample_cmd, dir.join("sample.log"));
    sample.wait_line("listening on", Duration::from_secs(10));
    sample
}

/// A tunnel gauge of the gateway, read on its admin listener inside the edge namespace.
fn edge_metric(topo: &Topology, admin: SocketAddr, sample: &'static str) -> f64 {
    in_netns(&topo.edge, move || async move {
        metric(&metrics_text(admin).await, sample)
    })
}

fn wait_edge_metric(
    topo: &Topology,
    admin: SocketAddr,
    sample: &'static str,
    want: f64,
    limit: Duration,
) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let got = edge_metric(topo, admin, sample);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{sample} is {got}, not {want}, after {limit:?}"
        );
        std::thread::yield_now();
    }
}

const QUIC_LIVE: &str = "netwall_tunnel_transport_connections{tunnel=\"app\",transport=\"quic\"}";
const TLS_LIVE: &str = "netwall_tunnel_transport_connections{tunnel=\"app\",transport=\"tls\"}";
const WG_LIVE: &str =
    "netwall_tunnel_transport_connections{tunnel=\"app\",transport=\"wireguard\"}";

#[test]
fn the_container_accepts_no_inbound_connection_yet_serves_through_quic() {
    wall("quic");
}

#[test]
fn the_container_accepts_no_inbound_connection_yet_serves_through_tls() {
    wall("tls");
}

#[test]
fn the_container_accepts_no_inbound_connection_yet_serves_through_wireguard() {
    wall("wireguard");
}

/// The UDP port of the connector's connected QUIC socket in the container.
fn connector_udp_port(topo: &Topology) -> u16 {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.ctr, "ss", "-uanH"])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|local| local.starts_with(CONTAINER) || local.starts_with("0.0.0.0"))
        .filter_map(|local| local.rsplit_once(':')?.1.parse().ok())
        .collect();
    assert_eq!(ports.len(), 1, "one UDP socket in the container: {text}");
    // Connected to the gateway, as `ss` shows by its peer column.
    assert!(
        text.contains(&format!("{EDGE_PRIVATE}:")),
        "the QUIC socket is connected to the gateway: {text}"
    );
    ports[0]
}

/// Datagrams a scanner sends: a QUIC v1 Initial (long header, padded to 1,200 bytes), a
/// short-header packet for a made-up connection, junk, and WireGuard-shaped messages (an
/// initiation, a response, a cookie reply and a data packet with random contents).
fn probes() -> Vec<Vec<u8>> {
    let mut all = quic_probes();
    for (kind, len) in [(1u8, 148usize), (2, 92), (3, 64), (4, 96)] {
        let mut d = vec![kind, 0, 0, 0];
        d.extend((4..len).map(|i| (i as u8).wrapping_mul(31)));
        all.push(d);
    }
    all
}

fn quic_probes() -> Vec<Vec<u8>> {
    let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
    initial.extend_from_slice(&[0x5a; 8]); // destination connection id
    initial.push(8);
    initial.extend_from_slice(&[0xa5; 8]); // source connection id
    initial.push(0); // no token
    // Length (2-byte varint) of what follows: packet number and payload, to 1,200 bytes.
    let rest = 1200 - initial.len() - 2;
    initial.extend_from_slice(&(0x4000 | rest as u16).to_be_bytes());
    initial.resize(1200, 0x17);
    let mut short = vec![0x41];
    short.extend_from_slice(&[0x77; 20]);
    short.resize(1200, 0x33);
    vec![initial, short, b"\x00junk from a scanner\xff".to_vec()]
}

/// Send every probe to `target` from a fresh socket and collect whatever comes back within
/// `wait` (an absence can only be observed for a while).
async fn replies_to_probes(target: SocketAddr, wait: Duration) -> Vec<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .expect("bind");
    for p in probes() {
        sock.send_to(&p, target).await.expect("send");
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

/// A real WireGuard handshake initiation to `target` (the gateway's public key `key`) from a
/// key the gateway does not know, sent three times; whatever comes back within a second.
async fn stranger_initiation_replies(target: SocketAddr, key: &str) -> Vec<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let init = netwall_tests::wg::stranger_initiation(key);
    for _ in 0..3 {
        sock.send_to(&init, target).await.expect("send");
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

fn wall(transport: &'static str) {
    init_logs();
    let topo = Topology::new();
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    let _sample = container_service(&topo, &dir);
    // A cache and a database in the container too, on its loopback, reached only as raw
    // TCP services of the connector.
    let certs = ClientCerts::new();
    let _redis = container_redis(&topo, &dir);
    let ctr_ns = ["ip", "netns", "exec", topo.ctr.as_str()];
    let pg = Postgres::start(&ctr_ns, Some(CONTAINER_PG_PORT), dir.join("postgres.log"));
    let ca = certs.ca.display();
    let tcp_routes = format!(
        "[[tcp_route]]\nlisten = \"0.0.0.0:{EDGE_REDIS_PORT}\"\ntunnel = \"app\"\nservice = \"cache\"\nclient_ca = \"{ca}\"\n\
         [[tcp_route]]\nlisten = \"0.0.0.0:{EDGE_PG_PORT}\"\ntunnel = \"app\"\nservice = \"db\"\nclient_ca = \"{ca}\"\nstarttls = \"postgres\"\n"
    );
    let (_gateway, addrs) = edge_gateway_with(&topo, &pki, &dir, &tcp_routes);

    // The connector in the container dials out to the edge's private address.
    let port = match transport {
        "quic" => addrs.tunnel.port(),
        "wireguard" => addrs
            .wireguard
            .expect("the gateway listens for WireGuard")
            .port(),
        _ => addrs.https.port(),
    };
    let settings = match transport {
        "wireguard" => format!(
            "transport = \"wireguard\"\ngateway_wireguard_public_key = \"{}\"\nwireguard_private_key_file = \"{}\"",
            addrs
                .wireguard_public_key
                .as_deref()
                .expect("the gateway has a WireGuard key"),
            pki.connector_wg_key.display()
        ),
        _ => format!("transport = \"{transport}\""),
    };
    let mut connector = container_connector_with(
        &topo,
        &pki,
        &dir,
        &format!("{EDGE_PRIVATE}:{port}"),
        &settings,
        &format!(
            "cache = \"tcp://127.0.0.1:{CONTAINER_REDIS_PORT}\"\ndb = \"tcp://127.0.0.1:{CONTAINER_PG_PORT}\""
        ),
    );
    connector.wait_line("tunnel connected", Duration::from_secs(15));
    let live = match transport {
        "quic" => QUIC_LIVE,
        "wireguard" => WG_LIVE,
        _ => TLS_LIVE,
    };
    assert_eq!(edge_metric(&topo, addrs.admin, live), 1.0);

    // A client on the internet host gets answers through the gateway.
    let public: SocketAddr = format!("{EDGE_PUBLIC}:{}", addrs.https.port())
        .parse()
        .expect("addr");
    let ca = pki.ca_der.clone();
    let through = move || {
        let ca = ca.clone();
        async move {
            let mut out = Vec::new();
            for h2 in [false, true] {
                let c = HttpsClient::new(public, &ca, h2);
                out.push(c.get("https://app.test/hello").await);
                out.push(c.post("https://app.test/echo", "through the wall").await);
            }
            out
        }
    };
    let answers = in_netns(&topo.inet, through.clone());
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
    assert_eq!(
        answers[0].text(),
        format!("hello from walled via netwall: GET /hello (host app.test, client {INTERNET})\n")
    );
    assert_eq!(answers[1].text(), "through the wall");

    walled_databases_answer_only_our_certificate(&topo, &pki, &certs, &pg);
    // Each session is in the gateway's log with the client and its certificate's subject.
    let log = std::fs::read_to_string(dir.join("gateway.log")).expect("gateway log");
    let sessions: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "TCP connection relayed")
        .collect();
    assert_eq!(
        sessions.len(),
        3,
        "two redis-cli and one psql session: {log}"
    );
    for v in &sessions {
        assert_eq!(v["subject"], "CN=admin", "{v}");
        assert!(
            v["client"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{INTERNET}:"))),
            "{v}"
        );
    }

    // Nothing in the container listens off loopback.
    let ss = Command::new("ip")
        .args(["netns", "exec", &topo.ctr, "ss", "-ltnH"])
        .output()
        .expect("ss");
    assert!(ss.status.success());
    let listeners = String::from_utf8_lossy(&ss.stdout).into_owned();
    let locals: Vec<&str> = listeners
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert!(
        !locals.is_empty(),
        "the service's loopback listener should show: {listeners}"
    );
    for local in &locals {
        assert!(
            local.starts_with("127.0.0.1:") || local.starts_with("[::1]:"),
            "listener off loopback in the container: {local}\n{listeners}"
        );
    }

    // The connector's UDP socket is silent to everyone but its gateway: a crafted Initial,
    // a short-header packet, junk and WireGuard-shaped messages from the internet and the
    // edge host get no datagram back (no Stateless Reset, no version negotiation, no
    // handshake answer), and the tunnel is undisturbed.
    if transport != "tls" {
        let udp = connector_udp_port(&topo);
        let target: SocketAddr = format!("{CONTAINER}:{udp}").parse().expect("addr");
        for (from, ns) in [("internet", topo.inet.clone()), ("edge", topo.edge.clone())] {
            let replies = in_netns(&ns, move || {
                replies_to_probes(target, Duration::from_secs(1))
            });
            assert!(
                replies.is_empty(),
                "from the {from} host, the connector's UDP port {udp} answered: {:?}",
                replies.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
        let again = in_netns(&topo.inet, through.clone());
        assert!(again.iter().all(|a| a.status == StatusCode::OK));
        assert_eq!(edge_metric(&topo, addrs.admin, live), 1.0);
    }
    // The gateway's WireGuard port is as silent to the internet host: no answer to junk, to
    // WireGuard-shaped probes or to a well-formed initiation from a key it does not know.
    if let (Some(wg), Some(key)) = (addrs.wireguard, addrs.wireguard_public_key.clone()) {
        let target: SocketAddr = format!("{EDGE_PUBLIC}:{}", wg.port())
            .parse()
            .expect("addr");
        let replies = in_netns(&topo.inet, move || async move {
            let mut got = replies_to_probes(target, Duration::from_secs(1)).await;
            got.extend(stranger_initiation_replies(target, &key).await);
            got
        });
        assert!(
            replies.is_empty(),
            "the gateway's WireGuard port answered a stranger: {:?}",
            replies.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // Counted, every one: the probes and the three initiations from an unknown key.
        let rejected = edge_metric(
            &topo,
            addrs.admin,
            "netwall_wireguard_events_total{event=\"rejected\"}",
        );
        assert!(
            rejected >= (probes().len() + 3) as f64,
            "{rejected} stranger datagrams counted"
        );
        let again = in_netns(&topo.inet, through);
        assert!(again.iter().all(|a| a.status == StatusCode::OK));
    }

    // Every TCP port of the container, from the edge and from the internet host: all refused.
    let container: IpAddr = CONTAINER.parse().expect("ip");
    for (from, ns) in [("edge", topo.edge.clone()), ("internet", topo.inet.clone())] {
        let result = in_netns(&ns, move || scan(container));
        assert!(
            result.open.is_empty(),
            "from the {from} host, open ports on the container: {:?}",
            result.open
        );
        assert!(
            result.silent.is_empty(),
            "from the {from} host, {} ports did not answer (the scan proves nothing if packets are dropped): {:?}",
            result.silent.len(),
            &result.silent[..result.silent.len().min(20)]
        );
        assert_eq!(result.refused, 65535, "from the {from} host");
    }

    // The connector dies mid-session: the client's connection closes within the gateway's
    // tunnel idle timeout (3 s here; at once when the transport sees the socket close).
    let public_redis: SocketAddr = format!("{EDGE_PUBLIC}:{EDGE_REDIS_PORT}")
        .parse()
        .expect("addr");
    let (pid, server_ca) = (connector.child.id(), pki.ca_der.clone());
    let closed_after = in_netns(&topo.inet, move || async move {
        let mut s = certs
            .connect(public_redis, &server_ca, "localhost")
            .await
            .expect("TLS with our certificate");
        s.write_all(b"PING\r\n").await.expect("send");
        let mut pong = [0u8; 7];
        s.read_exact(&mut pong).await.expect("PONG");
        assert_eq!(&pong, b"+PONG\r\n");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill connector");
        let killed = std::time::Instant::now();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await;
        assert!(
            end.is_ok(),
            "the client's connection still open 30 s after the kill"
        );
        assert!(rest.is_empty(), "{rest:?}");
        killed.elapsed()
    });
    assert_eq!(connector.wait_exit(Duration::from_secs(5)), None, "killed");
    assert!(
        closed_after < Duration::from_secs(8),
        "the client's connection closed {closed_after:?} after the connector died"
    );
    eprintln!("{transport}: client closed {closed_after:?} after the connector was killed");
}

/// Edge ports of the TCP routes, and the container's loopback ports of their services.
const EDGE_REDIS_PORT: u16 = 6380;
const EDGE_PG_PORT: u16 = 5433;
const CONTAINER_REDIS_PORT: u16 = 6379;
const CONTAINER_PG_PORT: u16 = 5432;

/// `redis-server` on the container's loopback.
fn container_redis(topo: &Topology, dir: &Path) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.ctr, "redis-server"])
        .args(["--bind", "127.0.0.1", "--port"])
        .arg(CONTAINER_REDIS_PORT.to_string())
        .args(["--save", "", "--appendonly", "no"]);
    let redis = Proc::spawn(cmd, dir.join("redis.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while container_redis_cli(topo, &["PING"]) != "PONG" {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server in the container did not answer"
        );
        std::thread::yield_now();
    }
    redis
}

/// `redis-cli` inside the container, on the server's loopback port: its trimmed output.
fn container_redis_cli(topo: &Topology, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.ctr, "redis-cli", "-p"])
        .arg(CONTAINER_REDIS_PORT.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Connections the container's Redis has accepted.
fn redis_connections(topo: &Topology) -> u64 {
    container_redis_cli(topo, &["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received")
}

/// `redis-cli` on the internet host over TLS to the edge's Redis route, with `client` as
/// its certificate and key.
fn internet_redis_cli(
    topo: &Topology,
    pki: &Pki,
    client: Option<(&Path, &Path)>,
    cmd: &[&str],
) -> String {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &topo.inet,
        "redis-cli",
        "-h",
        EDGE_PUBLIC,
        "-p",
    ])
    .arg(EDGE_REDIS_PORT.to_string())
    .args(["--tls", "--sni", "localhost", "--cacert"])
    .arg(&pki.ca);
    if let Some((cert, key)) = client {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = c
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// From the internet host: `redis-cli` and `psql` reach the container's Redis and
/// PostgreSQL through the edge with our client certificate; without one, or with another
/// CA's, they are refused and the servers never hear of them.
fn walled_databases_answer_only_our_certificate(
    topo: &Topology,
    pki: &Pki,
    certs: &ClientCerts,
    pg: &Postgres,
) {
    let ours = Some((certs.cert.as_path(), certs.key.as_path()));
    let theirs = Some((certs.stranger_cert.as_path(), certs.stranger_key.as_path()));
    assert_eq!(
        internet_redis_cli(topo, pki, ours, &["SET", "wall", "holds"]),
        "OK"
    );
    assert_eq!(
        internet_redis_cli(topo, pki, ours, &["GET", "wall"]),
        "holds"
    );
    let reached = redis_connections(topo);
    assert_ne!(
        internet_redis_cli(topo, pki, None, &["GET", "wall"]),
        "holds"
    );
    assert_ne!(
        internet_redis_cli(topo, pki, theirs, &["GET", "wall"]),
        "holds"
    );
    // The INFO call itself is the one new connection.
    assert_eq!(redis_connections(topo), reached + 1);

    let inet_ns = ["ip", "netns", "exec", topo.inet.as_str()];
    let base = format!(
        "host=localhost hostaddr={EDGE_PUBLIC} port={EDGE_PG_PORT} user=postgres dbname=postgres sslrootcert={}",
        pki.ca.display()
    );
    let with = |cert: &Path, key: &Path| {
        format!(
            "{base} sslmode=verify-full sslcert={} sslkey={}",
            cert.display(),
            key.display()
        )
    };
    let (out, err, ok) = psql(
        &inet_ns,
        &with(&certs.cert, &certs.key),
        "SELECT inet_client_addr()::text || ' sees ' || current_user",
    );
    assert!(ok, "psql through the wall: {err}");
    // The database sees the connector on its own loopback: the internet host never
    // reached it.
    assert_eq!(out, "127.0.0.1/32 sees postgres");
    let reached = pg.connections_received();
    let (_, _, ok) = psql(&inet_ns, &format!("{base} sslmode=require"), "SELECT 1");
    assert!(!ok, "psql admitted without a certificate");
    let (_, _, ok) = psql(
        &inet_ns,
        &with(&certs.stranger_cert, &certs.stranger_key),
        "SELECT 1",
    );
    assert!(!ok, "psql admitted with another CA's certificate");
    assert_eq!(pg.connections_received(), reached);
}

/// Run `nft` inside namespace `ns`.
fn nft(ns: &str, rule: &str) {
    let mut args = vec!["ip", "netns", "exec", ns, "nft"];
    args.extend(rule.split_whitespace());
    sh(&args);
}

/// Successful requests so far, and a way to wait for a number of them.
#[derive(Default)]
struct Served {
    n: std::sync::Mutex<usize>,
    more: std::sync::Condvar,
}

impl Served {
    fn add(&self) {
        if let Ok(mut n) = self.n.lock() {
            *n += 1;
        }
        self.more.notify_all();
    }

    fn get(&self) -> usize {
        self.n.lock().map(|n| *n).unwrap_or(0)
    }

    /// Wait until at least `at_least` requests have succeeded, up to `limit`.
    fn wait_for(&self, at_least: usize, limit: Duration, what: &str) {
        let n = self.n.lock().expect("counter");
        let (n, timeout) = self
            .more
            .wait_timeout_while(n, limit, |n| *n < at_least)
            .expect("counter");
        assert!(!timeout.timed_out(), "{what}: {} after {limit:?}", *n);
    }
}

/// Requests from the internet host, four at a time, until `stop`; returns the failures.
fn steady_load(
    topo: &Topology,
    public: SocketAddr,
    ca: rustls::pki_types::CertificateDer<'static>,
    ok: Arc<Served>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    spawn_in_netns(&topo.inet, move || async move {
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..4 {
            let (ca, ok, stop) = (ca.clone(), ok.clone(), stop.clone());
            workers.spawn(async move {
                let c = HttpsClient::new(public, &ca, w % 2 == 1);
                let mut failures = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    // POSTs are never replayed by the gateway: only a lossless switch
                    // keeps every one of them.
                    let body = format!("request {w}-{i}");
                    let a = c.post("https://app.test/echo", body.clone()).await;
                    if a.status == StatusCode::OK && a.text() == body {
                        ok.add();
                    } else {
                        failures.push(format!("{body}: {} {}", a.status, a.text()));
                    }
                }
                failures
            });
        }
        let mut all = Vec::new();
        while let Some(f) = workers.join_next().await {
            all.extend(f.expect("load worker"));
        }
        all
    })
}

#[test]
fn auto_falls_back_to_tls_when_udp_is_dropped_and_returns_to_quic_losing_nothing() {
    init_logs();
    let topo = Topology::new();
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    let _sample = container_service(&topo, &dir);
    let (_gateway, addrs) = edge_gateway(&topo, &pki, &dir);

    // Inside the container, UDP to the gateway is dropped: QUIC handshakes go unanswered.
    nft(&topo.ctr, "add table inet wall");
    nft(
        &topo.ctr,
        "add chain inet wall out { type filter hook output priority 0 ; }",
    );
    nft(
        &topo.ctr,
        &format!(
            "add rule inet wall out ip daddr {EDGE_PRIVATE} udp dport {} drop",
            addrs.tunnel.port()
        ),
    );
    let started = std::time::Instant::now();
    let connector = container_connector(
        &topo,
        &pki,
        &dir,
        &format!("{EDGE_PRIVATE}:{}", addrs.tunnel.port()),
        &format!(
            "transport = \"auto\"\ntls_port = {}\nquic_fallback_after = \"1s\"\nquic_probe_interval = \"2s\"",
            addrs.https.port()
        ),
    );
    let warning = connector.wait_line("falling back to TLS", Duration::from_secs(10));
    assert!(
        warning.contains("QUIC handshake did not complete"),
        "{warning}"
    );
    wait_edge_metric(&topo, addrs.admin, TLS_LIVE, 1.0, Duration::from_secs(10));
    let fell_back = started.elapsed();
    assert!(
        fell_back < Duration::from_secs(4),
        "on TLS only after {fell_back:?} (fallback deadline 1 s)"
    );
    assert_eq!(edge_metric(&topo, addrs.admin, QUIC_LIVE), 0.0);

    // Steady load through the fallback tunnel.
    let public: SocketAddr = format!("{EDGE_PUBLIC}:{}", addrs.https.port())
        .parse()
        .expect("addr");
    let ok = Arc::new(Served::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&topo, public, pki.ca_der.clone(), ok.clone(), stop.clone());
    ok.wait_for(50, Duration::from_secs(20), "requests over TLS");

    // UDP passes again: within a probe interval (2 s, jittered up to 2.5 s) the tunnel is
    // back on QUIC and the TLS connection has drained away, under load.
    nft(&topo.ctr, "delete table inet wall");
    let back = wait_edge_metric(&topo, addrs.admin, QUIC_LIVE, 1.0, Duration::from_secs(10));
    assert!(
        back < Duration::from_secs(5),
        "back on QUIC only after {back:?}"
    );
    wait_edge_metric(&topo, addrs.admin, TLS_LIVE, 0.0, Duration::from_secs(10));
    connector.wait_line("moving back from TLS", Duration::from_secs(5));
    let on_quic = ok.get();
    ok.wait_for(on_quic + 50, Duration::from_secs(20), "requests over QUIC");

    stop.store(true, Ordering::SeqCst);
    let failures = load.join().expect("load");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the switches: {:?}",
        failures.len(),
        failures.len() + ok.get(),
        &failures[..failures.len().min(10)]
    );
}

/// A namespace with nothing but loopback, as `docker run --network none` gives; removed on
/// drop.
struct Isolated(String);

impl Isolated {
    fn new() -> Isolated {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let ns = format!(
            "nwn{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        Isolated(ns)
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn a_container_without_a_network_is_served_through_its_unix_socket_and_only_it_may_attach() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    init_logs();
    assert!(
        nix::unistd::geteuid().is_root(),
        "builds namespaces: run as root"
    );
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    let ns = Isolated::new();

    // The socket lives in a directory anyone may enter; the socket file itself is the gate
    // (mode 0600, owned by root, as the gateway runs here).
    let shared = tempfile::Builder::new()
        .prefix("netwall-sock")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = shared.path().join("app.sock");
    let gw_toml = pki
        .gateway_toml("[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n")
        .replace(
            &format!("unix_socket = \"{}\"", dir.join("app.sock").display()),
            &format!(
                "unix_socket = \"{}\"\nunix_socket_mode = \"0600\"",
                sock.display()
            ),
        );
    std::fs::write(dir.join("gateway.toml"), gw_toml).expect("write");
    let (_gateway, addrs) = spawn_gateway(&dir.join("gateway.toml"), dir.join("gateway.log"));
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode");

    // The service and the connector inside the network-less namespace.
    let mut sample_cmd = Command::new("ip");
    sample_cmd
        .args(["netns", "exec", &ns.0])
        .arg(bin("netwall-sample"))
        .args(["--listen", "127.0.0.1:3000", "--name", "isolated"]);
    let sample = Proc::spawn(sample_cmd, dir.join("sample.log"));
    sample.wait_line("listening on", Duration::from_secs(10));
    let c_toml = pki
        .connector_toml(&[], "web = \"http://127.0.0.1:3000\"", "")
        .replace(
            "gateways = []",
            &format!("gateways = [\"unix:{}\"]", sock.display()),
        )
        .replace("transport = \"quic\"", "transport = \"unix\"");
    std::fs::write(dir.join("connector.toml"), &c_toml).expect("write");
    let mut c_cmd = Command::new("ip");
    c_cmd
        .args(["netns", "exec", &ns.0])
        .arg(bin("netwall-connector"))
        .arg("--config")
        .arg(dir.join("connector.toml"))
        .env("RUST_LOG", "info")
        .env("NETWALL_CREDENTIAL", &pki.credential);
    let connector = Proc::spawn(c_cmd, dir.join("connector.log"));
    let line = connector.wait_line("tunnel connected", Duration::from_secs(15));
    assert!(line.contains("unix"), "{line}");

    // The namespace has no interface but loopback.
    let links = Command::new("ip")
        .args(["-n", &ns.0, "-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(str::trim))
        .collect();
    assert_eq!(names, ["lo"], "{links}");

    // Requests reach the service through the socket.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = HttpsClient::new(addrs.https, &pki.ca_der, false);
    let a = rt.block_on(c.get("https://app.test/hello"));
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        a.text(),
        "hello from isolated via netwall: GET /hello (host app.test, client 127.0.0.1)\n"
    );
    let live = "netwall_tunnel_transport_connections{tunnel=\"app\",transport=\"unix\"}";
    assert_eq!(metric(&rt.block_on(metrics_text(addrs.admin)), live), 1.0);

    // A process in another namespace (this one) that may not open the socket file cannot
    // attach, though it holds the credential: the file's permissions say no.
    let stranger_bin = shared.path().join("netwall-connector");
    std::fs::copy(bin("netwall-connector"), &stranger_bin).expect("copy");
    std::fs::set_permissions(&stranger_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let stranger_toml = shared.path().join("connector.toml");
    std::fs::write(
        &stranger_toml,
        c_toml.replace(&format!("ca_file = \"{}\"", pki.ca.display()), ""),
    )
    .expect("write");
    std::fs::set_permissions(&stranger_toml, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let mut s_cmd = Command::new(&stranger_bin);
    s_cmd
        .arg("--config")
        .arg(&stranger_toml)
        .env("RUST_LOG", "info")
        .env("NETWALL_CREDENTIAL", &pki.credential)
        .uid(65534)
        .gid(65534);
    let stranger = Proc::spawn(s_cmd, dir.join("stranger.log"));
    let refused = stranger.wait_line("dial failed", Duration::from_secs(10));
    assert!(refused.contains("Permission denied"), "{refused}");
    assert_eq!(metric(&rt.block_on(metrics_text(addrs.admin)), live), 1.0);
    drop(stranger);
    drop(connector);
}
