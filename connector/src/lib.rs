//! netwall connector: the sidecar that dials out to gateways and replays requests to local
//! services, so the container it runs in never accepts an inbound connection.
//!
//! [`start`] keeps `connections_per_gateway` connections to every gateway address, each under
//! a supervisor that reconnects with jittered backoff. Every stream a gateway opens is
//! [replayed](replay) to the named local service. [`RunningConnector::shutdown`] drains: each
//! connection asks its gateway to stop sending new requests and keeps serving the ones already
//! sent; the gateway closes the connection once it has received the last response in full, so
//! a rolling restart loses nothing.

pub mod config;
pub mod dial;
pub mod local;
pub mod pool;
pub mod proxy_v2;
pub mod publish;
pub mod reload;
pub mod replay;
pub mod status;
pub mod tcp;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use netwall_proto::{Codec, Frame};
use netwall_tunnel::handshake::Session;
use netwall_tunnel::{Closed, TransportKind};
use rand::Rng;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::{ConfigErrors, ConnectorConfig, GatewayAddr, Resolved};
use crate::dial::{Backoff, DialError, Dialer};
use crate::replay::Services;

pub use netwall_proto::wire::CLOSE_DRAINED;

/// How long connections may take to deliver their final close frames at shutdown.
const CLOSE_LINGER: Duration = Duration::from_millis(300);

/// Application close code when the connector shuts down.
const CLOSE_SHUTDOWN: u32 = netwall_proto::wire::CLOSE_SHUTDOWN;

struct Ctx {
    /// The configuration the connector started with; connections are shaped by it.
    resolved: Resolved,
    /// The configuration last applied by a reload (services, credential).
    applied: std::sync::Mutex<Resolved>,
    dialer: Dialer,
    codec: Codec,
    /// Swapped by a reload; a stream being replayed keeps the map it started with.
    services: ArcSwap<Services>,
    drain: CancellationToken,
    /// Cancelled when the drain deadline has passed: every connection closes at once.
    stop: CancellationToken,
    sessions: TaskTracker,
    live: watch::Sender<usize>,
    live_count: AtomicUsize,
    transports: watch::Sender<Vec<TransportKind>>,
    /// Live connections a published message may leave on.
    outbox: Arc<publish::Outbox>,
}

/// A started connector.
pub struct RunningConnector {
    ctx: Arc<Ctx>,
    fatal: watch::Receiver<Option<String>>,
    publish_addr: Option<std::net::SocketAddr>,
}

impl RunningConnector {
    /// The bound TCP address of the publish endpoint (`publish_listen`), if it is one.
    pub fn publish_addr(&self) -> Option<std::net::SocketAddr> {
        self.publish_addr
    }

    /// Live, authenticated tunnel connections.
    pub fn live_connections(&self) -> watch::Receiver<usize> {
        self.ctx.live.subscribe()
    }

    /// Resolves with the reason when every gateway has permanently rejected this connector.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The transport of every live connection (for tests and status): changes on every
    /// connect, fallback and return to QUIC.
    pub fn transports(&self) -> watch::Receiver<Vec<TransportKind>> {
        self.ctx.transports.subscribe()
    }

    /// Apply a newly read configuration: the services map and the credential (see
    /// [`reload`]). Requests already running finish against the services they started with.
    pub fn reload(&self, new: Resolved) -> reload::Outcome {
        let Ok(mut applied) = self.ctx.applied.lock() else {
            // Only a panic while applying poisons it; the old map keeps serving.
            return reload::Outcome::default();
        };
        let outcome = reload::compare(&applied, &new);
        let services = Services::reusing(&new, self.ctx.codec, Some(&self.ctx.services.load()));
        self.ctx.services.store(Arc::new(services));
        self.ctx.dialer.reload(&new);
        *applied = new;
        outcome
    }

    /// Re-read `path` and apply it, logging what changed; a file that does not load changes
    /// nothing and its errors (file, line, key) are logged.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<reload::Outcome, ConfigErrors> {
        let new = match ConnectorConfig::load(path) {
            Ok(new) => new,
            Err(errors) => {
                for e in &errors.0 {
                    error!(error = %e, "reload refused; the running configuration stays in force");
                }
                return Err(errors);
            }
        };
        let outcome = self.reload(new);
        info!(
            file = %path.display(),
            added = ?outcome.added,
            removed = ?outcome.removed,
            changed = ?outcome.changed,
            credential_rotated = outcome.credential_rotated,
            "configuration reloaded"
        );
        if !outcome.restart_required.is_empty() {
            warn!(keys = ?outcome.restart_required, "changed settings take effect at the next start");
        }
        Ok(outcome)
    }

    /// Drain every connection (no new requests, finish the ones sent) up to the drain
    /// deadline, then close. Returns whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        info!("draining: asking gateways for no new requests");
        self.ctx.drain.cancel();
        self.ctx.sessions.close();
        let deadline = self.ctx.resolved.config.drain_timeout;
        let drained = tokio::time::timeout(deadline, self.ctx.sessions.wait())
            .await
            .is_ok();
        if !drained {
            warn!(
                ?deadline,
                "drain deadline passed; closing with requests in flight"
            );
        }
        self.ctx.stop.cancel();
        let _ = tokio::time::timeout(CLOSE_LINGER, self.ctx.sessions.wait()).await;
        drained
    }
}

/// Start dialing every gateway.
pub fn start(resolved: Resolved) -> Result<RunningConnector, String> {
    let codec = Codec::default();
    let dialer = Dialer::new(&resolved, codec)?;
    let services = ArcSwap::from_pointee(Services::new(&resolved, codec));
    let (live, _) = watch::channel(0);
    let (transports, _) = watch::channel(Vec::new());
    let ctx = Arc::new(Ctx {
        applied: std::sync::Mutex::new(resolved.clone()),
        dialer,
        codec,
        services,
        drain: CancellationToken::new(),
        stop: CancellationToken::new(),
        sessions: TaskTracker::new(),
        live,
        live_count: AtomicUsize::new(0),
        transports,
        outbox: Arc::default(),
        resolved,
    });
    let mut publish_addr = None;
    if let Some(listen) = &ctx.resolved.publish {
        let bound =
            publish::Bound::bind(listen).map_err(|e| format!("publish_listen {listen:?}: {e}"))?;
        publish_addr = bound.local_addr();
        tokio::spawn(publish::serve(bound, ctx.outbox.clone(), ctx.stop.clone()));
    }
    if let Some(path) = ctx.resolved.status_file.clone() {
        tokio::spawn(keep_status(path, ctx.live.subscribe(), ctx.stop.clone()));
    }
    let (fatal_tx, fatal) = watch::channel(None);
    let mut supervisors = Vec::new();
    for (addr, gw) in ctx
        .resolved
        .config
        .gateways
        .get_ref()
        .iter()
        .zip(ctx.resolved.gateways.clone())
    {
        for slot in 0..ctx.resolved.config.connections_per_gateway {
            let span = info_span!("tunnel", gateway = %addr, slot);
            supervisors.push(tokio::spawn(
                supervise(ctx.clone(), gw.clone()).instrument(span),
            ));
        }
    }
    tokio::spawn(async move {
        let mut reasons = Vec::new();
        for s in supervisors {
            match s.await {
                Ok(Some(e)) => reasons.push(e.to_string()),
                _ => return,
            }
        }
        reasons.dedup();
        let _ = fatal_tx.send(Some(reasons.join("; ")));
    });
    Ok(RunningConnector {
        ctx,
        fatal,
        publish_addr,
    })
}

/// Rewrite the status file at every change of the live count and every
/// [`status::STATUS_REFRESH`], until stopped; then record no live connection.
async fn keep_status(
    path: std::path::PathBuf,
    mut live: watch::Receiver<usize>,
    stop: CancellationToken,
) {
    let write = |n: usize| {
        let updated = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = status::Status { live: n, updated }.render();
        // Written beside and renamed over, so a probe never reads half a file.
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            warn!(path = %path.display(), error = %e, "cannot write the status file");
        }
    };
    let mut tick = tokio::time::interval(status::STATUS_REFRESH);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = live.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
        }
        let n = *live.borrow_and_update();
        write(n);
    }
    write(0);
}

/// Keep one connection to `gw` up until drained; returns the error if the gateway rejected
/// this connector for good.
///
/// With `transport = "auto"` a QUIC dial that does not complete within `quic_fallback_after`
/// falls back to TLS over TCP, and later reconnects go straight to TLS until a background
/// probe finds QUIC working again.
async fn supervise(ctx: Arc<Ctx>, gw: GatewayAddr) -> Option<DialError> {
    let cfg = &ctx.resolved.config;
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    let auto = ctx.dialer.falls_back(&gw);
    let mut on_fallback = false;
    loop {
        if ctx.drain.is_cancelled() {
            return None;
        }
        let result = if auto && !on_fallback {
            match ctx
                .dialer
                .dial(&gw, TransportKind::Quic, Some(ctx.dialer.fallback_after()))
                .await
            {
                // Only silence means UDP is blocked: a QUIC answer that fails (a wrong
                // certificate, a refusal) would fail over TLS just the same.
                Err(e @ DialError::Timeout(_)) => {
                    warn!(error = %e, after = ?ctx.dialer.fallback_after(), "QUIC handshake did not complete; falling back to TLS over TCP and probing QUIC in the background");
                    ctx.dialer.dial(&gw, TransportKind::Tls, None).await
                }
                r => r,
            }
        } else if on_fallback {
            ctx.dialer.dial(&gw, TransportKind::Tls, None).await
        } else {
            ctx.dialer.dial(&gw, ctx.dialer.primary(&gw), None).await
        };
        match result {
            Ok(session) => {
                backoff.reset();
                on_fallback = run(&ctx, &gw, session, auto).await;
            }
            Err(e) if e.is_permanent() => {
                error!(error = %e, "gateway rejected this connector; not retrying");
                return Some(e);
            }
            Err(e) => {
                warn!(error = %e, "dial failed");
                // Nothing got through: the next attempt starts from QUIC again.
                on_fallback = false;
            }
        }
        let delay = backoff.next_delay();
        debug!(?delay, "reconnecting after delay");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.drain.cancelled() => return None,
        }
    }
}

/// A probe delay: `interval` jittered by up to a quarter either way.
fn jittered(interval: Duration) -> Duration {
    let spread = interval / 4;
    let low = interval.saturating_sub(spread);
    rand::rng().random_range(low..=interval.saturating_add(spread))
}

/// Serve `session` until it ends or the gateway goes away. While it runs over the TLS
/// fallback, probe QUIC and, once it works, move over: the new connection is serving before
/// the old one is drained, so no request is lost in the switch. Returns whether the
/// connection in use at the end was the fallback.
async fn run(ctx: &Arc<Ctx>, gw: &GatewayAddr, mut session: Session, auto: bool) -> bool {
    let probe_every = ctx.resolved.config.quic_probe_interval;
    loop {
        let kind = session.conn.kind();
        info!(gateway_id = %session.gateway_id, tunnel = %ctx.resolved.config.tunnel, transport = %kind, "tunnel connected");
        let drain = ctx.drain.child_token();
        let (went_away_tx, went_away_rx) = oneshot::channel();
        let mut serving = ctx
            .sessions
            .spawn(serve(ctx.clone(), session, went_away_tx, drain.clone()).in_current_span());
        tokio::pin!(went_away_rx);
        let probing = auto && kind == TransportKind::Tls;
        let probe = tokio::time::sleep(jittered(probe_every));
        tokio::pin!(probe);
        loop {
            tokio::select! {
                // A go-away means "reconnect now"; the old connection finishes its requests.
                _ = &mut went_away_rx => return kind == TransportKind::Tls,
                _ = &mut serving => return kind == TransportKind::Tls,
                _ = &mut probe, if probing => {
                    match ctx.dialer.dial(gw, TransportKind::Quic, Some(ctx.dialer.fallback_after())).await {
                        Ok(new) => {
                            info!("QUIC gets through again; moving back from TLS and draining the TLS connection");
                            session = new;
                            // The QUIC connection is registered at the gateway (it welcomed
                            // it); only now does the old one stop taking requests.
                            drain.cancel();
                            break;
                        }
                        Err(e) => {
                            debug!(error = %e, "QUIC probe failed; staying on TLS");
                            probe.as_mut().reset(tokio::time::Instant::now() + jittered(probe_every));
                        }
                    }
                }
            }
        }
    }
}

/// The next message to publish on a connection, if it takes them.
async fn next_outgoing(route: &mut Option<publish::Route>) -> Option<publish::Outgoing> {
    match route {
        Some(r) => r.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn set_live(ctx: &Ctx, kind: TransportKind, up: bool) {
    let n = if up {
        ctx.live_count.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        ctx.live_count.fetch_sub(1, Ordering::SeqCst) - 1
    };
    ctx.transports.send_modify(|v| {
        if up {
            v.push(kind);
        } else if let Some(i) = v.iter().position(|k| *k == kind) {
            v.remove(i);
        }
    });
    ctx.live.send_replace(n);
}

/// Serve one connection: accept streams, keep the control stream alive, drain on request.
///
/// A drain asks the gateway for no new requests; the gateway closes the connection once it
/// has received the last response in full, so nothing is cut short here by closing early.
async fn serve(
    ctx: Arc<Ctx>,
    mut s: Session,
    went_away: oneshot::Sender<()>,
    drain: CancellationToken,
) {
    let kind = s.conn.kind();
    set_live(&ctx, kind, true);
    let cfg = &ctx.resolved.config;
    let mut went_away = Some(went_away);
    let mut accepted: u64 = 0;
    let mut drain_sent = false;
    let mut control_open = true;
    let mut ping = tokio::time::interval(cfg.keep_alive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = tokio::time::sleep(cfg.idle_timeout);
    tokio::pin!(silence);
    let mut ping_id: u64 = 0;
    // Published messages leave on this connection while it is the oldest live one whose
    // gateway accepts them.
    let mut outgoing = (ctx.resolved.publish.is_some()
        && s.version >= netwall_proto::PUBLISH_SINCE_VERSION)
        .then(|| ctx.outbox.join());
    let end: Closed = loop {
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => {
                s.conn.close(CLOSE_SHUTDOWN, b"connector shutting down");
                break Closed::Locally;
            }
            _ = drain.cancelled(), if !drain_sent => {
                drain_sent = true;
                // A draining connection takes no new messages; the next one does.
                outgoing = None;
                if s.control_w.send(&Frame::Drain).await.is_err() || s.control_w.flush().await.is_err() {
                    // No control stream: nothing can be drained cleanly; wait for the deadline.
                    debug!("cannot send drain");
                }
            }
            Some((channel, message)) = next_outgoing(&mut outgoing) => {
                if s.control_w.send(&Frame::Publish { channel, message }).await.is_err() || s.control_w.flush().await.is_err() {
                    debug!("cannot send a published message");
                }
            }
            stream = s.conn.accept() => match stream {
                Ok(stream) => {
                    accepted += 1;
                    // Boxed first: the replay's state (some 5 KB) is written once, to the
                    // heap, and the task holds a pointer, instead of being moved into the
                    // span wrapper and again into the task.
                    let replay = Box::pin(ctx.services.load_full().replay(stream));
                    tokio::spawn(replay.in_current_span());
                }
                Err(e) => break e,
            },
            // Pings keep the control stream provably alive whatever the transport: a
            // multiplexed TCP connection can look open long after its peer vanished.
            _ = ping.tick(), if control_open => {
                ping_id = ping_id.wrapping_add(1);
                if s.control_w.send(&Frame::Ping(ping_id)).await.is_err() || s.control_w.flush().await.is_err() {
                    debug!("cannot send ping");
                }
            }
            _ = &mut silence, if control_open => {
                warn!(timeout = ?cfg.idle_timeout, %kind, "gateway silent on the control stream; closing the connection");
                s.conn.close(0, b"gateway silent");
                break Closed::Lost("gateway silent".into());
            }
            frame = s.control_r.next(), if control_open => {
                silence.as_mut().reset(tokio::time::Instant::now() + cfg.idle_timeout);
                match frame {
                    Ok(Some(Frame::GoAway { reason })) => {
                        info!(%reason, "gateway going away");
                        if let Some(tx) = went_away.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Some(Frame::DrainAck { streams_opened })) => {
                        debug!(streams_opened, accepted, "drain acknowledged; the gateway closes when done");
                    }
                    Ok(Some(Frame::Ping(v))) => {
                        let _ = s.control_w.send(&Frame::Pong(v)).await;
                        let _ = s.control_w.flush().await;
                    }
                    Ok(Some(Frame::Pong(_))) => {}
                    Ok(Some(other)) => debug!(kind = other.kind(), "ignoring control frame"),
                    Ok(None) | Err(_) => {
                        control_open = false;
                        if let Some(tx) = went_away.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            },
        }
    };
    set_live(&ctx, kind, false);
    match end {
        Closed::ByPeer { code, .. } if code == CLOSE_DRAINED => {
            info!(requests = accepted, %kind, "drained");
        }
        _ if drain_sent => info!(requests = accepted, %kind, "drained"),
        e => info!(reason = %e, requests = accepted, %kind, "tunnel connection closed"),
    }
}
