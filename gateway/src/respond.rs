//! Errors a public client can see, and the one place they become HTTP responses.
//!
//! Every variant has a status, a short plain body, and a metrics reason. Bodies never reveal
//! internal addresses or error details; those go to the logs.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::metrics::Metrics;

/// A request the edge answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeError {
    /// The request has no usable `Host`/authority.
    MissingHost,
    /// No route for the host and path.
    UnknownHost,
    /// The route's tunnel has no live connector.
    TunnelOffline,
    /// The tunnel connection broke before a response arrived.
    TunnelLost,
    /// The connector does not know the route's service.
    UnknownService,
    /// The connector could not reach the service.
    ServiceUnavailable,
    /// The service did not answer within the route's timeout.
    ServiceTimeout,
    /// The service answered with something that is not valid HTTP.
    BadServiceResponse,
    /// The request body is over the route's limit.
    BodyTooLarge,
    /// The client IP has too many WebSockets open on the route.
    TooManyConnections,
    /// The client's network has `max_requests_per_ip` requests in flight already.
    TooManyRequestsInFlight,
    /// A WebSocket opening handshake that is not valid.
    BadWebSocketHandshake,
    /// A WebSocket opening handshake for a protocol version other than 13.
    WebSocketVersion,
    /// The route requires a valid token and the request has none.
    Unauthorized,
    /// The user opened too many WebSockets recently; retry after this many seconds.
    TooManyAttempts(u64),
    /// The `Host` is duplicated, carries user info, or contradicts the authority.
    BadHost,
    /// The path cannot be normalised safely (encoded separators, disguised dot segments,
    /// control bytes).
    BadPath,
    /// More request header fields or bytes than the edge accepts.
    HeadersTooLarge,
    /// `CONNECT`, or `TRACE` on a route that does not allow it.
    MethodNotAllowed,
    /// The route's HTTP rate limit is spent for this client.
    RateLimited {
        /// Seconds until a request will be allowed again.
        retry_after: u64,
        /// Requests per window of the route's policy.
        limit: u32,
        /// The policy's window in seconds.
        window: u64,
    },
    /// The request body is not valid HTTP framing (a malformed chunk).
    BadRequestBody,
    /// A WebSocket from an origin outside the route's allow-list.
    OriginNotAllowed,
    /// A CORS preflight the route's `[route.cors]` does not allow.
    CorsRefused,
    /// A proof-of-work solution that is wrong, expired, replayed or for another client, or a
    /// request for a challenge endpoint that does not exist.
    ChallengeFailed,
}

/// Body of the 403 sent for a disallowed WebSocket origin (a JSON close-code style answer
/// that browser clients of the notes' design already parse).
pub const ORIGIN_REJECTED_BODY: &str = r#"{"code":4009,"message":"Origin not allowed"}"#;

impl EdgeError {
    /// What the client sees when the connector abandons a request before its response head.
    pub fn from_reset(code: netwall_proto::ResetCode) -> EdgeError {
        use netwall_proto::ResetCode;
        match code {
            ResetCode::UnknownService => EdgeError::UnknownService,
            ResetCode::ServiceUnavailable => EdgeError::ServiceUnavailable,
            ResetCode::ServiceError => EdgeError::BadServiceResponse,
            ResetCode::TooLarge => EdgeError::BodyTooLarge,
            _ => EdgeError::TunnelLost,
        }
    }

    /// Status sent to the client.
    pub fn status(self) -> StatusCode {
        match self {
            EdgeError::MissingHost => StatusCode::BAD_REQUEST,
            EdgeError::UnknownHost => StatusCode::NOT_FOUND,
            EdgeError::TunnelOffline
            | EdgeError::TunnelLost
            | EdgeError::UnknownService
            | EdgeError::ServiceUnavailable
            | EdgeError::BadServiceResponse => StatusCode::BAD_GATEWAY,
            EdgeError::ServiceTimeout => StatusCode::GATEWAY_TIMEOUT,
            EdgeError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            EdgeError::TooManyConnections | EdgeError::TooManyRequestsInFlight => {
                StatusCode::TOO_MANY_REQUESTS
            }
            EdgeError::BadWebSocketHandshake => StatusCode::BAD_REQUEST,
            EdgeError::WebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            EdgeError::Unauthorized => StatusCode::UNAUTHORIZED,
            EdgeError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            EdgeError::BadHost | EdgeError::BadPath | EdgeError::BadRequestBody => {
                StatusCode::BAD_REQUEST
            }
            EdgeError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            EdgeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            EdgeError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            EdgeError::OriginNotAllowed | EdgeError::CorsRefused | EdgeError::ChallengeFailed => {
                StatusCode::FORBIDDEN
            }
        }
    }

    /// Label for the rejection counter.
    pub fn reason(self) -> &'static str {
        match self {
            EdgeError::MissingHost => "missing_host",
            EdgeError::UnknownHost => "unknown_host",
            EdgeError::TunnelOffline => "tunnel_offline",
            EdgeError::TunnelLost => "tunnel_lost",
            EdgeError::UnknownService => "unknown_service",
            EdgeError::ServiceUnavailable => "service_unavailable",
            EdgeError::ServiceTimeout => "service_timeout",
            EdgeError::BadServiceResponse => "bad_service_response",
            EdgeError::BodyTooLarge => "body_too_large",
            EdgeError::TooManyConnections => "per_ip",
            EdgeError::TooManyRequestsInFlight => "per_ip_requests",
            EdgeError::BadWebSocketHandshake | EdgeError::WebSocketVersion => "bad_handshake",
            EdgeError::Unauthorized => "auth",
            EdgeError::TooManyAttempts(_) => "per_user_rate",
            EdgeError::BadHost => "bad_host",
            EdgeError::BadPath => "bad_path",
            EdgeError::HeadersTooLarge => "header_too_large",
            EdgeError::MethodNotAllowed => "method_not_allowed",
            EdgeError::RateLimited { .. } => "rate_limited",
            EdgeError::BadRequestBody => "bad_body",
            EdgeError::OriginNotAllowed => "origin",
            EdgeError::CorsRefused => "cors_refused",
            EdgeError::ChallengeFailed => "challenge_failed",
        }
    }

    /// Plain-text body.
    pub fn message(self) -> &'static str {
        match self {
            EdgeError::MissingHost => "400 bad request: no host\n",
            EdgeError::UnknownHost => "404 not found: no route for this host\n",
            EdgeError::TunnelOffline => "502 bad gateway: tunnel offline\n",
            EdgeError::TunnelLost => "502 bad gateway: tunnel connection lost\n",
            EdgeError::UnknownService => "502 bad gateway: service not offered by the connector\n",
            EdgeError::ServiceUnavailable => "502 bad gateway: service unavailable\n",
            EdgeError::ServiceTimeout => "504 gateway timeout: service did not answer in time\n",
            EdgeError::BadServiceResponse => "502 bad gateway: invalid response from service\n",
            EdgeError::BodyTooLarge => "413 payload too large\n",
            EdgeError::TooManyConnections => {
                "429 too many requests: too many connections from this address\n"
            }
            EdgeError::TooManyRequestsInFlight => {
                "429 too many requests: too many requests in flight from this address\n"
            }
            EdgeError::BadWebSocketHandshake => "400 bad request: invalid WebSocket handshake\n",
            EdgeError::WebSocketVersion => "426 upgrade required: WebSocket version 13 only\n",
            EdgeError::Unauthorized => "401 unauthorized\n",
            EdgeError::TooManyAttempts(_) => {
                "429 too many requests: too many connection attempts\n"
            }
            EdgeError::BadHost => "400 bad request: invalid host\n",
            EdgeError::BadPath => "400 bad request: invalid path\n",
            EdgeError::HeadersTooLarge => "431 request header fields too large\n",
            EdgeError::MethodNotAllowed => "405 method not allowed\n",
            EdgeError::RateLimited { .. } => "429 too many requests: rate limit exceeded\n",
            EdgeError::BadRequestBody => "400 bad request: malformed request body\n",
            EdgeError::OriginNotAllowed => ORIGIN_REJECTED_BODY,
            EdgeError::CorsRefused => "403 forbidden: cross-origin request not allowed\n",
            EdgeError::ChallengeFailed => "403 forbidden: challenge not passed\n",
        }
    }

    /// Whether the client connection should close after the answer (the request body may be
    /// left unread, so the connection cannot be reused safely).
    pub fn closes_connection(self) -> bool {
        matches!(self, EdgeError::BodyTooLarge | EdgeError::BadRequestBody)
    }
}

/// `Allow` of a 405: what the edge forwards on every route.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");

/// Count `err` and turn it into its response.
pub fn respond(err: EdgeError, metrics: &Metrics) -> Response<Full<Bytes>> {
    metrics.reject(err.reason());
    let mut resp = Response::new(Full::new(Bytes::from_static(err.message().as_bytes())));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if err == EdgeError::OriginNotAllowed {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match err {
        EdgeError::Unauthorized => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        EdgeError::TooManyAttempts(secs) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        EdgeError::TooManyRequestsInFlight => {
            // A slot frees when one of the address's requests ends: soon, for a client that
            // reads its answers.
            h.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        }
        EdgeError::MethodNotAllowed => {
            h.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        EdgeError::WebSocketVersion => {
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(crate::policy::ws_handshake::VERSION),
            );
        }
        EdgeError::RateLimited {
            retry_after,
            limit,
            window,
        } => {
            let retry_after = retry_after.max(1);
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            // draft-ietf-httpapi-ratelimit-headers: the policy, and what is left of it.
            if let Ok(v) = HeaderValue::from_str(&format!("\"route\";q={limit};w={window}")) {
                h.insert(RATELIMIT_POLICY, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"route\";r=0;t={retry_after}")) {
                h.insert(RATELIMIT, v);
            }
        }
        _ => {}
    }
    if err.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
