//! Headless Chromium driven over the DevTools protocol, for tests and benchmarks of what a
//! browser sees: tabs, navigation, and evaluating expressions in a page.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::SinkExt;
use http_body_util::BodyExt;
use serde_json::json;

use crate::harness::Proc;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium on `url`, with every host name resolved to loopback.
pub fn chromium(url: &str, profile: &Path) -> Proc {
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

/// Open another tab on `url` in the browser at DevTools `endpoint`.
pub async fn open_tab(endpoint: &str, url: &str) {
    let answer = http_call(http::Method::PUT, endpoint, &format!("/json/new?{url}")).await;
    assert!(answer.contains("webSocketDebuggerUrl"), "{answer}");
}

/// A page Chromium opened, driven over the DevTools protocol.
pub struct Page {
    devtools: yawc::WebSocket<tokio::net::TcpStream>,
    next_id: u64,
}

/// The DevTools address of `browser`.
pub async fn devtools_endpoint(browser: &Proc) -> String {
    let line = tokio::task::block_in_place(|| {
        browser.wait_line("DevTools listening on ws://", Duration::from_secs(30))
    });
    line.split("ws://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("DevTools address")
        .to_owned()
}

/// Attach to every page target of the browser at DevTools `endpoint` once there are `n`.
pub async fn attach_all(endpoint: &str, n: usize) -> Vec<Page> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let pages = loop {
        let list = http_get(endpoint, "/json/list").await;
        let targets: serde_json::Value = serde_json::from_str(&list).expect("target list");
        let pages: Vec<serde_json::Value> = targets
            .as_array()
            .map(|t| t.iter().filter(|t| t["type"] == "page").cloned().collect())
            .unwrap_or_default();
        if pages.len() >= n {
            break pages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} tabs opened",
            pages.len()
        );
        // Poll interval while the tabs open, under the deadline above.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut out = Vec::new();
    for page in pages {
        let debugger: url::Url = page["webSocketDebuggerUrl"]
            .as_str()
            .expect("debugger url")
            .parse()
            .expect("url");
        let tcp = tokio::net::TcpStream::connect(endpoint)
            .await
            .expect("connect DevTools");
        let devtools = yawc::WebSocket::handshake(debugger, tcp, yawc::Options::default())
            .await
            .expect("DevTools handshake");
        out.push(Page {
            devtools,
            next_id: 1,
        });
    }
    out
}

/// Attach to the page of `browser`.
pub async fn attach(browser: &Proc) -> Page {
    attach_all(&devtools_endpoint(browser).await, 1)
        .await
        .remove(0)
}

impl Page {
    /// Call a DevTools method; its result.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let ask = json!({"id": id, "method": method, "params": params});
        self.devtools
            .send(yawc::Frame::text(ask.to_string()))
            .await
            .expect("ask");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let f = tokio::time::timeout_at(deadline, self.devtools.next_frame())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("frame");
            let v: serde_json::Value = serde_json::from_slice(f.payload()).unwrap_or_default();
            if v["id"] == id {
                return v["result"].clone();
            }
        }
    }

    /// The string value of `expression` in the page.
    pub async fn eval(&mut self, expression: &str) -> String {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Load `url` in this tab.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// The page's title once `done` holds for it, within 30 s.
    pub async fn title_when(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.eval_when(what, "document.title", done).await
    }

    /// `expression` once `done` holds for its value, within 30 s.
    pub async fn eval_when(
        &mut self,
        what: &str,
        expression: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        self.eval_within(Duration::from_secs(30), what, expression, done)
            .await
    }

    /// `expression` once `done` holds for its value, within `limit`.
    pub async fn eval_within(
        &mut self,
        limit: Duration,
        what: &str,
        expression: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let value = self.eval(expression).await;
            if done(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {expression} is still {value:?}"
            );
            // Poll interval while waiting for the page's condition, under the deadline above.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// GET `path` from `authority` over plain HTTP/1.1 (the DevTools endpoint); the body.
pub async fn http_get(authority: &str, path: &str) -> String {
    http_call(http::Method::GET, authority, path).await
}

/// `method` `path` on `authority` over plain HTTP/1.1; the body.
pub async fn http_call(method: http::Method, authority: &str, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let resp = send.send_request(req).await.expect("request");
    String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned()
}
