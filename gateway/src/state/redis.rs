//! The `redis` driver: one policy for every gateway pointed at the same Redis (or Valkey).
//!
//! - **Rate limits** and WebSocket opening attempts: GCRA in one Lua script
//!   ([`GCRA_SCRIPT`]), atomic, timed by the server's `TIME`, so the clocks of different
//!   gateways do not matter. While Redis cannot be reached a limiter decides by its route's
//!   [`OnError`], counts it and logs it.
//! - **One WebSocket per user, newest wins**: each session is a member of a sorted set per
//!   route and user, scored by the server's time; the script that adds a member pops the
//!   oldest beyond the limit and publishes their replacement ([`SESSION_SCRIPT`]).
//! - **Revocations** are stored with a time to live of `revocation_retention` and published.
//!   Each gateway keeps a local table (checked on every request without a round trip),
//!   loaded from Redis every time its subscription (re)starts and kept current by the
//!   channel, so a gateway that restarts refuses a revoked token from its first request.
//!
//! Keys: `{prefix}:rl:{scope}:{key}` (rate budgets), `{prefix}:ws:{route}:{sub}` (sessions),
//! `{prefix}:revoked:sub:{sub}`, `{prefix}:revoked:jti:{jti}`; channel `{prefix}:events`.
//! Whoever may write to that Redis may revoke and close sessions: it is trusted like the
//! gateway's own configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::StateConfig;
use super::{Event, Local, OnError, SessionKey, Store, StoreError, StoreFuture};
use crate::metrics::{Metrics, StateLabel};
use crate::policy::rate_limit::{Decision, DecisionFuture, Limit, RateLimiter};

/// After a failed command, skip Redis for this long and decide by each route's `OnError`:
/// while Redis is down, requests then pay nothing for it instead of a timeout each.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// First wait before the subscription is retried; doubles up to [`RESUBSCRIBE_MAX_DELAY`].
pub const RESUBSCRIBE_MIN_DELAY: Duration = Duration::from_millis(100);
/// How often the subscription is pinged: a Redis that went silent (a partition, no reset) is
/// noticed within this plus the connect deadline, and the subscription starts again (with a
/// fresh load of revocations) once Redis answers.
pub const SUBSCRIPTION_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between subscription attempts: Redis back within seconds is noticed within
/// seconds.
pub const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_secs(2);
/// A user's session set expires this long after its last opening, so the sets of users who
/// left (or of a gateway that died) do not stay in Redis.
pub const SESSION_SET_TTL: Duration = Duration::from_secs(24 * 3600);
/// Keys per `SCAN` step when loading revocations.
const SCAN_COUNT: usize = 1000;
/// Retry time a fail-closed limiter answers while Redis is down.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// GCRA: `KEYS[1]` the budget, `ARGV[1]` the emission interval and `ARGV[2]` the burst
/// tolerance (interval x burst), both in microseconds. Returns 0 when allowed, else the
/// microseconds until the next request would be.
pub const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - tolerance
if allow_at > now then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
";

/// Sessions: `KEYS[1]` the route's and user's set; `ARGV[1]` the new session, `ARGV[2]` the
/// most allowed, `ARGV[3]` the set's time to live in seconds, `ARGV[4]` the channel,
/// `ARGV[5]` the user. Returns how many older sessions were replaced.
pub const SESSION_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if excess <= 0 then return 0 end
local old = redis.call('ZPOPMIN', KEYS[1], excess)
for i = 1, #old, 2 do
  redis.call('PUBLISH', ARGV[4], cjson.encode({t = 'replaced', sub = ARGV[5], session = old[i]}))
end
return excess
";

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    channel: String,
    /// Channel of pushed messages (fan-out), apart from policy events so neither waits on
    /// the other's parsing.
    fanout: String,
    retention: Duration,
    connect_timeout: Duration,
    local: Arc<Local>,
    metrics: Arc<Metrics>,
    gcra: redis::Script,
    sessions: redis::Script,
    /// Milliseconds since `started` until which Redis is not asked (see [`BREAKER_COOLDOWN`]).
    down_until: AtomicU64,
    started: Instant,
    ready: tokio::sync::watch::Sender<bool>,
}

/// Shared state in Redis.
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    /// A store for `config` (connections open in the background) whose events act on
    /// `local`; the subscription runs until `shutdown`.
    pub fn connect(
        config: &StateConfig,
        base: &std::path::Path,
        local: Arc<Local>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<RedisStore, StoreError> {
        let client = client(config, base)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_min_delay(RESUBSCRIBE_MIN_DELAY)
            .set_max_delay(RESUBSCRIBE_MAX_DELAY);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(store_error)?;
        let (ready, _) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            client,
            conn,
            channel: format!("{}:events", config.key_prefix),
            fanout: format!("{}:fanout", config.key_prefix),
            prefix: config.key_prefix.clone(),
            retention: config.revocation_retention,
            connect_timeout: config.connect_timeout,
            local,
            metrics,
            gcra: redis::Script::new(GCRA_SCRIPT),
            sessions: redis::Script::new(SESSION_SCRIPT),
            down_until: AtomicU64::new(0),
            started: Instant::now(),
            ready,
        });
        tokio::spawn(subscribe(inner.clone(), shutdown));
        Ok(RedisStore { inner })
    }

    /// Wait up to `limit` for the first load of revocations.
    pub async fn wait_ready(&self, limit: Duration) {
        let mut rx = self.inner.ready.subscribe();
        if tokio::time::timeout(limit, rx.wait_for(|r| *r))
            .await
            .is_err()
        {
            warn!(target: "netwall::security", event = "state_unavailable", op = "start", "Redis not reachable at start; serving with an empty revocation table until it is");
        }
    }
}

/// The Redis client `config` describes, with the password from its environment variable.
fn client(config: &StateConfig, base: &std::path::Path) -> Result<redis::Client, StoreError> {
    use redis::IntoConnectionInfo;
    let url = config
        .url
        .as_ref()
        .map(|u| u.get_ref().as_str())
        .ok_or_else(|| StoreError("[state] url is missing".into()))?;
    let mut info = url
        .into_connection_info()
        .map_err(|e| StoreError(format!("[state] url: {e}")))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(var) = &config.password_env {
        let var = var.get_ref();
        let password = std::env::var(var)
            .map_err(|_| StoreError(format!("[state] password_env: ${var} is not set")))?;
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    match &config.ca_file {
        Some(ca) => {
            let path = base.join(ca.get_ref());
            let root = std::fs::read(&path)
                .map_err(|e| StoreError(format!("[state] ca_file {}: {e}", path.display())))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            )
            .map_err(|e| StoreError(format!("[state] ca_file {}: {e}", path.display())))
        }
        None => redis::Client::open(info).map_err(|e| StoreError(format!("[state] url: {e}"))),
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether Redis is worth asking now (no failure within the last cooldown).
    fn available(&self) -> bool {
        self.now_ms() >= self.down_until.load(Ordering::Relaxed)
    }

    /// Count a failed or skipped call of `op` and what was decided instead; the first
    /// failure of an outage is logged.
    fn failed(
        &self,
        op: &'static str,
        outcome: &'static str,
        error: Option<&dyn std::fmt::Display>,
    ) {
        self.metrics
            .state_unavailable
            .get_or_create(&StateLabel { op, outcome })
            .inc();
        if let Some(e) = error {
            let until = self
                .now_ms()
                .saturating_add(BREAKER_COOLDOWN.as_millis() as u64);
            let before = self.down_until.swap(until, Ordering::Relaxed);
            if before <= self.now_ms() {
                warn!(target: "netwall::security", event = "state_unavailable", op, outcome, error = %e, "Redis unreachable; deciding by each route's on_store_error");
            }
        }
    }

    /// `{prefix}:a:b:last`. Every part but the last has its `%` and `:` escaped, so a route
    /// whose path holds a colon can never name another route's key (`h/a` + `b:c` against
    /// `h/a:b` + `c`); the last part (a user, a token id, a client key) is kept as it is.
    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for (i, p) in parts.iter().enumerate() {
            k.push(':');
            if i + 1 == parts.len() {
                k.push_str(p);
            } else {
                k.push_str(&p.replace('%', "%25").replace(':', "%3A"));
            }
        }
        k
    }

    /// Load every stored revocation into the local table; returns how many.
    async fn load_revocations(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:revoked:*", self.prefix);
        let sub_prefix = self.key(&["revoked", "sub", ""]);
        let jti_prefix = self.key(&["revoked", "jti", ""]);
        let mut cursor: u64 = 0;
        let mut loaded = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            if !keys.is_empty() {
                let values: Vec<Option<u64>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(store_error)?;
                for (key, at) in keys.iter().zip(values) {
                    let Some(at) = at else { continue };
                    if let Some(sub) = key.strip_prefix(sub_prefix.as_str()) {
                        self.local.revocations.revoke_sub_at(sub, at);
                        loaded += 1;
                    } else if let Some(jti) = key.strip_prefix(jti_prefix.as_str()) {
                        self.local.revocations.revoke_jti_at(jti, at);
                        loaded += 1;
                    }
                }
            }
            if next == 0 {
                return Ok(loaded);
            }
            cursor = next;
        }
    }

    /// Deliver one pushed message to this gateway's subscribed sessions.
    fn push(&self, payload: &[u8]) {
        match serde_json::from_slice::<crate::fanout::Pushed>(payload) {
            Ok(p) => {
                self.local.hub.deliver(p, &self.local.metrics);
            }
            Err(e) => {
                self.metrics
                    .state_unavailable
                    .get_or_create(&StateLabel {
                        op: "fanout",
                        outcome: "malformed",
                    })
                    .inc();
                warn!(target: "netwall::security", event = "state_event_malformed", error = %e, bytes = payload.len(), "unreadable message on the fan-out channel; ignored");
            }
        }
    }

    /// Act on one message from the channel.
    fn deliver(&self, payload: &[u8]) {
        match serde_json::from_slice::<Event>(payload) {
            Ok(event) => {
                let closed = self.local.apply(&event);
                debug!(?event, closed, "shared-state event");
            }
            Err(e) => {
                self.metrics
                    .state_unavailable
                    .get_or_create(&StateLabel {
                        op: "event",
                        outcome: "malformed",
                    })
                    .inc();
                warn!(target: "netwall::security", event = "state_event_malformed", error = %e, bytes = payload.len(), "unreadable message on the shared-state channel; ignored");
            }
        }
    }
}

/// Keep a subscription to the event channel, reloading revocations each time it starts.
async fn subscribe(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut delay = RESUBSCRIBE_MIN_DELAY;
    loop {
        let attempt = async {
            let mut pubsub = inner.client.get_async_pubsub().await.map_err(store_error)?;
            pubsub
                .subscribe(&[&inner.channel, &inner.fanout])
                .await
                .map_err(store_error)?;
            // Subscribed first, loaded second: a revocation published in between is both
            // loaded and delivered, never neither.
            let n = inner.load_revocations().await?;
            Ok::<_, StoreError>((pubsub, n))
        };
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(inner.connect_timeout.saturating_mul(2), attempt) => r,
        };
        match attempt {
            Ok(Ok((pubsub, n))) => {
                info!(revocations = n, "subscribed to shared state");
                inner.metrics.state_up.set(1);
                inner.ready.send_replace(true);
                delay = RESUBSCRIBE_MIN_DELAY;
                let (mut sink, mut messages) = pubsub.split();
                let mut health = tokio::time::interval_at(
                    tokio::time::Instant::now() + SUBSCRIPTION_PING_INTERVAL,
                    SUBSCRIPTION_PING_INTERVAL,
                );
                health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        // A Redis cut off without a reset sends nothing, not even an end:
                        // only an unanswered ping tells.
                        _ = health.tick() => {
                            let ping = tokio::time::timeout(inner.connect_timeout, sink.ping::<redis::Value>()).await;
                            if !matches!(ping, Ok(Ok(_))) {
                                break;
                            }
                        }
                        m = messages.next() => match m {
                            Some(m) if m.get_channel_name() == inner.fanout => inner.push(m.get_payload_bytes()),
                            Some(m) => inner.deliver(m.get_payload_bytes()),
                            None => break,
                        },
                    }
                }
                inner.failed("subscribe", "lost", None);
                warn!(target: "netwall::security", event = "state_unavailable", op = "subscribe", "lost the shared-state subscription; resubscribing");
            }
            Ok(Err(e)) => inner.failed("subscribe", "retry", Some(&e)),
            Err(_) => inner.failed("subscribe", "retry", Some(&"timed out")),
        }
        inner.metrics.state_up.set(0);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RESUBSCRIBE_MAX_DELAY);
    }
}

/// A rate budget in Redis.
struct RedisLimiter {
    inner: Arc<Inner>,
    /// `{prefix}:rl:{scope}:{limit}:`, to which the client's key is appended.
    base: String,
    interval_us: u64,
    tolerance_us: u64,
    on_error: OnError,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    fn unavailable(&self, error: Option<&dyn std::fmt::Display>) -> Decision {
        let (decision, outcome) = match self.on_error {
            OnError::Allow => (Decision::Allow, "allowed"),
            OnError::Deny => (
                Decision::Deny {
                    retry_after: UNAVAILABLE_RETRY_AFTER,
                },
                "denied",
            ),
        };
        self.inner.failed("rate_limit", outcome, error);
        decision
    }
}

impl RateLimiter for RedisLimiter {
    fn check<'a>(&'a self, key: &'a str) -> DecisionFuture<'a> {
        Box::pin(async move {
            if !self.inner.available() {
                return self.unavailable(None);
            }
            let mut conn = self.inner.conn.clone();
            let answer: Result<u64, _> = self
                .inner
                .gcra
                .key(format!("{}{key}", self.base))
                .arg(self.interval_us)
                .arg(self.tolerance_us)
                .invoke_async(&mut conn)
                .await;
            match answer {
                Ok(0) => Decision::Allow,
                Ok(wait_us) => Decision::Deny {
                    retry_after: Duration::from_micros(wait_us),
                },
                Err(e) => self.unavailable(Some(&e)),
            }
        })
    }
}

impl Store for RedisStore {
    fn driver(&self) -> &'static str {
        "redis"
    }

    fn limiter(
        &self,
        scope: &str,
        limit: Limit,
        on_error: OnError,
    ) -> Option<Arc<dyn RateLimiter>> {
        let interval = limit.window.checked_div(limit.requests.get())?;
        let interval_us = u64::try_from(interval.as_micros()).ok()?;
        if interval_us == 0 {
            return None;
        }
        let tolerance_us = interval_us.checked_mul(u64::from(limit.burst.get()))?;
        // The limit is part of the key: gateways that disagree on it (one reloaded, one not)
        // keep separate budgets instead of mixing two rates in one.
        let shape = format!(
            "{}/{}ms/{}",
            limit.requests,
            limit.window.as_millis(),
            limit.burst
        );
        Some(Arc::new(RedisLimiter {
            base: format!("{}:", self.inner.key(&["rl", scope, &shape])),
            inner: self.inner.clone(),
            interval_us,
            tolerance_us,
            on_error,
        }))
    }

    fn publish(&self, event: Event) -> StoreFuture<'_, (usize, Result<(), StoreError>)> {
        Box::pin(async move {
            let inner = &self.inner;
            // This gateway first, so the answer can say what it closed here.
            let closed = inner.local.apply(&event);
            let payload = match serde_json::to_string(&event) {
                Ok(p) => p,
                Err(e) => return (closed, Err(store_error(e))),
            };
            let mut pipe = redis::pipe();
            pipe.atomic();
            let ttl = inner.retention.as_secs().max(1);
            match &event {
                Event::RevokedSub { sub, at } => {
                    pipe.cmd("SET")
                        .arg(inner.key(&["revoked", "sub", sub]))
                        .arg(*at)
                        .arg("EX")
                        .arg(ttl)
                        .ignore();
                }
                Event::RevokedJti { jti, at } => {
                    pipe.cmd("SET")
                        .arg(inner.key(&["revoked", "jti", jti]))
                        .arg(*at)
                        .arg("EX")
                        .arg(ttl)
                        .ignore();
                }
                Event::Replaced { .. } => {}
            }
            pipe.cmd("PUBLISH")
                .arg(&inner.channel)
                .arg(payload)
                .ignore();
            let mut conn = inner.conn.clone();
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => (closed, Ok(())),
                Err(e) => {
                    inner.failed("publish", "local_only", Some(&e));
                    (closed, Err(store_error(e)))
                }
            }
        })
    }

    fn session_opened<'a>(&'a self, key: &'a SessionKey, max: usize) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            if !inner.available() {
                inner.failed("session", "local_only", None);
                return;
            }
            let mut conn = inner.conn.clone();
            let answer: Result<i64, _> = inner
                .sessions
                .key(inner.key(&["ws", &key.route, &key.sub]))
                .arg(&key.session)
                .arg(max.max(1))
                .arg(SESSION_SET_TTL.as_secs())
                .arg(&inner.channel)
                .arg(&key.sub)
                .invoke_async(&mut conn)
                .await;
            match answer {
                Ok(replaced) => debug!(session = %key.session, replaced, "session shared"),
                Err(e) => inner.failed("session", "local_only", Some(&e)),
            }
        })
    }

    fn fanout(&self, pushed: crate::fanout::Pushed) -> StoreFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let payload = serde_json::to_string(&pushed).map_err(store_error)?;
            let mut conn = inner.conn.clone();
            let sent: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&inner.fanout)
                .arg(payload)
                .query_async(&mut conn)
                .await;
            sent.map(|_| ()).map_err(|e| {
                // Other gateways miss it; this one's clients need not.
                inner.local.hub.deliver(pushed, &inner.local.metrics);
                inner.failed("fanout", "local_only", Some(&e));
                store_error(e)
            })
        })
    }

    fn session_closed(&self, key: SessionKey) {
        let inner = self.inner.clone();
        if !inner.available() {
            return;
        }
        tokio::spawn(async move {
            let mut conn = inner.conn.clone();
            let answer: Result<i64, _> = redis::cmd("ZREM")
                .arg(inner.key(&["ws", &key.route, &key.sub]))
                .arg(&key.session)
                .query_async(&mut conn)
                .await;
            if let Err(e) = answer {
                inner.failed("session", "dropped", Some(&e));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_of_different_routes_and_users_never_collide() {
        let config = StateConfig {
            url: Some(toml::Spanned::new(0..0, "redis://127.0.0.1:1".to_owned())),
            ..StateConfig::default()
        };
        let local = Arc::new(Local::new(
            "gw",
            Arc::default(),
            Arc::default(),
            Arc::default(),
        ));
        let store = RedisStore::connect(
            &config,
            std::path::Path::new(""),
            local,
            Arc::default(),
            CancellationToken::new(),
        )
        .expect("a store (it connects lazily)");
        let k = |route: &str, sub: &str| store.inner.key(&["ws", route, sub]);
        assert_ne!(k("h/a", "b:c"), k("h/a:b", "c"));
        assert_ne!(k("h/a%3Ab", "c"), k("h/a:b", "c"));
        assert_eq!(k("app.test/ws", "alice"), "netwall:ws:app.test/ws:alice");
    }
}
