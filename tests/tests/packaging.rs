//! What operators install beside the binaries: the systemd units (every directive one systemd
//! knows, `systemd-analyze security` rating each "OK" or better, below 2.0 of 10) and the
//! Prometheus alert rules (`promtool check rules`, and `promtool test rules` on the metrics
//! series a gateway exports), the Grafana dashboard (every query valid PromQL over metrics the
//! gateway exports), and the Kubernetes sidecar manifest (the Kubernetes schemas,
//! strictly, and the wall: no ingress, no port, no privilege).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Highest exposure a shipped unit may have (systemd rates 2.0 to 4.9 "MEDIUM").
const MAX_EXPOSURE: f64 = 2.0;

fn unit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops/systemd")
        .join(name)
}

/// `systemd-analyze security --offline=true` of one unit file: (exposure, full output).
fn exposure(name: &str) -> (f64, String) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit(name))
        .output()
        .expect("systemd-analyze (ops/test installs systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze failed: {text}");
    // Typos and directives this systemd does not know are warnings here, and would be
    // silently ignored on a real host: refuse them.
    for bad in [
        "Unknown key",
        "Unknown section",
        "Failed to parse",
        "Invalid",
    ] {
        assert!(!text.contains(bad), "{name}: {bad}: {text}");
    }
    let level = text
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    (level, text)
}

#[test]
fn the_gateway_unit_is_sandboxed_with_only_the_right_to_bind_low_ports() {
    let (level, text) = exposure("netwall-gateway.service");
    assert!(level < MAX_EXPOSURE, "exposure {level}: {text}");
    let unit = std::fs::read_to_string(unit("netwall-gateway.service")).expect("unit");
    assert!(unit.contains("\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"));
    assert!(unit.contains("\nDynamicUser=yes\n"));
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    eprintln!("gateway unit exposure {level}");
}

#[test]
fn the_connector_unit_is_sandboxed_with_no_capability_at_all() {
    let (level, text) = exposure("netwall-connector.service");
    assert!(level < MAX_EXPOSURE, "exposure {level}: {text}");
    assert!(
        text.contains("✓ CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"),
        "{text}"
    );
    let unit = std::fs::read_to_string(unit("netwall-connector.service")).expect("unit");
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    eprintln!("connector unit exposure {level}");
}

/// Run `promtool` in `ops/prometheus` with `args`; its output, after checking it succeeded.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus"))
        .output()
        .expect("promtool (ops/test installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_fire_as_their_unit_tests_say() {
    let checked = promtool(&["check", "rules", "netwall-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "netwall-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// How many `netwall_` series `text` reads; panics on one the gateway does not export.
fn exported_series_read(text: &str, what: &str) -> usize {
    let exported = netwall_gateway::metrics::Metrics::new().encode();
    let mut read = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("netwall_") {
            read += 1;
            let family = name.trim_end_matches("_total").trim_end_matches("_bucket");
            assert!(
                exported.contains(&format!("# TYPE netwall_{family} ")),
                "{what} reads netwall_{name}, which the gateway does not export:\n{exported}"
            );
        }
    }
    read
}

#[test]
fn the_alert_rules_read_metrics_the_gateway_exports() {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus/netwall-alerts.yml"),
    )
    .expect("rules");
    let read = exported_series_read(&rules, "the alert rules");
    assert!(read >= 8, "{read} metric references");
}

#[test]
fn every_dashboard_query_is_valid_promql_over_exported_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/grafana/netwall-gateways.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    // promtool parses PromQL in rule files: each query, with Grafana's variables given
    // values, becomes a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        exported_series_read(e, "the dashboard");
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: netwall:dashboard_{i}\n        expr: {}\n",
            serde_json::Value::String(e)
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).expect("write");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{text}"
    );
}

#[test]
fn the_kubernetes_sidecar_manifest_matches_the_schemas_and_admits_nothing_inbound() {
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kubernetes/netwall-sidecar.yaml");
    let validator = std::env::var("NETWALL_KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| "kubernetes-validate".into());
    let out = Command::new(&validator)
        .arg("--strict")
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("{validator}: {e} (ops/test installs it from PyPI)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
    for kind in [
        "configmap/shop-connector",
        "deployment/shop",
        "networkpolicy/shop-deny-all-ingress",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    let yaml = std::fs::read_to_string(&manifest).expect("manifest");
    // The wall in the pod spec: all ingress denied, no port declared, nothing privileged.
    assert!(
        yaml.contains("policyTypes: [\"Ingress\"]\n  ingress: []"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("containerPort"),
        "a pod behind the wall declares no port"
    );
    assert!(!yaml.contains("hostNetwork"));
    assert_eq!(yaml.matches("drop: [\"ALL\"]").count(), 2);
    assert_eq!(yaml.matches("readOnlyRootFilesystem: true").count(), 2);
    // The probes run the connector's own status check.
    assert!(yaml.contains("\"--probe\", \"ready\"") && yaml.contains("\"--probe\", \"live\""));
}

fn container_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops/container")
        .join(name)
}

/// The compose file as JSON (YAML anchors and merge keys resolved, as compose reads it).
fn compose() -> serde_json::Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(container_file("compose.yaml"))
        .output()
        .expect("python3 with PyYAML (ops/test installs python3-yaml)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("compose as JSON")
}

#[test]
fn the_compose_demo_puts_the_application_behind_the_wall_with_hardened_containers() {
    let c = compose();
    let file = std::fs::read_to_string(container_file("Containerfile")).expect("Containerfile");
    let services = c["services"].as_object().expect("services");
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["app", "connector", "gateway"]
    );
    for (name, s) in services {
        // Every container: read-only root, no capability, no privilege gain, not root.
        assert_eq!(s["read_only"], true, "{name}");
        assert_eq!(s["cap_drop"], serde_json::json!(["ALL"]), "{name}");
        assert_eq!(
            s["security_opt"],
            serde_json::json!(["no-new-privileges:true"]),
            "{name}"
        );
        assert_eq!(s["user"], "65532:65532", "{name}");
        assert!(s.get("privileged").is_none() && s.get("cap_add").is_none());
        let target = s["build"]["target"].as_str().expect("an image target");
        assert!(
            file.contains(&format!("AS {target}\n")),
            "{name}: target {target}"
        );
    }
    // The wall: the application has no network, its connector shares that namespace and
    // reaches the gateway only through the socket volume; only the gateway publishes ports.
    assert_eq!(services["app"]["network_mode"], "none");
    assert_eq!(services["connector"]["network_mode"], "service:app");
    assert!(services["app"].get("ports").is_none() && services["connector"].get("ports").is_none());
    assert_eq!(
        services["gateway"]["ports"],
        serde_json::json!(["8443:8443", "8080:8080"])
    );
    for s in ["gateway", "connector"] {
        let volumes = services[s]["volumes"].as_array().expect("volumes");
        assert!(
            volumes.iter().any(|v| v == "tunnel:/run/netwall"),
            "{s}: {volumes:?}"
        );
    }
    // Distroless, non-root runtime.
    assert!(file.contains("FROM gcr.io/distroless/cc-debian12:nonroot AS runtime"));
    assert!(file.contains("USER 65532:65532"));
}

/// A network namespace with nothing but loopback: what `network_mode: none` gives a
/// container. Removed when dropped.
struct NoNetwork(String);

impl NoNetwork {
    fn new() -> NoNetwork {
        let name = format!("nw-none-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        NoNetwork(name)
    }

    fn exec(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).arg(program);
        cmd
    }
}

impl Drop for NoNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn the_compose_configurations_serve_an_application_that_has_no_network() {
    use netwall_tests::harness::{Proc, bin, spawn_gateway_with, wait_until};
    // The shipped files, with the volume in a temporary folder and ports chosen by the OS.
    let dir = tempfile::tempdir().expect("tempdir");
    let place = |name: &str| {
        let text = std::fs::read_to_string(container_file(name))
            .expect("config")
            .replace("/run/netwall", &dir.path().display().to_string())
            .replace("0.0.0.0:8443", "127.0.0.1:0")
            .replace("0.0.0.0:8080", "127.0.0.1:0")
            .replace("0.0.0.0:4443", "127.0.0.1:0")
            .replace("127.0.0.1:9090", "127.0.0.1:0");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let (gateway_toml, connector_toml) = (place("gateway.toml"), place("connector.toml"));
    for (program, args) in [
        ("netwall-gateway", vec!["check", "--config"]),
        ("netwall-connector", vec!["--check", "--config"]),
    ] {
        let out = Command::new(bin(program))
            .args(args)
            .arg(if program == "netwall-gateway" {
                &gateway_toml
            } else {
                &connector_toml
            })
            .output()
            .expect("check");
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_gateway, addrs) = spawn_gateway_with(
        Command::new(bin("netwall-gateway")),
        &gateway_toml,
        dir.path().join("gateway.log"),
    );
    let none = NoNetwork::new();
    let mut sample = none.exec(&bin("netwall-sample"));
    sample.args(["--listen", "127.0.0.1:3000", "--name", "demo-service"]);
    let _sample = Proc::spawn(sample, dir.path().join("sample.log"));
    let mut connector = none.exec(&bin("netwall-connector"));
    connector
        .arg("--config")
        .arg(&connector_toml)
        .args(["--log-format", "json"]);
    let _connector = Proc::spawn(connector, dir.path().join("connector.log"));
    let url = format!("https://app.localhost:{}/", addrs.https.port());
    let resolve = format!("app.localhost:{}:127.0.0.1", addrs.https.port());
    let body = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = body.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(wait_until(
        std::time::Duration::from_secs(20),
        "the application answers through the socket tunnel",
        || {
            let (url, resolve, seen) = (url.clone(), resolve.clone(), seen.clone());
            async move {
                let out = Command::new("curl")
                    .args(["-sk", "--max-time", "5", "--resolve", &resolve, &url])
                    .output()
                    .expect("curl");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let ok = text.contains("demo-service");
                *seen.lock().expect("lock") = text;
                ok
            }
        },
    ));
    assert!(body.lock().expect("lock").contains("demo-service"));
    // The namespace really has no way out: only loopback.
    let links = Command::new("ip")
        .args(["-n", &none.0, "-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "{links}");
}
