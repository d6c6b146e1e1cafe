//! HTTP through the tunnel, in-process over real sockets, TLS and QUIC: methods and bodies over
//! HTTP/1.1 and HTTP/2, routing, forwarded headers, every error status, edge hardening.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use netwall_tests::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    pki: Pki,
    gateway: netwall_gateway::RunningGateway,
    _connector: Option<netwall_connector::RunningConnector>,
}

impl Setup {
    /// Gateway with `routes`, and a connector offering `services` (or none).
    async fn new(routes: &str, services: Option<&str>) -> Setup {
        init_logs();
        let pki = Pki::new();
        let gateway = start_gateway(&pki.gateway_toml(routes)).await;
        let connector = match services {
            Some(s) => {
                let c = start_connector(&pki.connector_toml_for(&gateway, s, ""), &pki.credential);
                wait_tunnel(&gateway, 1).await;
                Some(c)
            }
            None => None,
        };
        Setup {
            pki,
            gateway,
            _connector: connector,
        }
    }

    fn client(&self, h2: bool) -> HttpsClient {
        HttpsClient::new(self.gateway.https_addr, &self.pki.ca_der, h2)
    }

    async fn metrics(&self) -> String {
        metrics_text(self.gateway.admin_addr.expect("admin listener")).await
    }
}

fn route(host: &str, path: &str, service: &str, extra: &str) -> String {
    format!(
        "[[route]]\nhost = \"{host}\"\npath = \"{path}\"\ntunnel = \"app\"\nservice = \"{service}\"\n{extra}\n"
    )
}

async fn one_service() -> Setup {
    let sample = start_sample("web").await;
    Setup::new(
        &route("app.test", "/", "web", ""),
        Some(&format!("web = \"http://{sample}\"")),
    )
    .await
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn get_post_and_streamed_bodies_over_h1_and_h2() {
        let s = one_service().await;
        for h2 in [false, true] {
            let c = s.client(h2);
            let proto = if h2 { "h2" } else { "h1" };

            let r = c.get("https://app.test/hello?x=1").await;
            assert_eq!(r.status, StatusCode::OK, "{proto}");
            assert_eq!(
                r.text(),
                "hello from web via netwall: GET /hello?x=1 (host app.test, client 127.0.0.1)\n",
                "{proto}"
            );

            let r = c.post("https://app.test/echo", "some posted bytes").await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (StatusCode::OK, "some posted bytes"),
                "{proto}"
            );

            // 8 MiB down, streamed by the service in 64 KiB chunks.
            let r = c.get("https://app.test/bytes?n=8388608").await;
            assert_eq!(r.body.len(), 8 << 20, "{proto}");
            assert!(r.body.iter().all(|b| *b == b'x'), "{proto}");

            // 8 MiB up as a streamed (chunked / DATA-framed) body of many pieces.
            let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..128)
                .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![7u8; 64 * 1024]))))
                .collect();
            let streamed = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
                futures_util::stream::iter(chunks),
            ));
            let r = c
                .send(
                    Request::post("https://app.test/upload")
                        .body(streamed)
                        .expect("req"),
                )
                .await
                .expect("upload");
            assert_eq!(
                (r.status, r.text().as_str()),
                (StatusCode::OK, "8388608\n"),
                "{proto}"
            );
        }
        // Both directions are counted per tunnel: two 8 MiB bodies each way plus the small ones.
        let m = s.metrics().await;
        let down = metric(
            &m,
            "netwall_tunnel_body_bytes_total{tunnel=\"app\",direction=\"to_client\"}",
        );
        let up = metric(
            &m,
            "netwall_tunnel_body_bytes_total{tunnel=\"app\",direction=\"to_service\"}",
        );
        assert!(
            (16.0 * 1048576.0..17.0 * 1048576.0).contains(&down),
            "to_client {down}\n{m}"
        );
        assert!(
            (16.0 * 1048576.0..17.0 * 1048576.0).contains(&up),
            "to_service {up}\n{m}"
        );
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn forwarded_headers_are_set_by_the_edge_and_hop_by_hop_headers_dropped() {
        let s = one_service().await;
        let req = Request::get("https://app.test/headers")
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("connection", "x-secret")
            .header("x-secret", "hop")
            .header("keep-alive", "timeout=5")
            .header("x-custom", "kept")
            .body(body(Bytes::new()))
            .expect("req");
        let r = s.client(false).send(req).await.expect("request");
        let text = r.text();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("x-forwarded-for: 127.0.0.1"), "{text}");
        assert!(has("x-forwarded-proto: https"), "{text}");
        assert!(has("x-forwarded-host: app.test"), "{text}");
        assert!(
            has("forwarded: for=127.0.0.1;host=\"app.test\";proto=https"),
            "{text}"
        );
        assert!(has("host: app.test"), "{text}");
        assert!(has("x-custom: kept"), "{text}");
        for gone in ["6.6.6.6", "x-secret", "keep-alive", "x-real-ip"] {
            assert!(!text.contains(gone), "{gone} leaked to the service: {text}");
        }
    }
}

netwall_tests::over_every_transport! {
    /// A request without a body reaches the service without one, whatever its method: no
    /// `Transfer-Encoding: chunked` the client never sent (some services refuse it on a
    /// `DELETE`); one with a body keeps its framing.
    #[tokio::test]
    async fn a_request_without_a_body_reaches_the_service_without_one() {
        let s = one_service().await;
        for h2 in [false, true] {
            let c = s.client(h2);
            for method in [Method::DELETE, Method::POST, Method::from_bytes(b"PURGE").expect("method")] {
                // Several times: the answer must not depend on how the tunnel's reads fall.
                for _ in 0..20 {
                    let req = Request::builder()
                        .method(method.clone())
                        .uri("https://app.test/headers")
                        .body(body(Bytes::new()))
                        .expect("req");
                    let r = c.send(req).await.expect("request");
                    let text = r.text();
                    assert_eq!(r.status, StatusCode::OK, "{method} h2={h2}: {text}");
                    // (An HTTP/2 client may say `content-length: 0` itself; that passes on.)
                    let framed = |l: &&str| {
                        l.starts_with("transfer-encoding")
                            || (l.starts_with("content-length") && *l != "content-length: 0")
                    };
                    assert!(
                        !text.lines().any(|l| framed(&l)),
                        "{method} h2={h2}: the service read a body's framing: {text}"
                    );
                }
            }
            let req = Request::delete("https://app.test/headers")
                .body(body(Bytes::from_static(b"abc")))
                .expect("req");
            let text = c.send(req).await.expect("request").text();
            let framed = text.lines().any(|l| l == "content-length: 3" || l == "transfer-encoding: chunked");
            assert!(framed, "h2={h2}: a body went without its framing: {text}");
        }
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn routes_by_host_wildcard_and_longest_prefix() {
        let (root, api, v2, wild) = (
            start_sample("root").await,
            start_sample("api").await,
            start_sample("v2").await,
            start_sample("wild").await,
        );
        let routes = [
            route("app.test", "/", "root", ""),
            route("app.test", "/api", "api", ""),
            route("app.test", "/api/v2", "v2", ""),
            route("*.app.test", "/", "wild", ""),
        ]
        .concat();
        let services = format!(
            "root = \"http://{root}\"\napi = \"http://{api}\"\nv2 = \"http://{v2}\"\nwild = \"http://{wild}\""
        );
        let s = Setup::new(&routes, Some(&services)).await;
        let c = s.client(true);
        for (url, want) in [
            ("https://app.test/", "root"),
            ("https://app.test/apix", "root"),
            ("https://app.test/api", "api"),
            ("https://app.test/api/users/1", "api"),
            ("https://app.test/api/v2/x", "v2"),
            ("https://tenant.app.test/", "wild"),
            ("https://a.b.app.test/api", "wild"),
        ] {
            let r = c.get(url).await;
            assert_eq!(r.status, StatusCode::OK, "{url}");
            assert!(
                r.text().starts_with(&format!("hello from {want} ")),
                "{url} went to {:?}",
                r.text()
            );
        }
        let r = c.get("https://localhost/").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (
                StatusCode::NOT_FOUND,
                "404 not found: no route for this host\n"
            )
        );
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn every_error_status_has_its_body_and_counter() {
        let sample = start_sample("web").await;
        // A port that refuses, held for the whole test.
        let refusing = refusing_port();
        let refused = refusing.addr();
        let routes = [
            route("app.test", "/", "web", "max_body_bytes = 1000"),
            route("app.test", "/slow", "web", "timeout = \"300ms\""),
            route("app.test", "/refused", "down", ""),
            route("app.test", "/missing", "nosuch", ""),
        ]
        .concat();
        let s = Setup::new(
            &routes,
            Some(&format!(
                "web = \"http://{sample}\"\ndown = \"http://{refused}\""
            )),
        )
        .await;
        let c = s.client(false);

        let cases: Vec<(Request<ClientBody>, StatusCode, &str)> = vec![
            (
                Request::get("https://app.test/")
                    .header("host", "nope.example")
                    .body(body(Bytes::new()))
                    .expect("r"),
                StatusCode::NOT_FOUND,
                "404 not found: no route for this host\n",
            ),
            (
                Request::get("https://app.test/refused")
                    .body(body(Bytes::new()))
                    .expect("r"),
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: service unavailable\n",
            ),
            (
                Request::get("https://app.test/missing")
                    .body(body(Bytes::new()))
                    .expect("r"),
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: service not offered by the connector\n",
            ),
            (
                Request::get("https://app.test/slow?ms=3000")
                    .body(body(Bytes::new()))
                    .expect("r"),
                StatusCode::GATEWAY_TIMEOUT,
                "504 gateway timeout: service did not answer in time\n",
            ),
            (
                Request::post("https://app.test/echo")
                    .body(body(vec![0u8; 1001]))
                    .expect("r"),
                StatusCode::PAYLOAD_TOO_LARGE,
                "413 payload too large\n",
            ),
        ];
        for (req, status, text) in cases {
            let what = format!("{} {}", req.method(), req.uri());
            let started = std::time::Instant::now();
            let r = c.send(req).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!((r.status, r.text().as_str()), (status, text), "{what}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what} took {:?}",
                started.elapsed()
            );
        }

        // Over the limit without a Content-Length: detected while streaming.
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..8)
            .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![1u8; 400]))))
            .collect();
        let streamed = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
            futures_util::stream::iter(chunks),
        ));
        let r = c
            .send(
                Request::post("https://app.test/upload")
                    .body(streamed)
                    .expect("r"),
            )
            .await
            .expect("streamed");
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());

        // A tunnel with no connector.
        let mut s = s;
        let connector = s._connector.take().expect("connector");
        assert!(connector.shutdown().await, "connector drained in time");
        wait_tunnel(&s.gateway, 0).await;
        let r = s.client(true).get("https://app.test/").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::BAD_GATEWAY, "502 bad gateway: tunnel offline\n")
        );

        let m = s.metrics().await;
        for (reason, n) in [
            ("unknown_host", 1.0),
            ("service_unavailable", 1.0),
            ("unknown_service", 1.0),
            ("service_timeout", 1.0),
            ("body_too_large", 2.0),
            ("tunnel_offline", 1.0),
        ] {
            assert_eq!(
                metric(
                    &m,
                    &format!("netwall_rejections_total{{reason=\"{reason}\"}}")
                ),
                n,
                "{reason}\n{m}"
            );
        }
    }
}

async fn read_all(mut s: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_headers_get_431_and_are_counted() {
    let s = one_service().await;
    let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
    let big = "a".repeat(70 * 1024);
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: app.test\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let answer = read_all(tls, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"header_too_large\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn slow_header_client_is_cut_off() {
    init_logs();
    let pki = Pki::new();
    let toml = pki
        .gateway_toml("")
        .replace("[https]\n", "[https]\nheader_read_timeout = \"400ms\"\n");
    let gateway = start_gateway(&toml).await;
    let mut tls = raw_tls(gateway.https_addr, &pki.ca_der, "app.test").await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: app")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("connection must be closed, not left hanging");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        started.elapsed()
    );
    // hyper answers 408 or just closes; either way nothing is proxied and the socket ends.
    if let Ok(n) = n {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
}

#[tokio::test]
async fn plain_http_redirects_with_308() {
    let s = one_service().await;
    let http = s.gateway.http_addr.expect("http listener");
    let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    tcp.write_all(b"GET /path?q=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_all(tcp, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
        "{answer}"
    );
    let port = s.gateway.https_addr.port();
    assert!(
        answer.contains(&format!("location: https://app.test:{port}/path?q=1\r\n")),
        "{answer}"
    );
    // The host as routes read it; a request target that is no path moves nowhere.
    for (request, want) in [
        (
            "GET /x HTTP/1.1\r\nHost: App.Test.\r\nConnection: close\r\n\r\n",
            format!("location: https://app.test:{port}/x\r\n"),
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\n".to_owned(),
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let answer = read_all(tcp, Duration::from_secs(5)).await;
        assert!(answer.contains(&want), "{request:?}: {answer}");
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn upgrade_is_relayed_only_after_a_real_101() {
        // Only upgrades a route names are relayed raw.
        let sample = start_sample("web").await;
        let s = Setup::new(
            &route(
                "app.test",
                "/",
                "web",
                "upgrades = [\"websocket\", \"rawecho\"]",
            ),
            Some(&format!("web = \"http://{sample}\"")),
        )
        .await;
        let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
        tls.write_all(
            b"GET /raw HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: rawecho\r\n\r\n",
        )
        .await
        .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).await.expect("read 101");
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("upgrade: rawecho"),
            "{head}"
        );
        for msg in [&b"first message"[..], &vec![9u8; 100_000]] {
            tls.write_all(msg).await.expect("write through upgrade");
            let mut got = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut got))
                .await
                .expect("echo in time")
                .expect("echo");
            assert_eq!(&got, msg);
        }

        // A service that answers 200 to an upgrade request: no bytes are passed through afterwards.
        let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let answer = read_all(tls, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
}

#[tokio::test]
async fn request_smuggling_forms_are_refused() {
    let s = one_service().await;
    let cases: [&[u8]; 3] = [
        b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 6\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    ];
    for raw in cases {
        let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
        tls.write_all(raw).await.expect("write");
        let answer = read_all(tls, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} -> {answer}",
            String::from_utf8_lossy(raw)
        );
    }
    // Both framings: Transfer-Encoding wins and the connection is not reused, so the bytes
    // after the chunked body can never be read as a second request.
    let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
    tls.write_all(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n").await.expect("write");
    let answer = read_all(tls, Duration::from_secs(5)).await;
    assert!(
        !answer.contains("/smuggled"),
        "a smuggled request reached the service: {answer}"
    );
    assert!(answer.matches("HTTP/1.1 ").count() <= 1, "{answer}");
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn one_thousand_concurrent_requests_through_one_tunnel() {
        const N: usize = 1000;
        init_logs();
        // A service that answers nobody until all N requests are inside it at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let barrier = barrier.clone();
                        async move {
                            barrier.wait().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let s = Setup::new(
            &route("app.test", "/", "web", ""),
            Some(&format!("web = \"http://{addr}\"")),
        )
        .await;
        // Four HTTP/2 connections of 250 streams each (under the 256-stream default).
        let clients: Vec<HttpsClient> = (0..4).map(|_| s.client(true)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let c = clients[i % clients.len()].clone();
            tasks.spawn(async move { c.get(&format!("https://app.test/{i}")).await });
        }
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            let mut ok = 0;
            while let Some(r) = tasks.join_next().await {
                let r = r.expect("task");
                assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
                ok += 1;
            }
            ok
        })
        .await
        .expect("all 1000 requests were in flight together and completed");
        assert_eq!(all, N);
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn a_burst_of_abandoned_requests_leaves_the_tunnel_to_everyone_else() {
        const N: usize = 300;
        let s = one_service().await;
        let m = s.metrics().await;
        let accepted = "netwall_tunnel_handshakes_total{result=\"accepted\"}";
        assert_eq!(metric(&m, accepted), 1.0, "{m}");
        let in_flight = "netwall_tunnel_requests_in_flight{tunnel=\"app\"}";
        // N requests the service holds, then every client gives up at once.
        let clients: Vec<HttpsClient> = (0..3).map(|_| s.client(true)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let c = clients[i % clients.len()].clone();
            tasks.spawn(async move { c.get("https://app.test/slow?ms=60000").await });
        }
        wait_until(Duration::from_secs(20), "every request inside the tunnel", || async {
            metric(&s.metrics().await, in_flight) == N as f64
        })
        .await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        drop(clients);
        // Their streams are released, the tunnel is the one it was, and it serves others.
        wait_until(Duration::from_secs(10), "the abandoned requests released", || async {
            metric(&s.metrics().await, in_flight) == 0.0
        })
        .await;
        let r = s.client(false).post("https://app.test/echo", "after").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "after"));
        let m = s.metrics().await;
        assert_eq!(metric(&m, accepted), 1.0, "the tunnel was replaced\n{m}");
    }
}

#[tokio::test]
async fn certificate_is_chosen_by_sni() {
    init_logs();
    let pki = Pki::new();
    let second = format!(
        "[[https.certificate]]\ncert = \"{}\"\nkey = \"{}\"\nhosts = [\"other.test\"]\n",
        pki.other_cert.display(),
        pki.other_key.display()
    );
    // Insert the second certificate right after the first one.
    let toml = pki
        .gateway_toml("")
        .replacen("[http]\n", &format!("{second}[http]\n"), 1);
    let gateway = start_gateway(&toml).await;
    let leaf_of = |path: &std::path::Path| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(path).expect("pem")
    };
    let (main, other) = (leaf_of(&pki.https_cert), leaf_of(&pki.other_cert));
    for (sni, want) in [
        ("app.test", &main),
        ("x.app.test", &main),
        ("other.test", &other),
        ("unknown.example", &main),
    ] {
        let tcp = tokio::net::TcpStream::connect(gateway.https_addr)
            .await
            .expect("connect");
        // Verification would refuse `unknown.example`; this test looks only at what is served.
        let mut cfg = (*client_tls(&pki.ca_der, &[b"http/1.1"])).clone();
        cfg.dangerous()
            .set_certificate_verifier(std::sync::Arc::new(AcceptAny(
                (*netwall_tunnel::crypto::provider()).clone(),
            )));
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("handshake");
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .expect("a certificate");
        assert_eq!(&served, want, "SNI {sni}");
    }
}

/// Accepts any certificate (valid signatures still required): lets a test see which
/// certificate a server chose.
#[derive(Debug)]
struct AcceptAny(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn unix_socket_services_are_reached_and_connections_are_pooled() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind unix socket");
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req| {
                        netwall_tests::sample::handle(req, "unix".into())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let s = Setup::new(
            &route("app.test", "/", "web", ""),
            Some(&format!("web = \"unix:{}\"", path.display())),
        )
        .await;
        let c = s.client(false);
        for i in 0..50 {
            let r = c.get(&format!("https://app.test/n/{i}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(
                r.text()
                    .starts_with(&format!("hello from unix via netwall: GET /n/{i} ")),
                "{}",
                r.text()
            );
        }
        // Sequential requests reuse one keep-alive connection to the service.
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the connector's client did not pool connections"
        );
    }
}

/// A service that answers one request per connection and closes it a little later, while it
/// idles in the connector's pool, without saying so (no `Connection: close`): a connection
/// closed while idle is never used for the next request, so none of them fails.
#[tokio::test]
async fn a_connection_the_service_closed_while_idle_is_not_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    init_logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let close_now = std::sync::Arc::new(tokio::sync::Notify::new());
    let closed = std::sync::Arc::new(tokio::sync::Notify::new());
    let (counter, asked, done) = (accepted.clone(), close_now.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (asked, done) = (asked.clone(), done.clone());
            tokio::spawn(async move {
                if read_head(&mut tcp).await.is_none() {
                    return;
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Closed only once the answer is certainly in and the connection pooled:
                // when the next request would take it.
                asked.notified().await;
                let _ = tcp.shutdown().await;
                drop(tcp);
                done.notify_one();
            });
        }
    });
    let s = Setup::new(
        &route("app.test", "/", "web", ""),
        Some(&format!("web = \"http://{addr}\"")),
    )
    .await;
    let c = s.client(false);
    for i in 0..20 {
        if i > 0 {
            // The service closes the idle connection, and the test waits until it has.
            close_now.notify_one();
            tokio::time::timeout(Duration::from_secs(5), closed.notified())
                .await
                .expect("the service closed its connection");
        }
        let r = c.get(&format!("https://app.test/once/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        20,
        "one connection per request"
    );
}

#[tokio::test]
async fn proxy_protocol_v2_gives_the_client_address_and_is_required() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("web").await;
    let toml = pki
        .gateway_toml(&route("app.test", "/", "web", ""))
        .replacen("[https]\n", "[https]\nproxy_protocol = true\n", 1);
    let gateway = start_gateway(&toml).await;
    let _c = start_connector(
        &pki.connector_toml(
            &[gateway.tunnel_addr],
            &format!("web = \"http://{sample}\""),
            "",
        ),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;

    let source: SocketAddr = "198.51.100.77:40000".parse().expect("addr");
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, gateway.https_addr),
    )
    .build()
    .expect("proxy header");
    let mut tcp = tokio::net::TcpStream::connect(gateway.https_addr)
        .await
        .expect("connect");
    tcp.write_all(&header).await.expect("write header");
    let name = rustls::pki_types::ServerName::try_from("app.test").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(client_tls(&pki.ca_der, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .expect("TLS after PROXY header");
    tls.write_all(b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_all(tls, Duration::from_secs(5)).await;
    assert!(
        answer.contains("x-forwarded-for: 198.51.100.77\n"),
        "{answer}"
    );

    // Without the header the connection is dropped and counted.
    let mut tcp = tokio::net::TcpStream::connect(gateway.https_addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "a connection without a PROXY header was served");
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"proxy_protocol\"}"),
        1.0,
        "{m}"
    );
}

/// The service reads the host the edge routed on, however the client spelled it: a route
/// for `app.test` matched `App.Test.`, so `App.Test.` must not reach a service that serves
/// `app.test` and something else for any other spelling.
#[tokio::test]
async fn the_service_reads_the_host_the_edge_routed_on() {
    let sample = start_sample("web").await;
    let s = Setup::new(
        &route("app.test", "/", "web", ""),
        Some(&format!("web = \"http://{sample}\"")),
    )
    .await;
    let c = s.client(false);
    for (spelled, forwarded) in [
        ("App.Test.", "app.test"),
        ("APP.TEST.:8443", "app.test:8443"),
        ("app.test:", "app.test"),
    ] {
        let req = Request::get("https://app.test/headers")
            .header("host", spelled)
            .body(body(Bytes::new()))
            .expect("req");
        let r = c.send(req).await.expect("request");
        let text = r.text();
        assert_eq!(r.status, StatusCode::OK, "{spelled}: {text}");
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has(&format!("host: {forwarded}")), "{spelled}: {text}");
        assert!(
            has(&format!("x-forwarded-host: {forwarded}")),
            "{spelled}: {text}"
        );
        assert!(
            has(&format!(
                "forwarded: for=127.0.0.1;host=\"{forwarded}\";proto=https"
            )),
            "{spelled}: {text}"
        );
    }
    // A port that is not one is refused, not forwarded for the service to read its own way.
    let req = Request::get("https://app.test/headers")
        .header("host", "app.test:99999")
        .body(body(Bytes::new()))
        .expect("req");
    let r = c.send(req).await.expect("request");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}

#[tokio::test]
async fn trusted_proxy_hops_pick_the_client_from_x_forwarded_for() {
    let sample = start_sample("web").await;
    let routes = [
        route("app.test", "/", "web", "trusted_proxy_hops = 1"),
        route("app.test", "/direct", "web", ""),
    ]
    .concat();
    let s = Setup::new(&routes, Some(&format!("web = \"http://{sample}\""))).await;
    let c = s.client(false);
    let send = |path: &'static str, xff: &'static str| {
        let c = c.clone();
        async move {
            let req = Request::get(format!("https://app.test{path}"))
                .header("x-forwarded-for", xff)
                .body(body(Bytes::new()))
                .expect("req");
            c.send(req).await.expect("request").text()
        }
    };
    // One trusted proxy: it appended the address it saw; what the client claimed before is ignored.
    let text = send("/headers", "6.6.6.6, 192.0.2.10").await;
    assert!(
        text.lines().any(|l| l == "x-forwarded-for: 192.0.2.10"),
        "{text}"
    );
    // Untrusted route: the socket peer, whatever the header says.
    let text = send("/direct", "6.6.6.6, 192.0.2.10").await;
    assert!(
        text.ends_with("(host app.test, client 127.0.0.1)\n"),
        "{text}"
    );
}

/// A request head read from `tcp` (and whatever followed it in the same reads), or `None`
/// if the connection ended first.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// A service that answers each request with the canned bytes for its path (the default for
/// any other path), one request per connection.
async fn canned_service(answers: &'static [(&'static str, &'static [u8])]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut tcp).await else {
                    return;
                };
                let line = String::from_utf8_lossy(&head);
                let path = line.split(' ').nth(1).unwrap_or_default();
                let answer = answers.iter().find(|(p, _)| *p == path).map_or(
                    &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
                    |(_, a)| a,
                );
                let _ = tcp.write_all(answer).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// What the client reads of the service's answer is framed by what the body really is: a
/// `Content-Length` beside `Transfer-Encoding`, or on a 204, is removed (a client trusting
/// it would read the next response as this one's body); a status outside 100-599 is a 502;
/// trailers lose the fields that cannot be trailers (`content-length`, `set-cookie`, …).
#[tokio::test]
async fn a_service_response_reaches_the_client_framed_by_its_body() {
    static ANSWERS: &[(&str, &[u8])] = &[
        (
            "/both-framings",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "/no-content",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\n",
        ),
        ("/status-600", b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok"),
        ("/status-099", b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok"),
        (
            "/trailers",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\ncontent-length: 99\r\nset-cookie: a=b\r\nconnection: close\r\n\r\n",
        ),
    ];
    init_logs();
    let service = canned_service(ANSWERS).await;
    let s = Setup::new(
        &route("app.test", "/", "web", ""),
        Some(&format!("web = \"http://{service}\"")),
    )
    .await;
    for h2 in [false, true] {
        let c = s.client(h2);
        let r = c.get("https://app.test/both-framings").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "abc"));
        assert_eq!(r.headers.get("content-length"), None, "h2 {h2}");
        let r = c.get("https://app.test/no-content").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(r.headers.get("content-length"), None, "h2 {h2}");
        for path in ["/status-600", "/status-099"] {
            let r = c.get(&format!("https://app.test{path}")).await;
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path} h2 {h2}");
        }
        // The client is still fine after all of it.
        let r = c.get("https://app.test/other").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    }
    // Trailers reach an HTTP/2 client (HTTP/1.1 needs a declared `Trailer`), less the fields
    // that cannot be trailers.
    let resp = s
        .client(true)
        .send_streaming(
            Request::get("https://app.test/trailers")
                .header("te", "trailers")
                .body(body(Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body and trailers");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(collected.to_bytes(), "abc");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"42"[..]),
        "{trailers:?}"
    );
    for name in ["content-length", "set-cookie", "connection"] {
        assert!(!trailers.contains_key(name), "{name} in {trailers:?}");
    }
}

/// One client network's requests in flight are capped (`[https] max_requests_per_ip`): a
/// client holding answers it does not read takes its own budget, not the tunnel's streams or
/// the service's connections from everyone else. Clients are told apart by a trusted proxy's
/// `X-Forwarded-For` here (every test client is 127.0.0.1).
#[tokio::test]
async fn one_client_network_cannot_hold_more_requests_than_its_share() {
    init_logs();
    // A service that holds every request until released.
    let (release, released) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let service = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let released = released.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let mut released = released.clone();
                    async move {
                        let _ = released.wait_for(|r| *r).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let pki = Pki::new();
    let toml = pki
        .gateway_toml(&route("app.test", "/", "web", "trusted_proxy_hops = 1"))
        .replacen("[https]\n", "[https]\nmax_requests_per_ip = 4\n", 1);
    let gateway = start_gateway(&toml).await;
    let _c = start_connector(
        &pki.connector_toml_for(&gateway, &format!("web = \"http://{service}\""), ""),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    let client = HttpsClient::new(gateway.https_addr, &pki.ca_der, true);
    let get = |from: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::get("https://app.test/held")
                .header("x-forwarded-for", from)
                .body(body(Bytes::new()))
                .expect("req");
            client.send(req).await.expect("answer")
        }
    };
    let held: Vec<_> = (0..4).map(|_| tokio::spawn(get("203.0.113.1"))).collect();
    let admin = gateway.admin_addr.expect("admin");
    let in_flight = |n: f64| {
        wait_until(
            Duration::from_secs(10),
            "requests in flight",
            move || async move {
                metric(
                    &metrics_text(admin).await,
                    "netwall_tunnel_requests_in_flight{tunnel=\"app\"}",
                ) == n
            },
        )
    };
    in_flight(4.0).await;
    let refused = get("203.0.113.1").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    // Another client network is not affected.
    let other = tokio::spawn(get("203.0.113.2"));
    in_flight(5.0).await;
    release.send(true).expect("release");
    for h in held {
        assert_eq!(h.await.expect("task").status, StatusCode::OK);
    }
    assert_eq!(other.await.expect("task").status, StatusCode::OK);
    // Answers read, slots free.
    assert_eq!(get("203.0.113.1").await.status, StatusCode::OK);
    let m = metrics_text(admin).await;
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"per_ip_requests\"}"),
        1.0,
        "{m}"
    );
}

netwall_tests::over_every_transport! {
    /// Clients that read nothing of large answers pin their own streams' windows, never the
    /// tunnel connection's: twenty of them (more than a 16 MiB connection window holds at a
    /// stream window each) leave a 64 MB download through the same tunnel to complete, and
    /// the tunnel up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_readers_do_not_stop_the_tunnel_for_others() {
        const STALLED: usize = 20;
        let s = one_service().await;
        let stalled_client = s.client(false);
        let mut stalled = Vec::new();
        for _ in 0..STALLED {
            let resp = stalled_client
                .send_streaming(
                    Request::get("https://app.test/bytes?n=200000000")
                        .body(body(Bytes::new()))
                        .expect("req"),
                )
                .await
                .expect("head");
            assert_eq!(resp.status(), StatusCode::OK);
            // Held, never read.
            stalled.push(resp);
        }
        let download = tokio::time::timeout(
            Duration::from_secs(30),
            s.client(false).get("https://app.test/bytes?n=67108864"),
        )
        .await
        .expect("a download through the same tunnel completed in time");
        assert_eq!(download.status, StatusCode::OK);
        assert_eq!(download.body.len(), 67_108_864);
        let r = s.client(false).get("https://app.test/").await;
        assert_eq!(r.status, StatusCode::OK);
        drop(stalled);
    }
}
