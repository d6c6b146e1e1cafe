//! `[route.challenge]` without a browser, over real TLS: a client that cannot solve never sees
//! the content; a solution is checked by the gateway, accepted once, and only for the network
//! it was issued to; passes are bound to network and browser, and signed by the ring's keys
//! (forged, tampered and retired-key passes are refused); bypass rules; the difficulty rising
//! under a flood of new visitors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, StatusCode};
use netwall_gateway::challenge::token::{self, Binding, KeyRing};
use netwall_tests::harness::*;

const KEY_OLD: &str = "old-key-0123456789abcdef0123456789abcdef";
const KEY_NEW: &str = "new-key-0123456789abcdef0123456789abcdef";
const SECRET: &str = "an-hs256-secret-that-is-long-enough-for-tests";
/// Easy enough to solve in a test in microseconds.
const DIFFICULTY: u8 = 8;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A gateway whose challenge keys are `keys` (first signs), with routes on app.test (`/`),
/// api.app.test (JWT bypass) and app.test/docs (a path prefix). Clients say who they are in
/// `X-Forwarded-For` (one trusted hop), so a test can move between networks.
fn config(pki: &Pki, keys: &[&str], challenge_extra: &str) -> String {
    let keys_file = pki.dir.path().join("challenge.keys");
    std::fs::write(
        &keys_file,
        format!("# rotation: newest first\n{}\n", keys.join("\n")),
    )
    .expect("write keys");
    std::fs::write(pki.dir.path().join("hs256.secret"), SECRET).expect("write secret");
    let route = |host: &str, path: &str, extra: &str| {
        format!(
            "[[route]]\nhost = \"{host}\"\npath = \"{path}\"\ntunnel = \"app\"\nservice = \"web\"\ntrusted_proxy_hops = 1\n{extra}\
             [route.challenge]\ndifficulty = {DIFFICULTY}\nbypass_paths = [\"/.well-known\"]\nbypass_ips = [\"192.0.2.0/24\"]\nbypass_methods = [\"OPTIONS\"]\n{challenge_extra}\n"
        )
    };
    let auth = format!(
        "[route.auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{}\"\n",
        pki.dir.path().join("hs256.secret").display()
    );
    let routes = route("app.test", "/", "")
        + &route("app.test", "/docs", "")
        + &route("api.app.test", "/", &auth).replace(
            "[route.challenge]\n",
            "[route.challenge]\nbypass_jwt = true\n",
        );
    pki.gateway_toml(&format!(
        "[challenge]\nkeys_file = \"{}\"\n{routes}",
        keys_file.display()
    ))
}

struct Client {
    https: HttpsClient,
}

/// Who a request comes from.
#[derive(Clone, Copy)]
struct Visitor {
    ip: &'static str,
    agent: &'static str,
}

const ALICE: Visitor = Visitor {
    ip: "203.0.113.7",
    agent: "Chromium/140",
};

impl Client {
    fn request(
        &self,
        v: Visitor,
        method: Method,
        url: &str,
        cookie: Option<&str>,
    ) -> Request<ClientBody> {
        let mut r = Request::builder()
            .method(method)
            .uri(url)
            .header("x-forwarded-for", v.ip)
            .header("user-agent", v.agent);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.body(body("")).expect("request")
    }

    async fn get(&self, v: Visitor, url: &str, cookie: Option<&str>) -> Answer {
        self.https
            .send(self.request(v, Method::GET, url, cookie))
            .await
            .expect("GET")
    }

    async fn verify(&self, v: Visitor, url: &str, json: &str) -> Answer {
        let req = Request::post(url)
            .header("x-forwarded-for", v.ip)
            .header("user-agent", v.agent)
            .header("content-type", "application/json")
            .body(body(json.to_owned()))
            .expect("request");
        self.https.send(req).await.expect("POST")
    }
}

/// The seed and difficulty in a challenge page.
fn seed_of(page: &Answer) -> (String, u8) {
    let text = page.text();
    let start = text
        .find("id=\"netwall-challenge\">")
        .unwrap_or_else(|| panic!("no challenge data in {text}"))
        + "id=\"netwall-challenge\">".len();
    let end = start + text[start..].find("</script>").expect("end of data");
    let data: serde_json::Value = serde_json::from_str(&text[start..end]).expect("json data");
    (
        data["seed"].as_str().expect("seed").to_owned(),
        data["difficulty"].as_u64().expect("difficulty") as u8,
    )
}

/// Solve honestly, as the page's workers do.
fn solve(seed: &str, difficulty: u8) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|n| token::leading_zero_bits(&token::work_hash(seed, n)) >= u32::from(difficulty))
        .expect("a nonce")
}

fn solution(seed: &str, nonce: &str) -> String {
    serde_json::json!({"seed": seed, "nonce": nonce, "elapsed_ms": 42}).to_string()
}

/// `name=value` of a `Set-Cookie`.
fn cookie_of(a: &Answer) -> String {
    a.headers["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("pair")
        .to_owned()
}

fn assert_challenged(a: &Answer, what: &str) {
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{what}: {}", a.text());
    assert!(
        a.headers
            .get("x-netwall-challenge")
            .is_some_and(|v| v.to_str().is_ok_and(|s| s.starts_with("pow; difficulty="))),
        "{what}: {:?}",
        a.headers
    );
    assert!(!a.text().contains("hello from"), "{what}: content leaked");
}

async fn stack(
    keys: &[&str],
    extra: &str,
) -> (
    netwall_gateway::RunningGateway,
    netwall_connector::RunningConnector,
    Client,
) {
    let pki = Pki::new();
    let sample = start_sample("challenge").await;
    let gateway = start_gateway(&config(&pki, keys, extra)).await;
    let connector = start_connector(
        &pki.connector_toml_for(&gateway, &format!("web = \"http://{sample}\""), ""),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    let https = HttpsClient::new(gateway.https_addr, &pki.ca_der, false);
    // The Pki (and its files) may go: everything is loaded.
    std::mem::forget(pki);
    (gateway, connector, Client { https })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_solve_never_gets_the_content() {
    init_logs();
    let (gateway, _c, c) = stack(&[KEY_NEW], "").await;
    for url in [
        "https://app.test/",
        "https://app.test/secret?x=1",
        "https://app.test/docs/page",
        "https://app.test/docs/../secret",
    ] {
        let a = c.get(ALICE, url, None).await;
        assert_challenged(&a, url);
        let h = &a.headers;
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(
            h["x-netwall-challenge"],
            format!("pow; difficulty={DIFFICULTY}").as_str()
        );
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        let page = a.text();
        assert!(page.contains("<noscript>"), "{page}");
        assert!(!page.contains("style="), "no inline style: {page}");
    }
    // HEAD and POST are challenged too; a WebSocket handshake without a pass is refused.
    for method in [Method::HEAD, Method::POST, Method::DELETE] {
        let a = c
            .https
            .send(c.request(ALICE, method.clone(), "https://app.test/x", None))
            .await
            .expect("send");
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{method}");
    }
    // The challenge's own endpoints answer at the edge and never reach the service.
    let js = c
        .get(ALICE, "https://app.test/.netwall/challenge/app.js", None)
        .await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/javascript")
    );
    assert!(js.text().contains("netwall-challenge"));
    let worker = c
        .get(
            ALICE,
            "https://app.test/docs/.netwall/challenge/worker.js",
            None,
        )
        .await;
    assert!(
        worker.text().contains("crypto.subtle.digest"),
        "{}",
        worker.text()
    );
    let check = c
        .get(ALICE, "https://app.test/.netwall/challenge/check", None)
        .await;
    assert_eq!(check.text(), "{\"pass\":false}");
    for url in [
        "https://app.test/.netwall/challenge/verify",
        "https://app.test/.netwall/challenge/../challenge/nothing",
        "https://app.test/.netwall/challenge/",
    ] {
        let a = c.get(ALICE, url, None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{url}");
        assert!(!a.text().contains("hello from"));
    }
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(
            &m,
            "netwall_challenges_total{route=\"app.test/\",outcome=\"issued\"}"
        ),
        6.0,
        "three pages and three methods: {m}"
    );
    assert_eq!(
        metric(
            &m,
            "netwall_challenges_total{route=\"app.test/docs\",outcome=\"issued\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "netwall_challenge_difficulty_bits{route=\"app.test/\"}"),
        f64::from(DIFFICULTY)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_buys_a_pass_once_and_only_for_the_network_it_was_issued_to() {
    init_logs();
    let (gateway, _c, c) = stack(&[KEY_NEW], "").await;
    let verify = "https://app.test/.netwall/challenge/verify";
    let page = c.get(ALICE, "https://app.test/welcome", None).await;
    let (seed, difficulty) = seed_of(&page);
    assert_eq!(difficulty, DIFFICULTY);
    let nonce = solve(&seed, difficulty);

    // A nonce that does not reach the difficulty, and junk, are refused.
    let weak = (0u64..)
        .map(|n| n.to_string())
        .find(|n| token::leading_zero_bits(&token::work_hash(&seed, n)) < u32::from(difficulty))
        .expect("weak");
    for bad in [
        solution(&seed, &weak),
        solution(&seed, &format!("0{nonce}")),
        solution(&format!("{seed}x"), &nonce),
        "{\"seed\":1}".to_owned(),
        "not json".to_owned(),
    ] {
        let a = c.verify(ALICE, verify, &bad).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{bad}");
        assert!(a.headers.get("set-cookie").is_none());
    }
    // The right answer from another network: refused (the seed is bound to the /24).
    let elsewhere = Visitor {
        ip: "198.51.100.7",
        ..ALICE
    };
    let a = c.verify(elsewhere, verify, &solution(&seed, &nonce)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // From the same /24: accepted, with a pass cookie of the documented shape.
    let neighbour = Visitor {
        ip: "203.0.113.200",
        ..ALICE
    };
    let ok = c.verify(neighbour, verify, &solution(&seed, &nonce)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let set = ok.headers["set-cookie"].to_str().expect("ascii").to_owned();
    for part in [
        "__Host-netwall-pass=",
        "Path=/",
        "Max-Age=86400",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert_eq!(ok.headers["cache-control"], "no-store");
    // Once only.
    let again = c.verify(ALICE, verify, &solution(&seed, &nonce)).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);

    // The pass opens the route, for this network and browser.
    let cookie = cookie_of(&ok);
    let content = c
        .get(ALICE, "https://app.test/welcome", Some(&cookie))
        .await;
    assert_eq!(content.status, StatusCode::OK, "{}", content.text());
    assert!(
        content
            .text()
            .contains("hello from challenge via netwall: GET /welcome"),
        "{}",
        content.text()
    );
    let check = c
        .get(
            ALICE,
            "https://app.test/.netwall/challenge/check",
            Some(&cookie),
        )
        .await;
    assert_eq!(check.text(), "{\"pass\":true}");
    // Among other cookies, and with the service's own cookies passed through.
    let mixed = format!("theme=dark; {cookie}; session=abc");
    assert_eq!(
        c.get(ALICE, "https://app.test/x", Some(&mixed))
            .await
            .status,
        StatusCode::OK
    );
    // Not on another network, not in another browser, not on the /docs route (its own pass).
    assert_challenged(
        &c.get(elsewhere, "https://app.test/welcome", Some(&cookie))
            .await,
        "other network",
    );
    let curl = Visitor {
        agent: "curl/8",
        ..ALICE
    };
    assert_challenged(
        &c.get(curl, "https://app.test/welcome", Some(&cookie)).await,
        "other browser",
    );
    let docs_cookie = cookie.replace("__Host-netwall-pass", "netwall-pass");
    assert_challenged(
        &c.get(ALICE, "https://app.test/docs/a", Some(&docs_cookie))
            .await,
        "other route",
    );

    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    let sample =
        |o: &str| format!("netwall_challenges_total{{route=\"app.test/\",outcome=\"{o}\"}}");
    assert_eq!(metric(&m, &sample("solved")), 1.0, "{m}");
    assert_eq!(metric(&m, &sample("failed")), 7.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "netwall_challenge_solve_seconds_count{route=\"app.test/\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"challenge_failed\"}"),
        7.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_expired_and_retired_key_tokens_are_refused_and_rotation_keeps_old_passes()
{
    init_logs();
    // Mid-rotation: the new key signs, the old one still verifies.
    let (gateway, _c, c) = stack(&[KEY_NEW, KEY_OLD], "").await;
    let binding = Binding::new(
        "203.0.113.7".parse().expect("ip"),
        "app.test/",
        ALICE.agent.as_bytes(),
    );
    let ring = |keys: &[&str]| {
        KeyRing::new(keys.iter().map(|k| k.as_bytes().to_vec()).collect()).expect("ring")
    };
    let old_pass = token::issue_pass(&ring(&[KEY_OLD]), &binding, now() + 600);
    let cookie = format!("__Host-netwall-pass={old_pass}");
    assert_eq!(
        c.get(ALICE, "https://app.test/", Some(&cookie))
            .await
            .status,
        StatusCode::OK,
        "a pass of the previous key is still good during the rotation"
    );

    // Forged, tampered, expired and retired-key passes.
    let retired = token::issue_pass(
        &ring(&["retired-key-0123456789abcdef0123456789ab"]),
        &binding,
        now() + 600,
    );
    let expired = token::issue_pass(&ring(&[KEY_NEW]), &binding, now() - 1);
    let mut tampered = old_pass.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for (what, pass) in [
        (
            "forged",
            "AAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        ),
        ("tampered", tampered),
        ("expired", expired),
        ("retired key", retired),
        ("junk", "x".repeat(5000)),
    ] {
        let a = c
            .get(
                ALICE,
                "https://app.test/",
                Some(&format!("__Host-netwall-pass={pass}")),
            )
            .await;
        assert_challenged(&a, what);
    }
    // A seed the gateway issued (the right key) but already expired, solved: refused.
    let stale = token::issue_seed(&ring(&[KEY_NEW]), &binding, DIFFICULTY, now() - 1);
    let a = c
        .verify(
            ALICE,
            "https://app.test/.netwall/challenge/verify",
            &solution(&stale, &solve(&stale, DIFFICULTY)),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A seed that claims less work than the gateway asked for cannot be signed without the key.
    let easy = token::issue_seed(
        &ring(&["attacker-key-0123456789abcdef0123456789"]),
        &binding,
        0,
        now() + 60,
    );
    let a = c
        .verify(
            ALICE,
            "https://app.test/.netwall/challenge/verify",
            &solution(&easy, "0"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A verify body larger than a solution is cut off with 413.
    let big = format!("{{\"seed\":\"{}\"}}", "a".repeat(4096));
    let a = c
        .verify(ALICE, "https://app.test/.netwall/challenge/verify", &big)
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(
            &m,
            "netwall_challenges_total{route=\"app.test/\",outcome=\"failed\"}"
        ),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_rules_let_tokens_networks_paths_and_methods_through() {
    init_logs();
    let (gateway, _c, c) = stack(&[KEY_NEW], "").await;
    // A valid JWT on the route that allows it.
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "robot", "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token");
    let with_jwt = Request::get("https://api.app.test/v1")
        .header("x-forwarded-for", ALICE.ip)
        .header("authorization", format!("Bearer {jwt}"))
        .body(body(""))
        .expect("request");
    let a = c.https.send(with_jwt).await.expect("send");
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    // Without a token, or with a bad one, the API route challenges like any other.
    assert_challenged(
        &c.get(ALICE, "https://api.app.test/v1", None).await,
        "no token",
    );
    let bad_jwt = Request::get("https://api.app.test/v1")
        .header("x-forwarded-for", ALICE.ip)
        .header("authorization", "Bearer not.a.token")
        .body(body(""))
        .expect("request");
    assert_challenged(&c.https.send(bad_jwt).await.expect("send"), "bad token");
    // A JWT does not bypass a route that does not say so (app.test has no bypass_jwt).
    let jwt_elsewhere = Request::get("https://app.test/")
        .header("x-forwarded-for", ALICE.ip)
        .header("authorization", format!("Bearer {jwt}"))
        .body(body(""))
        .expect("request");
    assert_challenged(
        &c.https.send(jwt_elsewhere).await.expect("send"),
        "jwt on app.test",
    );

    // Path prefixes on segment boundaries, client networks, methods.
    let ok = c
        .get(ALICE, "https://app.test/.well-known/acme-challenge/x", None)
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_challenged(
        &c.get(ALICE, "https://app.test/.well-knownx", None).await,
        "not a segment",
    );
    let office = Visitor {
        ip: "192.0.2.55",
        ..ALICE
    };
    assert_eq!(
        c.get(office, "https://app.test/", None).await.status,
        StatusCode::OK
    );
    let options = c
        .https
        .send(c.request(ALICE, Method::OPTIONS, "https://app.test/", None))
        .await
        .expect("send");
    assert_eq!(options.status, StatusCode::OK);
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(
            &m,
            "netwall_challenges_total{route=\"api.app.test/\",outcome=\"bypassed\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "netwall_challenges_total{route=\"app.test/\",outcome=\"bypassed\"}"
        ),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_visitors_raises_the_difficulty_in_the_issued_challenges() {
    init_logs();
    let (gateway, _c, c) = stack(
        &[KEY_NEW],
        "max_difficulty = 12\nspike_multiple = 3.0\nspike_min_per_second = 20\nspike_window = \"10s\"\n",
    )
    .await;
    // A quiet baseline: a few new visitors a second for two seconds.
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    for _ in 0..8 {
        pace.tick().await;
        let a = c.get(ALICE, "https://app.test/", None).await;
        assert_eq!(seed_of(&a).1, DIFFICULTY);
    }
    // Then a flood: the issued difficulty rises and the page says 429.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let raised = loop {
        let a = c.get(ALICE, "https://app.test/", None).await;
        let (_, d) = seed_of(&a);
        if d > DIFFICULTY {
            assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
            break d;
        }
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the difficulty never rose"
        );
    };
    assert_eq!(raised, DIFFICULTY + 1, "one step at a time");
    // Keep flooding: it climbs to the maximum and no further.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, d) = seed_of(&c.get(ALICE, "https://app.test/", None).await);
        assert!(d <= 12, "above the maximum: {d}");
        if d == 12 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached the maximum"
        );
    }
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(&m, "netwall_challenge_difficulty_bits{route=\"app.test/\"}"),
        12.0,
        "{m}"
    );
    // The other routes are not affected.
    let (_, d) = seed_of(&c.get(ALICE, "https://app.test/docs/", None).await);
    assert_eq!(d, DIFFICULTY);
}
