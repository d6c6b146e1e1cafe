//! Raw TCP routes: a real `redis-server` behind the wall reached with `redis-cli` through the
//! gateway, admitted by client certificate (mTLS) or by address; half-close carried end to
//! end. Every refusal happens before anything reaches the tunnel.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use netwall_tests::databases::{ClientCerts, Postgres, psql};
use netwall_tests::harness::*;
use netwall_tests::redis::{Redis, cli};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `redis-cli` over TLS to `addr`, trusting `ca`, with a client certificate when given.
async fn tls_cli(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    cmd: &[&str],
) -> (String, bool) {
    let (host, port, ca) = (
        addr.ip().to_string(),
        addr.port().to_string(),
        ca.display().to_string(),
    );
    let mut args = vec![
        "-h",
        &host,
        "-p",
        &port,
        "--tls",
        "--sni",
        "localhost",
        "--cacert",
        &ca,
    ];
    let (c, k);
    if let Some((cert, key)) = client {
        (c, k) = (cert.display().to_string(), key.display().to_string());
        args.extend(["--cert", &c, "--key", &k]);
    }
    args.extend(cmd);
    cli(&args).await
}

fn tcp_route(listen: &str, service: &str, extra: &str) -> String {
    format!(
        "[[tcp_route]]\nlisten = \"{listen}\"\ntunnel = \"app\"\nservice = \"{service}\"\n{extra}\n"
    )
}

fn tcp_metric(m: &str, route: SocketAddr, result: &str) -> f64 {
    metric(
        m,
        &format!("netwall_tcp_connections_total{{route=\"{route}\",result=\"{result}\"}}"),
    )
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn redis_behind_the_wall_answers_only_clients_with_our_certificate() {
        init_logs();
        let redis = Redis::start(&[]).await;
        let certs = ClientCerts::new();
        let pki = Pki::new();
        let route = tcp_route(
            "127.0.0.1:0",
            "cache",
            &format!("client_ca = \"{}\"", certs.ca.display()),
        );
        let services = format!("cache = \"tcp+unix:{}\"", redis.socket.display());
        let (gateway, _connector) = start_stack(&pki, &route, &services).await;
        let addr = gateway.tcp_addrs[0];
        let ours = Some((certs.cert.as_path(), certs.key.as_path()));
        assert_eq!(tls_cli(addr, &pki.ca, ours, &["SET", "wall", "holds"]).await, ("OK".into(), true));
        assert_eq!(tls_cli(addr, &pki.ca, ours, &["GET", "wall"]).await, ("holds".into(), true));
        let reached = redis.connections_received().await;
        // No certificate, and a certificate of another CA: refused in the handshake.
        let (out, _) = tls_cli(addr, &pki.ca, None, &["GET", "wall"]).await;
        assert_ne!(out, "holds");
        let theirs = Some((certs.stranger_cert.as_path(), certs.stranger_key.as_path()));
        let (out, _) = tls_cli(addr, &pki.ca, theirs, &["GET", "wall"]).await;
        assert_ne!(out, "holds");
        let m = metrics_text(gateway.admin_addr.expect("admin")).await;
        assert_eq!(tcp_metric(&m, addr, "relayed"), 2.0, "{m}");
        assert_eq!(tcp_metric(&m, addr, "certificate_refused"), 2.0, "{m}");
        // Nothing of the refused clients reached the service (the INFO call itself is one).
        assert_eq!(redis.connections_received().await, reached + 1);
    }
}

#[tokio::test]
async fn the_address_allow_list_admits_its_networks_and_closes_everyone_else() {
    init_logs();
    let redis = Redis::start(&[]).await;
    let pki = Pki::new();
    let routes = [
        tcp_route("127.0.0.1:0", "cache", "allow_ips = [\"127.0.0.0/8\"]"),
        tcp_route(
            "127.0.0.1:0",
            "cache",
            "allow_ips = [\"192.0.2.0/24\", \"2001:db8::1\"]",
        ),
    ]
    .concat();
    let services = format!("cache = \"tcp+unix:{}\"", redis.socket.display());
    let (gateway, _connector) = start_stack(&pki, &routes, &services).await;
    let (open, closed) = (gateway.tcp_addrs[0], gateway.tcp_addrs[1]);
    let (host, port) = (open.ip().to_string(), open.port().to_string());
    assert_eq!(
        cli(&["-h", &host, "-p", &port, "PING"]).await,
        ("PONG".into(), true)
    );
    let reached = redis.connections_received().await;
    // A stranger's connection is closed at once, without a byte.
    let mut s = tokio::net::TcpStream::connect(closed)
        .await
        .expect("connect");
    let _ = s.write_all(b"PING\r\n").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed promptly");
    assert!(n.map(|n| n == 0).unwrap_or(true), "got {buf:?}");
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(tcp_metric(&m, closed, "ip_refused"), 1.0, "{m}");
    assert_eq!(tcp_metric(&m, open, "relayed"), 1.0, "{m}");
    assert_eq!(redis.connections_received().await, reached + 1);
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn a_client_half_close_still_receives_the_whole_answer() {
        init_logs();
        // A service that answers only once the client has finished sending.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let service = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if s.read_to_end(&mut got).await.is_ok() {
                        let answer = vec![b'a'; got.len() * 2];
                        let _ = s.write_all(&answer).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        let pki = Pki::new();
        let (gateway, _connector) = tcp_stack(&pki, service).await;
        let mut s = tokio::net::TcpStream::connect(gateway.tcp_addrs[0]).await.expect("connect");
        s.write_all(&vec![b'q'; 256 * 1024]).await.expect("send");
        s.shutdown().await.expect("half-close");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
            .await
            .expect("the answer in time")
            .expect("read");
        assert_eq!(answer.len(), 512 * 1024);
        assert!(answer.iter().all(|b| *b == b'a'));
        let m = metrics_text(gateway.admin_addr.expect("admin")).await;
        let route = gateway.tcp_addrs[0];
        wait_until(Duration::from_secs(5), "the byte counters", || {
            let admin = gateway.admin_addr.expect("admin");
            async move {
                let m = metrics_text(admin).await;
                metric(&m, &format!("netwall_tcp_bytes_total{{route=\"{route}\",direction=\"to_client\"}}")) == 512.0 * 1024.0
            }
        })
        .await;
        assert_eq!(
            metric(&m, &format!("netwall_tcp_connections_total{{route=\"{route}\",result=\"relayed\"}}")),
            1.0
        );
    }
}

/// `psql` in a blocking task, so the gateway and connector of this runtime keep running.
async fn psql_async(conninfo: String, query: &'static str) -> (String, String, bool) {
    tokio::task::spawn_blocking(move || psql(&[], &conninfo, query))
        .await
        .expect("psql task")
}

#[tokio::test]
async fn psql_reaches_postgres_behind_the_wall_only_with_our_certificate() {
    init_logs();
    let certs = ClientCerts::new();
    let pki = Pki::new();
    let pg = Postgres::start(&[], None, pki.dir.path().join("postgres.log"));
    let route = tcp_route(
        "127.0.0.1:0",
        "db",
        &format!(
            "client_ca = \"{}\"\nstarttls = \"postgres\"",
            certs.ca.display()
        ),
    );
    let services = format!("db = \"tcp+unix:{}\"", pg.socket.display());
    let (gateway, _connector) = start_stack(&pki, &route, &services).await;
    let addr = gateway.tcp_addrs[0];
    let base = format!(
        "host=localhost hostaddr={} port={} user=postgres dbname=postgres sslrootcert={}",
        addr.ip(),
        addr.port(),
        pki.ca.display()
    );
    let ours = format!(
        "{base} sslmode=verify-full sslcert={} sslkey={}",
        certs.cert.display(),
        certs.key.display()
    );
    let (out, err, ok) = psql_async(ours, "SELECT current_user || ' behind the wall'").await;
    assert!(ok, "{err}");
    assert_eq!(out, "postgres behind the wall");
    let reached = pg.connections_received();
    assert_eq!(reached, 1);

    // No certificate, another CA's certificate, no TLS at all: refused at the edge, and
    // the server never hears of them.
    let (_, err, ok) = psql_async(format!("{base} sslmode=require"), "SELECT 1").await;
    assert!(!ok, "admitted without a certificate");
    assert!(!err.is_empty());
    let theirs = format!(
        "{base} sslmode=require sslcert={} sslkey={}",
        certs.stranger_cert.display(),
        certs.stranger_key.display()
    );
    let (_, _, ok) = psql_async(theirs, "SELECT 1").await;
    assert!(!ok, "admitted with another CA's certificate");
    let (_, err, ok) = psql_async(format!("{base} sslmode=disable"), "SELECT 1").await;
    assert!(!ok, "admitted without TLS");
    assert!(
        err.contains("requires TLS with a client certificate"),
        "libpq shows why: {err}"
    );

    // A client that asks for GSS encryption first is told no, then gets TLS.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw.write_all(&[0, 0, 0, 8, 4, 210, 22, 48])
        .await
        .expect("GSSENCRequest");
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    raw.write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
        .await
        .expect("SSLRequest");
    raw.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    drop(raw);

    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(tcp_metric(&m, addr, "relayed"), 1.0, "{m}");
    assert_eq!(tcp_metric(&m, addr, "certificate_refused"), 3.0, "{m}");
    assert_eq!(tcp_metric(&m, addr, "tls_not_requested"), 1.0, "{m}");
    assert_eq!(pg.connections_received(), reached);
}

/// A TLS echo service holding `other.test`'s certificate (the test CA's), for passthrough:
/// only the service can complete a handshake for that name.
async fn start_tls_echo(pki: &Pki) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&pki.other_cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(&pki.other_key).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(netwall_tunnel::crypto::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = w.write_all(b"service speaking: ").await;
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn tcp_routes_share_the_https_port_by_server_name_terminated_or_passed_through() {
        init_logs();
        let redis = Redis::start(&[]).await;
        let certs = ClientCerts::new();
        let pki = Pki::new();
        let web = start_sample("web").await;
        let echo = start_tls_echo(&pki).await;
        let routes = format!(
            "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n\
             [[tcp_route]]\nsni = \"cache.app.test\"\ntunnel = \"app\"\nservice = \"cache\"\nclient_ca = \"{}\"\n\
             [[tcp_route]]\nsni = \"other.test\"\ntls = \"passthrough\"\ntunnel = \"app\"\nservice = \"vault\"\nallow_ips = [\"127.0.0.1\"]\n",
            certs.ca.display()
        );
        let services = format!(
            "web = \"http://{web}\"\ncache = \"tcp+unix:{}\"\nvault = \"tcp://{echo}\"",
            redis.socket.display()
        );
        let (gateway, _connector) = start_stack(&pki, &routes, &services).await;
        let https = gateway.https_addr;
        assert!(gateway.tcp_addrs.is_empty(), "no listener of their own");

        // Terminated at the edge, with a client certificate required: redis-cli on the HTTPS
        // port, naming the route.
        let (host, port, ca) = (https.ip().to_string(), https.port().to_string(), pki.ca.display().to_string());
        let (cert, key) = (certs.cert.display().to_string(), certs.key.display().to_string());
        let base = ["-h", host.as_str(), "-p", port.as_str(), "--tls", "--sni", "cache.app.test", "--cacert", ca.as_str()];
        let with_cert = [&base[..], &["--cert", cert.as_str(), "--key", key.as_str()]].concat();
        assert_eq!(cli(&[&with_cert[..], &["SET", "k", "by name"]].concat()).await, ("OK".into(), true));
        assert_eq!(cli(&[&with_cert[..], &["GET", "k"]].concat()).await, ("by name".into(), true));
        let (out, _) = cli(&[&base[..], &["GET", "k"]].concat()).await;
        assert_ne!(out, "by name", "admitted without a certificate");

        // HTTP on the same port is untouched.
        let c = HttpsClient::new(https, &pki.ca_der, false);
        let a = c.get("https://app.test/hello").await;
        assert_eq!(a.status, http::StatusCode::OK, "{}", a.text());
        assert!(a.text().starts_with("hello from web"), "{}", a.text());

        // Passed through: the service's own certificate answers, the bytes come back.
        let tcp = tokio::net::TcpStream::connect(https).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("other.test").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(client_tls(&pki.ca_der, &[]))
            .connect(name, tcp)
            .await
            .expect("the service's handshake, through the edge");
        tls.write_all(b"end to end").await.expect("send");
        tls.shutdown().await.expect("close_notify");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
            .await
            .expect("the answer in time")
            .expect("read");
        assert_eq!(got, b"service speaking: end to end");

        // Not TLS at all, and a hello cut short: closed, counted,
        // and the port serves the next client.
        for junk in [&b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n"[..], &[0x16, 3, 1, 0x40, 0][..]] {
            let mut s = tokio::net::TcpStream::connect(https).await.expect("connect");
            s.write_all(junk).await.expect("send");
            if junk[0] == 0x16 {
                s.shutdown().await.expect("half-close");
            }
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
                .await
                .expect("closed in time");
        }
        let a = c.get("https://app.test/hello").await;
        assert_eq!(a.status, http::StatusCode::OK);

        let m = metrics_text(gateway.admin_addr.expect("admin")).await;
        assert_eq!(metric(&m, "netwall_rejections_total{reason=\"tls_handshake_failed\"}"), 2.0, "{m}");
        let count = |route: &str, result: &str| {
            metric(&m, &format!("netwall_tcp_connections_total{{route=\"{route}\",result=\"{result}\"}}"))
        };
        assert_eq!(count("sni:cache.app.test", "relayed"), 2.0, "{m}");
        assert_eq!(count("sni:cache.app.test", "certificate_refused"), 1.0, "{m}");
        assert_eq!(count("sni:other.test", "relayed"), 1.0, "{m}");
    }
}

/// PING on a raw Redis connection; the answer.
async fn ping(s: &mut tokio::net::TcpStream) -> [u8; 7] {
    s.write_all(b"PING\r\n").await.expect("send");
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).await.expect("PONG");
    pong
}

#[tokio::test]
async fn at_shutdown_the_port_closes_and_open_sessions_carry_on_until_the_drain_deadline() {
    init_logs();
    let redis = Redis::start(&[]).await;
    let pki = Pki::new();
    let toml = pki
        .gateway_toml(&tcp_route(
            "127.0.0.1:0",
            "cache",
            "allow_ips = [\"127.0.0.1\"]",
        ))
        .replace("drain_timeout = \"10s\"", "drain_timeout = \"2s\"");
    let gateway = start_gateway(&toml).await;
    let services = format!("cache = \"tcp+unix:{}\"", redis.socket.display());
    let _connector = start_connector(
        &pki.connector_toml_for(&gateway, &services, ""),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    let addr = gateway.tcp_addrs[0];
    let mut session = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(&ping(&mut session).await, b"+PONG\r\n");

    let token = gateway.shutdown_token();
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(gateway.shutdown());
    token.cancelled().await;
    wait_until(
        Duration::from_secs(5),
        "the route's port to close",
        || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    // The open session still answers while the gateway drains...
    assert_eq!(&ping(&mut session).await, b"+PONG\r\n");
    // ...and is closed once the drain deadline passes, which shutdown reports.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(15), session.read_to_end(&mut rest)).await;
    assert!(
        end.is_ok(),
        "the session outlived the drain deadline by 13 s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed {:?} into a 2 s drain",
        started.elapsed()
    );
    assert!(
        !stopping.await.expect("shutdown task"),
        "an open session is not drained"
    );
}

/// A gateway and connector over the running test's transport with one TCP route, admitted by
/// address, to the service at `service`.
async fn tcp_stack(
    pki: &Pki,
    service: SocketAddr,
) -> (
    netwall_gateway::RunningGateway,
    netwall_connector::RunningConnector,
) {
    let route = tcp_route("127.0.0.1:0", "svc", "allow_ips = [\"127.0.0.1\"]");
    start_stack(pki, &route, &format!("svc = \"tcp://{service}\"")).await
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn a_service_half_close_still_receives_what_the_client_sends_after_it() {
        init_logs();
        // A service that says its piece, shuts down its sending side, then reads to the end.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let service = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(b"greeting, then silence").await.expect("greet");
            s.shutdown().await.expect("half-close");
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            let _ = tx.send(got);
        });
        let pki = Pki::new();
        let (gateway, _connector) = tcp_stack(&pki, service).await;
        let mut s = tokio::net::TcpStream::connect(gateway.tcp_addrs[0]).await.expect("connect");
        let mut greeting = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut greeting))
            .await
            .expect("the service's end in time")
            .expect("read");
        assert_eq!(greeting, b"greeting, then silence");
        // The client's side is still open: what it sends now reaches the service.
        let late = vec![b'z'; 300 * 1024];
        s.write_all(&late).await.expect("send after the service's half-close");
        s.shutdown().await.expect("close");
        let got = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("the service's read in time")
            .expect("service task");
        assert_eq!(got.len(), late.len());
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn a_client_that_stops_reading_stops_the_service_not_the_gateways_memory() {
        init_logs();
        // A service that writes as fast as it is let, and says how much it wrote before a
        // write stayed blocked for 2 s.
        const CHUNK: usize = 64 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let service = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let chunk = vec![b'x'; CHUNK];
            let mut written = 0usize;
            while let Ok(r) = tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                r.expect("write");
                written += CHUNK;
            }
            let _ = tx.send(written);
            // Then one more chunk once the client reads again, and the end. (The write that
            // timed out may have sent part of its chunk.)
            s.write_all(&chunk).await.expect("write after the client reads again");
            s.shutdown().await.expect("end");
        });
        let pki = Pki::new();
        let (gateway, _connector) = tcp_stack(&pki, service).await;
        let mut s = tokio::net::TcpStream::connect(gateway.tcp_addrs[0]).await.expect("connect");
        let written = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("the service blocked")
            .expect("service task");
        // Socket buffers on four sockets and the tunnel stream's window, not more: nothing
        // on the way buffers without bound for a client that does not read.
        assert!(written < 48 << 20, "{} MiB went out to a client that reads nothing", written >> 20);
        assert!(written > 0);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
            .await
            .expect("the bytes flow again")
            .expect("read");
        assert!(
            (written + CHUNK..written + 2 * CHUNK).contains(&got.len()),
            "{} bytes received, {written} written before the stall",
            got.len()
        );
        assert!(got.iter().all(|b| *b == b'x'));
        eprintln!("{} KiB in flight before the service was held back", written >> 10);
    }
}

#[tokio::test]
async fn a_route_full_of_sessions_closes_the_next_at_accept_and_takes_one_when_a_place_frees() {
    init_logs();
    let redis = Redis::start(&[]).await;
    let pki = Pki::new();
    let services = format!("cache = \"tcp+unix:{}\"", redis.socket.display());
    let (gateway, _connector) = start_stack(
        &pki,
        &tcp_route(
            "127.0.0.1:0",
            "cache",
            "allow_ips = [\"127.0.0.1\"]\nmax_connections = 2",
        ),
        &services,
    )
    .await;
    let addr = gateway.tcp_addrs[0];
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(&ping(&mut first).await, b"+PONG\r\n");
    assert_eq!(&ping(&mut second).await, b"+PONG\r\n");
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut rest))
        .await
        .expect("closed at once");
    assert!(n.map(|n| n == 0).unwrap_or(true), "{rest:?}");
    drop(first);
    // The freed place is taken by the next client once the first session has ended.
    wait_until(
        Duration::from_secs(10),
        "a place on the route",
        || async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return false;
            };
            if s.write_all(b"PING\r\n").await.is_err() {
                return false;
            }
            let mut pong = [0u8; 7];
            matches!(
                tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut pong)).await,
                Ok(Ok(_))
            ) && &pong == b"+PONG\r\n"
        },
    )
    .await;
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert!(tcp_metric(&m, addr, "route_full") >= 1.0, "{m}");
    assert_eq!(&ping(&mut second).await, b"+PONG\r\n");
}
