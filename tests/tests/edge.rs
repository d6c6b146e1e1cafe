//! Edge hardening, over real TLS and QUIC, raw bytes in and exact answers out: no request can
//! take a tunnel down, every path trick reaches the same route the service sees, only
//! WebSocket upgrades cross, identity headers cannot be forged or removed, per-IP and
//! per-route limits hold, error answers reach clients that write before they read, and the
//! protocol chosen by ALPN is the protocol spoken.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use netwall_tests::harness::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SECRET: &str = "an-hs256-secret-that-is-long-enough-for-tests";

struct Setup {
    pki: Pki,
    gateway: netwall_gateway::RunningGateway,
    _connector: netwall_connector::RunningConnector,
}

/// A gateway whose `/` goes to service `web` and `/private` to service `secret` behind a JWT,
/// plus `routes` (where `SECRET_FILE` names the JWT secret); `https` lines go into the
/// `[https]` table.
async fn setup(routes: &str, https: &str) -> Setup {
    init_logs();
    let pki = Pki::new();
    let secret_file = pki.dir.path().join("hs256.secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let web = start_sample("web").await;
    let secret = start_sample("secret").await;
    let all = format!(
        "[[route]]\nhost = \"app.test\"\npath = \"/\"\ntunnel = \"app\"\nservice = \"web\"\nmax_body_bytes = 1048576\n\
         [[route]]\nhost = \"app.test\"\npath = \"/private\"\ntunnel = \"app\"\nservice = \"secret\"\n\
         [route.auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{}\"\n{}\n",
        secret_file.display(),
        routes.replace("SECRET_FILE", &secret_file.display().to_string())
    );
    let toml = pki.gateway_toml(&all).replacen(
        "[https]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[https]\nlisten = \"127.0.0.1:0\"\n{https}\n"),
        1,
    );
    let gateway = start_gateway(&toml).await;
    let connector = start_connector(
        &pki.connector_toml(
            &[gateway.tunnel_addr],
            &format!("web = \"http://{web}\"\nsecret = \"http://{secret}\""),
            "",
        ),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    Setup {
        pki,
        gateway,
        _connector: connector,
    }
}

impl Setup {
    /// Send raw HTTP/1.1 bytes over TLS and read until the gateway closes.
    async fn raw(&self, request: &[u8]) -> String {
        let mut tls = raw_tls(self.gateway.https_addr, &self.pki.ca_der, "app.test").await;
        tls.write_all(request).await.expect("write");
        read_all(tls).await
    }

    /// GET `path` as raw bytes, with `headers` lines, closing after the answer.
    async fn get(&self, path: &str, headers: &str) -> String {
        self.raw(
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
    }

    fn client(&self, h2: bool) -> HttpsClient {
        HttpsClient::new(self.gateway.https_addr, &self.pki.ca_der, h2)
    }

    async fn metrics(&self) -> String {
        metrics_text(self.gateway.admin_addr.expect("admin")).await
    }

    /// The ids of the tunnel's live connections.
    fn conn_ids(&self) -> Vec<u64> {
        self.gateway
            .registry
            .get("app")
            .map(|t| t.live().iter().map(|c| c.id).collect())
            .unwrap_or_default()
    }

    /// A normal request still succeeds through the same tunnel connection.
    async fn assert_tunnel_serves(&self, ids: &[u64], after: &str) {
        assert_eq!(
            self.conn_ids(),
            ids,
            "the tunnel connection changed after {after}"
        );
        let r = self.client(false).get("https://app.test/ok").await;
        assert_eq!(r.status, StatusCode::OK, "after {after}: {}", r.text());
        assert!(r.text().starts_with("hello from web"), "after {after}");
    }
}

async fn read_all(mut s: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {answer:?}"))
}

fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn token(sub: &str) -> String {
    hs256_token(
        SECRET,
        &serde_json::json!({"sub": sub, "exp": unix_now() + 600}),
    )
}

// === 1. one request never takes a tunnel down ===

#[tokio::test]
async fn no_kind_of_bad_request_takes_the_tunnel_down() {
    let s = setup("", "").await;
    let ids = s.conn_ids();
    assert_eq!(ids.len(), 1);

    // HTTP/1.1: too many headers, too many bytes, bad framing, bad paths, bad hosts, bad
    // upgrades, methods the edge refuses, a body over the limit, a client that vanishes.
    let many = (0..150)
        .map(|i| format!("x-h{i}: v\r\n"))
        .collect::<String>();
    let big = format!("x-big: {}\r\n", "a".repeat(70 * 1024));
    // 90 fields: within the edge's 100, and with the forwarding headers the edge adds still
    // within the sample service's own limit (hyper's 100).
    let ninety = (0..88)
        .map(|i| format!("x-h{i}: v\r\n"))
        .collect::<String>();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (format!("GET / HTTP/1.1\r\nHost: app.test\r\n{many}\r\n").into_bytes(), 431),
        (format!("GET / HTTP/1.1\r\nHost: app.test\r\n{big}\r\n").into_bytes(), 431),
        (b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2000000\r\n\r\n".to_vec(), 413),
        (b"GET /a%2f..%2fb HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: evil@app.test\r\n\r\n".to_vec(), 400),
        (b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n".to_vec(), 405),
        (b"TRACE / HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(), 405),
        (b"GET /private HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer junk\r\n\r\n".to_vec(), 401),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".to_vec(), 200),
        (format!("GET / HTTP/1.1\r\nHost: app.test\r\n{ninety}\r\n").into_bytes(), 200),
    ];
    for (raw, want) in &cases {
        let mut request = raw.clone();
        // Every case closes after its answer.
        if let Some(at) = find(&request, b"\r\n") {
            request.splice(at + 2..at + 2, b"Connection: close\r\n".iter().copied());
        }
        let answer = s.raw(&request).await;
        assert_eq!(
            status_of(&answer),
            *want,
            "{:?} -> {answer}",
            String::from_utf8_lossy(&raw[..raw.len().min(120)])
        );
        s.assert_tunnel_serves(&ids, &String::from_utf8_lossy(&raw[..raw.len().min(60)]))
            .await;
    }

    // HTTP/2: a browser's hundred cookies arrive as separate fields and are one header to the
    // service; two hundred other fields are 431 for that request alone.
    let h2 = s.client(true);
    let mut req = Request::get("https://app.test/headers");
    for i in 0..150 {
        req = req.header("cookie", format!("c{i}=value-{i}"));
    }
    let r = h2
        .send(req.body(body(Bytes::new())).expect("req"))
        .await
        .expect("h2 cookies");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let cookie_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("cookie: ")).collect();
    assert_eq!(cookie_lines.len(), 1, "{}", r.text());
    assert!(
        cookie_lines[0].starts_with("cookie: c0=value-0; c1=value-1; ")
            && cookie_lines[0].ends_with("; c149=value-149"),
        "{}",
        cookie_lines[0]
    );
    let mut req = Request::get("https://app.test/");
    for i in 0..200 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = h2
        .send(req.body(body(Bytes::new())).expect("req"))
        .await
        .expect("h2 many headers");
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    s.assert_tunnel_serves(&ids, "h2 header floods").await;

    // A client that resets mid-request.
    let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
    tls.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\npartial",
    )
    .await
    .expect("write");
    drop(tls);
    s.assert_tunnel_serves(&ids, "a client that vanished mid-body")
        .await;

    let m = s.metrics().await;
    for reason in [
        "header_too_large",
        "bad_host",
        "method_not_allowed",
        "bad_path",
    ] {
        assert!(
            metric(
                &m,
                &format!("netwall_rejections_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason}: {m}"
        );
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Random header counts and sizes over HTTP/1.1 and HTTP/2: each request gets 200 or 431,
/// requests within the limits are always relayed, and the one tunnel connection keeps
/// serving throughout.
#[test]
fn random_header_floods_never_take_the_tunnel_down() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s = rt.block_on(setup("", ""));
    let ids = s.conn_ids();
    let (h1, h2) = (s.client(false), s.client(true));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (any::<bool>(), 0usize..260, 0usize..1200, 0usize..40);
    runner
        .run(&strategy, |(use_h2, count, value_len, cookies)| {
            rt.block_on(async {
                let mut req = Request::get("https://app.test/headers");
                for i in 0..count {
                    req = req.header(format!("x-f{i}"), "v".repeat(value_len));
                }
                for i in 0..cookies {
                    req = req.header("cookie", format!("k{i}=v"));
                }
                let client = if use_h2 { &h2 } else { &h1 };
                let r = client
                    .send(req.body(body(Bytes::new())).expect("req"))
                    .await;
                // The client may see the connection closed after a 431 on HTTP/1.1.
                let status = r.as_ref().map(|a| a.status.as_u16()).unwrap_or(431);
                prop_assert!(status == 200 || status == 431, "{status}");
                let bytes = count * (value_len + 5) + cookies * 8;
                // h1 sends each cookie as its own field; h2 fields are joined at the edge.
                let fields = count + if use_h2 { cookies.min(1) } else { cookies };
                if fields <= 90 && bytes <= 32 * 1024 {
                    prop_assert_eq!(status, 200, "{} fields, {} bytes", fields, bytes);
                }
                prop_assert_eq!(s.conn_ids(), ids.clone());
                let ok = s.client(false).get("https://app.test/ok").await;
                prop_assert_eq!(ok.status, StatusCode::OK);
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

// === 2. the route's policy and the service see the same path ===

#[tokio::test]
async fn path_tricks_reach_the_route_the_service_sees() {
    let s = setup("", "").await;
    let long_climb = format!("/{}{}private", "a/".repeat(500), "../".repeat(500));
    let long_plain = format!("/{}", "x".repeat(8000));
    // (path as sent, status, what the web service saw); 401 means the /private route's
    // policy applied, so the request never reached any service.
    let cases: Vec<(&str, u16, Option<&str>)> = vec![
        ("/", 200, Some("/")),
        ("/public", 200, Some("/public")),
        ("/private", 401, None),
        ("/private/", 401, None),
        ("/private/x", 401, None),
        ("/privatex", 200, Some("/privatex")),
        ("/PRIVATE", 200, Some("/PRIVATE")),
        ("/private;x", 401, None),
        ("/private;jsessionid=1/x", 401, None),
        ("/public/../private", 401, None),
        ("//private", 401, None),
        ("///private//", 401, None),
        ("/./private", 401, None),
        ("/%70rivate", 401, None),
        ("/%70%72%69%76%61%74%65", 401, None),
        ("/pub%6Cic/../private", 401, None),
        ("/a/b/c/../../../private", 401, None),
        ("/../private", 401, None),
        ("/../../../../private", 401, None),
        ("/public/./../private?a=1", 401, None),
        (&long_climb, 401, None),
        ("/private/..", 200, Some("/")),
        ("/private/../public", 200, Some("/public")),
        ("/public/%2e%2e/private", 400, None),
        ("/public/%2E%2E/private", 400, None),
        ("/public/.%2e/private", 400, None),
        ("/public/%2e./private", 400, None),
        ("/%2e/private", 400, None),
        ("/private%2f", 400, None),
        ("/private%2F", 400, None),
        ("/public%2f..%2fprivate", 400, None),
        ("/public/..%2fprivate", 400, None),
        ("/a%5cprivate", 400, None),
        ("/public/..;/private", 400, None),
        ("/public/.;/private", 400, None),
        ("/%252e%252e/private", 400, None),
        ("/%25%32%65%25%32%65/private", 400, None),
        ("/a%00b", 400, None),
        ("/a%0d%0ab", 400, None),
        ("/a%09b", 400, None),
        ("/a%7fb", 400, None),
        ("/a%zzb", 400, None),
        ("/a%4", 400, None),
        ("/public\\..\\private", 400, None),
        ("/caf%c3%a9", 200, Some("/caf%C3%A9")),
        ("/%7Euser/%41", 200, Some("/~user/A")),
        ("/a%20b", 200, Some("/a%20b")),
        (
            "/x?next=/private/../%2e",
            200,
            Some("/x?next=/private/../%2e"),
        ),
        (
            "/.well-known/acme-challenge/t",
            200,
            Some("/.well-known/acme-challenge/t"),
        ),
        ("/...", 200, Some("/...")),
        (&long_plain, 200, Some(&long_plain)),
    ];
    assert!(cases.len() >= 40);
    for (path, want, seen) in &cases {
        let answer = s.get(path, "").await;
        let shown = &path[..path.len().min(60)];
        assert_eq!(status_of(&answer), *want, "{shown} -> {answer:.300}");
        if let Some(seen) = seen {
            let body = body_of(&answer);
            assert!(
                body.starts_with(&format!("hello from web via netwall: GET {seen} ")),
                "{shown} -> {body:.300}"
            );
        }
        assert!(
            !answer.contains("hello from secret"),
            "{shown} reached the secret service"
        );
    }
    // With the token the normalised forms reach the secret service at its own path.
    let auth = format!("Authorization: Bearer {}\r\n", token("alice"));
    for path in [
        "/public/../private",
        "//private",
        "/%70rivate/x",
        "/private;x",
    ] {
        let answer = s.get(path, &auth).await;
        assert_eq!(status_of(&answer), 200, "{path} -> {answer}");
        let want = netwall_gateway::policy::path::normalize(path).expect("normal");
        assert!(
            body_of(&answer).starts_with(&format!("hello from secret via netwall: GET {want} ")),
            "{path} -> {answer}"
        );
    }
    // HTTP/2 carries the path in :path; the same rules apply.
    let h2 = s.client(true);
    for (path, want) in [
        ("/public/../private", 401),
        ("/%70rivate", 401),
        ("/a%2fb", 400),
    ] {
        let r = h2.get(&format!("https://app.test{path}")).await;
        assert_eq!(r.status.as_u16(), want, "h2 {path}: {}", r.text());
    }
}

// === 3. only WebSocket upgrades cross the edge ===

#[tokio::test]
async fn h2c_and_other_upgrades_are_stripped_and_connect_trace_refused() {
    let s = setup("", "").await;
    // h2c smuggling: the request goes on as a plain one, without its upgrade headers, and
    // nothing after it reaches the service raw.
    let answer = s
        .raw(b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let body = body_of(&answer).to_ascii_lowercase();
    assert!(
        !body.contains("upgrade:") && !body.contains("http2-settings"),
        "{body}"
    );
    assert!(!answer.contains("101 Switching"), "{answer}");
    let answer = s
        .get("/", "Connection: Upgrade\r\nUpgrade: rawecho\r\n")
        .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    for raw in [
        &b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\nConnection: close\r\n\r\n"[..],
        b"TRACE / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    ] {
        let answer = s.raw(raw).await;
        assert_eq!(status_of(&answer), 405, "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("\r\nallow: "),
            "{answer}"
        );
    }
    // A route may allow TRACE.
    let s = setup(
        "[[route]]\nhost = \"app.test\"\npath = \"/trace\"\ntunnel = \"app\"\nservice = \"web\"\nallow_trace = true\n",
        "",
    )
    .await;
    let answer = s
        .raw(b"TRACE /trace HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}

// === 4. identity headers cannot be forged or removed ===

#[tokio::test]
async fn identity_headers_cannot_be_forged_or_removed() {
    let s = setup(
        "[[route]]\nhost = \"app.test\"\npath = \"/underscores\"\ntunnel = \"app\"\nservice = \"web\"\nallow_underscores_in_headers = true\n\
         [[route]]\nhost = \"app.test\"\npath = \"/headers\"\ntunnel = \"app\"\nservice = \"web\"\n\
         [route.auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"SECRET_FILE\"\n",
        "",
    )
    .await;
    let auth = format!("Authorization: Bearer {}\r\n", token("alice"));
    let forged = "X-Netwall_Sub: admin\r\nx-netwall-sub: admin\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\nx_custom: 1\r\nConnection: x-netwall-sub, x-forwarded-for, forwarded, x-real-ip, x-forwarded-proto\r\n";
    let answer = s.get("/headers", &format!("{auth}{forged}")).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = body_of(&answer).to_ascii_lowercase();
    assert!(seen.contains("x-netwall-sub: alice\n"), "{seen}");
    assert!(!seen.contains("admin"), "{seen}");
    assert!(!seen.contains("6.6.6.6"), "{seen}");
    assert!(!seen.contains("x_custom"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(seen.contains("forwarded: for=127.0.0.1"), "{seen}");
    // A route that allows `_` names passes ordinary ones, never edge-owned spellings.
    let answer = s
        .get(
            "/underscores/headers",
            "x_custom: 1\r\nX-Netwall_Sub: admin\r\n",
        )
        .await;
    let seen = body_of(&answer).to_ascii_lowercase();
    assert!(seen.contains("x_custom: 1"), "{seen}");
    assert!(!seen.contains("admin"), "{seen}");
    // Host: exactly one, no user info.
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: user@app.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test@evil.test\r\nConnection: close\r\n\r\n",
        b"GET https://evil@app.test/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    ] {
        let answer = s.raw(raw).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
    }
}

// === 5. per-IP connections and rate limits ===

#[tokio::test]
async fn connections_per_ip_are_capped_at_accept() {
    let s = setup("", "max_connections_per_ip = 4").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await);
    }
    // The fifth is closed at accept: its TLS handshake never completes.
    let tcp = TcpStream::connect(s.gateway.https_addr)
        .await
        .expect("connect");
    let name = ServerName::try_from("app.test").expect("name");
    let fifth = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(client_tls(&s.pki.ca_der, &[b"http/1.1"])).connect(name, tcp),
    )
    .await
    .expect("answered in time");
    assert!(
        fifth.is_err(),
        "a fifth connection from one address was served"
    );
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "netwall_rejections_total{reason=\"per_ip_connections\"}"
        ) >= 1.0,
        "{m}"
    );
    // The held ones still work, and a closed one frees its slot.
    let mut first = held.remove(0);
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(status_of(&read_all(first).await), 200);
    wait_until(Duration::from_secs(5), "a slot to be released", || async {
        let tcp = TcpStream::connect(s.gateway.https_addr)
            .await
            .expect("connect");
        let name = ServerName::try_from("app.test").expect("name");
        TlsConnector::from(client_tls(&s.pki.ca_der, &[b"http/1.1"]))
            .connect(name, tcp)
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_client() {
    let s = setup(
        "[[route]]\nhost = \"app.test\"\npath = \"/api\"\ntunnel = \"app\"\nservice = \"web\"\ntrusted_proxy_hops = 1\n[route.rate_limit]\nrequests = 3\nwindow = \"60s\"\n",
        "",
    )
    .await;
    // Behind one trusted proxy, the client is the address it appended.
    for i in 0..3 {
        let a = s.get("/api/x", "X-Forwarded-For: 192.0.2.1\r\n").await;
        assert_eq!(status_of(&a), 200, "request {i}: {a}");
    }
    let a = s.get("/api/x", "X-Forwarded-For: 192.0.2.1\r\n").await;
    assert_eq!(status_of(&a), 429, "{a}");
    let head = a.to_ascii_lowercase();
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {a}"));
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(head.contains("ratelimit-policy: \"route\";q=3;w=60"), "{a}");
    assert!(head.contains("\r\nratelimit: \"route\";r=0;t="), "{a}");
    // Normalised paths share the route's budget; another client has its own; other routes
    // are not limited.
    let a = s
        .get("//api/../api/y", "X-Forwarded-For: 192.0.2.1\r\n")
        .await;
    assert_eq!(status_of(&a), 429, "{a}");
    let a = s.get("/api/x", "X-Forwarded-For: 192.0.2.2\r\n").await;
    assert_eq!(status_of(&a), 200, "{a}");
    // A client cannot escape by claiming another address: the trusted hop is the last one.
    let a = s
        .get("/api/x", "X-Forwarded-For: 203.0.113.9, 192.0.2.1\r\n")
        .await;
    assert_eq!(status_of(&a), 429, "{a}");
    let a = s.get("/other", "X-Forwarded-For: 192.0.2.1\r\n").await;
    assert_eq!(status_of(&a), 200, "{a}");
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"rate_limited\"}"),
        3.0,
        "{m}"
    );
}

// === 6. error answers reach clients; malformed bodies are the client's fault ===

#[tokio::test]
async fn a_413_reaches_a_client_that_writes_its_whole_body_first() {
    let s = setup("", "").await;
    for chunked in [false, true] {
        let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
        let size = 4 * 1024 * 1024;
        let head = if chunked {
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_owned()
        } else {
            format!("POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {size}\r\n\r\n")
        };
        tls.write_all(head.as_bytes()).await.expect("head");
        let chunk = vec![b'x'; 64 * 1024];
        // Write everything before reading a byte, as simple clients do.
        for _ in 0..size / chunk.len() {
            if chunked {
                if tls
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await
                    .is_err()
                    || tls.write_all(&chunk).await.is_err()
                    || tls.write_all(b"\r\n").await.is_err()
                {
                    break;
                }
            } else if tls.write_all(&chunk).await.is_err() {
                break;
            }
        }
        if chunked {
            let _ = tls.write_all(b"0\r\n\r\n").await;
        }
        let _ = tls.flush().await;
        let answer = read_all(tls).await;
        assert!(
            answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "chunked={chunked}: {answer:.200}"
        );
    }
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400() {
    let s = setup("", "").await;
    for raw in [
        &b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"[..],
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
    ] {
        let answer = s.raw(raw).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(!answer.contains("502"), "{answer}");
    }
    let m = s.metrics().await;
    assert!(
        metric(&m, "netwall_rejections_total{reason=\"bad_body\"}") >= 1.0,
        "{m}"
    );
}

// === 7. the protocol ALPN chose is the protocol spoken; TLS choices ===

#[tokio::test]
async fn a_bad_h2_preface_is_an_http2_connection_error_never_an_http1_answer() {
    let s = setup("", "").await;
    let tcp = TcpStream::connect(s.gateway.https_addr)
        .await
        .expect("connect");
    let name = ServerName::try_from("app.test").expect("name");
    let mut tls = TlsConnector::from(client_tls(&s.pki.ca_der, &[b"h2"]))
        .connect(name, tcp)
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let bytes = {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
        out
    };
    assert!(!bytes.starts_with(b"HTTP/1.1"), "answered with HTTP/1.1");
    // Only HTTP/2 frames come back (the server's SETTINGS), then the connection closes: an
    // invalid preface is a connection error of type PROTOCOL_ERROR, for which RFC 9113 §3.4
    // lets the GOAWAY be omitted; if one is sent, it says PROTOCOL_ERROR (1).
    let mut at = 0;
    let mut kinds = Vec::new();
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let kind = bytes[at + 3];
        let payload = &bytes[at + 9..(at + 9 + len).min(bytes.len())];
        if kind == 7 {
            assert!(payload.len() >= 8, "short GOAWAY: {bytes:?}");
            let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            assert_eq!(code, 1, "GOAWAY code: {bytes:?}");
        }
        kinds.push(kind);
        at += 9 + len;
    }
    assert_eq!(at, bytes.len(), "not whole HTTP/2 frames: {bytes:?}");
    assert_eq!(
        kinds.first(),
        Some(&4),
        "the server preface is a SETTINGS frame: {bytes:?}"
    );
    assert!(kinds.iter().all(|k| [4, 7].contains(k)), "{kinds:?}");
}

#[tokio::test]
async fn tls_prefers_the_servers_cipher_order() {
    let s = setup("", "").await;
    // Offer the suites weakest-first; the gateway still picks its own first choice.
    let mut provider = (*netwall_tunnel::crypto::provider()).clone();
    provider.cipher_suites.reverse();
    let offered_first = provider.cipher_suites[0].suite();
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(s.pki.ca_der.clone()).expect("ca");
        r
    };
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider.clone()))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(s.gateway.https_addr)
            .await
            .expect("connect");
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("app.test").expect("name"), tcp)
            .await
            .expect("TLS");
        let chosen = tls
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("suite")
            .suite();
        let server_first = netwall_tunnel::crypto::provider()
            .cipher_suites
            .iter()
            .map(|c| c.suite())
            .find(|c| {
                format!("{c:?}").starts_with(if version == &rustls::version::TLS13 {
                    "TLS13"
                } else {
                    "TLS_ECDHE"
                })
            })
            .expect("a suite for the version");
        assert_eq!(chosen, server_first, "{version:?}");
        assert_ne!(chosen, offered_first, "{version:?}: the client's order won");
    }
}

/// A TLS handshake with the gateway's HTTPS port: (key-exchange group, handshake kind).
async fn handshake_with(
    addr: std::net::SocketAddr,
    cfg: rustls::ClientConfig,
) -> (rustls::NamedGroup, rustls::HandshakeKind) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS");
    let conn = tls.get_ref().1;
    (
        conn.negotiated_key_exchange_group().expect("group").name(),
        conn.handshake_kind().expect("kind"),
    )
}

#[tokio::test]
async fn tunnels_and_browsers_get_the_post_quantum_hybrid_and_classical_clients_no_retry() {
    let s = setup("", "").await;
    // The connector's own client configuration, as it dials a tunnel over TLS/TCP.
    let connector = netwall_connector::dial::trust::client_config(
        &netwall_connector::config::Trust::Ca(s.pki.ca.clone()),
    )
    .expect("connector TLS");
    assert_eq!(
        handshake_with(s.gateway.https_addr, connector).await,
        (
            rustls::NamedGroup::X25519MLKEM768,
            rustls::HandshakeKind::Full
        )
    );
    // A client that offers only X25519 (as OpenSSL 3.0 does) is served in one round trip.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(s.pki.ca_der.clone()).expect("ca");
        r
    };
    let classical =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
            ..(*netwall_tunnel::crypto::provider()).clone()
        }))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert_eq!(
        handshake_with(s.gateway.https_addr, classical).await,
        (rustls::NamedGroup::X25519, rustls::HandshakeKind::Full)
    );
}

/// One client's visit: a request answered in full (its session tickets come with the
/// answer), then the connection closed. Whether the handshake resumed an earlier session.
async fn visit(addr: std::net::SocketAddr, client: &TlsConnector) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut tls = client
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS");
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.expect("answer");
    assert!(answer.starts_with(b"HTTP/1.1 "), "no HTTP answer");
    tls.get_ref().1.handshake_kind().expect("kind")
}

#[tokio::test]
async fn returning_clients_resume_beyond_the_last_hundred() {
    // 300 clients, each with its own session cache, visit once, then each comes back: every
    // one resumes. With rustls's default server cache (256 entries, two tickets per
    // handshake) none did: each client coming back found its tickets pushed out by the
    // newer ones, and its full handshake pushed out the next client's.
    const CLIENTS: usize = 300;
    let s = setup("", "").await;
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(s.pki.ca_der.clone()).expect("ca");
        r
    };
    let clients: Vec<TlsConnector> = (0..CLIENTS)
        .map(|_| {
            let mut cfg =
                rustls::ClientConfig::builder_with_provider(netwall_tunnel::crypto::provider())
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
            cfg.resumption = rustls::client::Resumption::in_memory_sessions(4);
            TlsConnector::from(Arc::new(cfg))
        })
        .collect();
    let addr = s.gateway.https_addr;
    let mut resumed = [0usize; 2];
    for (round, count) in resumed.iter_mut().enumerate() {
        for chunk in clients.chunks(8) {
            let kinds = futures_util::future::join_all(chunk.iter().map(|c| visit(addr, c))).await;
            *count += kinds
                .iter()
                .filter(|k| **k == rustls::HandshakeKind::Resumed)
                .count();
        }
        assert!(round == 1 || *count == 0, "first visits resumed");
    }
    assert_eq!(resumed[1], CLIENTS, "returning clients that resumed");
}

#[test]
fn self_signed_development_certificates_expire_in_90_days() {
    let pair = netwall_gateway::tls::CertPair::self_signed(&["localhost".into()]).expect("cert");
    let pem = pair.generated_pem.expect("pem");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, pem).expect("write");
    let check = |secs: u64| {
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &secs.to_string(), "-in"])
            .arg(&path)
            .status()
            .expect("openssl runs")
            .success()
    };
    // Valid 89 days from now, expired 91 days from now.
    assert!(check(89 * 86_400), "expires within 89 days");
    assert!(!check(91 * 86_400), "still valid after 91 days");
}

#[tokio::test]
async fn every_served_certificate_reports_when_it_expires() {
    init_logs();
    let pki = Pki::new();
    let gateway = start_gateway(&pki.gateway_toml("")).await;
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for (listener, file) in [("https", &pki.https_cert), ("tunnel", &pki.tunnel_cert)] {
        let sample = format!(
            "netwall_certificate_not_after_seconds{{listener=\"{listener}\",file=\"{}\"}}",
            file.display()
        );
        // The test CA's certificates are valid for years.
        assert!(
            metric(&m, &sample) > now + 365.0 * 86400.0,
            "{sample} in {m}"
        );
    }
}
