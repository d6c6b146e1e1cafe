//! What a re-read `connector.toml` changes.
//!
//! A reload (`SIGHUP`) applies the services map, the pool settings of local services and the
//! credential: the next request uses the new map, the next dial sends the new credential, and
//! the requests and tunnel connections already running are left alone. Every other setting
//! (gateways, tunnel, transport, trust, timers) shapes connections that are up, so a change
//! to it is reported and waits for the next start.

use std::collections::BTreeMap;

use crate::config::{Resolved, ServiceTarget};

/// Top-level keys a reload applies.
pub const RELOADED_KEYS: &[&str] = &[
    "services",
    "service_connect_timeout",
    "pool_max_idle_per_service",
    "credential_file",
];

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Services that are new.
    pub added: Vec<String>,
    /// Services that are gone: a request for one is refused as an unknown service.
    pub removed: Vec<String>,
    /// Services whose address or kind changed.
    pub changed: Vec<String>,
    /// The credential the next dial sends differs from the last one.
    pub credential_rotated: bool,
    /// Changed settings a reload does not apply.
    pub restart_required: Vec<String>,
}

/// Compare the running configuration with a newly read one.
pub fn compare(old: &Resolved, new: &Resolved) -> Outcome {
    let (before, after) = (every_service(old), every_service(new));
    let mut outcome = Outcome {
        credential_rotated: old.credential != new.credential,
        restart_required: netwall_config::unapplied_changes(&old.raw, &new.raw, RELOADED_KEYS),
        ..Outcome::default()
    };
    for (name, target) in &after {
        match before.get(name) {
            None => outcome.added.push((*name).clone()),
            Some(t) if t != target => outcome.changed.push((*name).clone()),
            Some(_) => {}
        }
    }
    outcome.removed = before
        .keys()
        .filter(|n| !after.contains_key(*n))
        .map(|n| (*n).clone())
        .collect();
    outcome
}

/// Every service by name with what it speaks (`true` for raw TCP) and where it lives.
fn every_service(r: &Resolved) -> BTreeMap<&String, (bool, &ServiceTarget)> {
    r.services
        .iter()
        .map(|(n, t)| (n, (false, t)))
        .chain(r.tcp_services.iter().map(|(n, t)| (n, (true, t))))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ConnectorConfig;

    fn resolved(extra: &str, services: &str, credential: &str) -> Resolved {
        let src = format!(
            "tunnel = \"app\"\ngateways = [\"unix:/run/gw.sock\"]\n{extra}\n[services]\n{services}\n"
        );
        ConnectorConfig::parse(
            Path::new("connector.toml"),
            &src,
            Path::new("/"),
            Some(credential.to_owned()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn services_are_compared_by_name_kind_and_address() {
        let old = resolved(
            "",
            "a = \"http://127.0.0.1:1\"\nb = \"http://127.0.0.1:2\"\nc = \"tcp://127.0.0.1:3\"",
            "one",
        );
        let new = resolved(
            "",
            "a = \"http://127.0.0.1:1\"\nb = \"http://127.0.0.1:9\"\nc = \"http://127.0.0.1:3\"\nd = \"unix:/run/d.sock\"",
            "one",
        );
        let o = compare(&old, &new);
        assert_eq!(o.added, vec!["d".to_owned()]);
        assert_eq!(o.changed, vec!["b".to_owned(), "c".to_owned()]);
        assert!(o.removed.is_empty());
        assert!(!o.credential_rotated);
        assert!(o.restart_required.is_empty(), "{o:?}");

        let o = compare(&new, &old);
        assert_eq!(o.removed, vec!["d".to_owned()]);
    }

    #[test]
    fn settings_a_reload_does_not_apply_are_named() {
        let old = resolved("", "a = \"http://127.0.0.1:1\"", "one");
        let new = resolved(
            "connections_per_gateway = 3\nservice_connect_timeout = \"2s\"",
            "a = \"http://127.0.0.1:1\"",
            "two",
        );
        let o = compare(&old, &new);
        assert_eq!(
            o.restart_required,
            vec!["connections_per_gateway".to_owned()]
        );
        assert!(o.credential_rotated);
    }
}
