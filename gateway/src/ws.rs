//! WebSockets at the edge.
//!
//! The gateway terminates the WebSocket protocol itself, so policy applies per message:
//! origin allow-list and per-IP limits before the upgrade; message size, message rate, JSON
//! validity and heartbeats after it. Whole messages cross the tunnel as `WsMessage` frames;
//! the connector opens its own WebSocket to the service. The client's `101` is sent only
//! after the service accepted, so a refusal reaches the client as an HTTP status.
//!
//! Close codes the edge sends (also in the README):
//!
//! | code | when |
//! | --- | --- |
//! | 1001 | the gateway is shutting down |
//! | 1007 | a text message is not JSON on a route that requires JSON |
//! | 1008 | the client sends messages faster than the route allows, or a message does not match the route's JSON Schema |
//! | 1009 | a message or frame is larger than the route allows (it is never forwarded) |
//! | 1011 | the tunnel or the service failed |
//! | 4001 | the client's token expired |
//! | 4002 | a newer connection of the same user replaced this one |
//! | 4003 | the client's token or user was revoked |
//! | 4004 | the client did not answer a ping within the heartbeat timeout |
//! | 4005 | the client did not keep up: its queue of pushed messages overflowed, or a message could not be written to it within the heartbeat timeout |

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use netwall_proto::{Frame as TunnelFrame, WsKind};
use netwall_tunnel::io::{FrameReader, FrameWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, Options, WebSocket};

use crate::config::WsConfig;
use crate::metrics::{Metrics, RouteLabel, WsCloseLabel};
pub use crate::policy::origin::OriginPattern;
use crate::tunnel::{Lease, StreamRead, StreamWrite};

/// Close code: the token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code: a newer connection of the same user replaced this one.
pub const CLOSE_REPLACED: u16 = 4002;
/// Close code: the token or its user was revoked.
pub const CLOSE_REVOKED: u16 = 4003;
/// Close code: the client missed the heartbeat.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4004;
/// Close code: the client did not keep up with the messages pushed to it.
pub const CLOSE_TOO_SLOW: u16 = 4005;

/// Read and write buffer a WebSocket starts with and returns to, each: a small message's
/// frame fits; a larger one grows the buffer for as long as it takes. Most WebSockets sit idle
/// most of the time, so this is what each of them holds.
const IDLE_BUFFER_BYTES: usize = 256;

/// An order to a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Close the client with this code and reason.
    Close(u16, &'static str),
}

struct UserConn {
    id: u64,
    route: Arc<str>,
    jti: Option<String>,
    tx: tokio::sync::mpsc::Sender<Command>,
}

/// Open WebSockets by authenticated user, for per-user limits and revocation.
#[derive(Default)]
pub struct UserSessions {
    by_sub: Mutex<HashMap<String, Vec<UserConn>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A session's registration; unregisters on drop.
pub struct UserTicket {
    sessions: Arc<UserSessions>,
    sub: String,
    id: u64,
}

impl UserSessions {
    /// Register a new connection of `sub` on `route`; when the user then has more than `max`
    /// there, the oldest are told to close as replaced. Returns the ticket and the command
    /// channel of the new session.
    pub fn register(
        self: &Arc<Self>,
        sub: &str,
        jti: Option<String>,
        route: Arc<str>,
        max: usize,
    ) -> (UserTicket, tokio::sync::mpsc::Receiver<Command>) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut by_sub) = self.by_sub.lock() {
            let conns = by_sub.entry(sub.to_owned()).or_default();
            conns.push(UserConn {
                id,
                route: route.clone(),
                jti,
                tx,
            });
            let on_route = conns.iter().filter(|c| c.route == route).count();
            let mut excess = on_route.saturating_sub(max.max(1));
            conns.retain(|c| {
                if excess > 0 && c.route == route {
                    excess -= 1;
                    let _ = c.tx.try_send(Command::Close(
                        CLOSE_REPLACED,
                        "replaced by a newer connection",
                    ));
                    return false;
                }
                true
            });
        }
        (
            UserTicket {
                sessions: self.clone(),
                sub: sub.to_owned(),
                id,
            },
            rx,
        )
    }

    /// Close session `id` of `sub` as replaced by a newer one elsewhere; whether it was open.
    pub fn replace(&self, sub: &str, id: u64) -> bool {
        let Ok(mut by_sub) = self.by_sub.lock() else {
            return false;
        };
        let Some(conns) = by_sub.get_mut(sub) else {
            return false;
        };
        let before = conns.len();
        conns.retain(|c| {
            if c.id == id {
                let _ = c.tx.try_send(Command::Close(
                    CLOSE_REPLACED,
                    "replaced by a newer connection",
                ));
                return false;
            }
            true
        });
        let told = conns.len() < before;
        if conns.is_empty() {
            by_sub.remove(sub);
        }
        told
    }

    /// Close every connection of `sub` (on any route); returns how many were told.
    pub fn revoke_sub(&self, sub: &str) -> usize {
        let Ok(mut by_sub) = self.by_sub.lock() else {
            return 0;
        };
        let conns = by_sub.remove(sub).unwrap_or_default();
        conns
            .iter()
            .filter(|c| {
                c.tx.try_send(Command::Close(CLOSE_REVOKED, "revoked"))
                    .is_ok()
            })
            .count()
    }

    /// Close every connection opened with token id `jti`; returns how many were told.
    pub fn revoke_jti(&self, jti: &str) -> usize {
        let Ok(mut by_sub) = self.by_sub.lock() else {
            return 0;
        };
        let mut told = 0;
        for conns in by_sub.values_mut() {
            conns.retain(|c| {
                if c.jti.as_deref() == Some(jti) {
                    told += usize::from(
                        c.tx.try_send(Command::Close(CLOSE_REVOKED, "revoked"))
                            .is_ok(),
                    );
                    return false;
                }
                true
            });
        }
        told
    }
}

impl UserTicket {
    /// This session's number in this gateway.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for UserTicket {
    fn drop(&mut self) {
        if let Ok(mut by_sub) = self.sessions.by_sub.lock()
            && let Some(conns) = by_sub.get_mut(&self.sub)
        {
            conns.retain(|c| c.id != self.id);
            if conns.is_empty() {
                by_sub.remove(&self.sub);
            }
        }
    }
}

/// The authenticated side of a session.
pub struct SessionUser {
    /// Who.
    pub identity: crate::auth::Identity,
    /// Registration (per-user limit, revocation).
    pub ticket: UserTicket,
    /// Registration with the shared store (per-user limit across gateways).
    pub shared: crate::state::SharedSession,
    /// Orders for this session.
    pub commands: tokio::sync::mpsc::Receiver<Command>,
    /// Revocations to re-check.
    pub revocations: Arc<crate::auth::Revocations>,
    /// How often to re-check.
    pub revalidate_interval: Duration,
}

/// A route's WebSocket policy, compiled.
#[derive(Debug)]
pub struct WsPolicy {
    /// The configuration.
    pub config: WsConfig,
    origins: Vec<OriginPattern>,
    attempts: Option<Arc<dyn crate::policy::rate_limit::RateLimiter>>,
    schema: Option<jsonschema::Validator>,
}

impl WsPolicy {
    /// The per-user limit on opening attempts `config` asks for, if any.
    pub fn attempt_limit(config: &WsConfig) -> Option<crate::policy::rate_limit::Limit> {
        NonZeroU32::new(config.connect_attempts_per_user_per_minute).map(|n| {
            crate::policy::rate_limit::Limit {
                requests: n,
                window: Duration::from_secs(60),
                burst: n,
            }
        })
    }

    /// Compile a validated configuration, loading the JSON Schema (relative to `base`);
    /// `attempts` counts opening attempts (see [`WsPolicy::attempt_limit`]).
    pub fn new(
        config: WsConfig,
        base: &std::path::Path,
        attempts: Option<Arc<dyn crate::policy::rate_limit::RateLimiter>>,
    ) -> Result<WsPolicy, String> {
        let schema = match &config.json_schema {
            Some(p) => {
                // `join` keeps an absolute `p` as it is.
                let path = base.join(p);
                let failed =
                    |e: &dyn std::fmt::Display| format!("json_schema {}: {e}", path.display());
                let text = std::fs::read(&path).map_err(|e| failed(&e))?;
                let value: serde_json::Value =
                    serde_json::from_slice(&text).map_err(|e| failed(&e))?;
                Some(jsonschema::validator_for(&value).map_err(|e| failed(&e))?)
            }
            None => None,
        };
        let origins = config
            .allowed_origins
            .iter()
            .filter_map(|o| OriginPattern::parse(o).ok())
            .collect();
        Ok(WsPolicy {
            config,
            origins,
            attempts,
            schema,
        })
    }

    /// Count an opening attempt by `sub`; `Err(seconds)` when over the per-minute limit.
    /// The limiter's keyed state is bounded and pruned (see [`crate::policy::rate_limit`]).
    pub async fn attempt(&self, sub: &str) -> Result<(), u64> {
        use crate::policy::rate_limit::Decision;
        match &self.attempts {
            Some(limiter) => match limiter.check(sub).await {
                Decision::Allow => Ok(()),
                Decision::Deny { retry_after } => Err(retry_after.as_secs_f64().ceil() as u64),
            },
            None => Ok(()),
        }
    }

    /// Whether a request with this `Origin` header may open a WebSocket. With no allow-list
    /// configured, any origin (or none) is accepted; with one, the header must match it.
    pub fn origin_allowed(&self, origin: Option<&HeaderValue>) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        match origin.and_then(|o| o.to_str().ok()) {
            Some(o) => self.origins.iter().any(|p| p.matches(o)),
            None => false,
        }
    }

    /// yawc options enforcing this policy; `compress` when permessage-deflate was agreed
    /// (its parameters come from the negotiation, see [`prepare_upgrade`]).
    pub fn options(&self, compress: bool) -> Options {
        let c = &self.config;
        let frame = c.max_frame_bytes.unwrap_or(c.max_message_bytes);
        // yawc refuses a frame whose length reaches its limit, so allow exactly the maximum.
        let o = Options::default()
            .with_max_payload_read(frame + 1)
            .with_max_read_buffer(c.max_message_bytes + 1)
            .with_utf8()
            .with_no_delay()
            // Most WebSockets sit idle most of the time: start the socket buffers small (they
            // grow for large messages and shrink back) instead of yawc's 8 KiB each.
            .with_read_buffer_capacity(IDLE_BUFFER_BYTES)
            .with_write_buffer_capacity(IDLE_BUFFER_BYTES);
        if compress {
            o.with_low_latency_compression()
        } else {
            o.without_compression()
        }
    }
}

/// Whether `req` is a WebSocket opening handshake (HTTP/1.1 `Upgrade: websocket`).
pub fn is_websocket_request<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Concurrent WebSockets per (route, client IP).
pub type IpSlots = crate::policy::conn_limit::SlotTable<(Arc<str>, IpAddr)>;
/// One WebSocket's claim on its (route, client IP) budget; released on drop.
pub type IpSlot = crate::policy::conn_limit::Slot<(Arc<str>, IpAddr)>;

/// Everything a running WebSocket session holds.
pub struct Session {
    /// Route name, for metrics and logs.
    pub route: Arc<str>,
    /// Client address.
    pub peer: SocketAddr,
    /// The route's policy.
    pub policy: Arc<WsPolicy>,
    /// Tunnel stream towards the connector.
    pub writer: FrameWriter<StreamWrite>,
    /// Tunnel stream from the connector.
    pub reader: FrameReader<StreamRead>,
    /// The tunnel lease (released when the session ends).
    pub lease: Lease,
    /// The per-IP slot (released when the session ends).
    pub slot: IpSlot,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// The authenticated user, on routes with auth (boxed: most sessions have none, and
    /// every idle session would hold its size).
    pub user: Option<Box<SessionUser>>,
    /// Messages the service pushes, on routes with `push = true`.
    pub push: Option<crate::fanout::Subscription>,
}

/// Why a session ended, and what the edge tells each side.
#[derive(Debug)]
enum End {
    /// The client closed (code relayed to the service).
    ClientClosed(u16, String),
    /// The service closed (code relayed to the client).
    ServiceClosed(u16, String),
    /// The edge closes both sides with this code.
    Edge(u16, &'static str, &'static str),
    /// The client vanished without a close.
    ClientGone,
    /// The client broke the protocol; yawc has queued a Close with this code.
    Failed(u16, &'static str, &'static str),
}

fn message_frame(kind: WsKind, payload: Bytes) -> Frame {
    match kind {
        WsKind::Text => Frame::text(payload),
        WsKind::Binary => Frame::binary(payload),
    }
}

impl Session {
    /// Run until either side closes; then close the other side within the close timeout.
    pub async fn run(mut self: Box<Self>, mut ws: Box<ClientWs>, close_sent: CloseSent) {
        // Shared, not copied: every idle session holds this.
        let policy = self.policy.clone();
        let c = &policy.config;
        let label = RouteLabel {
            route: self.route.to_string(),
        };
        self.metrics.ws_active.get_or_create(&label).inc();
        let opened = Instant::now();
        let rate: Option<DefaultDirectRateLimiter> = c
            .messages_per_second
            .and_then(NonZeroU32::new)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        // The registrations live as long as the session: dropping one unregisters it.
        let mut user = self.user.take();
        let now = Instant::now();
        let mut due = Deadlines {
            ping: now + c.heartbeat_interval,
            pong: None,
            expires: user.as_ref().map(|u| {
                now + Duration::from_secs(u.identity.exp.saturating_sub(crate::auth::now_secs()))
            }),
            revalidate: user.as_ref().map(|u| now + u.revalidate_interval),
        };
        // One timer serves every deadline: an idle session holds one, not four.
        let timer = tokio::time::sleep_until(due.earliest());
        tokio::pin!(timer);
        let end = loop {
            tokio::select! {
                frame = ws.next_frame() => {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => break self.client_error(&e),
                    };
                    // Every frame the client sends counts, control frames too: a ping flood
                    // costs the edge as much as a message flood.
                    if let Some(limiter) = &rate
                        && limiter.check().is_err()
                    {
                        break End::Edge(1008, "message rate exceeded", "rate");
                    }
                    match frame.opcode() {
                        OpCode::Text | OpCode::Binary => {
                            let kind = if frame.opcode() == OpCode::Text { WsKind::Text } else { WsKind::Binary };
                            let payload = frame.into_payload();
                            if kind == WsKind::Text {
                                if let Some(schema) = &self.policy.schema {
                                    match serde_json::from_slice::<serde_json::Value>(&payload) {
                                        Ok(v) if schema.is_valid(&v) => {}
                                        Ok(_) => break End::Edge(1008, "message does not match the schema", "schema"),
                                        Err(_) => break End::Edge(1007, "text messages must be JSON", "not_json"),
                                    }
                                } else if c.text_must_be_json && serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
                                    break End::Edge(1007, "text messages must be JSON", "not_json");
                                }
                            }
                            self.metrics.ws_messages.get_or_create(&crate::metrics::DirectionLabel { direction: "to_service" }).inc();
                            self.metrics.ws_bytes.get_or_create(&crate::metrics::DirectionLabel { direction: "to_service" }).inc_by(payload.len() as u64);
                            if Box::pin(self.writer.send(&TunnelFrame::WsMessage { kind, payload })).await.is_err() {
                                break End::Edge(1011, "tunnel lost", "tunnel_lost");
                            }
                        }
                        OpCode::Pong => due.pong = None,
                        OpCode::Close => {
                            let code = frame.close_code().map_or(1005, u16::from);
                            let reason = frame.close_reason().ok().flatten().unwrap_or_default().to_owned();
                            break End::ClientClosed(code, reason);
                        }
                        // Pings are answered by the WebSocket layer itself.
                        _ => {}
                    }
                }
                frame = self.reader.next() => match frame {
                    Ok(Some(TunnelFrame::WsMessage { kind, payload })) => {
                        self.count_to_client(payload.len());
                        if let Err(end) = Box::pin(send_bounded(&mut ws, message_frame(kind, payload), c.heartbeat_timeout)).await {
                            break end;
                        }
                    }
                    Ok(Some(TunnelFrame::WsClose { code, reason })) => break End::ServiceClosed(code, reason),
                    _ => break End::Edge(1011, "service connection lost", "tunnel_lost"),
                },
                () = &mut timer => {
                    let now = Instant::now();
                    if due.pong.is_some_and(|t| t <= now) {
                        break End::Edge(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout", "heartbeat");
                    }
                    if due.expires.is_some_and(|t| t <= now) {
                        break End::Edge(CLOSE_TOKEN_EXPIRED, "token expired", "token_expired");
                    }
                    if let (Some(at), Some(u)) = (due.revalidate, &user)
                        && at <= now
                    {
                        if u.revocations.is_revoked(&u.identity) {
                            break End::Edge(CLOSE_REVOKED, "revoked", "revoked");
                        }
                        due.revalidate = Some(at + u.revalidate_interval);
                    }
                    if due.ping <= now {
                        due.ping += c.heartbeat_interval;
                        if due.pong.is_none() {
                            due.pong = Some(now + c.heartbeat_timeout);
                            if let Err(end) = Box::pin(send_bounded(&mut ws, Frame::ping(Bytes::from_static(b"netwall")), c.heartbeat_timeout)).await {
                                break end;
                            }
                        }
                    }
                    timer.as_mut().reset(due.earliest());
                }
                _ = self.shutdown.cancelled() => break End::Edge(1001, "gateway shutting down", "shutdown"),
                Some(Command::Close(code, reason)) = recv_opt(user.as_mut().map(|u| &mut u.commands)) => {
                    let what = if code == CLOSE_REPLACED { "replaced" } else { "revoked" };
                    break End::Edge(code, reason, what);
                }
                m = recv_push(&mut self.push) => match m {
                    Some(message) => {
                        self.count_to_client(message.len());
                        if let Err(end) = Box::pin(send_bounded(&mut ws, Frame::text(message), c.heartbeat_timeout)).await {
                            break end;
                        }
                    }
                    None => break End::Edge(CLOSE_TOO_SLOW, "too slow for pushed messages", "too_slow"),
                },
            }
        };
        // The close handshake is boxed so that its state does not enlarge every idle session.
        let close_code = Box::pin(self.close(&mut ws, end, &close_sent, c.close_timeout)).await;
        let _ = self.writer.shutdown().await;
        debug!(route = %self.route, client = %self.peer, code = close_code, "websocket closed");
        self.metrics.ws_active.get_or_create(&label).dec();
        self.metrics
            .ws_closed
            .get_or_create(&WsCloseLabel {
                route: self.route.to_string(),
                code: close_code,
            })
            .inc();
        self.metrics
            .ws_duration_seconds
            .observe(opened.elapsed().as_secs_f64());
        drop((self.lease, self.slot, user));
    }

    /// Tell both sides the session is over; returns the close code the client saw.
    async fn close(
        &mut self,
        ws: &mut ClientWs,
        end: End,
        close_sent: &CloseSent,
        close_timeout: Duration,
    ) -> u16 {
        match end {
            End::ClientClosed(code, reason) => {
                // The edge is the client's endpoint: it answers the Close at once (yawc has
                // queued the echo) and, as the server, closes TCP first (RFC 6455 §5.5.1,
                // §7.1.1), whatever the service does with its own close.
                finish_close(ws, code, "", close_sent, close_timeout).await;
                let _ = self
                    .writer
                    .send(&TunnelFrame::WsClose { code, reason })
                    .await;
                code
            }
            End::Failed(code, reason, what) => {
                self.refused(what, code, reason);
                // yawc may have queued a Close for this failure: send it (or the edge's
                // own) and close TCP.
                finish_close(ws, code, reason, close_sent, close_timeout).await;
                self.close_service("client closed by the edge").await;
                code
            }
            End::ServiceClosed(code, reason) => {
                let code = if CloseCode::from(code).is_allowed() {
                    code
                } else {
                    1000
                };
                close_client(ws, code, &reason, close_timeout).await;
                code
            }
            End::Edge(code, reason, what) => {
                if what != "shutdown" && what != "tunnel_lost" {
                    self.refused(what, code, reason);
                }
                self.close_service("client closed by the edge").await;
                close_client(ws, code, reason, close_timeout).await;
                code
            }
            End::ClientGone => {
                self.close_service("client went away").await;
                1006
            }
        }
    }

    /// Count one message of `len` bytes sent to the client.
    fn count_to_client(&self, len: usize) {
        let label = crate::metrics::DirectionLabel {
            direction: "to_client",
        };
        self.metrics.ws_messages.get_or_create(&label).inc();
        self.metrics
            .ws_bytes
            .get_or_create(&label)
            .inc_by(len as u64);
    }

    /// Count and log a session the edge ends for what the client did.
    fn refused(&self, what: &'static str, code: u16, reason: &str) {
        self.metrics.reject(what);
        crate::security_event!(event = "websocket_closed", route = %self.route, client = %self.peer, code, reason);
    }

    /// Tell the service the client side is gone (going away: 1001).
    async fn close_service(&mut self, reason: &str) {
        let _ = self
            .writer
            .send(&TunnelFrame::WsClose {
                code: 1001,
                reason: reason.into(),
            })
            .await;
    }

    /// What a read error from the client means. For protocol errors yawc has already queued
    /// its Close frame (with the code it maps the error to), so the edge sends no second one.
    fn client_error(&self, e: &yawc::WebSocketError) -> End {
        use yawc::WebSocketError as E;
        match e {
            E::FrameTooLarge => End::Failed(1009, "message too big", "size"),
            E::InvalidUTF8 => End::Failed(1007, "invalid UTF-8", "invalid_utf8"),
            E::ConnectionClosed | E::IoError(_) => End::ClientGone,
            other => {
                debug!(error = %other, "client broke the WebSocket protocol");
                End::Failed(1002, "protocol error", "protocol")
            }
        }
    }
}

async fn recv_opt(rx: Option<&mut tokio::sync::mpsc::Receiver<Command>>) -> Option<Command> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// When each of a session's timed duties is next due.
struct Deadlines {
    /// The next heartbeat ping.
    ping: Instant,
    /// The pong awaited for the last ping, if one is.
    pong: Option<Instant>,
    /// The token's expiry, on routes with auth.
    expires: Option<Instant>,
    /// The next revocation check, on routes with auth.
    revalidate: Option<Instant>,
}

impl Deadlines {
    /// The first of them.
    fn earliest(&self) -> Instant {
        [self.pong, self.expires, self.revalidate]
            .into_iter()
            .flatten()
            .fold(self.ping, Instant::min)
    }
}

/// Send `frame` to the client; a client that cannot take it within `limit` (it stopped
/// reading) is too slow, one whose connection broke is gone.
async fn send_bounded(ws: &mut ClientWs, frame: Frame, limit: Duration) -> Result<(), End> {
    match tokio::time::timeout(limit, ws.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientGone),
        Err(_) => Err(End::Edge(CLOSE_TOO_SLOW, "client too slow", "too_slow")),
    }
}

/// The next pushed message; `None` once the session's queue overflowed (it must close).
async fn recv_push(push: &mut Option<crate::fanout::Subscription>) -> Option<Bytes> {
    match push {
        Some(p) if p.overflowed() => None,
        Some(p) => match p.rx.recv().await {
            Some(m) if !p.overflowed() => Some(m),
            Some(_) => None,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Send what yawc queued (the answer to the client's Close, or its own Close for a protocol
/// error); if that was no Close, send one with `code`; then close the connection. All within
/// `timeout`.
async fn finish_close(
    ws: &mut ClientWs,
    code: u16,
    reason: &str,
    close_sent: &CloseSent,
    timeout: Duration,
) {
    let _ = tokio::time::timeout(timeout, async {
        // `poll_ready` writes yawc's queued frames; `close` flushes and shuts the stream down.
        if std::future::poll_fn(|cx| {
            futures_util::Sink::poll_ready(std::pin::Pin::new(&mut *ws), cx)
        })
        .await
        .is_err()
        {
            return;
        }
        if !close_sent.is_set() {
            let _ = ws.send(Frame::close(CloseCode::from(code), reason)).await;
        }
        let _ = ws.close().await;
    })
    .await;
}

/// Send a close frame and wait (bounded) for the client's answer. A client that does not
/// read cannot hold the session open: the send itself is bounded too.
async fn close_client(ws: &mut ClientWs, code: u16, reason: &str, timeout: Duration) {
    let reason: String = reason.chars().take(120).collect();
    let sent = tokio::time::timeout(
        timeout,
        ws.send(Frame::close(CloseCode::from(code), reason)),
    );
    if !matches!(sent.await, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(timeout, async {
        loop {
            match ws.next_frame().await {
                Ok(f) if f.opcode() == OpCode::Close => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    // The server closes TCP first (RFC 6455 §7.1.1).
    let _ = tokio::time::timeout(timeout, ws.close()).await;
}

/// The client's side of an edge WebSocket: hyper's upgraded connection, read through the
/// [`FrameScanner`](crate::policy::ws_frames::FrameScanner).
pub type ClientWs = WebSocket<Scanned<TokioIo<hyper::upgrade::Upgraded>>>;

/// Whether a Close frame has been written to the client (by yawc or by the edge).
#[derive(Debug, Clone, Default)]
pub struct CloseSent(Arc<std::sync::atomic::AtomicBool>);

impl CloseSent {
    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The client's connection, with what it reads and writes followed by frame scanners:
/// reads are fixed where the codec must refuse them, writes only watched for a Close.
pub struct Scanned<T> {
    io: T,
    read: crate::policy::ws_frames::FrameScanner,
    write: crate::policy::ws_frames::FrameScanner,
    close_sent: CloseSent,
}

impl<T: AsyncRead + Unpin> AsyncRead for Scanned<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        this.read.scan(&mut buf.filled_mut()[before..]);
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Scanned<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = std::pin::Pin::new(&mut this.io).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &res
            && this.write.observe(&data[..*n])
        {
            this.close_sent
                .0
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An accepted handshake whose `101` has not been sent yet.
pub struct PendingUpgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    /// The permessage-deflate parameters the edge works with (it may bound its own window
    /// without having announced it).
    extensions: Option<String>,
    options: Options,
}

impl PendingUpgrade {
    /// Wait for hyper to hand over the connection after the `101`. The WebSocket comes boxed,
    /// so whatever holds it for the session's life holds a pointer.
    pub async fn finish(self) -> Result<(Box<ClientWs>, CloseSent), String> {
        let upgraded = self.on_upgrade.await.map_err(|e| e.to_string())?;
        let close_sent = CloseSent::default();
        let io = Scanned {
            io: TokioIo::new(upgraded),
            read: Default::default(),
            write: Default::default(),
            close_sent: close_sent.clone(),
        };
        let ws = WebSocket::from_stream_with_extensions(
            io,
            yawc::Role::Server,
            self.extensions.as_deref(),
            self.options,
        )
        .map_err(|e| e.to_string())?;
        Ok((Box::new(ws), close_sent))
    }
}

/// Validate a client handshake and prepare the `101` (sent only once the service accepted).
///
/// Compression is negotiated by the edge ([`crate::policy::deflate`]), not by yawc, and the
/// answer is the edge's own.
pub fn prepare_upgrade(
    req: &mut Request<Incoming>,
    policy: &WsPolicy,
) -> Option<(Response<http_body_util::Empty<Bytes>>, PendingUpgrade)> {
    let c = &policy.config;
    let agreed = if c.compression {
        crate::policy::deflate::negotiate(
            req.headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
            c.compression_window_bits,
        )
    } else {
        None
    };
    // Taken before yawc builds the answer, so the connection comes to the edge's own
    // scanner; yawc sees no offer and answers with no extension.
    let on_upgrade = hyper::upgrade::on(&mut *req);
    req.headers_mut().remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let (mut resp, _) = WebSocket::upgrade_with_options(req, Options::default()).ok()?;
    let extensions = agreed.map(|a| {
        if let Ok(v) = HeaderValue::from_str(&a.to_string()) {
            resp.headers_mut()
                .insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
        }
        crate::policy::deflate::Agreed {
            server_max_window_bits: Some(
                a.server_max_window_bits
                    .unwrap_or(c.compression_window_bits),
            ),
            ..a
        }
        .to_string()
    });
    Some((
        resp,
        PendingUpgrade {
            on_upgrade,
            extensions,
            options: policy.options(agreed.is_some()),
        },
    ))
}
