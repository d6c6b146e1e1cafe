//! The request path: route, policy, tunnel, response.
//!
//! ```text
//! request -> host + path -> route -> body limit -> least-loaded tunnel connection
//!         -> open stream -> RequestHead [Data..] End  ==>  connector
//!         <- ResponseHead [Data..] End               <==
//! ```
//! Bodies stream in both directions; the response body is read from the tunnel only as fast
//! as the client takes it. Everything the edge answers itself goes through
//! [`crate::respond::respond`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use netwall_proto::{Codec, Frame, RequestHead, ResponseHead};
use netwall_tunnel::body::{BodyError, BodyGuard, TunnelBody, pipe_upgraded, send_body};
use netwall_tunnel::http::{
    fix_response_framing, from_header_map, strip_hop_by_hop, to_header_map,
};
use netwall_tunnel::io::{FrameReader, FrameWriter};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{Instrument, debug, warn};

use crate::auth::{Auth, Identity};
use crate::challenge::{Challenge, Endpoint, Gate};
use crate::metrics::{ChallengeLabel, Metrics, RouteLabel, StatusLabel, TunnelDirLabel};
use crate::policy::conn_limit::{RequestSlot, RequestSlots, client_network};
use crate::policy::cors::Preflight;
use crate::policy::headers::{
    HeaderError, RequestHost, check_limits, connection_names_upgrade, drop_underscored,
    join_cookies, request_host, strip_edge_owned,
};
use crate::policy::path::normalize;
use crate::policy::rate_limit::Decision;
use crate::policy::ws_handshake::HandshakeError;
use crate::respond::{EdgeError, respond};
use crate::route::{Route, RouteTable};
use crate::tunnel::{Lease, Registry, StreamRead, StreamWrite, Tunnel};
use crate::ws::{IpSlots, is_websocket_request};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many connections a request may try when opening its stream fails (the connection died
/// between being picked and being used). Nothing of the request has been sent at that point,
/// so trying another connection is always safe.
const OPEN_ATTEMPTS: usize = 3;

/// Body of every response the gateway sends.
pub type ResponseBody =
    Either<Full<Bytes>, Either<TunnelBody<StreamRead, ResponseGuard>, Empty<Bytes>>>;

/// What the challenge step leaves of a request.
enum Challenged {
    /// Go on (with the identity a bypassing JWT proved, if any).
    Continue(Box<Request<Incoming>>, Option<Identity>),
    /// The challenge answered it.
    Answer(Response<ResponseBody>),
}

/// Set a route's difficulty gauge; a change is a security event (a flood raised it or its
/// end lowered it).
fn set_difficulty(metrics: &Metrics, route: &str, difficulty: u8) {
    let gauge = metrics.challenge_difficulty.get_or_create(&RouteLabel {
        route: route.to_owned(),
    });
    let before = gauge.set(i64::from(difficulty));
    if before != 0 && before != i64::from(difficulty) {
        crate::security_event!(event = "challenge_difficulty", route = %route, from = before, to = difficulty, "challenge difficulty changed");
    }
}

/// Keep every challenged route's difficulty gauge current, also while no visitor arrives
/// (and across reloads: the routes are read from the proxy each time).
pub async fn challenge_difficulty_gauges(
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    /// The gauge is as fresh as a scrape interval needs.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for route in proxy.routes().routes() {
            if let Some(challenge) = &route.challenge {
                set_difficulty(&metrics, &route.name, challenge.difficulty());
            }
        }
    }
}

/// Holds a response's lease on its tunnel connection and counts the bytes it relays.
pub struct ResponseGuard {
    _lease: Lease,
    bytes: Counter,
    /// The client network's claim on its requests in flight (a refused WebSocket's answer
    /// holds none: WebSockets have their own cap).
    _in_flight: Option<RequestSlot>,
}

impl BodyGuard for ResponseGuard {
    fn on_data(&mut self, n: usize) {
        self.bytes.inc_by(n as u64);
    }
}

/// Names a WebSocket session to its service on routes with `push = true`: the service
/// publishes on `connection:<value>` to reach this one client.
pub const CONNECTION_HEADER: &str = "x-netwall-connection";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// State the proxy shares with the rest of the gateway for long-lived sessions.
pub struct Sessions {
    /// This gateway's WebSockets by user and its revocation table.
    pub local: Arc<crate::state::Local>,
    /// State shared with other gateways (per-user limits across them).
    pub store: Arc<dyn crate::state::Store>,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Where WebSocket sessions run, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Spike detection settings.
    pub spike: crate::spike::SpikeConfig,
    /// Most request header bytes a client may send (`[https] max_header_bytes`).
    pub max_header_bytes: usize,
    /// Requests in flight per client network (`[https] max_requests_per_ip`).
    pub max_requests_per_ip: usize,
}

/// Relays public requests into tunnels.
pub struct Proxy {
    /// Replaced whole by a reload; a request keeps the table it started with.
    routes: arc_swap::ArcSwap<RouteTable>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    codec: Codec,
    ws_slots: Arc<IpSlots>,
    spikes: crate::spike::SpikeDetector,
    local: Arc<crate::state::Local>,
    store: Arc<dyn crate::state::Store>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    max_header_bytes: usize,
    in_flight: Arc<RequestSlots>,
    max_requests_per_ip: usize,
}

impl Proxy {
    /// A proxy over `routes` and `registry`.
    pub fn new(
        routes: RouteTable,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        codec: Codec,
        sessions: Sessions,
    ) -> Self {
        let Sessions {
            local,
            store,
            shutdown,
            tasks,
            spike,
            max_header_bytes,
            max_requests_per_ip,
        } = sessions;
        Proxy {
            routes: arc_swap::ArcSwap::from_pointee(routes),
            registry,
            metrics,
            codec,
            ws_slots: Arc::new(IpSlots::default()),
            spikes: crate::spike::SpikeDetector::new(spike),
            local,
            store,
            shutdown,
            tasks,
            max_header_bytes,
            in_flight: Arc::new(RequestSlots::default()),
            max_requests_per_ip,
        }
    }

    /// The routes in force.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Serve `routes` from the next request on; requests under way keep the table they
    /// were routed by.
    pub fn set_routes(&self, routes: RouteTable) {
        self.routes.store(Arc::new(routes));
    }

    /// Answer one public request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let started = Instant::now();
        let mut routed = None;
        let resp = match self.forward(req, peer, &mut routed).await {
            Ok(r) => r,
            Err(e) => respond(e, &self.metrics).map(Either::Left),
        };
        let head = started.elapsed();
        self.metrics
            .response_head_seconds
            .observe(head.as_secs_f64());
        if let Some(stats) = routed {
            stats.record(resp.status().as_u16(), head);
        }
        let class = match resp.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics
            .responses
            .get_or_create(&StatusLabel { class })
            .inc();
        Ok(resp)
    }

    /// The edge policy pipeline (see [`crate::policy`]), then the relay.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        routed: &mut Option<Arc<crate::status::RouteStats>>,
    ) -> Result<Response<ResponseBody>, EdgeError> {
        if req.method() == Method::CONNECT {
            return Err(refused(EdgeError::MethodNotAllowed, "connect", peer));
        }
        let host = request_host(&req).map_err(|e| match e {
            HeaderError::MissingHost => EdgeError::MissingHost,
            HeaderError::BadHost => refused(EdgeError::BadHost, "bad_host", peer),
            HeaderError::TooLarge => EdgeError::HeadersTooLarge,
        })?;
        let normal = normalize(req.uri().path()).map_err(|e| {
            crate::security_event!(event = "bad_path", client = %peer, reason = %e, "request refused");
            EdgeError::BadPath
        })?;
        // Forwarded as routed: a rewritten path replaces the client's in the request.
        if let std::borrow::Cow::Owned(path) = normal {
            *req.uri_mut() = with_path(req.uri(), &path).ok_or(EdgeError::BadPath)?;
        }
        let route = self
            .routes
            .load()
            .find(&host.name, req.uri().path())
            .ok_or(EdgeError::UnknownHost)?
            .clone();
        *routed = Some(route.stats.clone());
        if req.method() == Method::TRACE && !route.allow_trace {
            return Err(refused(EdgeError::MethodNotAllowed, "trace", peer));
        }
        // A preflight carries no credentials: it is answered before auth, at the edge.
        let origin = match &route.cors {
            Some(cors) => match cors.preflight(req.method(), req.headers()) {
                Preflight::No => req.headers().get(header::ORIGIN).cloned(),
                Preflight::Allowed(headers) => {
                    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    *resp.headers_mut() = headers;
                    if let Some(h) = &route.response_headers {
                        h.apply(resp.headers_mut());
                    }
                    return Ok(resp);
                }
                Preflight::Refused(why) => {
                    crate::security_event!(event = "cors_refused", route = %route.name, client = %peer, reason = why, origin = ?req.headers().get(header::ORIGIN));
                    return Err(EdgeError::CorsRefused);
                }
            },
            None => None,
        };
        join_cookies(req.headers_mut());
        if !route.allow_underscores_in_headers {
            drop_underscored(req.headers_mut());
        }
        check_limits(req.headers(), self.max_header_bytes)
            .map_err(|_| EdgeError::HeadersTooLarge)?;
        let peer =
            crate::policy::headers::client_addr(req.headers(), peer, route.trusted_proxy_hops);
        // Client copies of edge-owned headers (identity, forwarding) are removed once, where
        // the head is built (`request_head`); nothing before it reads them.
        let mut identity = None;
        if let Some(challenge) = route.challenge.clone() {
            match self
                .challenge(&challenge, req, &route, peer, &host.name)
                .await?
            {
                Challenged::Continue(r, id) => {
                    req = *r;
                    identity = id;
                }
                Challenged::Answer(resp) => return Ok(resp),
            }
        }
        let identity = match (&route.auth, identity) {
            (_, Some(id)) => Some(id),
            (Some(auth), None) => Some(self.authenticate(auth, &req, &route, peer)?),
            (None, None) => None,
        };
        if let Some(rl) = &route.rate_limit {
            let key = match (&identity, rl.by_sub) {
                (Some(id), true) => format!("sub:{}", id.sub),
                _ => crate::policy::rate_limit::ip_key(peer.ip()),
            };
            if let Decision::Deny { retry_after } = rl.limiter.check(&key).await {
                crate::security_event!(event = "rate_limited", route = %route.name, client = %peer, key = %key);
                return Err(EdgeError::RateLimited {
                    retry_after: retry_after.as_secs_f64().ceil() as u64,
                    limit: rl.limit.requests.get(),
                    window: rl.limit.window.as_secs().max(1),
                });
            }
        }
        if is_websocket_request(&req) && route.accepts_websocket() {
            return self.websocket(req, route, peer, &host, identity).await;
        }
        if content_length(req.headers()).is_some_and(|n| n > route.max_body_bytes) {
            return Err(EdgeError::BodyTooLarge);
        }
        // Held until the response body (or the upgraded connection) ends, so a client that
        // reads nothing back holds its own budget, not the tunnel's.
        let Some(in_flight) = self
            .in_flight
            .claim(client_network(peer.ip()), self.max_requests_per_ip)
        else {
            crate::security_event!(event = "connection_limit", limit = "requests_per_ip", route = %route.name, client = %peer);
            return Err(EdgeError::TooManyRequestsInFlight);
        };
        let tunnel = self
            .registry
            .get(&route.tunnel)
            .ok_or(EdgeError::TunnelOffline)?
            .clone();
        let upgrade = match upgrade_protocol(&req) {
            Some(proto) if route.relays_upgrade(&proto) => true,
            Some(proto) => {
                // Only upgrades the route allows cross the edge (h2c smuggling): the rest
                // go on as plain requests without their upgrade headers.
                crate::security_event!(event = "upgrade_stripped", route = %route.name, client = %peer, protocol = %proto);
                strip_upgrade(req.headers_mut());
                false
            }
            None => false,
        };
        let method = req.method().clone();
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let mode = if upgrade { Mode::Upgrade } else { Mode::Plain };
        let head = Frame::RequestHead(request_head(&req, &route, &host, peer, mode, identity));
        let deadline = Instant::now() + route.timeout;
        let body = req.into_body();
        let empty_body = body.is_end_stream();
        // Nothing of a bodiless idempotent request is consumed by sending it, so when the
        // tunnel connection dies before a response head arrives it is replayed on another.
        let replayable = !upgrade && empty_body && is_idempotent(&method);
        let mut body = Some(body);
        let mut attempt = 0;
        // A bodiless request goes out as its head and end in one write.
        let end = Frame::End(Vec::new());
        let frames: &[&Frame] = if !upgrade && empty_body {
            &[&head, &end]
        } else {
            &[&head]
        };
        let frames = self.encode(frames)?;
        let (head, lease, reader, upgrade_writer) = loop {
            attempt += 1;
            let (lease, writer, mut reader) = self.open(&tunnel, &frames, deadline).await?;
            let (body_failed_tx, body_failed_rx) = oneshot::channel::<EdgeError>();
            let mut upgrade_writer = None;
            if upgrade {
                upgrade_writer = Some(writer);
            } else if empty_body {
                drop(writer);
            } else if let Some(body) = body.take() {
                self.spawn_body_pump(body, writer, &route, body_failed_tx);
            }

            let first = tokio::select! {
                f = tokio::time::timeout_at(deadline, reader.next()) => f,
                Ok(e) = body_failed_rx => return Err(e),
            };
            let outcome = match first {
                Err(_) => Err(EdgeError::ServiceTimeout),
                Ok(Ok(Some(Frame::ResponseHead(h)))) => Ok(h),
                Ok(Ok(Some(Frame::Reset(r)))) => {
                    debug!(code = ?r.code, reason = %r.reason, "connector reset the request");
                    Err(EdgeError::from_reset(r.code))
                }
                Ok(Ok(Some(_))) => Err(EdgeError::BadServiceResponse),
                Ok(Ok(None)) | Ok(Err(_)) => Err(EdgeError::TunnelLost),
            };
            match outcome {
                Ok(h) => break (h, lease, reader, upgrade_writer),
                Err(EdgeError::TunnelLost) if replayable && attempt < OPEN_ATTEMPTS => {
                    if lease.conn().is_closed() {
                        tunnel.remove(lease.conn().id);
                    }
                    debug!(
                        attempt,
                        "tunnel connection lost before the response; replaying"
                    );
                }
                Err(e) => return Err(e),
            }
        };

        if head.status == 101 {
            let (Some(on_upgrade), Some(writer)) = (on_upgrade, upgrade_writer) else {
                return Err(EdgeError::BadServiceResponse);
            };
            return self.switch_protocols(
                head,
                on_upgrade,
                writer,
                reader,
                (lease, in_flight),
                &route,
            );
        }
        if let Some(mut w) = upgrade_writer {
            // The service declined the upgrade: the request had no body.
            let _ = w.send(&Frame::End(Vec::new())).await;
        }
        let status = service_status(head.status)?;
        if status.is_informational() {
            return Err(EdgeError::BadServiceResponse);
        }
        let mut headers =
            to_header_map(&head.headers).map_err(|_| EdgeError::BadServiceResponse)?;
        fix_response_framing(head.status, &mut headers);
        strip_hop_by_hop(&mut headers, false);
        if let Some(cors) = &route.cors {
            cors.apply(origin.as_ref(), &mut headers);
        }
        if let Some(h) = &route.response_headers {
            h.apply(&mut headers);
        }
        let guard = ResponseGuard {
            _lease: lease,
            bytes: self.to_client_bytes(&route),
            _in_flight: Some(in_flight),
        };
        let mut resp = Response::new(Either::Right(Either::Left(TunnelBody::new(
            reader, None, guard,
        ))));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    fn count_challenge(&self, route: &Route, outcome: &'static str) {
        self.metrics
            .challenges
            .get_or_create(&ChallengeLabel {
                route: route.name.clone(),
                outcome,
            })
            .inc();
    }

    /// The route's proof-of-work challenge: its own endpoints, its bypasses, the pass cookie,
    /// else a challenge page.
    async fn challenge(
        &self,
        challenge: &Challenge,
        req: Request<Incoming>,
        route: &Route,
        peer: SocketAddr,
        host: &str,
    ) -> Result<Challenged, EdgeError> {
        let now = crate::auth::now_secs();
        let ip = peer.ip();
        let gate = challenge.gate(req.method(), req.uri().path(), ip, host, req.headers(), now);
        let answer = |resp: Response<Full<Bytes>>| {
            let mut resp = resp;
            // The route's own response headers (HSTS and the like) join the challenge's, but
            // never replace its policy, content type or caching.
            if let Some(h) = &route.response_headers {
                let mut extra = HeaderMap::new();
                h.apply(&mut extra);
                for (name, value) in &extra {
                    if !resp.headers().contains_key(name) {
                        resp.headers_mut().insert(name.clone(), value.clone());
                    }
                }
            }
            Ok(Challenged::Answer(resp.map(Either::Left)))
        };
        match gate {
            Gate::Pass => Ok(Challenged::Continue(Box::new(req), None)),
            Gate::Bypass(_) => {
                self.count_challenge(route, "bypassed");
                Ok(Challenged::Continue(Box::new(req), None))
            }
            Gate::Endpoint(Endpoint::Verify) => {
                let headers = req.headers().clone();
                let body = http_body_util::Limited::new(
                    req.into_body(),
                    crate::challenge::MAX_VERIFY_BODY_BYTES,
                );
                let body = match tokio::time::timeout(
                    crate::challenge::VERIFY_BODY_TIMEOUT,
                    http_body_util::BodyExt::collect(body),
                )
                .await
                {
                    Ok(Ok(b)) => b.to_bytes(),
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                        self.count_challenge(route, "failed");
                        crate::security_event!(event = "challenge_failed", route = %route.name, client = %peer, reason = "body too large");
                        return Err(EdgeError::BodyTooLarge);
                    }
                    _ => {
                        self.count_challenge(route, "failed");
                        return Err(EdgeError::BadRequestBody);
                    }
                };
                match challenge.verify(&body, ip, host, &headers, now) {
                    Ok(v) => {
                        self.count_challenge(route, "solved");
                        if let Some(t) = v.solve_time {
                            self.metrics
                                .challenge_solve_seconds
                                .get_or_create(&RouteLabel {
                                    route: route.name.clone(),
                                })
                                .observe(t.as_secs_f64());
                        }
                        debug!(route = %route.name, client = %peer, solve_ms = ?v.solve_time.map(|t| t.as_millis()), "challenge solved");
                        answer(v.response)
                    }
                    Err(reason) => {
                        self.count_challenge(route, "failed");
                        crate::security_event!(event = "challenge_failed", route = %route.name, client = %peer, reason);
                        Err(EdgeError::ChallengeFailed)
                    }
                }
            }
            Gate::Endpoint(endpoint) => {
                let pass =
                    endpoint == Endpoint::Check && challenge.has_pass(ip, host, req.headers(), now);
                match challenge.asset(endpoint, pass) {
                    Some(resp) => answer(resp),
                    None => Err(EdgeError::ChallengeFailed),
                }
            }
            Gate::Unsigned => {
                // API clients with a valid token for the route pass when the route says so;
                // the identity is kept so the token is not verified twice.
                if challenge.bypass_jwt
                    && let Some(auth) = &route.auth
                    && let Ok(token) = auth.token(req.headers(), req.uri().query())
                    && let Ok(id) = auth.verify(&token, &self.local.revocations)
                {
                    self.count_challenge(route, "bypassed");
                    return Ok(Challenged::Continue(Box::new(req), Some(id)));
                }
                let issued = challenge.issue(ip, host, req.headers(), now);
                self.count_challenge(route, "issued");
                self.difficulty_gauge(route, issued.difficulty);
                answer(issued.response)
            }
        }
    }

    fn difficulty_gauge(&self, route: &Route, difficulty: u8) {
        set_difficulty(&self.metrics, &route.name, difficulty);
    }

    fn to_client_bytes(&self, route: &Route) -> Counter {
        let label = TunnelDirLabel {
            tunnel: route.tunnel.clone(),
            direction: "to_client",
        };
        self.metrics.tunnel_bytes.get_or_create(&label).clone()
    }

    /// A WebSocket opening handshake: edge policy, then the service's acceptance through the
    /// tunnel, then the client's `101` and a session relaying messages.
    /// Check the route's JWT requirement; every failure is a 401 and a security event.
    fn authenticate(
        &self,
        auth: &Auth,
        req: &Request<Incoming>,
        route: &Route,
        peer: SocketAddr,
    ) -> Result<Identity, EdgeError> {
        let result = auth
            .token(req.headers(), req.uri().query())
            .and_then(|t| auth.verify(&t, &self.local.revocations));
        result.map_err(|e| {
            crate::security_event!(event = "auth_failed", route = %route.name, client = %peer, reason = %e);
            EdgeError::Unauthorized
        })
    }

    async fn websocket(
        &self,
        mut req: Request<Incoming>,
        route: Arc<Route>,
        peer: SocketAddr,
        host: &RequestHost,
        identity: Option<Identity>,
    ) -> Result<Response<ResponseBody>, EdgeError> {
        if let Err(e) = crate::policy::ws_handshake::check(req.method(), req.headers()) {
            crate::security_event!(event = "bad_websocket_handshake", route = %route.name, client = %peer, reason = %e, "request refused");
            return Err(match e {
                HandshakeError::Version => EdgeError::WebSocketVersion,
                _ => EdgeError::BadWebSocketHandshake,
            });
        }
        let policy = route.websocket.clone();
        if let Some(id) = &identity
            && let Err(retry_after) = policy.attempt(&id.sub).await
        {
            crate::security_event!(event = "connection_limit", limit = "attempts_per_user", route = %route.name, client = %peer, sub = %id.sub);
            return Err(EdgeError::TooManyAttempts(retry_after));
        }
        if !policy.origin_allowed(req.headers().get(header::ORIGIN)) {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .unwrap_or("<none>")
                .to_owned();
            crate::security_event!(event = "origin_rejected", route = %route.name, client = %peer, %origin);
            return Err(EdgeError::OriginNotAllowed);
        }
        let route_name: Arc<str> = route.name.as_str().into();
        let Some(slot) = self.ws_slots.claim(
            (route_name.clone(), peer.ip()),
            policy.config.max_connections_per_ip,
        ) else {
            crate::security_event!(event = "connection_limit", limit = "per_ip", route = %route.name, client = %peer);
            return Err(EdgeError::TooManyConnections);
        };
        let tunnel = self
            .registry
            .get(&route.tunnel)
            .ok_or(EdgeError::TunnelOffline)?
            .clone();
        let (mut accept, upgrade) = crate::ws::prepare_upgrade(&mut req, &policy)
            .ok_or(EdgeError::BadWebSocketHandshake)?;
        let mut head = request_head(&req, &route, host, peer, Mode::WebSocket, identity.clone());
        // The session's own channel, named to the service so it can push to this client.
        let push_id = policy.config.push.then(|| {
            let id = self.local.hub.next_id();
            (id, self.local.session(id))
        });
        if let Some((_, name)) = &push_id {
            head.headers.push(netwall_proto::Header {
                name: Bytes::from_static(CONNECTION_HEADER.as_bytes()),
                value: Bytes::from(name.clone()),
            });
        }
        let head = self.encode(&[&Frame::RequestHead(head)])?;
        let deadline = Instant::now() + policy.config.open_timeout;
        let (lease, writer, mut reader) = self.open(&tunnel, &head, deadline).await?;
        let answer = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => return Err(EdgeError::ServiceTimeout),
            Ok(Ok(Some(Frame::ResponseHead(h)))) => h,
            Ok(Ok(Some(Frame::Reset(r)))) => {
                debug!(code = ?r.code, reason = %r.reason, "connector refused the WebSocket");
                return Err(EdgeError::from_reset(r.code));
            }
            Ok(_) => return Err(EdgeError::TunnelLost),
        };
        if answer.status != 101 {
            // The service refused the WebSocket: its status reaches the client.
            let status = service_status(answer.status)?;
            let guard = ResponseGuard {
                _lease: lease,
                bytes: self.to_client_bytes(&route),
                _in_flight: None,
            };
            let mut resp = Response::new(Either::Right(Either::Left(TunnelBody::new(
                reader, None, guard,
            ))));
            *resp.status_mut() = status;
            return Ok(resp);
        }
        // The subprotocol the service chose, if it is one the client offered: a browser that
        // offered some fails a WebSocket answered with none, or with another.
        if let Some(chosen) = answer
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(b"sec-websocket-protocol"))
        {
            let value = HeaderValue::from_bytes(&chosen.value)
                .ok()
                .filter(|_| crate::policy::ws_handshake::offered(req.headers(), &chosen.value));
            let Some(value) = value else {
                warn!(route = %route.name, protocol = ?chosen.value, "the service chose a WebSocket subprotocol the client did not offer");
                return Err(EdgeError::BadServiceResponse);
            };
            accept
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        self.metrics
            .ws_opened
            .get_or_create(&RouteLabel {
                route: route.name.clone(),
            })
            .inc();
        if self.spikes.record() {
            self.metrics.spikes.inc();
        }
        let session_route = route_name.clone();
        let max_per_user = policy.config.max_connections_per_user;
        let revalidate = route
            .auth
            .as_ref()
            .map_or(crate::auth::DEFAULT_REVALIDATE_INTERVAL, |a| {
                a.config().revalidate_interval
            });
        let push = push_id.map(|(id, name)| {
            let mut channels = vec![
                format!("route:{}", route.name),
                format!("connection:{name}"),
            ];
            if let Some(id) = &identity {
                channels.push(format!("user:{}", id.sub));
            }
            self.local
                .hub
                .subscribe(id, &route.tunnel, channels, policy.config.push_queue)
        });
        let user = match identity {
            Some(identity) => {
                let (ticket, commands) = self.local.users.register(
                    &identity.sub,
                    identity.jti.clone(),
                    session_route.clone(),
                    max_per_user,
                );
                let key = crate::state::SessionKey {
                    route: session_route,
                    sub: identity.sub.clone(),
                    session: self.local.session(ticket.id()),
                };
                let shared =
                    crate::state::SharedSession::open(self.store.clone(), key, max_per_user).await;
                Some(Box::new(crate::ws::SessionUser {
                    ticket,
                    shared,
                    commands,
                    revocations: self.local.revocations.clone(),
                    revalidate_interval: revalidate,
                    identity,
                }))
            }
            None => None,
        };
        let session = Box::new(crate::ws::Session {
            route: route_name,
            peer,
            policy,
            writer,
            reader,
            lease,
            slot,
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            user,
            push,
        });
        self.tasks.spawn(
            async move {
                // Both steps boxed: the task then keeps two pointers for as long as the
                // WebSocket is open, not the layout of the upgrade (which builds the client's
                // WebSocket in place) beside the session's.
                match Box::pin(upgrade.finish()).await {
                    Ok((ws, close_sent)) => Box::pin(session.run(ws, close_sent)).await,
                    Err(e) => debug!(error = %e, "client WebSocket upgrade failed"),
                }
            }
            .in_current_span(),
        );
        Ok(accept.map(|_| Either::Right(Either::Right(Empty::new()))))
    }

    /// Relay a request body to the tunnel in its own task; a body over the route's limit or
    /// with broken framing fires `failed` with the client's error.
    fn spawn_body_pump(
        &self,
        body: Incoming,
        mut writer: FrameWriter<StreamWrite>,
        route: &Route,
        failed: oneshot::Sender<EdgeError>,
    ) {
        let metrics = self.metrics.clone();
        let label = TunnelDirLabel {
            tunnel: route.tunnel.clone(),
            direction: "to_service",
        };
        let limit = route.max_body_bytes;
        tokio::spawn(
            async move {
                match send_body(body, &mut writer, Some(limit)).await {
                    Ok(n) => {
                        metrics.tunnel_bytes.get_or_create(&label).inc_by(n);
                        let _ = writer.shutdown().await;
                    }
                    Err(BodyError::TooLarge { .. }) => {
                        let _ = failed.send(EdgeError::BodyTooLarge);
                    }
                    Err(BodyError::Source(e)) => {
                        // The client's body was not valid HTTP framing (or the client went
                        // away mid-body): the client's error, never the service's.
                        debug!(error = %e, "request body from the client failed");
                        let _ = failed.send(EdgeError::BadRequestBody);
                    }
                    Err(e) => debug!(error = %e, "request body relay ended early"),
                }
            }
            .in_current_span(),
        );
    }

    /// Encode frames for the tunnel before a connection is touched: a head the codec cannot
    /// carry is this request's error (431), never the connection's.
    fn encode(&self, frames: &[&Frame]) -> Result<Bytes, EdgeError> {
        let mut buf = bytes::BytesMut::new();
        for f in frames {
            self.codec.encode(f, &mut buf).map_err(|e| {
                debug!(error = %e, "request head does not fit the tunnel codec");
                EdgeError::HeadersTooLarge
            })?;
        }
        Ok(buf.freeze())
    }

    /// Lease a connection and send the encoded request head. A stream that cannot be opened
    /// or written is that request's failure; the connection leaves the pick set only when
    /// its transport is really closed, and another connection is tried (nothing of the
    /// request has been processed yet).
    async fn open(
        &self,
        tunnel: &Tunnel,
        head: &[u8],
        deadline: Instant,
    ) -> Result<(Lease, FrameWriter<StreamWrite>, FrameReader<StreamRead>), EdgeError> {
        for _ in 0..OPEN_ATTEMPTS {
            let lease = tunnel.pick().ok_or(EdgeError::TunnelOffline)?;
            let attempt = async {
                let (send, recv) = lease.conn().open_stream().await?;
                let mut writer = FrameWriter::new(send, self.codec);
                writer
                    .send_encoded(head)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>((writer, FrameReader::new(recv, self.codec)))
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok((w, r))) => return Ok((lease, w, r)),
                Ok(Err(e)) => {
                    let closed = lease.conn().is_closed();
                    debug!(error = %e, conn_id = lease.conn().id, closed, "tunnel stream could not be opened; trying another connection");
                    if closed {
                        tunnel.remove(lease.conn().id);
                    }
                }
                Err(_) => return Err(EdgeError::ServiceTimeout),
            }
        }
        Err(EdgeError::TunnelLost)
    }

    fn switch_protocols(
        &self,
        head: ResponseHead,
        on_upgrade: hyper::upgrade::OnUpgrade,
        writer: FrameWriter<StreamWrite>,
        reader: FrameReader<StreamRead>,
        held: (Lease, RequestSlot),
        route: &Route,
    ) -> Result<Response<ResponseBody>, EdgeError> {
        let headers = to_header_map(&head.headers).map_err(|_| EdgeError::BadServiceResponse)?;
        let metrics = self.metrics.clone();
        let tunnel = route.tunnel.clone();
        tokio::spawn(
            async move {
                let _held = held;
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let (up, down) =
                            pipe_upgraded(TokioIo::new(upgraded), writer, reader).await;
                        let label = |direction| TunnelDirLabel {
                            tunnel: tunnel.clone(),
                            direction,
                        };
                        metrics
                            .tunnel_bytes
                            .get_or_create(&label("to_service"))
                            .inc_by(up);
                        metrics
                            .tunnel_bytes
                            .get_or_create(&label("to_client"))
                            .inc_by(down);
                    }
                    Err(e) => debug!(error = %e, "client upgrade failed"),
                }
            }
            .in_current_span(),
        );
        let mut resp = Response::new(Either::Right(Either::Right(Empty::new())));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The protocol an HTTP/1.1 `Upgrade` request asks for (its first token), if it is one.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<String> {
    let upgrade = req.version() == Version::HTTP_11 && connection_names_upgrade(req.headers());
    if !upgrade {
        return None;
    }
    let value = req.headers().get(header::UPGRADE)?;
    let first = String::from_utf8_lossy(value.as_bytes());
    let proto = first.split(',').next().unwrap_or("").trim();
    let proto = proto.split('/').next().unwrap_or("").trim();
    Some(proto.to_ascii_lowercase())
}

/// Remove an upgrade request's `Upgrade` and its `Connection` token (the rest of
/// `Connection` is hop-by-hop and stripped later anyway).
fn strip_upgrade(headers: &mut HeaderMap) {
    headers.remove(header::UPGRADE);
    headers.remove(header::CONNECTION);
    headers.remove("http2-settings");
}

/// `uri` with its path replaced by the normalised `path` (query kept).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let mut parts = uri.clone().into_parts();
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// Log and count a request refused for what it is (not for load), and hand back the error.
fn refused(err: EdgeError, event: &'static str, peer: SocketAddr) -> EdgeError {
    crate::security_event!(event, client = %peer, "request refused");
    err
}

fn request_head<B>(
    req: &Request<B>,
    route: &Route,
    host: &RequestHost,
    peer: SocketAddr,
    mode: Mode,
    identity: Option<Identity>,
) -> RequestHead {
    let mut headers = req.headers().clone();
    // Hop-by-hop headers (and whatever `Connection` names) go first, so a client's
    // `Connection: x-netwall-sub` can never remove a header the edge adds below.
    strip_hop_by_hop(&mut headers, mode == Mode::Upgrade);
    if mode == Mode::WebSocket {
        // The connector makes its own handshake with the service.
        for name in [
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_EXTENSIONS,
        ] {
            headers.remove(name);
        }
    }
    // The edge is the first proxy: whatever the client claims about forwarding or identity
    // is discarded, in every spelling a backend might fold into the edge's own names.
    strip_edge_owned(&mut headers);
    if let Some(id) = identity {
        for (name, value) in id.headers {
            headers.insert(name, value);
        }
    }
    let ip = peer.ip().to_string();
    let for_node = if peer.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.clone()
    };
    // The host as routed, not as the client spelled it (`App.Test.`): what the edge decided on
    // is what the service reads.
    let public_host = host.authority();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(&mut headers, header::HOST, &public_host);
    set(&mut headers, X_FORWARDED_FOR, &ip);
    set(&mut headers, X_FORWARDED_PROTO, "https");
    set(&mut headers, X_FORWARDED_HOST, &public_host);
    set(
        &mut headers,
        header::FORWARDED,
        &format!("for={for_node};host=\"{public_host}\";proto=https"),
    );
    RequestHead {
        service: route.service.clone(),
        method: req.method().as_str().to_owned(),
        uri: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        headers: from_header_map(&headers),
        client_addr: peer.to_string(),
        upgrade: mode == Mode::Upgrade,
        websocket: mode == Mode::WebSocket,
    }
}

/// The service's status, if it is one (RFC 9110 §15: 100-599; a client treats anything else
/// as a server error, and so does the edge, with a 502 rather than relaying it).
fn service_status(status: u16) -> Result<StatusCode, EdgeError> {
    StatusCode::from_u16(status)
        .ok()
        .filter(|_| (100..600).contains(&status))
        .ok_or(EdgeError::BadServiceResponse)
}

/// How a request crosses the tunnel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Request and response with bodies.
    Plain,
    /// An HTTP/1.1 upgrade relayed as raw bytes after a `101`.
    Upgrade,
    /// A WebSocket terminated at the edge, relayed per message.
    WebSocket,
}
