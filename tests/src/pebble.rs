//! A real ACME CA on loopback: Debian's `pebble`, with `pebble-challtestsrv` as its DNS
//! server answering 127.0.0.1 for every name, so the CA validates challenges against a
//! gateway on this machine. `ops/test` installs the package.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::harness::{HttpsClient, Pki, Proc};

/// Ports handed out for listeners the CA must know in advance: below the kernel's ephemeral
/// range (32768 and up), so no outgoing connection of this or another test holds one.
const FIXED_PORTS: std::ops::Range<u16> = 20000..32000;

/// A port in [`FIXED_PORTS`] that `bind` accepts now on loopback (the caller binds it next).
fn free_port(bind: impl Fn(u16) -> bool) -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(FIXED_PORTS);
        if bind(port) {
            return port;
        }
    }
    panic!("no free port in {FIXED_PORTS:?}");
}

/// A free TCP port on loopback, outside the ephemeral range.
pub fn free_tcp_port() -> u16 {
    free_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A free UDP port on loopback, outside the ephemeral range.
pub fn free_udp_port() -> u16 {
    free_port(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A running pebble and its DNS server; both stop when dropped.
pub struct Pebble {
    pebble: Proc,
    _dns: Proc,
    /// The directory URL.
    pub directory: String,
    management: SocketAddr,
    ca: CertificateDer<'static>,
}

impl Pebble {
    /// Start a CA whose validation connects to `https_port` (TLS-ALPN-01) and `http_port`
    /// (HTTP-01) on 127.0.0.1, issuing certificates valid for `validity`. Its own HTTPS
    /// certificate is signed by `pki`'s CA (so `pki.ca` is the `ca_file` a client trusts).
    pub fn start(pki: &Pki, https_port: u16, http_port: u16, validity: Duration) -> Pebble {
        let dir = pki.dir.path();
        let dns_port = free_udp_port();
        let (api, management) = (free_tcp_port(), free_tcp_port());
        let mut dns = Command::new("pebble-challtestsrv");
        dns.args([
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_tcp_port()),
        ]);
        let dns = Proc::spawn(to_stderr(dns), dir.join("challtestsrv.log"));
        dns.wait_line("DNS-01", Duration::from_secs(20));

        let (cert, key) = pki.issue("pebble", &["localhost"]);
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{api}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": https_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity.as_secs(),
            }
        });
        let file = dir.join("pebble.json");
        std::fs::write(&file, config.to_string()).expect("write pebble config");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&file)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            // Validate at once, never reject a nonce at random, never reuse an
            // authorization: every order is checked end to end, deterministically.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let pebble = Proc::spawn(to_stderr(cmd), dir.join("pebble.log"));
        pebble.wait_line("ACME directory available", Duration::from_secs(20));
        Pebble {
            pebble,
            _dns: dns,
            directory: format!("https://localhost:{api}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            ca: pki.ca_der.clone(),
        }
    }

    /// The root that signs what this CA issues (random per run), as DER.
    pub async fn root(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        let answer = HttpsClient::new(self.management, &self.ca, false)
            .get("https://localhost/roots/0")
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        CertificateDer::from_pem_slice(&answer.body).expect("root PEM")
    }

    /// Stop the CA (its directory becomes unreachable).
    pub fn stop(&mut self) {
        let _ = self.pebble.child.kill();
        let _ = self.pebble.child.wait();
    }

    /// The CA's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.pebble.log).unwrap_or_default()
    }
}

/// Run `cmd` with its standard output sent to standard error, where [`Proc`] reads.
fn to_stderr(cmd: Command) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("exec \"$0\" \"$@\" 1>&2")
        .arg(cmd.get_program());
    sh.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    sh
}
