//! Policy state: what outlives a configuration, and what must hold across gateways.
//!
//! Two concerns live here:
//!
//! - [`carry`]: counters a reload must not reset ([`PolicyState`], [`Carry`]).
//! - [`Store`]: state shared by every gateway pointed at the same store. The `memory`
//!   driver ([`memory`]) keeps it in this process (one gateway, nothing to run beside it);
//!   the `redis` driver ([`redis`]) keeps it in Redis or Valkey, so that rate limits,
//!   WebSocket opening attempts, one-connection-per-user and revocations count across every
//!   gateway. Call sites hold an `Arc<dyn Store>` and never know which driver runs.
//!
//! What stays local is what only this process can do: the handles that close this
//! gateway's own WebSockets and the table revocations are checked against on every request
//! ([`Local`]). A store tells every gateway (this one included) what to do through
//! [`Event`]s, which [`Local::apply`] turns into closed connections and refused tokens.
//!
//! Connection counts per client IP stay per gateway: they guard this gateway's sockets.

pub mod carry;
pub mod config;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use carry::{Carry, PolicyState};

use crate::auth::Revocations;
use crate::policy::rate_limit::{Limit, RateLimiter};
use crate::ws::UserSessions;

/// What a limiter decides while its store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Let the request through (fail open): an outage of the store does not become an
    /// outage of the route.
    #[default]
    Allow,
    /// Refuse it (fail closed), for routes where an unmetered request costs more than a
    /// refused one.
    Deny,
}

/// What every gateway sharing a store acts on. Serialised as JSON on the Redis channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// Every token of `sub` issued at or before `at` (seconds since the epoch) is revoked.
    RevokedSub {
        /// The subject.
        sub: String,
        /// When.
        at: u64,
    },
    /// The token `jti` is revoked.
    RevokedJti {
        /// The token id.
        jti: String,
        /// When.
        at: u64,
    },
    /// A newer WebSocket of `sub` replaced `session` (`instance/id`).
    Replaced {
        /// The user.
        sub: String,
        /// The session replaced.
        session: String,
    },
}

/// A WebSocket session of an authenticated user, as a store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    /// The route.
    pub route: Arc<str>,
    /// The user.
    pub sub: String,
    /// `instance/id`: unique across gateways and restarts.
    pub session: String,
}

/// A store's failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Boxed future of a store call (the trait stays object-safe for drivers that do I/O).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// State shared by every gateway using the same store.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `memory` or `redis`.
    fn driver(&self) -> &'static str;

    /// A limiter counting `limit` against this store; `scope` names the budget (a route and
    /// what is counted). `None` when the limit cannot be expressed.
    fn limiter(&self, scope: &str, limit: Limit, on_error: OnError)
    -> Option<Arc<dyn RateLimiter>>;

    /// Apply `event` here, keep it (revocations until their retention ends) and tell every
    /// other gateway. Returns how many of this gateway's connections it closed, and whether
    /// it was kept and told (an error: this gateway only).
    fn publish(&self, event: Event) -> StoreFuture<'_, (usize, Result<(), StoreError>)>;

    /// A WebSocket `key` opened here; once the user has more than `max` on the route across
    /// every gateway, the oldest are replaced (closed with 4002 where they run).
    fn session_opened<'a>(&'a self, key: &'a SessionKey, max: usize) -> StoreFuture<'a, ()>;

    /// The WebSocket `key` ended.
    fn session_closed(&self, key: SessionKey);

    /// Bring `pushed` to every gateway's subscribed sessions (this one's included).
    fn fanout(&self, pushed: crate::fanout::Pushed) -> StoreFuture<'_, Result<(), StoreError>>;
}

/// What only this gateway can act on: its own sessions and its revocation table.
pub struct Local {
    /// Checked on every authenticated request.
    pub revocations: Arc<Revocations>,
    /// This gateway's WebSockets by user.
    pub users: Arc<UserSessions>,
    /// This gateway's sessions subscribed to pushed messages.
    pub hub: Arc<crate::fanout::Hub>,
    /// Metrics (delivery counts).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This process's name in session keys: `gateway_id/random`, so two gateways with the
    /// same name (or one restarted) never mistake each other's sessions.
    pub instance: String,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Local {
    /// This gateway's side of `revocations` and `users`, named after `gateway_id`.
    pub fn new(
        gateway_id: &str,
        revocations: Arc<Revocations>,
        users: Arc<UserSessions>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Local {
        Local {
            revocations,
            users,
            hub: Arc::default(),
            metrics,
            instance: format!("{gateway_id}/{:016x}", rand::random::<u64>()),
        }
    }

    /// The store's name for session `id` of this gateway.
    pub fn session(&self, id: u64) -> String {
        format!("{}/{id}", self.instance)
    }

    /// Act on `event`; returns how many of this gateway's connections it closed.
    pub fn apply(&self, event: &Event) -> usize {
        match event {
            Event::RevokedSub { sub, at } => {
                self.revocations.revoke_sub_at(sub, *at);
                self.users.revoke_sub(sub)
            }
            Event::RevokedJti { jti, at } => {
                self.revocations.revoke_jti_at(jti, *at);
                self.users.revoke_jti(jti)
            }
            Event::Replaced { sub, session } => {
                let id = session
                    .strip_prefix(self.instance.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(|id| id.parse::<u64>().ok());
                match id {
                    Some(id) => usize::from(self.users.replace(sub, id)),
                    None => 0,
                }
            }
        }
    }
}

/// A session's registration with the store; tells the store when the session ends.
pub struct SharedSession {
    store: Arc<dyn Store>,
    key: Option<SessionKey>,
}

impl SharedSession {
    /// Register `key` with `store` (see [`Store::session_opened`]).
    pub async fn open(store: Arc<dyn Store>, key: SessionKey, max: usize) -> SharedSession {
        store.session_opened(&key, max).await;
        SharedSession {
            store,
            key: Some(key),
        }
    }
}

impl Drop for SharedSession {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.store.session_closed(key);
        }
    }
}

/// The store `config` names. The Redis driver connects in the background; this waits for
/// its first snapshot of revocations up to the connect deadline, so a restarted gateway
/// refuses revoked tokens from its first request whenever Redis is up.
pub async fn open(
    config: &config::StateConfig,
    base: &std::path::Path,
    local: Arc<Local>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Arc<dyn Store>, StoreError> {
    match config.driver.get_ref() {
        config::Driver::Memory => Ok(Arc::new(memory::MemoryStore::new(local))),
        config::Driver::Redis => {
            let store = redis::RedisStore::connect(config, base, local, metrics, shutdown)?;
            store.wait_ready(config.connect_timeout).await;
            Ok(Arc::new(store))
        }
    }
}
