//! `[route.cors]` and `[route.headers]` over real TLS: preflights answered at the edge (with no
//! connector at all behind the route), refused ones counted, and the service's responses
//! carrying the edge's CORS and security headers in place of its own.

use http::{Method, Request, StatusCode};
use netwall_tests::harness::*;

const CORS: &str = r#"
[route.cors]
allowed_origins = ["https://app.example.com", "https://*.example.org"]
allowed_methods = ["GET", "POST"]
allowed_headers = ["content-type", "x-api-key"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "5m"
[route.headers]
set = { "strict-transport-security" = "max-age=63072000; includeSubDomains", "x-frame-options" = "DENY" }
remove = ["content-type"]
"#;

fn route(host: &str) -> String {
    format!("[[route]]\nhost = \"{host}\"\ntunnel = \"app\"\nservice = \"web\"\n{CORS}")
}

fn preflight(origin: &str, method: &str, headers: &str) -> Request<ClientBody> {
    let mut r = Request::builder()
        .method(Method::OPTIONS)
        .uri("https://app.test/api")
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        r = r.header("access-control-request-headers", headers);
    }
    r.body(body("")).expect("request")
}

#[tokio::test]
async fn preflights_are_answered_at_the_edge_even_with_no_connector_behind_the_route() {
    init_logs();
    let pki = Pki::new();
    // No connector: anything that reached for the tunnel would get 502.
    let gateway = start_gateway(&pki.gateway_toml(&route("app.test"))).await;
    let c = HttpsClient::new(gateway.https_addr, &pki.ca_der, false);
    let ok = c
        .send(preflight(
            "https://app.example.com",
            "POST",
            "Content-Type, X-API-Key",
        ))
        .await
        .expect("preflight");
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.text());
    let h = &ok.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-api-key");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "300");
    assert_eq!(h["x-frame-options"], "DENY");
    let ok = c
        .send(preflight("https://shop.eu.example.org", "GET", ""))
        .await
        .expect("preflight");
    assert_eq!(ok.status, StatusCode::NO_CONTENT);

    for (origin, method, headers) in [
        ("https://evil.example", "GET", ""),
        ("http://app.example.com", "GET", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "POST", "authorization"),
    ] {
        let no = c
            .send(preflight(origin, method, headers))
            .await
            .expect("preflight");
        assert_eq!(
            no.status,
            StatusCode::FORBIDDEN,
            "{origin} {method} {headers}"
        );
        assert!(no.headers.get("access-control-allow-origin").is_none());
    }
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"cors_refused\"}"),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "netwall_rejections_total{reason=\"tunnel_offline\"}"),
        0.0,
        "{m}"
    );
    // An OPTIONS that is not a preflight is an ordinary request: it goes for the tunnel.
    let plain = c
        .send(
            Request::builder()
                .method(Method::OPTIONS)
                .uri("https://app.test/api")
                .body(body(""))
                .expect("request"),
        )
        .await
        .expect("options");
    assert_eq!(plain.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn the_services_responses_carry_the_edges_cors_and_security_headers() {
    init_logs();
    let pki = Pki::new();
    let sample = start_sample("cors").await;
    let (gateway, _c) = start_stack(
        &pki,
        &route("app.test"),
        &format!("web = \"http://{sample}\""),
    )
    .await;
    let c = HttpsClient::new(gateway.https_addr, &pki.ca_der, true);
    let get = |origin: Option<&'static str>| {
        let c = c.clone();
        async move {
            let mut r = Request::get("https://app.test/hello");
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            c.send(r.body(body("")).expect("request"))
                .await
                .expect("get")
        }
    };
    let a = get(Some("https://app.example.com")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().starts_with("hello from cors"), "{}", a.text());
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(a.headers["access-control-allow-credentials"], "true");
    assert_eq!(a.headers["access-control-expose-headers"], "x-request-id");
    assert_eq!(a.headers["vary"], "origin");
    assert_eq!(
        a.headers["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert!(
        a.headers.get("content-type").is_none(),
        "removed by [route.headers]"
    );
    // Another origin, or none: the answer comes, with no CORS grant a browser would honour.
    for origin in [Some("https://evil.example"), None] {
        let a = get(origin).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.headers.get("access-control-allow-origin").is_none());
        assert_eq!(a.headers["x-frame-options"], "DENY");
    }
}
