//! Reloading `gateway.toml` while the gateway runs (`SIGHUP`, `POST /reload` on the admin
//! listener).
//!
//! A reload changes routes and their policies, the public certificates (and the TCP routes'
//! certificates, which are the same files), the tunnels (added, removed, credential
//! rotated) with their Unix sockets, and the challenge's keys. Everything else (listen
//! addresses, `[https]` limits, `[tunnel_listener]`, `[admin]`, `[shutdown]`, `[spike]`,
//! `[[tcp_route]]`) is read at start only; a reload that changes it applies the rest and names
//! those keys under `restart_required`.
//!
//! The new file is parsed, validated and built completely before anything is swapped, so an
//! invalid file changes nothing: the old configuration keeps serving and the errors (with
//! file and line) are logged, counted and returned. Open connections and WebSockets keep
//! the route they were admitted by; counters live in [`crate::state`] and survive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::certs::{self, Generated};
use crate::config::{GatewayConfig, Loaded, TunnelConfig};
use crate::metrics::{Metrics, ReloadLabel};
use crate::proxy::Proxy;
use crate::route::RouteTable;
use crate::state::PolicyState;
use crate::tls::{CertPair, CertStore, SniResolver};
use crate::tunnel::listen::{Listeners, SocketOwner};
use crate::tunnel::{Registry, TunnelChanges};

/// Keys a reload applies (top-level, and two of `[https]`); every other key waits for a
/// restart.
const RELOADED_KEYS: &[&str] = &[
    "route",
    "tunnel",
    "challenge",
    "profile",
    "https.certificate",
    "https.self_signed",
];

/// What a reload did, as `/reload` answers it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Whether the new configuration is in force.
    pub ok: bool,
    /// Count of configurations applied since start (the first is 1).
    pub generation: u64,
    /// Routes now served.
    pub routes: usize,
    /// Public certificates now served.
    pub certificates: usize,
    /// Tunnel changes.
    pub tunnels: TunnelChanges,
    /// Keys that changed but take effect only at the next start.
    pub restart_required: Vec<String>,
    /// Why the new configuration was refused (file, line, key).
    pub errors: Vec<String>,
}

/// A tunnel socket that could not be bound: its path and why.
pub type SocketError = (String, std::io::Error);

/// A socket bound but not yet accepting.
struct Pending {
    tunnel: String,
    listener: tokio::net::UnixListener,
    socket: Socket,
}

/// A tunnel's bound Unix socket.
struct Socket {
    path: PathBuf,
    mode: u32,
    owner: SocketOwner,
    stop: CancellationToken,
}

/// What the running configuration is, beyond what the proxy and registry hold.
struct Current {
    raw: toml::Table,
    generated: Option<Generated>,
    sockets: HashMap<String, Socket>,
    generation: u64,
}

/// Everything a reload replaces.
pub struct Reloader {
    path: Option<PathBuf>,
    current: Mutex<Current>,
    parts: Parts,
}

/// The running parts a reload replaces the insides of.
pub struct Parts {
    /// The proxy whose routes are replaced.
    pub proxy: Arc<Proxy>,
    /// The tunnels.
    pub registry: Arc<Registry>,
    /// Certificates of the HTTPS listener.
    pub public_certs: Arc<CertStore>,
    /// Certificates of TCP routes that terminate TLS.
    pub tcp_certs: Arc<CertStore>,
    /// The tunnel certificate served on the HTTPS port, if tunnels arrive there.
    pub tunnel_pair: Option<CertPair>,
    /// Certificates from ACME (`[https.acme]` itself takes effect at the next start).
    pub acme: Option<Arc<crate::acme::challenge::AcmeState>>,
    /// Counters that outlive a configuration.
    pub state: Arc<PolicyState>,
    /// Where tunnel sockets hand their connections.
    pub listeners: Listeners,
    /// The WireGuard listener, whose peers follow the tunnels' keys.
    pub wireguard: Option<Arc<netwall_tunnel::wireguard::WgListener>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// A reloader for the configuration `loaded`, already in force through `parts` (with
    /// the development certificate `generated`); binds the tunnels' Unix sockets. Returns
    /// the bound sockets as `(tunnel, path)`.
    pub fn new(
        loaded: &Loaded,
        parts: Parts,
        generated: Option<Generated>,
    ) -> Result<(Reloader, Vec<(String, PathBuf)>), SocketError> {
        let reloader = Reloader {
            path: loaded.path.clone(),
            current: Mutex::new(Current {
                raw: loaded.raw.clone(),
                generated,
                sockets: HashMap::new(),
                generation: 1,
            }),
            parts,
        };
        let mut sockets = HashMap::new();
        let pending = reloader.bind_sockets(&loaded.config.tunnels, &loaded.base, &mut sockets)?;
        reloader.serve_sockets(pending, &mut sockets);
        let mut bound: Vec<(String, PathBuf)> = sockets
            .iter()
            .map(|(n, s)| (n.clone(), s.path.clone()))
            .collect();
        bound.sort();
        if let Ok(mut c) = reloader.current.lock() {
            c.sockets = sockets;
        }
        reloader.parts.metrics.config_generation.set(1);
        reloader.parts.metrics.config_last_reload_ok.set(1);
        Ok((reloader, bound))
    }

    /// Re-read the configuration file and apply it, or change nothing and say why.
    pub fn reload(&self) -> Outcome {
        let Some(path) = self.path.clone() else {
            let generation = self.generation();
            return self.refused(
                generation,
                vec![
                    "the configuration was not read from a file; there is nothing to re-read"
                        .into(),
                ],
            );
        };
        let Ok(mut current) = self.current.lock() else {
            return self.refused(0, vec!["an earlier reload failed midway".into()]);
        };
        let loaded = match GatewayConfig::load(&path) {
            Ok(l) => l,
            Err(e) => {
                return self.refused(
                    current.generation,
                    e.0.iter().map(ToString::to_string).collect(),
                );
            }
        };
        match self.apply(&loaded, &mut current) {
            Ok(outcome) => {
                self.parts
                    .metrics
                    .config_reloads
                    .get_or_create(&ReloadLabel { outcome: "applied" })
                    .inc();
                self.parts
                    .metrics
                    .config_generation
                    .set(i64::try_from(outcome.generation).unwrap_or(i64::MAX));
                self.parts.metrics.config_last_reload_ok.set(1);
                info!(
                    file = %path.display(),
                    generation = outcome.generation,
                    routes = outcome.routes,
                    certificates = outcome.certificates,
                    tunnels_added = ?outcome.tunnels.added,
                    tunnels_removed = ?outcome.tunnels.removed,
                    credentials_rotated = ?outcome.tunnels.rotated,
                    "configuration reloaded"
                );
                if !outcome.restart_required.is_empty() {
                    warn!(keys = ?outcome.restart_required, "changed settings take effect at the next start");
                }
                outcome
            }
            Err(errors) => self.refused(
                current.generation,
                errors
                    .into_iter()
                    .map(|e| format!("{}: {e}", path.display()))
                    .collect(),
            ),
        }
    }

    fn generation(&self) -> u64 {
        self.current
            .lock()
            .map(|c| c.generation)
            .unwrap_or_default()
    }

    /// Count and log a refused reload. `generation` is the one still serving; the caller may
    /// hold the lock on `current`, so this does not take it.
    fn refused(&self, generation: u64, errors: Vec<String>) -> Outcome {
        self.parts
            .metrics
            .config_reloads
            .get_or_create(&ReloadLabel { outcome: "invalid" })
            .inc();
        self.parts.metrics.config_last_reload_ok.set(0);
        for e in &errors {
            error!(error = %e, "reload refused; the running configuration stays in force");
        }
        Outcome {
            ok: false,
            generation,
            errors,
            ..Outcome::default()
        }
    }

    /// Build everything from `loaded`, then swap it in. Nothing is swapped on an error.
    fn apply(&self, loaded: &Loaded, current: &mut Current) -> Result<Outcome, Vec<String>> {
        let config = &loaded.config;
        let base = &loaded.base;
        let mut carry = self.parts.state.begin();
        let routes = RouteTable::build(config, base, &mut carry).map_err(|e| vec![e])?;
        let public = certs::load(
            config,
            base,
            &routes,
            &self.parts.metrics,
            current.generated.as_ref(),
        )
        .map_err(|e| vec![e.to_string()])?;
        let certificates = public.entries.len();
        let acme = || self.parts.acme.clone();
        let tcp = SniResolver::new(public.entries.clone())
            .map_err(|e| vec![e.to_string()])?
            .with_acme(acme());
        let mut resolver = SniResolver::new(public.entries)
            .map_err(|e| vec![e.to_string()])?
            .with_acme(acme());
        if let Some(t) = &self.parts.tunnel_pair {
            resolver = resolver.with_tunnel(t).map_err(|e| vec![e.to_string()])?;
        }
        let restart_required = restart_required(&current.raw, &loaded.raw);
        // The last step that can fail: binding the sockets of new tunnels.
        let pending = self
            .bind_sockets(&config.tunnels, base, &mut current.sockets)
            .map_err(|(path, e)| vec![format!("tunnel socket unix:{path}: {e}")])?;

        // Everything is built: swap it in. Tunnels first, so a new route finds its tunnel and
        // a connector on a new socket finds its tunnel declared.
        let tunnels = self.parts.registry.reconcile(declared_tunnels(config));
        self.serve_sockets(pending, &mut current.sockets);
        if let Some(wg) = &self.parts.wireguard {
            wg.set_peers(&crate::tunnel::listen::wireguard_peers(&config.tunnels));
        }
        self.parts.state.commit(carry);
        let route_count = routes.routes().count();
        self.parts.proxy.set_routes(routes);
        self.parts.public_certs.replace(resolver);
        self.parts.tcp_certs.replace(tcp);
        current.generated = public.generated;
        current.raw = loaded.raw.clone();
        current.generation += 1;
        Ok(Outcome {
            ok: true,
            generation: current.generation,
            routes: route_count,
            certificates,
            tunnels,
            restart_required,
            errors: Vec::new(),
        })
    }

    /// Make `sockets` the Unix sockets `tunnels` ask for: keep the unchanged ones, bind the
    /// new ones, stop the rest. The new listeners are returned for [`Reloader::serve_sockets`]
    /// to start once their tunnels are declared. On a bind error nothing changes: the
    /// listeners bound by this call are dropped and `sockets` is as it was.
    fn bind_sockets(
        &self,
        tunnels: &[TunnelConfig],
        base: &Path,
        sockets: &mut HashMap<String, Socket>,
    ) -> Result<Vec<Pending>, SocketError> {
        let mut wanted = HashMap::new();
        for t in tunnels {
            let Some(path) = &t.unix_socket else { continue };
            let (uid, gid) = t.socket_owner();
            wanted.insert(
                t.name.get_ref().clone(),
                (
                    base.join(path.get_ref()),
                    t.socket_mode(),
                    SocketOwner { uid, gid },
                ),
            );
        }
        let mut fresh = Vec::new();
        for (name, (path, mode, owner)) in &wanted {
            let same = sockets
                .get(name)
                .is_some_and(|s| s.path == *path && s.mode == *mode && s.owner == *owner);
            if same {
                continue;
            }
            match crate::tunnel::listen::bind_unix(path, *mode, *owner) {
                Ok(listener) => fresh.push(Pending {
                    tunnel: name.clone(),
                    listener,
                    socket: Socket {
                        path: path.clone(),
                        mode: *mode,
                        owner: *owner,
                        stop: self.parts.listeners.shutdown.child_token(),
                    },
                }),
                Err(e) => return Err((path.display().to_string(), e)),
            }
        }
        // Stop what is no longer wanted or was replaced.
        sockets.retain(|name, s| {
            let keep = wanted.contains_key(name) && !fresh.iter().any(|p| p.tunnel == *name);
            if !keep {
                s.stop.cancel();
            }
            keep
        });
        Ok(fresh)
    }

    /// Start accepting on sockets [`Reloader::bind_sockets`] bound, recording them in
    /// `sockets`.
    fn serve_sockets(&self, pending: Vec<Pending>, sockets: &mut HashMap<String, Socket>) {
        for p in pending {
            let path = p.socket.path.clone();
            let span = info_span!("tunnel_listener", transport = "unix", socket = %path.display());
            tokio::spawn(
                self.parts
                    .listeners
                    .clone()
                    .serve_unix(p.listener, path, p.tunnel.clone(), p.socket.stop.clone())
                    .instrument(span),
            );
            sockets.insert(p.tunnel, p.socket);
        }
    }
}

/// The tunnels `config` declares, as `(name, credential hash)`.
pub fn declared_tunnels(
    config: &GatewayConfig,
) -> impl Iterator<Item = (String, Option<[u8; 32]>)> + '_ {
    config.tunnels.iter().map(|t| {
        let hash = t
            .credential_sha256
            .as_ref()
            .and_then(|c| crate::tunnel::parse_credential_hash(c.get_ref()));
        (t.name.get_ref().clone(), hash)
    })
}

/// The keys that differ between `old` and `new` and that a reload does not apply.
fn restart_required(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    netwall_config::unapplied_changes(old, new, RELOADED_KEYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).expect("toml")
    }

    #[test]
    fn only_keys_a_reload_does_not_apply_need_a_restart() {
        let old = table(
            "[https]\nlisten = \"0.0.0.0:443\"\nself_signed = true\n[admin]\nlisten = \"127.0.0.1:9\"\n[[route]]\nhost = \"a\"\n",
        );
        let same_but_routes = table(
            "[https]\nlisten = \"0.0.0.0:443\"\nself_signed = false\n[[https.certificate]]\ncert = \"c\"\n[admin]\nlisten = \"127.0.0.1:9\"\n[[route]]\nhost = \"b\"\n[[tunnel]]\nname = \"t\"\n",
        );
        assert!(restart_required(&old, &same_but_routes).is_empty());
        let moved = table(
            "[https]\nlisten = \"0.0.0.0:8443\"\nmax_header_bytes = 1\n[spike]\nwindow = \"1s\"\n",
        );
        assert_eq!(
            restart_required(&old, &moved),
            vec!["admin", "https.listen", "https.max_header_bytes", "spike"]
        );
    }
}
