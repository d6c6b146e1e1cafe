//! The tunnel itself, in-process: authentication and its reasons, certificate verification,
//! replicas sharing load, reconnection after a gateway restart, drain, junk on the tunnel port.

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use netwall_tests::harness::*;

const ROUTE: &str = "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n";

async fn gateway(pki: &Pki) -> netwall_gateway::RunningGateway {
    init_logs();
    start_gateway(&pki.gateway_toml(ROUTE)).await
}

/// Two connectors on tunnel `app`, in front of samples named `replica-a` and `replica-b`.
async fn two_replicas(
    pki: &Pki,
    gw: &netwall_gateway::RunningGateway,
) -> (
    netwall_connector::RunningConnector,
    netwall_connector::RunningConnector,
) {
    let (a, b) = (
        start_sample("replica-a").await,
        start_sample("replica-b").await,
    );
    let replica = |addr| {
        start_connector(
            &pki.connector_toml(&[gw.tunnel_addr], &format!("web = \"http://{addr}\""), ""),
            &pki.credential,
        )
    };
    let pair = (replica(a), replica(b));
    wait_tunnel(gw, 2).await;
    pair
}

async fn expect_fatal(connector: &netwall_connector::RunningConnector) -> String {
    tokio::time::timeout(Duration::from_secs(10), connector.fatal())
        .await
        .expect("connector gives up on a permanent rejection")
}

#[tokio::test]
async fn bad_credential_is_rejected_with_its_reason_and_counted() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let sample = start_sample("web").await;
    let c = start_connector(
        &pki.connector_toml(&[gw.tunnel_addr], &format!("web = \"http://{sample}\""), ""),
        "not-the-credential",
    );
    let reason = expect_fatal(&c).await;
    assert!(
        reason.contains("tunnel name or credential rejected")
            && reason.contains("check this connector's `tunnel = \"app\"` and its credential"),
        "{reason}"
    );
    assert_eq!(gw.registry.get("app").map(|t| t.live_count()), Some(0));
    let m = metrics_text(gw.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(
            &m,
            "netwall_tunnel_handshakes_total{result=\"bad_credential\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn unknown_tunnel_is_rejected_with_its_reason() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let toml = pki
        .connector_toml(&[gw.tunnel_addr], "web = \"http://127.0.0.1:1\"", "")
        .replace("tunnel = \"app\"", "tunnel = \"other\"");
    let c = start_connector(&toml, &pki.credential);
    let reason = expect_fatal(&c).await;
    // The same answer as for a wrong credential: the name's existence is not revealed.
    assert!(
        reason.contains("tunnel name or credential rejected")
            && reason.contains("`tunnel = \"other\"`"),
        "{reason}"
    );
    let m = metrics_text(gw.admin_addr.expect("admin")).await;
    assert_eq!(
        metric(
            &m,
            "netwall_tunnel_handshakes_total{result=\"unknown_tunnel\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn repeated_bad_credentials_from_one_address_are_answered_ever_later() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let toml = pki.connector_toml(&[gw.tunnel_addr], "web = \"http://127.0.0.1:1\"", "");
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let c = start_connector(&toml, "guess");
        let reason = expect_fatal(&c).await;
        assert!(
            reason.contains("tunnel name or credential rejected"),
            "{reason}"
        );
        took.push(started.elapsed());
    }
    // 250 ms, 500 ms, 1 s before each answer (netwall_gateway::tunnel::throttle).
    assert!(took[0] >= Duration::from_millis(250), "{took:?}");
    assert!(took[2] >= Duration::from_secs(1), "{took:?}");
    assert!(took[2] > took[0], "{took:?}");
    // The right credential from the same address still gets in (no lockout yet), and clears
    // the record.
    let sample = start_sample("web").await;
    let _ok = start_connector(
        &pki.connector_toml(&[gw.tunnel_addr], &format!("web = \"http://{sample}\""), ""),
        &pki.credential,
    );
    wait_tunnel(&gw, 1).await;
}

#[tokio::test]
async fn a_gateway_with_an_unexpected_certificate_is_refused() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    // Pin some other certificate: the connector must not talk to this gateway.
    let toml = pki
        .connector_toml(
            &[gw.tunnel_addr],
            "web = \"http://127.0.0.1:1\"",
            &format!("pin_sha256 = [\"{}\"]", "ab".repeat(32)),
        )
        .replace(&format!("ca_file = \"{}\"", pki.ca.display()), "");
    let _c = start_connector(&toml, &pki.credential);
    // It keeps retrying (a certificate mismatch may be a transient misroute) and never gets in.
    let m_before = metrics_text(gw.admin_addr.expect("admin")).await;
    wait_until(Duration::from_secs(10), "failed handshakes", || {
        let admin = gw.admin_addr.expect("admin");
        async move {
            metric(
                &metrics_text(admin).await,
                "netwall_tunnel_handshakes_total{result=\"failed\"}",
            ) >= 2.0
        }
    })
    .await;
    assert_eq!(
        gw.registry.get("app").map(|t| t.live_count()),
        Some(0),
        "{m_before}"
    );

    // The right pin gets in.
    let pin = netwall_connector::dial::pin_of_pem_file(&pki.tunnel_cert).expect("pin");
    let toml = pki
        .connector_toml(
            &[gw.tunnel_addr],
            "web = \"http://127.0.0.1:1\"",
            &format!("pin_sha256 = [\"{}\"]", hex::encode(pin)),
        )
        .replace(&format!("ca_file = \"{}\"", pki.ca.display()), "");
    let _ok = start_connector(&toml, &pki.credential);
    wait_tunnel(&gw, 1).await;
}

#[tokio::test]
async fn two_replicas_share_load() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let (_ca, _cb) = two_replicas(&pki, &gw).await;
    let client = HttpsClient::new(gw.https_addr, &pki.ca_der, false);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let r = client.get("https://app.test/").await;
        assert_eq!(r.status, StatusCode::OK);
        let who = r
            .text()
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_owned();
        *seen.entry(who).or_default() += 1;
    }
    let (na, nb) = (
        seen.get("replica-a").copied().unwrap_or(0),
        seen.get("replica-b").copied().unwrap_or(0),
    );
    assert_eq!(na + nb, 200, "{seen:?}");
    assert!(na >= 60 && nb >= 60, "load was not shared: {seen:?}");
}

#[tokio::test]
async fn connector_reconnects_by_itself_after_a_gateway_restart() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let tunnel_addr = gw.tunnel_addr;
    let sample = start_sample("web").await;
    let c = start_connector(
        &pki.connector_toml(&[tunnel_addr], &format!("web = \"http://{sample}\""), ""),
        &pki.credential,
    );
    wait_tunnel(&gw, 1).await;
    let mut live = c.live_connections();
    assert!(gw.shutdown().await, "gateway drained");
    tokio::time::timeout(Duration::from_secs(10), live.wait_for(|n| *n == 0))
        .await
        .expect("connector notices")
        .expect("watch");

    // The new gateway takes over the same tunnel address once the old socket is released.
    let toml = pki.gateway_toml_at(&tunnel_addr.to_string(), ROUTE);
    let config =
        netwall_gateway::config::GatewayConfig::parse(std::path::Path::new("restart.toml"), &toml)
            .expect("config");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let gw2 = loop {
        let loaded = netwall_gateway::config::Loaded::in_code(config.clone(), Default::default());
        match netwall_gateway::start(loaded).await {
            Ok(g) => break g,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "tunnel port not free yet")
            }
            Err(e) => panic!("restarted gateway cannot start: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_tunnel(&gw2, 1).await;
    let r = HttpsClient::new(gw2.https_addr, &pki.ca_der, true)
        .get("https://app.test/")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn connector_keeps_one_connection_per_gateway() {
    let pki = Pki::new();
    let (g1, g2) = (gateway(&pki).await, gateway(&pki).await);
    let sample = start_sample("web").await;
    let c = start_connector(
        &pki.connector_toml(
            &[g1.tunnel_addr, g2.tunnel_addr],
            &format!("web = \"http://{sample}\""),
            "connections_per_gateway = 2",
        ),
        &pki.credential,
    );
    wait_tunnel(&g1, 2).await;
    wait_tunnel(&g2, 2).await;
    // The gateways register a connection before the connector has counted it as live.
    let live = c.live_connections();
    wait_until(
        Duration::from_secs(10),
        "the connector to count 4 live connections",
        || {
            let n = *live.borrow();
            async move { n == 4 }
        },
    )
    .await;
    for g in [&g1, &g2] {
        let r = HttpsClient::new(g.https_addr, &pki.ca_der, false)
            .get("https://app.test/")
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_takes_no_new_ones() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let (ca, _cb) = two_replicas(&pki, &gw).await;
    let client = HttpsClient::new(gw.https_addr, &pki.ca_der, false);
    // Twenty slow requests spread over both replicas, then replica A drains mid-flight.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let c = client.clone();
        slow.spawn(async move { c.get("https://app.test/slow?ms=700").await });
    }
    wait_until(
        Duration::from_secs(5),
        "requests in flight on both replicas",
        || {
            let t = gw.registry.get("app");
            async move { t.is_some_and(|t| t.live().iter().all(|c| c.in_flight() > 0)) }
        },
    )
    .await;
    let drain = tokio::spawn(ca.shutdown());
    wait_tunnel(&gw, 1).await;
    // While A drains, new requests all go to B.
    for _ in 0..10 {
        let r = client.get("https://app.test/").await;
        assert!(
            r.text().starts_with("hello from replica-b "),
            "{}",
            r.text()
        );
    }
    while let Some(r) = slow.join_next().await {
        let r = r.expect("task");
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "slow\n"));
    }
    assert!(
        drain.await.expect("drain task"),
        "replica A drained within its deadline"
    );
}

#[tokio::test]
async fn junk_on_the_tunnel_port_does_not_stall_real_connectors() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    // Many sources of garbage datagrams and half-open QUIC handshakes.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    for i in 0..2000u32 {
        let _ = junk
            .send_to(&i.to_be_bytes().repeat(300), gw.tunnel_addr)
            .await;
    }
    let sample = start_sample("web").await;
    let _c = start_connector(
        &pki.connector_toml(&[gw.tunnel_addr], &format!("web = \"http://{sample}\""), ""),
        &pki.credential,
    );
    wait_tunnel(&gw, 1).await;
    let r = HttpsClient::new(gw.https_addr, &pki.ca_der, false)
        .get("https://app.test/")
        .await;
    assert_eq!(r.status, StatusCode::OK);
}
