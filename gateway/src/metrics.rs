//! Prometheus metrics of the gateway, served as text on the admin listener.
//!
//! Every rejection a client can see has a counter here, labelled by reason, so an operator
//! can alert on a rise of any one failure without reading logs.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label: why a request or connection was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reason, e.g. `unknown_host`, `tunnel_offline`.
    pub reason: &'static str,
}

/// Label: a tunnel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabel {
    /// Tunnel name.
    pub tunnel: String,
}

/// Label: a tunnel and a direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelDirLabel {
    /// Tunnel name.
    pub tunnel: String,
    /// `to_service` or `to_client`.
    pub direction: &'static str,
}

/// Label: a tunnel and the transport of a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// Tunnel name.
    pub tunnel: String,
    /// `quic`, `tls` or `unix`.
    pub transport: &'static str,
}

/// Label: outcome of a tunnel handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `accepted` or a reject reason.
    pub result: &'static str,
}

/// Label: response status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub class: &'static str,
}

/// Label: a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name (`host` + `path`).
    pub route: String,
}

/// Label: a route and what became of a challenge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChallengeLabel {
    /// Route name.
    pub route: String,
    /// `issued`, `solved`, `failed` or `bypassed`.
    pub outcome: &'static str,
}

/// Label: a direction of relayed messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `to_service` or `to_client`.
    pub direction: &'static str,
}

/// Label: how a WebSocket closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WsCloseLabel {
    /// Route name.
    pub route: String,
    /// Close code sent or received.
    pub code: u16,
}

/// Label: how a configuration reload ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    /// `applied`, or `invalid` (the running configuration stayed).
    pub outcome: &'static str,
}

/// Label: a certificate the gateway serves.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// `https` (with the certificate's file) or `tunnel`.
    pub listener: &'static str,
    /// The certificate file, or `generated` for a self-signed one.
    pub file: String,
}

/// Label: a TCP route and how one of its connections ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpResultLabel {
    /// The route: its public listen address, or `sni:` and its server name.
    pub route: String,
    /// `relayed`, or why it was refused (`ip_refused`, `certificate_refused`, ...).
    pub result: &'static str,
}

/// Label: a TCP route and a direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpDirLabel {
    /// The route: its public listen address, or `sni:` and its server name.
    pub route: String,
    /// `to_service` or `to_client`.
    pub direction: &'static str,
}

/// Label: a shared-state call that Redis did not answer, and what was done instead.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `rate_limit`, `session`, `publish`, `subscribe` or `event`.
    pub op: &'static str,
    /// `allowed` / `denied` (a limiter's `on_store_error`), `local_only` (applied to this
    /// gateway alone), `dropped`, `retry`, `lost` (a subscription ended) or `malformed`.
    pub outcome: &'static str,
}

/// Label: what became of a pushed message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabel {
    /// `published` (handed to the store), `delivered` (queued for one client),
    /// `client_too_slow`, `invalid_channel` or `store_unavailable`.
    pub outcome: &'static str,
}

/// All gateway metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by status class.
    pub responses: Family<StatusLabel, Counter>,
    /// Requests or connections refused at the edge, by reason.
    pub rejections: Family<ReasonLabel, Counter>,
    /// Time to the response head, seconds.
    pub response_head_seconds: Histogram,
    /// Open public connections.
    pub public_connections: Gauge,
    /// Live tunnel connections per tunnel.
    pub tunnel_connections: Family<TunnelLabel, Gauge>,
    /// Live tunnel connections by transport.
    pub tunnel_transport_connections: Family<TransportLabel, Gauge>,
    /// Requests in flight per tunnel (from stream open to response end).
    pub tunnel_in_flight: Family<TunnelLabel, Gauge>,
    /// Configuration reloads by outcome.
    pub config_reloads: Family<ReloadLabel, Counter>,
    /// Configurations applied since start (1 at start).
    pub config_generation: Gauge,
    /// 1 when the last reload was applied (or none was tried), 0 when it was refused.
    pub config_last_reload_ok: Gauge,
    /// Tunnel handshakes by outcome.
    pub tunnel_handshakes: Family<ResultLabel, Counter>,
    /// When each served certificate expires (Unix seconds), for expiry alerts.
    pub certificate_not_after: Family<CertificateLabel, Gauge>,
    /// ACME orders by result (`issued` or `failed`).
    pub acme_orders: Family<ResultLabel, Counter>,
    /// Body bytes relayed per tunnel and direction.
    pub tunnel_bytes: Family<TunnelDirLabel, Counter>,
    /// Open WebSockets per route.
    pub ws_active: Family<RouteLabel, Gauge>,
    /// WebSockets opened per route.
    pub ws_opened: Family<RouteLabel, Counter>,
    /// WebSockets closed, by route and close code.
    pub ws_closed: Family<WsCloseLabel, Counter>,
    /// WebSocket messages relayed, by direction.
    pub ws_messages: Family<DirectionLabel, Counter>,
    /// WebSocket message bytes relayed, by direction.
    pub ws_bytes: Family<DirectionLabel, Counter>,
    /// How long WebSockets stayed open, seconds.
    pub ws_duration_seconds: Histogram,
    /// Seconds in which new WebSockets spiked over their recent average.
    pub spikes: Counter,
    /// TCP-route connections by route and outcome.
    pub tcp_connections: Family<TcpResultLabel, Counter>,
    /// Open TCP-route connections per route.
    pub tcp_active: Family<RouteLabel, Gauge>,
    /// Bytes relayed on TCP routes, by route and direction.
    pub tcp_bytes: Family<TcpDirLabel, Counter>,
    /// How long relayed TCP connections stayed open, seconds.
    pub tcp_duration_seconds: Histogram,
    /// Challenges by route and outcome.
    pub challenges: Family<ChallengeLabel, Counter>,
    /// Current challenge difficulty per route, in bits.
    pub challenge_difficulty: Family<RouteLabel, Gauge>,
    /// Solve times the challenge page reported, per route.
    pub challenge_solve_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Shared-state calls decided without the store, by call and outcome.
    pub state_unavailable: Family<StateLabel, Counter>,
    /// 1 while the gateway is subscribed to its shared-state store (always 0 with the
    /// memory driver, which has nothing to subscribe to).
    pub state_up: Gauge,
    /// Pushed messages by outcome.
    pub pushes: Family<PushLabel, Counter>,
    /// The WireGuard listener's counters, once it runs (read at each scrape).
    pub wireguard: Arc<OnceLock<Arc<netwall_tunnel::wireguard::Counters>>>,
}

/// Scrapes the WireGuard listener's own counters: `netwall_wireguard_events_total{event}`.
#[derive(Debug)]
struct WireguardCollector(Arc<OnceLock<Arc<netwall_tunnel::wireguard::Counters>>>);

impl prometheus_client::collector::Collector for WireguardCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use std::sync::atomic::Ordering::Relaxed;
        let Some(c) = self.0.get() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "wireguard_events",
            "WireGuard listener events: datagrams rejected (not WireGuard, bad MAC, unknown key or session, replay, failed decryption, forbidden inner source) or dropped (queue full), handshakes, early rekeys, roams, send errors",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, value) in [
            ("rejected", &c.rejected),
            ("dropped", &c.dropped),
            ("handshake", &c.handshakes),
            ("rekey", &c.rekeys),
            ("roam", &c.roams),
            ("send_error", &c.send_errors),
        ] {
            let labels = [("event", event)];
            ConstCounter::new(value.load(Relaxed)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netwall");
        let m = Metrics {
            responses: Family::default(),
            rejections: Family::default(),
            response_head_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            public_connections: Gauge::default(),
            tunnel_connections: Family::default(),
            tunnel_transport_connections: Family::default(),
            tunnel_in_flight: Family::default(),
            config_reloads: Family::default(),
            config_generation: Gauge::default(),
            config_last_reload_ok: Gauge::default(),
            tunnel_handshakes: Family::default(),
            tunnel_bytes: Family::default(),
            ws_active: Family::default(),
            ws_opened: Family::default(),
            ws_closed: Family::default(),
            ws_messages: Family::default(),
            ws_bytes: Family::default(),
            ws_duration_seconds: Histogram::new(duration_buckets()),
            spikes: Counter::default(),
            certificate_not_after: Family::default(),
            acme_orders: Family::default(),
            tcp_connections: Family::default(),
            tcp_active: Family::default(),
            tcp_bytes: Family::default(),
            tcp_duration_seconds: Histogram::new(duration_buckets()),
            challenges: Family::default(),
            challenge_difficulty: Family::default(),
            challenge_solve_seconds: Family::new_with_constructor(solve_histogram),
            state_unavailable: Family::default(),
            state_up: Gauge::default(),
            pushes: Family::default(),
            wireguard: Arc::default(),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(WireguardCollector(m.wireguard.clone())));
        registry.register(
            "http_responses",
            "Responses sent to public clients, by status class",
            m.responses.clone(),
        );
        registry.register(
            "rejections",
            "Requests or connections refused at the edge, by reason",
            m.rejections.clone(),
        );
        registry.register(
            "response_head_seconds",
            "Time from request to response head",
            m.response_head_seconds.clone(),
        );
        registry.register(
            "public_connections",
            "Open public client connections",
            m.public_connections.clone(),
        );
        registry.register(
            "tunnel_connections",
            "Live tunnel connections per tunnel",
            m.tunnel_connections.clone(),
        );
        registry.register(
            "tunnel_transport_connections",
            "Live tunnel connections per tunnel and transport",
            m.tunnel_transport_connections.clone(),
        );
        registry.register(
            "tunnel_requests_in_flight",
            "Requests in flight per tunnel",
            m.tunnel_in_flight.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_generation",
            "Configurations applied since start",
            m.config_generation.clone(),
        );
        registry.register(
            "config_last_reload_ok",
            "Whether the last configuration reload was applied (1) or refused (0)",
            m.config_last_reload_ok.clone(),
        );
        registry.register(
            "tunnel_handshakes",
            "Tunnel handshakes by outcome",
            m.tunnel_handshakes.clone(),
        );
        registry.register(
            "tunnel_body_bytes",
            "Body bytes relayed through each tunnel",
            m.tunnel_bytes.clone(),
        );
        registry.register(
            "websocket_connections",
            "Open WebSockets per route",
            m.ws_active.clone(),
        );
        registry.register(
            "websocket_opened",
            "WebSockets opened per route",
            m.ws_opened.clone(),
        );
        registry.register(
            "websocket_closed",
            "WebSockets closed, by route and close code",
            m.ws_closed.clone(),
        );
        registry.register(
            "websocket_messages",
            "WebSocket messages relayed, by direction",
            m.ws_messages.clone(),
        );
        registry.register(
            "websocket_message_bytes",
            "WebSocket message bytes relayed, by direction",
            m.ws_bytes.clone(),
        );
        registry.register(
            "websocket_duration_seconds",
            "How long WebSockets stayed open",
            m.ws_duration_seconds.clone(),
        );
        registry.register(
            "certificate_not_after_seconds",
            "When each certificate the gateway serves expires, in seconds since the Unix epoch",
            m.certificate_not_after.clone(),
        );
        registry.register(
            "acme_orders",
            "Certificate orders to the ACME CA, by result (issued or failed)",
            m.acme_orders.clone(),
        );
        registry.register(
            "connection_spikes",
            "Seconds in which new WebSockets exceeded the spike threshold",
            m.spikes.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP-route connections by route and outcome",
            m.tcp_connections.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "Open TCP-route connections per route",
            m.tcp_active.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes relayed on TCP routes, by direction",
            m.tcp_bytes.clone(),
        );
        registry.register(
            "tcp_connection_duration_seconds",
            "How long relayed TCP connections stayed open",
            m.tcp_duration_seconds.clone(),
        );
        registry.register(
            "challenges",
            "Proof-of-work challenges by route and outcome (issued, solved, failed, bypassed)",
            m.challenges.clone(),
        );
        registry.register(
            "challenge_difficulty_bits",
            "Current proof-of-work difficulty per route",
            m.challenge_difficulty.clone(),
        );
        registry.register(
            "challenge_solve_seconds",
            "Time browsers took to solve the challenge, as the page reported it",
            m.challenge_solve_seconds.clone(),
        );
        registry.register(
            "state_unavailable",
            "Shared-state calls decided without the store (Redis unreachable), by call and outcome",
            m.state_unavailable.clone(),
        );
        registry.register(
            "state_up",
            "1 while subscribed to the shared-state store",
            m.state_up.clone(),
        );
        registry.register(
            "pushes",
            "Messages services pushed to WebSocket clients, by outcome",
            m.pushes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Count a refusal.
    pub fn reject(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The solve-time histogram: 50 ms to about 7 minutes (a seed's lifetime).
fn solve_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// Buckets of the WebSocket connection-duration histogram, in seconds: a tenth of a second to a
/// day.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    [
        0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
    ]
    .into_iter()
}
