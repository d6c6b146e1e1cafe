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
pub mod replay;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use netwall_proto::{Codec, Frame};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::Resolved;
use crate::dial::{Backoff, DialError, Session};
use crate::replay::Services;

pub use netwall_proto::wire::CLOSE_DRAINED;

/// How long the endpoint may take to deliver final close frames.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

struct Ctx {
    resolved: Resolved,
    endpoint: quinn::Endpoint,
    codec: Codec,
    services: Arc<Services>,
    drain: CancellationToken,
    sessions: TaskTracker,
    live: watch::Sender<usize>,
    live_count: AtomicUsize,
}

/// A started connector.
pub struct RunningConnector {
    ctx: Arc<Ctx>,
    fatal: watch::Receiver<Option<String>>,
}

impl RunningConnector {
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
        self.ctx
            .endpoint
            .close(0u32.into(), b"connector shutting down");
        let _ = tokio::time::timeout(CLOSE_LINGER, self.ctx.endpoint.wait_idle()).await;
        drained
    }
}

/// Start dialing every gateway.
pub fn start(resolved: Resolved) -> Result<RunningConnector, String> {
    let endpoint = dial::endpoint(&resolved)?;
    let codec = Codec::default();
    let services = Arc::new(Services::new(&resolved, codec));
    let (live, _) = watch::channel(0);
    let ctx = Arc::new(Ctx {
        endpoint,
        codec,
        services,
        drain: CancellationToken::new(),
        sessions: TaskTracker::new(),
        live,
        live_count: AtomicUsize::new(0),
        resolved,
    });
    let (fatal_tx, fatal) = watch::channel(None);
    let mut supervisors = Vec::new();
    for addr in ctx.resolved.config.gateways.get_ref() {
        for slot in 0..ctx.resolved.config.connections_per_gateway {
            let span = info_span!("tunnel", gateway = %addr, slot);
            supervisors.push(tokio::spawn(
                supervise(ctx.clone(), addr.clone()).instrument(span),
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
    Ok(RunningConnector { ctx, fatal })
}

/// Keep one connection to `addr` up until drained; returns the error if the gateway rejected
/// this connector for good.
async fn supervise(ctx: Arc<Ctx>, addr: String) -> Option<DialError> {
    let cfg = &ctx.resolved.config;
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    loop {
        if ctx.drain.is_cancelled() {
            return None;
        }
        match dial::connect(&ctx.endpoint, &ctx.resolved, &addr, ctx.codec).await {
            Ok(session) => {
                backoff.reset();
                info!(gateway_id = %session.gateway_id, tunnel = %cfg.tunnel, "tunnel connected");
                let (went_away_tx, went_away_rx) = oneshot::channel();
                let serving = ctx
                    .sessions
                    .spawn(serve(ctx.clone(), session, went_away_tx).in_current_span());
                // A go-away means "reconnect now"; the old connection finishes its requests.
                tokio::select! {
                    _ = went_away_rx => {}
                    _ = serving => {}
                }
            }
            Err(e) if e.is_permanent() => {
                error!(error = %e, "gateway rejected this connector; not retrying");
                return Some(e);
            }
            Err(e) => warn!(error = %e, "dial failed"),
        }
        let delay = backoff.next_delay();
        debug!(?delay, "reconnecting after delay");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.drain.cancelled() => return None,
        }
    }
}

fn set_live(ctx: &Ctx, delta: isize) {
    let n = if delta > 0 {
        ctx.live_count.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        ctx.live_count.fetch_sub(1, Ordering::SeqCst) - 1
    };
    ctx.live.send_replace(n);
}

/// Serve one connection: accept streams, answer control frames, drain on request.
///
/// A drain asks the gateway for no new requests; the gateway closes the connection once it
/// has received the last response in full, so nothing is cut short here by closing early.
async fn serve(ctx: Arc<Ctx>, mut s: Session, went_away: oneshot::Sender<()>) {
    set_live(&ctx, 1);
    let mut went_away = Some(went_away);
    let mut accepted: u64 = 0;
    let mut drain_sent = false;
    let mut control_open = true;
    let end = loop {
        tokio::select! {
            biased;
            _ = ctx.drain.cancelled(), if !drain_sent => {
                drain_sent = true;
                if s.control_w.send(&Frame::Drain).await.is_err() || s.control_w.flush().await.is_err() {
                    // No control stream: nothing can be drained cleanly; wait for the deadline.
                    debug!("cannot send drain");
                }
            }
            stream = s.conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    accepted += 1;
                    tokio::spawn(ctx.services.clone().replay(send, recv).in_current_span());
                }
                Err(e) => break e,
            },
            frame = s.control_r.next(), if control_open => match frame {
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
                }
                Ok(Some(other)) => debug!(kind = other.kind(), "ignoring control frame"),
                Ok(None) | Err(_) => {
                    control_open = false;
                    if let Some(tx) = went_away.take() {
                        let _ = tx.send(());
                    }
                }
            },
        }
    };
    set_live(&ctx, -1);
    match end {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(CLOSE_DRAINED) =>
        {
            info!(requests = accepted, "drained");
        }
        e => info!(reason = %e, requests = accepted, "tunnel connection closed"),
    }
}
