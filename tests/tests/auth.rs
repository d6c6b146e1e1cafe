//! JWT at the edge, over real TLS and QUIC: refusals before the tunnel is touched, token
//! sources, identity headers the client cannot forge, expiry, revocation, per-user limits,
//! key types, and a route that refuses to start when its keys are missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::SinkExt;
use http::{Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use netwall_tests::harness::*;
use serde_json::json;
use yawc::{Frame, OpCode, Options};

const SECRET: &str = "an-hs256-secret-that-is-long-enough-for-tests";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn claims(sub: &str, ttl: i64) -> serde_json::Value {
    json!({"sub": sub, "iss": "https://id.test", "aud": "app", "iat": now(), "exp": (now() as i64 + ttl), "role": "admin"})
}

struct Setup {
    pki: Pki,
    gateway: netwall_gateway::RunningGateway,
    name: String,
    _connector: netwall_connector::RunningConnector,
}

async fn setup(name: &str, auth_extra: &str, ws_extra: &str) -> Setup {
    init_logs();
    let pki = Pki::new();
    std::fs::write(pki.dir.path().join("hs256.secret"), SECRET).expect("write secret");
    let sample = start_sample(name).await;
    let route = format!(
        "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n\
         [route.auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{}\"\nissuer = \"https://id.test\"\naudience = \"app\"\n\
         token_sources = [\"header\", \"query:token\", \"cookie:session\"]\nforward_claims = [\"role\"]\n{auth_extra}\n\
         [route.websocket]\n{ws_extra}\n",
        pki.dir.path().join("hs256.secret").display()
    );
    let (gateway, connector) =
        start_stack(&pki, &route, &format!("web = \"http://{sample}\"")).await;
    Setup {
        pki,
        gateway,
        name: name.to_owned(),
        _connector: connector,
    }
}

impl Setup {
    async fn ws(&self, url_suffix: &str, headers: &[(&str, &str)]) -> Result<Wss, u16> {
        wss(
            self.gateway.https_addr,
            &self.pki.ca_der,
            &format!("wss://app.test/ws{url_suffix}"),
            headers,
            Options::default(),
        )
        .await
    }

    fn streams_opened(&self) -> u64 {
        self.gateway
            .registry
            .get("app")
            .map(|t| t.live().iter().map(|c| c.streams_opened()).sum())
            .unwrap_or(0)
    }

    /// No request reached the tunnel, and `refused` were counted as auth rejections.
    async fn assert_refused_before_the_tunnel(&self, refused: f64) {
        assert_eq!(
            self.streams_opened(),
            0,
            "a refused request reached the tunnel"
        );
        let m = metrics_text(self.gateway.admin_addr.expect("admin")).await;
        assert_eq!(
            metric(&m, "netwall_rejections_total{reason=\"auth\"}"),
            refused,
            "{m}"
        );
    }

    async fn admin_post(&self, path: &str) -> String {
        let admin = self.gateway.admin_addr.expect("admin");
        let (status, body) = admin_request(admin, http::Method::POST, path).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

async fn whoami(ws: &mut Wss) -> String {
    ws.send(Frame::text("whoami")).await.expect("send");
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), ws.next_frame())
            .await
            .expect("answer")
            .expect("frame");
        if f.opcode() == OpCode::Text {
            return String::from_utf8_lossy(f.payload()).into_owned();
        }
    }
}

#[tokio::test]
async fn no_or_bad_token_is_401_before_the_tunnel_is_touched() {
    let s = setup("auth-refuse", "", "").await;
    let other_secret = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", 60),
        &EncodingKey::from_secret(b"some-other-secret-of-sufficient-length!!"),
    )
    .expect("encode");
    let expired = hs256(claims("alice", -120));
    let wrong_aud =
        hs256(json!({"sub": "alice", "iss": "https://id.test", "aud": "other", "exp": now() + 60}));
    let not_yet = hs256(
        json!({"sub": "alice", "iss": "https://id.test", "aud": "app", "exp": now() + 600, "nbf": now() + 300}),
    );
    let no_sub = hs256(json!({"iss": "https://id.test", "aud": "app", "exp": now() + 60}));
    let cases = [
        None,
        Some("garbage".to_owned()),
        Some(other_secret),
        Some(expired),
        Some(wrong_aud),
        Some(not_yet),
        Some(no_sub),
    ];
    for token in &cases {
        let header = token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        assert_eq!(s.ws("", &headers).await.err(), Some(401), "token {token:?}");
    }
    // Plain HTTP on the same route is refused the same way.
    let http = HttpsClient::new(s.gateway.https_addr, &s.pki.ca_der, false)
        .get("https://app.test/")
        .await;
    assert_eq!(http.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        http.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    s.assert_refused_before_the_tunnel(cases.len() as f64 + 1.0)
        .await;
}

#[tokio::test]
async fn a_valid_token_from_any_source_is_accepted_and_identity_cannot_be_forged() {
    let s = setup(
        "auth-ok",
        "",
        "max_connections_per_user = 5\nconnect_attempts_per_user_per_minute = 0",
    )
    .await;
    let token = hs256(claims("alice", 300));
    let bearer = format!("Bearer {token}");
    let cookie = format!("theme=dark; session={token}");
    let mut by_header = s
        .ws(
            "",
            &[("authorization", &bearer), ("x-netwall-sub", "mallory")],
        )
        .await
        .expect("header token");
    assert_eq!(
        whoami(&mut by_header).await,
        "auth-ok: x-netwall-claim-role=admin;x-netwall-sub=alice"
    );
    let mut by_query = s
        .ws(&format!("?token={token}"), &[])
        .await
        .expect("query token");
    assert_eq!(
        whoami(&mut by_query).await,
        "auth-ok: x-netwall-claim-role=admin;x-netwall-sub=alice"
    );
    let mut by_cookie = s
        .ws("", &[("cookie", &cookie)])
        .await
        .expect("cookie token");
    assert_eq!(
        whoami(&mut by_cookie).await,
        "auth-ok: x-netwall-claim-role=admin;x-netwall-sub=alice"
    );

    // HTTP with a token: the service sees the verified subject, never the forged one.
    let req = Request::get("https://app.test/headers")
        .header("authorization", &bearer)
        .header("x-netwall-sub", "mallory")
        .body(body(bytes::Bytes::new()))
        .expect("req");
    let r = HttpsClient::new(s.gateway.https_addr, &s.pki.ca_der, true)
        .send(req)
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().lines().any(|l| l == "x-netwall-sub: alice"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("mallory"), "{}", r.text());
}

/// The edge verifies the token the service will read, or none: two different tokens in one
/// source (services pick the first or the last, by framework) and a subject the service would
/// read differently are refused before the tunnel; the scheme's case does not matter.
#[tokio::test]
async fn ambiguous_tokens_and_unforwardable_subjects_are_refused() {
    let s = setup("auth-ambiguous", "", "").await;
    let alice = hs256(claims("alice", 300));
    let bob = hs256(claims("bob", 300));
    let padded = hs256(claims(" alice", 300));
    let empty = hs256(claims("", 300));
    let client = HttpsClient::new(s.gateway.https_addr, &s.pki.ca_der, false);
    let send = |path: String, fields: Vec<(&'static str, String)>| {
        let client = &client;
        async move {
            let mut req = Request::get(format!("https://app.test{path}"));
            for (name, value) in fields {
                req = req.header(name, value);
            }
            let r = client
                .send(req.body(body(bytes::Bytes::new())).expect("req"))
                .await
                .expect("request");
            (r.status, r.text())
        }
    };
    let refused = [
        (
            "/headers".to_owned(),
            vec![
                ("authorization", format!("Bearer {alice}")),
                ("authorization", format!("Bearer {bob}")),
            ],
        ),
        (format!("/headers?token={alice}&token={bob}"), vec![]),
        (
            "/headers".to_owned(),
            vec![("cookie", format!("session={alice}; session ={bob}"))],
        ),
        (
            "/headers".to_owned(),
            vec![("authorization", format!("Bearer {padded}"))],
        ),
        (
            "/headers".to_owned(),
            vec![("authorization", format!("Bearer {empty}"))],
        ),
    ];
    for (path, fields) in &refused {
        let (status, text) = send(path.clone(), fields.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} {fields:?}: {text}"
        );
    }
    s.assert_refused_before_the_tunnel(refused.len() as f64)
        .await;
    // The same token twice is one token; the scheme's case is the client's choice.
    let (status, text) = send(
        format!("/headers?token={alice}&token={alice}"),
        vec![("authorization", format!("bearer {alice}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.lines().any(|l| l == "x-netwall-sub: alice"), "{text}");
}

#[tokio::test]
async fn an_open_connection_is_closed_when_its_token_expires() {
    let s = setup("auth-expiry", "leeway = \"0s\"", "").await;
    let token = hs256(claims("bob", 2));
    let mut ws = s
        .ws(&format!("?token={token}"), &[])
        .await
        .expect("accepted");
    assert_eq!(
        whoami(&mut ws).await,
        "auth-expiry: x-netwall-claim-role=admin;x-netwall-sub=bob"
    );
    let started = std::time::Instant::now();
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(10)).await,
        Some(4001)
    );
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "closed {:?} after a token with 2 s left",
        started.elapsed()
    );
}

#[tokio::test]
async fn revocation_closes_every_connection_of_the_user_within_a_second() {
    let s = setup(
        "auth-revoke",
        "",
        "max_connections_per_user = 3\nconnect_attempts_per_user_per_minute = 0",
    )
    .await;
    let token = hs256(claims("carol", 300));
    let bearer = format!("Bearer {token}");
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(
            s.ws("", &[("authorization", &bearer)])
                .await
                .expect("accepted"),
        );
    }
    let other = hs256(claims("dave", 300));
    let mut unrelated = s
        .ws(&format!("?token={other}"), &[])
        .await
        .expect("accepted");
    let answer = s.admin_post("/revoke?sub=carol").await;
    assert_eq!(
        answer.trim(),
        r#"{"revoked":"sub carol","connections_closed":3,"shared":true}"#
    );
    for ws in &mut sockets {
        assert_eq!(close_code(ws, Duration::from_secs(1)).await, Some(4003));
    }
    // The revoked token is refused from now on; other users are untouched.
    assert_eq!(
        s.ws("", &[("authorization", &bearer)]).await.err(),
        Some(401)
    );
    assert_eq!(
        whoami(&mut unrelated).await,
        "auth-revoke: x-netwall-claim-role=admin;x-netwall-sub=dave"
    );
    // Revocation by token id.
    let with_jti = hs256(
        json!({"sub": "erin", "iss": "https://id.test", "aud": "app", "exp": now() + 300, "jti": "token-42"}),
    );
    let mut ws = s
        .ws(&format!("?token={with_jti}"), &[])
        .await
        .expect("accepted");
    assert_eq!(
        s.admin_post("/revoke?jti=token-42").await.trim(),
        r#"{"revoked":"jti token-42","connections_closed":1,"shared":true}"#
    );
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(1)).await,
        Some(4003)
    );
}

#[tokio::test]
async fn a_second_connection_of_the_same_user_replaces_the_first() {
    let s = setup("auth-replace", "", "").await;
    let token = hs256(claims("frank", 300));
    let bearer = format!("Bearer {token}");
    let mut first = s
        .ws("", &[("authorization", &bearer)])
        .await
        .expect("accepted");
    let mut second = s
        .ws("", &[("authorization", &bearer)])
        .await
        .expect("accepted");
    assert_eq!(
        close_code(&mut first, Duration::from_secs(5)).await,
        Some(4002)
    );
    assert_eq!(
        whoami(&mut second).await,
        "auth-replace: x-netwall-claim-role=admin;x-netwall-sub=frank"
    );
    let admin = s.gateway.admin_addr.expect("admin");
    wait_until(
        Duration::from_secs(5),
        "the replacement to be counted",
        || async move {
            metric(
                &metrics_text(admin).await,
                "netwall_rejections_total{reason=\"replaced\"}",
            ) == 1.0
        },
    )
    .await;
}

#[tokio::test]
async fn the_sixth_attempt_in_a_minute_is_refused_with_retry_after() {
    let s = setup("auth-attempts", "", "max_connections_per_user = 10").await;
    let token = hs256(claims("grace", 300));
    let bearer = format!("Bearer {token}");
    let mut open = Vec::new();
    for i in 0..5 {
        open.push(
            s.ws("", &[("authorization", &bearer)])
                .await
                .unwrap_or_else(|s| panic!("attempt {} refused with {s}", i + 1)),
        );
    }
    assert_eq!(
        s.ws("", &[("authorization", &bearer)]).await.err(),
        Some(429)
    );
    // The raw answer carries Retry-After.
    let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: app.test\r\nAuthorization: {bearer}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut tls, req.as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 2048];
    let n = tokio::io::AsyncReadExt::read(&mut tls, &mut buf)
        .await
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429 "), "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {head}"));
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another user is not affected.
    assert!(
        s.ws(&format!("?token={}", hs256(claims("heidi", 300))), &[])
            .await
            .is_ok()
    );
    assert_eq!(netwall_tests::sample::ws_stats(&s.name).0, 0);
}

#[tokio::test]
async fn rs256_by_key_file_and_jwks_by_kid_and_no_algorithm_confusion() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("auth-rsa").await;
    let route = |path: &str, key: &str| {
        format!(
            "[[route]]\nhost = \"app.test\"\npath = \"{path}\"\ntunnel = \"app\"\nservice = \"web\"\n[route.auth]\nalgorithms = [\"RS256\"]\n{key}\n"
        )
    };
    let routes = route(
        "/pem",
        &format!(
            "public_key_file = \"{}\"",
            fixtures().join("jwt-rs256.pub").display()
        ),
    ) + &route(
        "/jwks",
        &format!("jwks_file = \"{}\"", fixtures().join("jwks.json").display()),
    );
    let (gateway, _c) = start_stack(&pki, &routes, &format!("web = \"http://{sample}\"")).await;
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(fixtures().join("jwt-rs256.key")).expect("key"))
            .expect("rsa key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let claims = json!({"sub": "ivan", "exp": now() + 300});
    let rs = encode(&header, &claims, &key).expect("encode");
    let client = HttpsClient::new(gateway.https_addr, &pki.ca_der, false);
    let get = |path: &str, token: &str| {
        Request::get(format!("https://app.test{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(body(bytes::Bytes::new()))
            .expect("req")
    };
    for path in ["/pem", "/jwks"] {
        let r = client.send(get(path, &rs)).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    // An HS256 token signed with the public key as a secret (algorithm confusion) is refused.
    let public_pem = std::fs::read(fixtures().join("jwt-rs256.pub")).expect("pub");
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("encode");
    for path in ["/pem", "/jwks"] {
        assert_eq!(
            client
                .send(get(path, &confused))
                .await
                .expect("request")
                .status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
}

#[tokio::test]
async fn es256_tokens_are_verified_with_an_ec_key() {
    init_logs();
    let pki = Pki::new();
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    std::fs::write(pki.dir.path().join("es256.pub"), key_pair.public_key_pem()).expect("write");
    let sample = start_sample("auth-ec").await;
    let route = format!(
        "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n[route.auth]\nalgorithms = [\"ES256\"]\npublic_key_file = \"{}\"\n",
        pki.dir.path().join("es256.pub").display()
    );
    let (gateway, _c) = start_stack(&pki, &route, &format!("web = \"http://{sample}\"")).await;
    let token = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "judy", "exp": now() + 300}),
        &EncodingKey::from_ec_pem(key_pair.serialize_pem().as_bytes()).expect("ec"),
    )
    .expect("encode");
    let client = HttpsClient::new(gateway.https_addr, &pki.ca_der, false);
    let r = client
        .send(
            Request::get("https://app.test/")
                .header("authorization", format!("Bearer {token}"))
                .body(body(bytes::Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[test]
fn a_route_whose_keys_are_missing_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = "0".repeat(64);
    let cfg = format!(
        "[https]\nlisten = \"127.0.0.1:0\"\nself_signed = true\n[tunnel_listener]\nlisten = \"127.0.0.1:0\"\nself_signed = true\n\
         [[tunnel]]\nname = \"app\"\ncredential_sha256 = \"{hash}\"\n[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n\
         [route.auth]\nalgorithms = [\"HS256\"]\nhs256_secret_env = \"NETWALL_TEST_UNSET_SECRET\"\n"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, cfg).expect("write");
    let out = std::process::Command::new(bin("netwall-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("route[0].auth: HS256 needs hs256_secret_file or hs256_secret_env"),
        "{stderr}"
    );
    let run = std::process::Command::new(bin("netwall-gateway"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(
        run.status.code(),
        Some(1),
        "a gateway with broken auth must not run open"
    );
}

#[tokio::test]
async fn one_thousand_concurrent_authenticated_websockets_through_one_tunnel() {
    const N: usize = 1000;
    let s = setup("auth-thousand", "", "max_connections_per_ip = 2000").await;
    let tokens: Vec<String> = (0..N)
        .map(|i| hs256(claims(&format!("user-{i}"), 600)))
        .collect();
    let mut sockets = Vec::with_capacity(N);
    for (chunk, batch) in tokens.chunks(100).enumerate() {
        let suffixes: Vec<String> = batch.iter().map(|t| format!("?token={t}")).collect();
        let opening: Vec<_> = suffixes.iter().map(|q| s.ws(q, &[])).collect();
        for (i, ws) in futures_util::future::join_all(opening)
            .await
            .into_iter()
            .enumerate()
        {
            sockets.push((
                chunk * 100 + i,
                ws.unwrap_or_else(|status| panic!("connection refused with {status}")),
            ));
        }
    }
    let admin = s.gateway.admin_addr.expect("admin");
    wait_until(
        Duration::from_secs(30),
        "1000 open WebSockets",
        || async move {
            metric(
                &metrics_text(admin).await,
                "netwall_websocket_connections{route=\"app.test/\"}",
            ) == N as f64
        },
    )
    .await;
    // Every connection exchanges a message, and the service sees each user's own identity.
    let exchanges = sockets.into_iter().map(|(i, mut ws)| async move {
        let who = whoami(&mut ws).await;
        assert_eq!(
            who,
            format!("auth-thousand: x-netwall-claim-role=admin;x-netwall-sub=user-{i}")
        );
        ws
    });
    let sockets = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(exchanges),
    )
    .await
    .expect("every connection exchanged its message");
    assert_eq!(sockets.len(), N);
    assert_eq!(netwall_tests::sample::ws_stats(&s.name).0, N as u64);
    assert_eq!(
        s.gateway.registry.get("app").map(|t| t.live_count()),
        Some(1),
        "all of it went through one tunnel connection"
    );
}

#[tokio::test]
async fn open_connections_recheck_revocations_on_their_own() {
    // A revocation recorded without telling the sessions (as one learned from elsewhere would
    // be) is found by the periodic re-check.
    let s = setup("auth-recheck", "revalidate_interval = \"200ms\"", "").await;
    let token = hs256(claims("kim", 300));
    let mut ws = s
        .ws(&format!("?token={token}"), &[])
        .await
        .expect("accepted");
    assert_eq!(
        whoami(&mut ws).await,
        "auth-recheck: x-netwall-claim-role=admin;x-netwall-sub=kim"
    );
    s.gateway.revocations.revoke_sub("kim");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4003)
    );
}
