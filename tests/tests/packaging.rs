//! The shipped systemd units: every directive is one systemd knows, and `systemd-analyze
//! security` rates each unit's exposure "OK" or better (below 2.0 of 10).

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
    for bad in ["Unknown key", "Unknown section", "Failed to parse", "Invalid"] {
        assert!(!text.contains(bad), "{name}: {bad}: {text}");
    }
    let level = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ")?.1.split_once(": "))
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
