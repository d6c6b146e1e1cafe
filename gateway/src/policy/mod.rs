//! Edge policy: what a request must satisfy before it may touch a tunnel.
//!
//! The proxy runs these checks in one order, on the same normalised request it forwards:
//!
//! ```text
//! method (CONNECT, TRACE)  -> 405
//! host (one Host, no user info, agrees with the authority) -> 400
//! path normalised (policy::path)  -> 400 when it cannot be made safe
//! route (host, path without ;params) -> 404
//! headers: cookie crumbs joined, `_` names dropped, count and bytes -> 431
//! upgrade: `websocket` only, others stripped
//! CORS preflight (policy::cors) -> 204 answered at the edge, or 403
//! proof-of-work challenge (crate::challenge) -> its endpoints, bypasses, pass cookie, else
//!   403 (429 under a flood) challenge page; a bypassing JWT is the identity below
//! auth (JWT) -> 401;  rate limit (per route, by IP or `sub`) -> 429
//! WebSocket handshake (policy::ws_handshake) -> 400, or 426 for another version
//! ```
//!
//! On the way back, a route's CORS headers (policy::cors) and `[route.headers]`
//! (policy::response_headers) are applied to the service's response.
//!
//! Connection-level limits (per-IP connection count) act earlier, at accept.

pub mod conn_limit;
pub mod cors;
pub mod deflate;
pub mod headers;
pub mod host;
pub mod origin;
pub mod path;
pub mod rate_limit;
pub mod response_headers;
pub mod ws_frames;
pub mod ws_handshake;
