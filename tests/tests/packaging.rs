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
