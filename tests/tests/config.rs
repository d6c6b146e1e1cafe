//! Configuration: every example parses, every fixture under `tests/invalid/` fails with the
//! file, line and key its first line promises (`# expect: ...`), and the binaries' offline
//! checks exit 0 or 1 accordingly.

use std::path::{Path, PathBuf};
use std::process::Command;

use netwall_tests::harness::bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn fixtures(kind: &str) -> Vec<(PathBuf, String)> {
    let dir = repo().join("tests/invalid").join(kind);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no `# expect:` line", p.display()))
                .to_owned();
            (p, expect)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "fixtures missing in {}", dir.display());
    out
}

#[test]
fn examples_parse() {
    let gw = netwall_gateway::config::GatewayConfig::load(&repo().join("examples/gateway.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!gw.config.routes.is_empty());
    // The production profile parses (its key files live on production hosts, so only the
    // configuration itself is checked here).
    let prod = netwall_gateway::config::GatewayConfig::load(
        &repo().join("examples/gateway-production.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        prod.config.profile.as_ref().map(|p| p.get_ref().as_str()),
        Some("production")
    );
    assert_eq!(prod.config.routes[1].websocket.max_message_bytes, 10240);
    assert!(prod.config.routes[2].challenge.is_some());
    let path = repo().join("examples/connector.toml");
    let src = std::fs::read_to_string(&path).expect("read");
    let c = netwall_connector::config::ConnectorConfig::parse(
        &path,
        &src,
        Path::new("/"),
        Some("credential".into()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.services.len(), 2);
}

#[test]
fn invalid_gateway_configs_name_file_line_and_key() {
    for (path, expect) in fixtures("gateway") {
        let err = netwall_gateway::config::GatewayConfig::load(&path)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", path.display()));
        let text = err.to_string();
        assert!(
            text.contains(&expect),
            "{}:\n  expected: {expect}\n  got:      {text}",
            path.display()
        );
    }
}

#[test]
fn invalid_connector_configs_name_file_line_and_key() {
    for (path, expect) in fixtures("connector") {
        let src = std::fs::read_to_string(&path).expect("read");
        let base = path.parent().expect("dir");
        let err = netwall_connector::config::ConnectorConfig::parse(
            &path,
            &src,
            base,
            Some("credential".into()),
        )
        .err()
        .or_else(|| {
            netwall_connector::config::ConnectorConfig::parse(&path, &src, base, None).err()
        })
        .unwrap_or_else(|| panic!("{} was accepted", path.display()));
        let text = err.to_string();
        assert!(
            text.contains(&expect),
            "{}:\n  expected: {expect}\n  got:      {text}",
            path.display()
        );
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let src = "[https]\nlisten = \"127.0.0.1:443\"\n[tunnel_listener]\nlisten = \"127.0.0.1:1\"\nself_signed = true\n\
               [[tunnel]]\nname = \"a\"\ncredential_sha256 = \"short\"\n[[route]]\nhost = \"bad host\"\ntunnel = \"nope\"\nservice = \"web\"\n";
    let err = netwall_gateway::config::GatewayConfig::parse(Path::new("many.toml"), src)
        .expect_err("invalid");
    let keys: Vec<_> = err.0.iter().filter_map(|e| e.key.clone()).collect();
    assert_eq!(
        keys,
        [
            "https",
            "tunnel[0].credential_sha256",
            "route[0].host",
            "route[0].tunnel"
        ],
        "{err}"
    );
}

#[test]
fn check_commands_exit_0_or_1() {
    let ok = Command::new(bin("netwall-gateway"))
        .args(["check", "--config"])
        .arg(repo().join("examples/gateway.toml"))
        .output()
        .expect("run");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let (path, expect) = fixtures("gateway").remove(0);
    let bad = Command::new(bin("netwall-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(&expect), "{stderr}");

    let ok = Command::new(bin("netwall-connector"))
        .args(["--check", "--config"])
        .arg(repo().join("examples/connector.toml"))
        .env("NETWALL_CREDENTIAL", "x")
        .output()
        .expect("run");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let (path, expect) = fixtures("connector").remove(0);
    let bad = Command::new(bin("netwall-connector"))
        .args(["--check", "--config"])
        .arg(&path)
        .env("NETWALL_CREDENTIAL", "x")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains(&expect));
}

#[test]
fn credential_command_prints_a_matching_pair() {
    let out = Command::new(bin("netwall-gateway"))
        .arg("credential")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let (cred, hash) = (field("credential "), field("credential_sha256"));
    assert_eq!(cred.len(), 64);
    assert_eq!(
        netwall_gateway::tunnel::credential_hash(cred.as_bytes()),
        hash
    );
}
