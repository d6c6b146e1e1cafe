//! Real databases and their clients for the raw-TCP tests: PostgreSQL and `psql` from
//! Debian's packages (`ops/test` installs them), and client certificates of two CAs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::harness::Proc;

/// A client CA with one client certificate (CN=admin), and a certificate of another CA.
pub struct ClientCerts {
    _dir: tempfile::TempDir,
    /// The CA a TCP route trusts (PEM file).
    pub ca: PathBuf,
    /// Its client certificate (PEM file).
    pub cert: PathBuf,
    /// Its key (PEM file, mode 0600 as libpq demands).
    pub key: PathBuf,
    /// A certificate of another CA, with the same subject.
    pub stranger_cert: PathBuf,
    /// Its key.
    pub stranger_key: PathBuf,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl ClientCerts {
    /// Generate both CAs and their certificates into a fresh folder.
    pub fn new() -> ClientCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            p
        };
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().expect("key");
            let cert = p.self_signed(&key).expect("ca");
            (cert, key)
        };
        let client = |ca: &(rcgen::Certificate, KeyPair), cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().expect("key");
            let cert = p.signed_by(&key, &ca.0, &ca.1).expect("client cert");
            (cert, key)
        };
        let ours = ca("netwall test client CA");
        let theirs = ca("someone else's CA");
        let (c, k) = client(&ours, "admin");
        let (sc, sk) = client(&theirs, "admin");
        ClientCerts {
            ca: write("client-ca.pem", &ours.0.pem()),
            cert: write("client.pem", &c.pem()),
            key: write("client.key", &k.serialize_pem()),
            stranger_cert: write("stranger.pem", &sc.pem()),
            stranger_key: write("stranger.key", &sk.serialize_pem()),
            cert_der: c.der().clone(),
            key_der: k.serialize_der(),
            _dir: dir,
        }
    }

    /// A TLS connection to `addr` presenting our client certificate, trusting `server_ca`
    /// for a server named `sni`.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        server_ca: &CertificateDer<'static>,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_ca.clone()).expect("add CA");
        let cfg = rustls::ClientConfig::builder_with_provider(netwall_tunnel::crypto::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("client certificate");
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
    }
}

impl Default for ClientCerts {
    fn default() -> Self {
        Self::new()
    }
}

/// The folder of PostgreSQL's server programs (`/usr/lib/postgresql/<version>/bin`), the
/// newest installed.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (ops/test installs postgresql)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql")
        .1
}

/// A PostgreSQL server of its own, on a Unix socket in its own folder and, when given a
/// port, on loopback; run as the `postgres` user (it refuses root) through `prefix` (e.g.
/// `ip netns exec NS`). Every connection it receives is logged.
pub struct Postgres {
    proc: Proc,
    /// Its Unix socket.
    pub socket: PathBuf,
    _data: tempfile::TempDir,
}

/// The port in the socket's name when the server has no TCP listener.
const SOCKET_ONLY_PORT: u16 = 5432;

impl Postgres {
    /// initdb into a fresh folder, then start the server; waits until it accepts connections.
    pub fn start(prefix: &[&str], tcp_port: Option<u16>, log: PathBuf) -> Postgres {
        let port = tcp_port.unwrap_or(SOCKET_ONLY_PORT);
        let listen = match tcp_port {
            Some(_) => "listen_addresses=127.0.0.1",
            None => "listen_addresses=",
        };
        let bin = postgres_bin();
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres user (created by Debian's postgresql package)");
        let data = tempfile::Builder::new()
            .prefix("netwall-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::os::unix::fs::chown(
            data.path(),
            Some(user.uid.as_raw()),
            Some(user.gid.as_raw()),
        )
        .expect("chown");
        let as_postgres = |program: &Path| {
            let mut cmd = Command::new(prefix.first().copied().unwrap_or("setpriv"));
            if !prefix.is_empty() {
                cmd.args(&prefix[1..]).arg("setpriv");
            }
            cmd.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(program);
            cmd
        };
        let pgdata = data.path().join("data");
        let init = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&pgdata)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .expect("initdb");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut server = as_postgres(&bin.join("postgres"));
        server
            .arg("-D")
            .arg(&pgdata)
            .args(["-p", &port.to_string(), "-k"])
            .arg(data.path())
            .args(["-c", listen, "-c", "log_connections=on", "-c", "fsync=off"]);
        let proc = Proc::spawn(server, log);
        proc.wait_line(
            "database system is ready to accept connections",
            Duration::from_secs(30),
        );
        Postgres {
            proc,
            socket: data.path().join(format!(".s.PGSQL.{port}")),
            _data: data,
        }
    }

    /// Connections the server has received so far (its log's lines for them).
    pub fn connections_received(&self) -> usize {
        std::fs::read_to_string(&self.proc.log)
            .unwrap_or_default()
            .matches("connection received:")
            .count()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the server's own processes end with it, at once. (A SIGKILL,
        // as `Proc` sends, would leave them to notice the postmaster is gone.)
        self.proc.signal(nix::sys::signal::Signal::SIGQUIT);
        let _ = self.proc.child.wait();
    }
}

/// Run `psql` through `prefix` on `conninfo` with one query: (trimmed stdout and stderr,
/// success).
pub fn psql(prefix: &[&str], conninfo: &str, query: &str) -> (String, String, bool) {
    let mut cmd = Command::new(prefix.first().copied().unwrap_or("psql"));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg("psql");
    }
    let out = cmd
        .args(["-X", "-q", "-t", "-A", "-d", conninfo, "-c", query])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .expect("psql (ops/test installs postgresql-client)");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        out.status.success(),
    )
}
