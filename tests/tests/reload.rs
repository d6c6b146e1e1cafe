//! Reloading `gateway.toml` in place: under load, with a bad file, with rotated
//! certificates, with tunnels added, rotated and removed, with counters that must survive,
//! and by `SIGHUP` on the running binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use netwall_tests::harness::*;

/// A gateway started from a file in the PKI's folder, so it can be reloaded.
struct Reloadable {
    pki: Pki,
    file: PathBuf,
    gateway: netwall_gateway::RunningGateway,
}

impl Reloadable {
    async fn new(routes: &str) -> Reloadable {
        init_logs();
        let pki = Pki::new();
        let file = pki.dir.path().join("gateway.toml");
        std::fs::write(&file, pki.gateway_toml(routes)).expect("write config");
        let loaded = netwall_gateway::config::GatewayConfig::load(&file)
            .unwrap_or_else(|e| panic!("gateway config: {e}"));
        let gateway = netwall_gateway::start(loaded)
            .await
            .expect("gateway starts");
        Reloadable { pki, file, gateway }
    }

    /// A reloadable gateway with `routes`, sample service `a` behind one connector, tunnel up.
    async fn serving_a(
        routes: &str,
    ) -> (
        Reloadable,
        std::net::SocketAddr,
        netwall_connector::RunningConnector,
    ) {
        let a = start_sample("a").await;
        let g = Reloadable::new(routes).await;
        let connector = start_connector(
            &g.pki
                .connector_toml_for(&g.gateway, &format!("a = \"http://{a}\""), ""),
            &g.pki.credential,
        );
        wait_tunnel(&g.gateway, 1).await;
        (g, a, connector)
    }

    /// Write `text` as the configuration and reload it.
    fn reload_with(&self, text: &str) -> netwall_gateway::reload::Outcome {
        std::fs::write(&self.file, text).expect("write config");
        self.gateway.reload()
    }

    fn client(&self) -> HttpsClient {
        HttpsClient::new(self.gateway.https_addr, &self.pki.ca_der, false)
    }

    fn admin(&self) -> std::net::SocketAddr {
        self.gateway.admin_addr.expect("admin listener")
    }
}

/// Eight clients (HTTP/1.1 and HTTP/2) requesting one URL in a loop; every answer must be a
/// 200 whose body starts with one of the accepted prefixes.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// Start the clients and wait until requests are flowing.
    async fn start(g: &Reloadable, url: &'static str, accepted: &'static [&'static str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let client = HttpsClient::new(g.gateway.https_addr, &g.pki.ca_der, i % 2 == 1);
            let (stop, ok) = (stop.clone(), ok.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let a = client.get(url).await;
                    let text = a.text();
                    if a.status == 200 && accepted.iter().any(|p| text.starts_with(p)) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.push(format!("{} {text}", a.status));
                    }
                }
                errors
            }));
        }
        let load = Load { stop, ok, tasks };
        load.wait_for(100).await;
        load
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Wait until `n` requests have succeeded in all.
    async fn wait_for(&self, n: u64) {
        let ok = self.ok.clone();
        wait_until(Duration::from_secs(10), &format!("{n} requests"), || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) >= n }
        })
        .await;
    }

    /// Stop the clients and assert that no request failed.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.expect("load task"));
        }
        assert!(errors.is_empty(), "failed requests: {errors:?}");
    }
}

/// Assert that `answer` is a 200 from sample service `name`.
fn served_by(answer: &Answer, name: &str) {
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer.text().starts_with(&format!("hello from {name}")),
        "{}",
        answer.text()
    );
}

fn route(host: &str, path: &str, service: &str, extra: &str) -> String {
    format!(
        "[[route]]\nhost = \"{host}\"\npath = \"{path}\"\ntunnel = \"app\"\nservice = \"{service}\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_fails_no_request_and_serves_new_routes_at_once() {
    let (a, b) = (start_sample("a").await, start_sample("b").await);
    let base = route("app.test", "/", "a", "");
    let g = Reloadable::new(&base).await;
    let _connector = start_connector(
        &g.pki.connector_toml_for(
            &g.gateway,
            &format!("a = \"http://{a}\"\nb = \"http://{b}\""),
            "",
        ),
        &g.pki.credential,
    );
    wait_tunnel(&g.gateway, 1).await;

    // Steady load on the route every configuration keeps, HTTP/1.1 and HTTP/2.
    let load = Load::start(&g, "https://app.test/steady", &["hello from a"]).await;

    let client = g.client();
    for round in 1..=6u64 {
        // Alternate between adding a route (with a rate limit and headers) and taking it away.
        let text = if round % 2 == 1 {
            g.pki.gateway_toml(&format!(
                "{base}{}",
                route(
                    "app.test",
                    "/new",
                    "b",
                    "[route.rate_limit]\nrequests = 100000\nwindow = \"1s\"\n[route.headers]\nset = { x-round = \"on\" }\n",
                )
            ))
        } else {
            g.pki.gateway_toml(&base)
        };
        let before = load.ok();
        let outcome = g.reload_with(&text);
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.generation, round + 1);
        assert!(outcome.restart_required.is_empty(), "{outcome:?}");
        let answer = client.get("https://app.test/new/x").await;
        if round % 2 == 1 {
            served_by(&answer, "b");
            assert_eq!(
                answer.headers.get("x-round").map(|v| v.as_bytes()),
                Some(&b"on"[..])
            );
        } else {
            // Back to the catch-all route.
            assert!(
                answer.text().starts_with("hello from a"),
                "{}",
                answer.text()
            );
        }
        // Traffic keeps flowing between reloads.
        load.wait_for(before + 50).await;
    }
    load.finish().await;
    let m = metrics_text(g.admin()).await;
    assert_eq!(
        metric(&m, "netwall_config_reloads_total{outcome=\"applied\"}"),
        6.0
    );
    assert_eq!(metric(&m, "netwall_config_generation"), 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_says_where() {
    let base = route("app.test", "/", "a", "");
    let (g, _a, _connector) = Reloadable::serving_a(&base).await;
    let client = g.client();
    assert_eq!(client.get("https://app.test/").await.status, 200);

    // A route to a tunnel that is not declared, on a known line.
    let good = g.pki.gateway_toml(&base);
    let bad = format!(
        "{good}[[route]]\nhost = \"bad.app.test\"\ntunnel = \"nowhere\"\nservice = \"a\"\n"
    );
    let line = bad
        .lines()
        .position(|l| l.contains("\"nowhere\""))
        .expect("line")
        + 1;
    std::fs::write(&g.file, &bad).expect("write");
    let (status, body) = admin_request(g.admin(), http::Method::POST, "/reload").await;
    assert_eq!(status, 422, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["generation"], 1);
    let errors = answer["errors"].to_string();
    assert!(
        errors.contains(&format!("gateway.toml:{line}:")) && errors.contains("tunnel"),
        "errors name file, line and key: {errors}"
    );

    // Not TOML at all.
    std::fs::write(&g.file, "[[route]\nhost = ").expect("write");
    let (status, body) = admin_request(g.admin(), http::Method::POST, "/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("gateway.toml:1:"), "{body}");

    // A certificate file that is not one: the routes parse, the certificates do not.
    let broken = g.pki.dir.path().join("broken.pem");
    std::fs::write(&broken, "not a certificate").expect("write");
    let bad_cert = good.replace(
        &g.pki.https_cert.display().to_string(),
        &broken.display().to_string(),
    );
    let outcome = g.reload_with(&bad_cert);
    assert!(!outcome.ok);
    assert!(
        outcome.errors.iter().any(|e| e.contains("broken.pem")),
        "{outcome:?}"
    );

    // The old configuration still serves, with its certificate.
    let answer = client.get("https://app.test/still").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        HttpsClient::new(g.gateway.https_addr, &g.pki.ca_der, true)
            .get("https://app.test/fresh-connection")
            .await
            .status,
        200
    );
    assert_eq!(client.get("https://bad.app.test/").await.status, 404);
    let m = metrics_text(g.admin()).await;
    assert_eq!(
        metric(&m, "netwall_config_reloads_total{outcome=\"invalid\"}"),
        3.0
    );
    assert_eq!(metric(&m, "netwall_config_last_reload_ok"), 0.0);
    assert_eq!(metric(&m, "netwall_config_generation"), 1.0);

    // Fixed: applied, and the gauge says so.
    std::fs::write(&g.file, &good).expect("write");
    let (status, body) = admin_request(g.admin(), http::Method::POST, "/reload").await;
    assert_eq!(status, 200, "{body}");
    let m = metrics_text(g.admin()).await;
    assert_eq!(metric(&m, "netwall_config_last_reload_ok"), 1.0);
    assert_eq!(metric(&m, "netwall_config_generation"), 2.0);
    let (status, _) = admin_request(g.admin(), http::Method::GET, "/reload").await;
    assert_eq!(status, 405, "reload is POST only");
}

/// The leaf certificate a fresh TLS handshake to the gateway presents.
async fn served_certificate(g: &Reloadable) -> Vec<u8> {
    let tls = raw_tls(g.gateway.https_addr, &g.pki.ca_der, "app.test").await;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate")
        .as_ref()
        .to_vec()
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .expect("pem")
        .next()
        .expect("one certificate")
        .expect("valid pem")
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_by_the_next_handshake() {
    let base = route("app.test", "/", "a", "");
    let (g, _a, _connector) = Reloadable::serving_a(&base).await;
    assert_eq!(served_certificate(&g).await, pem_der(&g.pki.https_cert));
    // A pooled connection opened before the rotation.
    let client = g.client();
    assert_eq!(client.get("https://app.test/before").await.status, 200);

    // New files under new names, as an operator (or ACME) writes them.
    let (cert, key) = g
        .pki
        .issue("rotated", &["app.test", "*.app.test", "localhost"]);
    let rotated = g
        .pki
        .gateway_toml(&base)
        .replace(
            &g.pki.https_cert.display().to_string(),
            &cert.display().to_string(),
        )
        .replace(
            &g.pki.https_key.display().to_string(),
            &key.display().to_string(),
        );
    let outcome = g.reload_with(&rotated);
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(served_certificate(&g).await, pem_der(&cert));
    assert_eq!(client.get("https://app.test/after").await.status, 200);

    // The same file names with new contents: a reload reads them again.
    let (cert2, _) = g
        .pki
        .issue("rotated", &["app.test", "*.app.test", "localhost"]);
    assert_ne!(pem_der(&cert2), pem_der(&g.pki.https_cert));
    let outcome = g.gateway.reload();
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(served_certificate(&g).await, pem_der(&cert2));

    // A key that belongs to another certificate is refused; the last good pair serves.
    let mismatched = rotated.replace(
        &key.display().to_string(),
        &g.pki.other_key.display().to_string(),
    );
    let outcome = g.reload_with(&mismatched);
    assert!(!outcome.ok, "{outcome:?}");
    assert_eq!(served_certificate(&g).await, pem_der(&cert2));
}

fn tunnel_b(hash: &str, extra: &str) -> String {
    format!(
        "[[tunnel]]\nname = \"b\"\ncredential_sha256 = \"{hash}\"\n{extra}\n[[route]]\nhost = \"b.app.test\"\ntunnel = \"b\"\nservice = \"web\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tunnels_are_added_rotated_and_removed_in_place() {
    let web = start_sample("web").await;
    let services = format!("web = \"http://{web}\"");
    let base = route("app.test", "/", "web", "");
    let g = Reloadable::new(&base).await;
    let app = start_connector(
        &g.pki.connector_toml_for(&g.gateway, &services, ""),
        &g.pki.credential,
    );
    wait_tunnel(&g.gateway, 1).await;
    let client = g.client();

    // Add tunnel `b` with a route and a Unix socket of its own.
    let credential_b = hex::encode(rand::random::<[u8; 32]>());
    let hash_b = netwall_gateway::tunnel::credential_hash(credential_b.as_bytes());
    let socket_b = g.pki.dir.path().join("b.sock");
    let with_b = format!(
        "{base}{}",
        tunnel_b(
            &hash_b,
            &format!("unix_socket = \"{}\"", socket_b.display())
        )
    );
    let outcome = g.reload_with(&g.pki.gateway_toml(&with_b));
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.tunnels.added, vec!["b".to_owned()]);
    assert!(socket_b.exists(), "the new tunnel's socket is bound");
    let b_toml = g
        .pki
        .connector_toml(&[g.gateway.tunnel_addr], &services, "")
        .replace("tunnel = \"app\"", "tunnel = \"b\"");
    let b = start_connector(&b_toml, &credential_b);
    wait_until(Duration::from_secs(10), "tunnel b is live", || {
        let r = g.gateway.registry.clone();
        async move { r.get("b").is_some_and(|t| t.live_count() == 1) }
    })
    .await;
    assert_eq!(client.get("https://b.app.test/").await.status, 200);

    // Rotate app's credential: the live connection keeps serving; a new handshake with the
    // old credential is refused.
    let new_credential = hex::encode(rand::random::<[u8; 32]>());
    let rotated = g.pki.gateway_toml(&with_b).replace(
        &g.pki.credential_sha256,
        &netwall_gateway::tunnel::credential_hash(new_credential.as_bytes()),
    );
    let outcome = g.reload_with(&rotated);
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.tunnels.rotated, vec!["app".to_owned()]);
    assert_eq!(
        client.get("https://app.test/after-rotation").await.status,
        200
    );
    let stale = start_connector(
        &g.pki.connector_toml_for(&g.gateway, &services, ""),
        &g.pki.credential,
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), stale.fatal())
        .await
        .expect("the old credential is refused");
    assert!(
        reason.contains("credential") || reason.contains("auth"),
        "{reason}"
    );
    let fresh = start_connector(
        &g.pki.connector_toml_for(&g.gateway, &services, ""),
        &new_credential,
    );
    wait_tunnel(&g.gateway, 2).await;

    // Remove `b`: its connection is closed with a reason, its route and socket are gone.
    let outcome = g.reload_with(&rotated.replace(
        &tunnel_b(
            &hash_b,
            &format!("unix_socket = \"{}\"", socket_b.display()),
        ),
        "",
    ));
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.tunnels.removed, vec!["b".to_owned()]);
    assert!(g.gateway.registry.get("b").is_none());
    let mut live_b = b.live_connections();
    tokio::time::timeout(Duration::from_secs(5), live_b.wait_for(|n| *n == 0))
        .await
        .expect("the removed tunnel's connection is closed")
        .expect("watch");
    assert_eq!(client.get("https://b.app.test/").await.status, 404);
    wait_until(Duration::from_secs(5), "the socket file is removed", || {
        let p = socket_b.clone();
        async move { !p.exists() }
    })
    .await;
    // `app` is untouched throughout.
    assert_eq!(client.get("https://app.test/end").await.status, 200);
    drop((app, fresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counters_survive_a_reload_unless_the_limit_changes() {
    let limited = |n: u32| {
        route(
            "app.test",
            "/",
            "a",
            &format!("[route.rate_limit]\nrequests = {n}\nwindow = \"1h\"\n"),
        )
    };
    let (g, _a, _connector) = Reloadable::serving_a(&limited(3)).await;
    let client = g.client();
    for _ in 0..3 {
        assert_eq!(client.get("https://app.test/").await.status, 200);
    }
    assert_eq!(client.get("https://app.test/").await.status, 429);
    // An unrelated change: the budget is the same one, still spent.
    let other = route("other.app.test", "/", "a", "");
    let outcome = g.reload_with(&g.pki.gateway_toml(&format!("{}{other}", limited(3))));
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(client.get("https://app.test/").await.status, 429);
    assert_eq!(client.get("https://other.app.test/").await.status, 200);
    // A new limit is a new budget.
    let outcome = g.reload_with(&g.pki.gateway_toml(&limited(5)));
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(client.get("https://app.test/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary_and_a_moved_listener_waits_for_a_restart() {
    init_logs();
    let pki = Pki::new();
    let file = pki.dir.path().join("gateway.toml");
    std::fs::write(&file, pki.gateway_toml(&route("app.test", "/", "a", ""))).expect("write");
    let log = pki.dir.path().join("gateway.log");
    let (gw, addrs) = spawn_gateway(&file, log);
    let client = HttpsClient::new(addrs.https, &pki.ca_der, false);
    // No connector: a known host answers 502 (tunnel offline), an unknown one 404.
    assert_eq!(client.get("https://new.app.test/").await.status, 404);
    let next = pki
        .gateway_toml(&format!(
            "{}{}",
            route("app.test", "/", "a", ""),
            route("new.app.test", "/", "a", "")
        ))
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:1\"",
        );
    std::fs::write(&file, next).expect("write");
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    gw.wait_line("configuration reloaded", Duration::from_secs(10));
    let line = gw.wait_line("take effect at the next start", Duration::from_secs(10));
    assert!(line.contains("admin"), "{line}");
    assert_ne!(client.get("https://new.app.test/").await.status, 404);
    let m = metrics_text(addrs.admin).await;
    assert_eq!(metric(&m, "netwall_config_generation"), 2.0);
}

/// A connector started from a file in the PKI's folder, so it can be reloaded.
struct ConnectorFile {
    file: PathBuf,
    credential: PathBuf,
}

impl ConnectorFile {
    fn new(g: &Reloadable) -> ConnectorFile {
        let credential = g.pki.dir.path().join("connector-credential");
        std::fs::write(&credential, &g.pki.credential).expect("write credential");
        ConnectorFile {
            file: g.pki.dir.path().join("connector.toml"),
            credential,
        }
    }

    /// A gateway routing `app.test` to service `a` and `b.app.test` to `b`, samples `a` and
    /// `b` running, and a connector file offering only `a`.
    async fn two_routes() -> (
        Reloadable,
        ConnectorFile,
        std::net::SocketAddr,
        std::net::SocketAddr,
    ) {
        let (a, b) = (start_sample("a").await, start_sample("b").await);
        let routes = format!(
            "{}{}",
            route("app.test", "/", "a", ""),
            route("b.app.test", "/", "b", "")
        );
        let g = Reloadable::new(&routes).await;
        let file = ConnectorFile::new(&g);
        file.write(&g, &format!("a = \"http://{a}\""), "");
        (g, file, a, b)
    }

    /// Write the connector's file with `services` and `extra` top-level settings.
    fn write(&self, g: &Reloadable, services: &str, extra: &str) {
        let extra = format!(
            "credential_file = \"{}\"\n{extra}",
            self.credential.display()
        );
        std::fs::write(
            &self.file,
            g.pki.connector_toml_for(&g.gateway, services, &extra),
        )
        .expect("write connector config");
    }

    fn load(&self) -> netwall_connector::config::Resolved {
        netwall_connector::config::ConnectorConfig::load(&self.file)
            .unwrap_or_else(|e| panic!("connector config: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connector_reload_retargets_adds_and_removes_services_under_load() {
    let (g, file, _a, b) = ConnectorFile::two_routes().await;
    let c = start_sample("c").await;
    let connector = netwall_connector::start(file.load()).expect("connector starts");
    wait_tunnel(&g.gateway, 1).await;
    let client = g.client();
    // `b` is routed but not offered: the connector refuses it, the gateway says which.
    let answer = client.get("https://b.app.test/").await;
    assert_eq!(answer.status, 502);
    assert!(answer.text().contains("not offered"), "{}", answer.text());

    // Service `a` moves to another address while requests to it run; `b` appears.
    let load = Load::start(
        &g,
        "https://app.test/steady",
        &["hello from a", "hello from c"],
    )
    .await;
    file.write(
        &g,
        &format!("a = \"http://{c}\"\nb = \"http://{b}\""),
        "connections_per_gateway = 2",
    );
    let outcome = connector.reload(file.load());
    assert_eq!(outcome.added, vec!["b".to_owned()]);
    assert_eq!(outcome.changed, vec!["a".to_owned()]);
    assert!(outcome.removed.is_empty());
    assert!(!outcome.credential_rotated);
    assert_eq!(
        outcome.restart_required,
        vec!["connections_per_gateway".to_owned()]
    );
    // The next request sees the new map.
    let answer = client.get("https://app.test/").await;
    assert!(
        answer.text().starts_with("hello from c"),
        "{}",
        answer.text()
    );
    let answer = client.get("https://b.app.test/").await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.text().starts_with("hello from b"),
        "{}",
        answer.text()
    );
    load.wait_for(load.ok() + 100).await;
    load.finish().await;

    // `b` goes away again; the tunnel connection stayed up throughout.
    file.write(&g, &format!("a = \"http://{c}\""), "");
    let outcome = connector.reload(file.load());
    assert_eq!(outcome.removed, vec!["b".to_owned()]);
    assert_eq!(client.get("https://b.app.test/").await.status, 502);
    assert_eq!(*connector.live_connections().borrow(), 1);

    // A new credential is what the next dial sends; the live connection keeps its session.
    std::fs::write(&file.credential, "rotated-credential").expect("write credential");
    let outcome = connector.reload(file.load());
    assert!(outcome.credential_rotated);
    assert_eq!(client.get("https://app.test/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_connector_binary_and_a_bad_file_changes_nothing() {
    let (g, file, a, b) = ConnectorFile::two_routes().await;
    let log = g.pki.dir.path().join("connector.log");
    let proc = spawn_connector(&file.file, "", log);
    wait_tunnel(&g.gateway, 1).await;
    let client = g.client();
    assert_eq!(client.get("https://b.app.test/").await.status, 502);

    // A file that does not parse: the error names the file and line; nothing changes.
    let good = std::fs::read_to_string(&file.file).expect("read");
    let bad = format!("{good}b = \"ftp://{b}\"\n");
    let line = bad.lines().count();
    std::fs::write(&file.file, &bad).expect("write");
    proc.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = proc.wait_line("reload refused", Duration::from_secs(10));
    assert!(
        refused.contains(&format!("connector.toml:{line}")),
        "line {line}: {refused}"
    );
    assert_eq!(client.get("https://app.test/").await.status, 200);
    assert_eq!(client.get("https://b.app.test/").await.status, 502);

    file.write(&g, &format!("a = \"http://{a}\"\nb = \"http://{b}\""), "");
    proc.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = proc.wait_line("configuration reloaded", Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&reloaded).expect("JSON log line");
    assert_eq!(v["added"], "[\"b\"]", "{reloaded}");
    let answer = client.get("https://b.app.test/").await;
    served_by(&answer, "b");
    assert_eq!(
        g.gateway.registry.get("app").map(|t| t.live_count()),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_running_across_reloads() {
    use futures_util::SinkExt;
    let base = route("app.test", "/", "a", "");
    let (g, _a, _connector) = Reloadable::serving_a(&base).await;
    let mut ws = wss(
        g.gateway.https_addr,
        &g.pki.ca_der,
        "wss://app.test/ws",
        &[],
        yawc::Options::default(),
    )
    .await
    .expect("accepted");
    for round in 0..4 {
        // Routes added and taken away again: a new route table each time.
        let text = if round % 2 == 0 {
            g.pki
                .gateway_toml(&format!("{base}{}", route("other.app.test", "/", "a", "")))
        } else {
            g.pki.gateway_toml(&base)
        };
        let outcome = g.reload_with(&text);
        assert!(outcome.ok, "{outcome:?}");
        let message = format!("after reload {round}");
        ws.send(yawc::Frame::text(message.clone()))
            .await
            .expect("send");
        let echoed = next_message(&mut ws).await;
        assert_eq!(echoed.opcode(), yawc::OpCode::Text);
        assert_eq!(echoed.payload().as_ref(), message.as_bytes());
    }
    let m = metrics_text(g.admin()).await;
    assert_eq!(
        metric(&m, "netwall_websocket_connections{route=\"app.test/\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wireguard_key_removed_by_a_reload_loses_its_link_and_comes_back_with_it() {
    VIA.scope(Via::WireGuard, async {
        let base = route("app.test", "/", "a", "");
        let (g, _a, _connector) = Reloadable::serving_a(&base).await;
        let client = g.client();
        served_by(&client.get("https://app.test/").await, "a");
        // Another connector's key in its place: this one's link ends at once, and its
        // datagrams are answered by nothing from now on.
        let original = g.pki.gateway_toml(&base);
        let (_, stranger) = netwall_tunnel::wireguard::keys::generate();
        let replaced = original.replace(&g.pki.connector_wg_public, &stranger);
        assert_ne!(original, replaced);
        let outcome = g.reload_with(&replaced);
        assert!(outcome.ok, "{outcome:?}");
        wait_tunnel(&g.gateway, 0).await;
        let refused = client.get("https://app.test/").await;
        assert!(refused.status.is_server_error(), "{}", refused.status);
        // The key back: the connector's next dial starts a fresh handshake (its old session
        // died with the link), so it serves again within seconds, not after WireGuard's 15 s
        // of unanswered data.
        let outcome = g.reload_with(&original);
        assert!(outcome.ok, "{outcome:?}");
        let back = std::time::Instant::now();
        wait_until(
            Duration::from_secs(10),
            "the connector back over WireGuard",
            || {
                let registry = g.gateway.registry.clone();
                async move { registry.get("app").is_some_and(|t| t.live_count() == 1) }
            },
        )
        .await;
        eprintln!("back over WireGuard {:?} after the reload", back.elapsed());
        served_by(&client.get("https://app.test/").await, "a");
    })
    .await;
}
