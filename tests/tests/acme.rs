//! Certificates from a real ACME CA (Debian's pebble on loopback): first issuance over
//! TLS-ALPN-01 and HTTP-01, renewal ahead of expiry without a restart, and an unreachable
//! directory that leaves the certificate in use serving, logged and counted.

use std::path::Path;
use std::time::Duration;

use netwall_tests::harness::*;
use netwall_tests::pebble::{Pebble, free_tcp_port};
use rustls::pki_types::CertificateDer;

/// A gateway configuration on fixed loopback ports (the CA must know them before the
/// gateway starts) whose certificate for `app.test` comes from `directory`.
fn acme_toml(pki: &Pki, ports: (u16, u16), directory: &str, storage: &Path, acme: &str) -> String {
    format!(
        r#"
gateway_id = "acme-gw"
[https]
listen = "127.0.0.1:{https}"
[https.acme]
directory = "{directory}"
contact = ["mailto:ops@app.test"]
storage = "{storage}"
ca_file = "{ca}"
retry_after = "1s"
{acme}
[http]
listen = "127.0.0.1:{http}"
[tunnel_listener]
listen = "127.0.0.1:0"
cert = "{tc}"
key = "{tk}"
[admin]
listen = "127.0.0.1:0"
[[tunnel]]
name = "app"
credential_sha256 = "{hash}"
[[route]]
host = "app.test"
tunnel = "app"
service = "web"
"#,
        https = ports.0,
        http = ports.1,
        storage = storage.display(),
        ca = pki.ca.display(),
        tc = pki.tunnel_cert.display(),
        tk = pki.tunnel_key.display(),
        hash = pki.credential_sha256,
    )
}

/// The certificate chain `app.test` is served, verified against `root`.
async fn served_chain(
    gateway: &netwall_gateway::RunningGateway,
    root: &CertificateDer<'static>,
) -> Vec<Vec<u8>> {
    let tls = raw_tls(gateway.https_addr, root, "app.test").await;
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("certificates")
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// The leaf of the last certificate the gateway stored.
fn stored_leaf(storage: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(storage.join("cert.pem"))
        .expect("pem")
        .next()
        .expect("leaf")
        .expect("valid")
        .as_ref()
        .to_vec()
}

fn orders(gateway: &netwall_gateway::RunningGateway, result: &'static str) -> u64 {
    gateway
        .metrics
        .acme_orders
        .get_or_create(&netwall_gateway::metrics::ResultLabel { result })
        .get()
}

async fn wait_orders(
    gateway: &netwall_gateway::RunningGateway,
    result: &'static str,
    n: u64,
    limit: Duration,
) {
    wait_until(limit, &format!("{n} ACME order(s) {result}"), || async {
        orders(gateway, result) >= n
    })
    .await;
}

async fn start_file(pki: &Pki, text: &str) -> netwall_gateway::RunningGateway {
    let file = pki.dir.path().join("gateway.toml");
    std::fs::write(&file, text).expect("write config");
    let loaded = netwall_gateway::config::GatewayConfig::load(&file)
        .unwrap_or_else(|e| panic!("gateway config: {e}"));
    netwall_gateway::start(loaded)
        .await
        .expect("gateway starts")
}

/// A CA, and a gateway that has had its first certificate from it.
struct Issued {
    pki: Pki,
    ca: Pebble,
    storage: std::path::PathBuf,
    text: String,
    gateway: netwall_gateway::RunningGateway,
    root: CertificateDer<'static>,
}

/// Start a CA issuing certificates valid `validity` and a gateway ordering from it with the
/// `[https.acme]` lines `acme`; wait for the first certificate, which the CA validated
/// against the gateway (nothing else on this machine answers its checks).
async fn first_issuance(validity: Duration, acme: &str) -> Issued {
    init_logs();
    let pki = Pki::new();
    let ports = (free_tcp_port(), free_tcp_port());
    let ca = Pebble::start(&pki, ports.0, ports.1, validity);
    let storage = pki.dir.path().join("acme");
    let text = acme_toml(&pki, ports, &ca.directory, &storage, acme);
    let gateway = start_file(&pki, &text).await;
    wait_orders(&gateway, "issued", 1, Duration::from_secs(60)).await;
    let root = ca.root().await;
    assert!(
        ca.log().contains("set VALID by completed challenge"),
        "{}",
        ca.log()
    );
    assert_eq!(
        served_chain(&gateway, &root).await[0],
        stored_leaf(&storage)
    );
    Issued {
        pki,
        ca,
        storage,
        text,
        gateway,
        root,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_issues_renews_and_survives_an_unreachable_directory() {
    // Certificates valid 40 s, renewed 30 s before expiry: a renewal every ~10 s.
    let Issued {
        pki,
        mut ca,
        storage,
        text,
        gateway,
        root,
    } = first_issuance(
        Duration::from_secs(40),
        "challenge = \"tls-alpn-01\"\nrenew_before = \"30s\"",
    )
    .await;
    let first = served_chain(&gateway, &root).await;
    assert!(first.len() >= 2, "leaf and intermediate");
    let stored = std::fs::read_to_string(storage.join("cert.pem")).expect("stored chain");
    assert!(stored.contains("BEGIN CERTIFICATE"));
    // Its expiry is exported for the alert rules.
    let m = metrics_text(gateway.admin_addr.expect("admin")).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let expiry = metric(
        &m,
        &format!(
            "netwall_certificate_not_after_seconds{{listener=\"https\",file=\"{}\"}}",
            storage.join("cert.pem").display()
        ),
    );
    assert!(expiry > now && expiry < now + 60.0, "{expiry} vs {now}");

    // Renewal ahead of expiry, without a restart: the next handshake gets the new leaf.
    wait_orders(&gateway, "issued", 2, Duration::from_secs(60)).await;
    let second = served_chain(&gateway, &root).await;
    assert_ne!(first[0], second[0], "a renewed leaf");

    // The directory goes away: the next renewal fails, is counted and logged, and the
    // certificate in use keeps serving.
    ca.stop();
    wait_orders(&gateway, "failed", 1, Duration::from_secs(60)).await;
    assert_eq!(
        served_chain(&gateway, &root).await[0],
        stored_leaf(&storage)
    );
    gateway.shutdown().await;

    // A restart with the directory still gone serves the stored certificate at once.
    let again = start_file(&pki, &text).await;
    assert_eq!(served_chain(&again, &root).await[0], stored_leaf(&storage));
    wait_orders(&again, "failed", 1, Duration::from_secs(30)).await;
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_is_answered_on_the_redirect_listener() {
    let Issued { gateway, .. } = first_issuance(
        Duration::from_secs(3600),
        "challenge = \"http-01\"\nrenew_before = \"10m\"",
    )
    .await;

    // Between checks an unknown token is a 404, and everything else still redirects.
    let http = gateway.http_addr.expect("http listener");
    let plain = |path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        out
    };
    let unknown = plain("/.well-known/acme-challenge/nope").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    let other = plain("/x").await;
    assert!(other.starts_with("HTTP/1.1 308"), "{other}");
    gateway.shutdown().await;
}
