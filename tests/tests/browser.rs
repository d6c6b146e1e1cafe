//! What a browser sees: real headless Chromium opens WebSockets through the gateway and the
//! tunnel. Its own Origin header meets the allow-list and its own permessage-deflate offer
//! meets the edge. Chromium is driven over the DevTools protocol; the page reports the outcome
//! in its title.

use std::path::Path;
use std::time::Duration;

use netwall_tests::browser::*;
use netwall_tests::harness::*;
use serde_json::json;

/// The page's title once the script has reported (`ok:…` or `closed:…`).
async fn page_title(browser: &Proc) -> String {
    attach(browser)
        .await
        .title_when("the page to report", |t| {
            t.starts_with("ok:") || t.starts_with("closed:")
        })
        .await
}

/// The gateway and a connector of [`start_stack`], the HTTPS listener on `port` (a page's
/// origin names it, so it is chosen ahead).
async fn start_stack_on(
    pki: &Pki,
    routes: &str,
    services: &str,
    port: u16,
) -> (
    netwall_gateway::RunningGateway,
    netwall_connector::RunningConnector,
) {
    let toml = pki.gateway_toml(routes).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let gateway = start_gateway(&toml).await;
    let connector = start_connector(
        &pki.connector_toml_for(&gateway, services, ""),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    assert_eq!(gateway.https_addr.port(), port);
    (gateway, connector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_opens_a_websocket_through_the_tunnel_and_the_origin_list_holds() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("browser").await;
    // Chosen ahead: the allowed origin is the page's, port included.
    let port = netwall_tests::pebble::free_tcp_port();
    let route = |host: &str| {
        format!(
            "[[route]]\nhost = \"{host}\"\ntunnel = \"app\"\nservice = \"web\"\n[route.websocket]\nallowed_origins = [\"https://app.test:{port}\"]\n"
        )
    };
    let routes = route("app.test") + &route("evil.test");
    let (gateway, _c) =
        start_stack_on(&pki, &routes, &format!("web = \"http://{sample}\""), port).await;

    // A page from the allowed origin: the browser's WebSocket is echoed through the tunnel,
    // with the compression the browser offered.
    let profile = tempfile::tempdir().expect("profile");
    let browser = chromium(&format!("https://app.test:{port}/ws-page"), profile.path());
    let title = page_title(&browser).await;
    assert!(
        title.starts_with("ok:hello from a browser|permessage-deflate"),
        "{title}"
    );
    drop(browser);

    // A page from another origin opening a WebSocket to app.test is refused before the upgrade.
    let profile = tempfile::tempdir().expect("profile");
    let browser = chromium(
        &format!("https://evil.test:{port}/ws-page?host=app.test"),
        profile.path(),
    );
    assert_eq!(page_title(&browser).await, "closed:1006");
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"origin\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(netwall_tests::sample::ws_stats("browser").0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_calls_an_api_from_an_allowed_origin_and_is_blocked_from_another() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("cors-api").await;
    // Pages on app.test and evil.test; an API on api.test that lets app.test's pages call it.
    let page =
        |host: &str| format!("[[route]]\nhost = \"{host}\"\ntunnel = \"app\"\nservice = \"web\"\n");
    // Chosen ahead (the page's origin names it), outside the kernel's ephemeral range so no
    // other test's socket is handed it before the gateway binds it.
    let gateway_port = netwall_tests::pebble::free_tcp_port();
    let api = format!(
        "[[route]]\nhost = \"api.test\"\ntunnel = \"app\"\nservice = \"web\"\n\
         [route.cors]\nallowed_origins = [\"https://app.test:{gateway_port}\"]\nallowed_methods = [\"POST\"]\nallowed_headers = [\"x-api-key\", \"content-type\"]\n"
    );
    let routes = page("app.test") + &page("evil.test") + &api;
    let (gateway, _c) = start_stack_on(
        &pki,
        &routes,
        &format!("web = \"http://{sample}\""),
        gateway_port,
    )
    .await;

    let profile = tempfile::tempdir().expect("profile");
    let browser = chromium(
        &format!("https://app.test:{gateway_port}/cors-page?target=api.test"),
        profile.path(),
    );
    assert_eq!(page_title(&browser).await, "ok:crossed");
    drop(browser);

    let profile = tempfile::tempdir().expect("profile");
    let browser = chromium(
        &format!("https://evil.test:{gateway_port}/cors-page?target=api.test"),
        profile.path(),
    );
    assert_eq!(page_title(&browser).await, "closed:TypeError");
    drop(browser);
    // The other page's preflight was refused at the edge: its POST was never sent.
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"cors_refused\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_status_page_shows_the_live_tunnel_and_sees_its_connector_go() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("status").await;
    let routes = "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n";
    let gateway = start_gateway(&pki.gateway_toml(routes)).await;
    let connector = start_connector(
        &pki.connector_toml_for(&gateway, &format!("web = \"http://{sample}\""), ""),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    let admin = gateway.admin_addr.expect("admin");
    let profile = tempfile::tempdir().expect("profile");
    let browser = chromium(&format!("http://{admin}/status"), profile.path());
    let mut page = attach(&browser).await;
    page.title_when("the live tunnel", |t| {
        t == "netwall test-gw: 1 live tunnel connections"
    })
    .await;
    // Traffic on the route, and a request the edge refuses as a disguised `..`.
    let client = HttpsClient::new(gateway.https_addr, &pki.ca_der, false);
    for _ in 0..5 {
        assert_eq!(client.get("https://app.test/page").await.status, 200);
    }
    assert_eq!(
        client
            .get("https://app.test/public/%2e%2e/private")
            .await
            .status,
        400
    );
    let routes = page
        .eval_when(
            "the route's requests on the page",
            "document.querySelector('#routes tbody').innerText",
            |t| {
                t.lines()
                    .any(|l| l.starts_with("app.test/\tapp\t") && l.trim_end().ends_with("\t5"))
            },
        )
        .await;
    assert!(routes.contains(" ms"), "a mean time to head: {routes}");
    let events = page
        .eval_when(
            "the refusal among the recent security events",
            "document.querySelector('#events tbody').innerText",
            |t| t.contains("bad_path"),
        )
        .await;
    assert!(
        events.contains("disguised") || events.contains("reason="),
        "{events}"
    );
    if let Ok(dir) = std::env::var("NETWALL_SCREENSHOTS") {
        // The README's picture of the page, made by this test when asked.
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 820, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        let shot = page
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().expect("screenshot data"),
        )
        .expect("base64");
        std::fs::write(Path::new(&dir).join("status.png"), png).expect("write screenshot");
    }
    assert!(connector.shutdown().await, "the connector drains");
    page.title_when("the connector to be gone", |t| {
        t == "netwall test-gw: 0 live tunnel connections"
    })
    .await;
    // What the page renders from: the connection in /status.json, under a strict CSP.
    let json = http_get(&admin.to_string(), "/status.json").await;
    let v: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(v["gateway_id"], "test-gw");
    assert_eq!(v["tunnels"][0]["name"], "app");
    assert_eq!(v["tunnels"][0]["connections"], json!([]));
    assert_eq!(v["routes"][0]["name"], "app.test/");
    // The refused request never reached a route: the edge refused its path first.
    assert_eq!(v["routes"][0]["requests"], 5);
    assert_eq!(v["routes"][0]["errors"], 0);
    let refusal = v["security_events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event"] == "bad_path")
        .expect("the refusal");
    assert!(refusal["at"].as_u64().is_some_and(|t| t > 0), "{refusal}");
}

/// A gateway with a challenged route on `app.test` (default difficulty) and one on
/// `short.app.test` whose passes last 3 s, in front of the sample service.
async fn challenged_stack(
    name: &str,
) -> (
    netwall_gateway::RunningGateway,
    netwall_connector::RunningConnector,
) {
    let pki = Pki::new();
    let sample = start_sample(name).await;
    let routes = "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n[route.challenge]\ntitle = \"Checking your browser\"\n\
                  [[route]]\nhost = \"short.app.test\"\ntunnel = \"app\"\nservice = \"web\"\n[route.challenge]\ncookie_ttl = \"3s\"\n";
    let stack = start_stack(&pki, routes, &format!("web = \"http://{sample}\"")).await;
    std::mem::forget(pki);
    stack
}

fn challenges(m: &str, route: &str, outcome: &str) -> f64 {
    metric(
        m,
        &format!("netwall_challenges_total{{route=\"{route}\",outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_solves_the_challenge_lands_on_the_page_asked_for_and_is_challenged_again_only_when_the_pass_expires()
 {
    init_logs();
    let (gateway, _c) = challenged_stack("challenge-browser").await;
    let admin = gateway.admin_addr.expect("admin");
    let port = gateway.https_addr.port();
    let profile = tempfile::tempdir().expect("profile");
    let browser = chromium(
        &format!("https://app.test:{port}/content/first?from=link"),
        profile.path(),
    );
    let mut page = attach(&browser).await;
    page.title_when("the page asked for, after the challenge", |t| {
        t == "content:/content/first?from=link"
    })
    .await;
    let m = metrics_text(admin).await;
    assert_eq!(challenges(&m, "app.test/", "issued"), 1.0, "{m}");
    assert_eq!(challenges(&m, "app.test/", "solved"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "netwall_challenge_solve_seconds_count{route=\"app.test/\"}"
        ),
        1.0
    );
    // A second navigation carries the pass: no new challenge.
    page.navigate(&format!("https://app.test:{port}/content/second"))
        .await;
    page.title_when("the second page", |t| t == "content:/content/second")
        .await;
    let m = metrics_text(admin).await;
    assert_eq!(challenges(&m, "app.test/", "issued"), 1.0, "{m}");

    // On the route whose passes last 3 s: solved once, then challenged (and solved) again
    // once the pass has expired, landing on the page each time.
    page.navigate(&format!("https://short.app.test:{port}/content/short-0"))
        .await;
    page.title_when("the short-pass page", |t| t == "content:/content/short-0")
        .await;
    // Navigating again and again lands on each page; once the pass has expired one of the
    // navigations is challenged and solved on the way. (The content pages' favicon requests
    // may add challenges nobody solves, so solutions are what is counted.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        let m = metrics_text(admin).await;
        if challenges(&m, "short.app.test/", "solved") >= 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired pass was never challenged again: {m}"
        );
        n += 1;
        page.navigate(&format!("https://short.app.test:{port}/content/short-{n}"))
            .await;
        let want = format!("content:/content/short-{n}");
        page.title_when("each visit lands on its page", |t| t == want)
            .await;
    }
    let m = metrics_text(admin).await;
    assert_eq!(challenges(&m, "short.app.test/", "solved"), 2.0, "{m}");
    assert_eq!(challenges(&m, "app.test/", "failed"), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_solving_at_once_both_get_through_and_refused_cookies_are_explained() {
    init_logs();
    let (gateway, _c) = challenged_stack("challenge-tabs").await;
    let admin = gateway.admin_addr.expect("admin");
    let port = gateway.https_addr.port();
    let profile = tempfile::tempdir().expect("profile");
    let browser = chromium("about:blank", profile.path());
    let endpoint = devtools_endpoint(&browser).await;
    open_tab(&endpoint, "about:blank").await;
    let mut tabs = attach_all(&endpoint, 2).await;
    // Both tabs ask for a page at once: each gets its own puzzle while the other solves.
    for (tab, name) in tabs.iter_mut().zip(["tab-a", "tab-b"]) {
        tab.navigate(&format!("https://app.test:{port}/content/{name}"))
            .await;
    }
    let mut landed = Vec::new();
    for tab in &mut tabs {
        landed.push(
            tab.title_when("each tab on its page", |t| t.starts_with("content:"))
                .await,
        );
    }
    landed.sort();
    assert_eq!(landed, ["content:/content/tab-a", "content:/content/tab-b"]);
    // Every puzzle a tab was given was solved and accepted (both, unless one tab's request
    // came after the other's pass was set, in which case it needed none).
    let m = metrics_text(admin).await;
    assert_eq!(challenges(&m, "app.test/", "failed"), 0.0, "{m}");
    let issued = challenges(&m, "app.test/", "issued");
    assert!(issued >= 1.0, "{m}");
    assert_eq!(challenges(&m, "app.test/", "solved"), issued, "{m}");
    drop(tabs);
    drop(browser);

    // A browser that refuses cookies is told so, and the page does not loop.
    let profile = tempfile::tempdir().expect("profile");
    std::fs::create_dir_all(profile.path().join("Default")).expect("profile dir");
    std::fs::write(
        profile.path().join("Default/Preferences"),
        r#"{"profile":{"default_content_setting_values":{"cookies":2}}}"#,
    )
    .expect("preferences");
    let before = challenges(&metrics_text(admin).await, "app.test/", "issued");
    let browser = chromium(
        &format!("https://app.test:{port}/content/c"),
        profile.path(),
    );
    let mut page = attach(&browser).await;
    let problem = page
        .eval_when(
            "the cookie problem to be shown",
            "document.getElementById('problem') ? document.getElementById('problem').textContent : ''",
            |t| !t.is_empty(),
        )
        .await;
    assert!(problem.contains("cookies"), "{problem}");
    assert_eq!(page.eval("document.title").await, "Checking your browser");
    let m = metrics_text(admin).await;
    assert_eq!(challenges(&m, "app.test/", "issued"), before + 1.0, "{m}");
}
