//! What a browser sees: real headless Chromium opens WebSockets through the gateway and the
//! tunnel. Its own Origin header meets the allow-list and its own permessage-deflate offer
//! meets the edge. Chromium is driven over the DevTools protocol; the page reports the outcome
//! in its title.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::SinkExt;
use http_body_util::BodyExt;
use netwall_tests::harness::*;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium on `url`, with every host name resolved to loopback.
fn chromium(url: &str, profile: &Path) -> Proc {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: ops/test installs Debian's chromium"
    );
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--ignore-certificate-errors",
        "--host-resolver-rules=MAP * 127.0.0.1",
        "--remote-debugging-port=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url);
    Proc::spawn(cmd, profile.join("chromium.log"))
}

/// The page Chromium opened, driven over the DevTools protocol.
struct Page {
    devtools: yawc::WebSocket<tokio::net::TcpStream>,
    next_id: u64,
}

/// Attach to the page of `browser`.
async fn attach(browser: &Proc) -> Page {
    let line = tokio::task::block_in_place(|| {
        browser.wait_line("DevTools listening on ws://", Duration::from_secs(30))
    });
    let endpoint = line
        .split("ws://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("DevTools address")
        .to_owned();
    // Find the page target.
    let list = http_get(&endpoint, "/json/list").await;
    let targets: serde_json::Value = serde_json::from_str(&list).expect("target list");
    let page = targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .expect("a page target")
        .clone();
    let debugger: url::Url = page["webSocketDebuggerUrl"]
        .as_str()
        .expect("debugger url")
        .parse()
        .expect("url");
    let tcp = tokio::net::TcpStream::connect(&endpoint)
        .await
        .expect("connect DevTools");
    let devtools = yawc::WebSocket::handshake(debugger, tcp, yawc::Options::default())
        .await
        .expect("DevTools handshake");
    Page {
        devtools,
        next_id: 1,
    }
}

impl Page {
    /// The page's title once `done` holds for it, within 30 s.
    async fn title_when(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            let id = self.next_id;
            self.next_id += 1;
            let ask = json!({"id": id, "method": "Runtime.evaluate", "params": {"expression": "document.title", "returnByValue": true}});
            self.devtools
                .send(yawc::Frame::text(ask.to_string()))
                .await
                .expect("ask");
            let title = loop {
                let f = tokio::time::timeout_at(deadline, self.devtools.next_frame())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: the title is still {last:?}"))
                    .expect("frame");
                let v: serde_json::Value = serde_json::from_slice(f.payload()).unwrap_or_default();
                if v["id"] == id {
                    break v["result"]["result"]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                }
            };
            if done(&title) {
                return title;
            }
            last = title.clone();
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the title is still {title:?}"
            );
            // Poll interval while waiting for the page's condition, under the deadline above.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The page's title once the script has reported (`ok:…` or `closed:…`).
async fn page_title(browser: &Proc) -> String {
    attach(browser)
        .await
        .title_when("the page to report", |t| {
            t.starts_with("ok:") || t.starts_with("closed:")
        })
        .await
}

async fn http_get(authority: &str, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let resp = send.send_request(req).await.expect("request");
    String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_opens_a_websocket_through_the_tunnel_and_the_origin_list_holds() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("browser").await;
    let route = |host: &str| {
        format!(
            "[[route]]\nhost = \"{host}\"\ntunnel = \"app\"\nservice = \"web\"\n[route.websocket]\nallowed_origins = [\"https://app.test\"]\n"
        )
    };
    let routes = route("app.test") + &route("evil.test");
    let (gateway, _c) = start_stack(&pki, &routes, &format!("web = \"http://{sample}\"")).await;
    let port = gateway.https_addr.port();

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
    let gateway_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let api = format!(
        "[[route]]\nhost = \"api.test\"\ntunnel = \"app\"\nservice = \"web\"\n\
         [route.cors]\nallowed_origins = [\"https://app.test:{gateway_port}\"]\nallowed_methods = [\"POST\"]\nallowed_headers = [\"x-api-key\", \"content-type\"]\n"
    );
    let routes = page("app.test") + &page("evil.test") + &api;
    let toml = pki.gateway_toml(&routes).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{gateway_port}\""),
        1,
    );
    let gateway = start_gateway(&toml).await;
    let _c = start_connector(
        &pki.connector_toml_for(&gateway, &format!("web = \"http://{sample}\""), ""),
        &pki.credential,
    );
    wait_tunnel(&gateway, 1).await;
    assert_eq!(gateway.https_addr.port(), gateway_port);

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
}
