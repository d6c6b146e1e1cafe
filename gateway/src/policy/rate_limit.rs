//! Keyed rate limits: HTTP requests per route, WebSocket opening attempts per user.
//!
//! Call sites see only [`RateLimiter`]: a key in, a [`Decision`] out. Today's one driver is
//! [`MemoryLimiter`] (GCRA by `governor`, one gateway); a shared driver (Redis, GCRA in one
//! Lua script timed by the server) implements the same trait so that every gateway counts
//! against one budget, without touching a call site.
//!
//! Keyed state is bounded: keys idle long enough to be back at a full budget are pruned at
//! most every [`PRUNE_INTERVAL`], and past [`MAX_TRACKED_KEYS`] the table starts again
//! (counted and logged), so a flood of distinct keys cannot grow memory without bound.

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tracing::warn;

/// How often keys that are back at a full budget are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// Most keys one limiter tracks (about 100 bytes each: 10 MB) before it starts afresh.
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Over the limit; the next request will be allowed after this long.
    Deny {
        /// Time until the key has budget again.
        retry_after: Duration,
    },
}

/// A limit: `requests` per `window`, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Requests per window.
    pub requests: NonZeroU32,
    /// The window.
    pub window: Duration,
    /// Largest burst (defaults to `requests`).
    pub burst: NonZeroU32,
}

impl Limit {
    fn quota(&self) -> Option<Quota> {
        let period = self.window / self.requests.get();
        Quota::with_period(period).map(|q| q.allow_burst(self.burst))
    }
}

/// Boxed future of a limiter call (the trait stays object-safe for drivers that do I/O).
pub type DecisionFuture<'a> = Pin<Box<dyn Future<Output = Decision> + Send + 'a>>;

/// Something that counts requests by key.
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Count one request for `key` and say whether it may proceed.
    fn check<'a>(&'a self, key: &'a str) -> DecisionFuture<'a>;
}

/// GCRA in this process.
#[derive(Debug)]
pub struct MemoryLimiter {
    quota: Quota,
    inner: RwLock<Arc<DefaultKeyedRateLimiter<String>>>,
    started: Instant,
    /// Milliseconds since `started` when the next prune is due.
    next_prune: AtomicU64,
}

impl MemoryLimiter {
    /// A limiter for `limit`; `None` when the limit cannot be expressed (a zero period).
    pub fn new(limit: Limit) -> Option<MemoryLimiter> {
        let quota = limit.quota()?;
        Some(MemoryLimiter {
            quota,
            inner: RwLock::new(Arc::new(governor::RateLimiter::keyed(quota))),
            started: Instant::now(),
            next_prune: AtomicU64::new(PRUNE_INTERVAL.as_millis() as u64),
        })
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.inner.read().map(|l| l.len()).unwrap_or(0)
    }

    fn prune(&self, limiter: &DefaultKeyedRateLimiter<String>) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_prune.load(Ordering::Relaxed);
        let then = now.saturating_add(PRUNE_INTERVAL.as_millis() as u64);
        if now < next
            || self
                .next_prune
                .compare_exchange(next, then, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() > MAX_TRACKED_KEYS {
            warn!(target: "netwall::security", event = "rate_limit_table_reset", keys = limiter.len(), "rate-limit table full; starting afresh");
            if let Ok(mut inner) = self.inner.write() {
                *inner = Arc::new(governor::RateLimiter::keyed(self.quota));
            }
        }
    }
}

impl RateLimiter for MemoryLimiter {
    fn check<'a>(&'a self, key: &'a str) -> DecisionFuture<'a> {
        let limiter = match self.inner.read() {
            Ok(l) => l.clone(),
            Err(_) => return Box::pin(std::future::ready(Decision::Allow)),
        };
        let decision = match limiter.check_key(&key.to_owned()) {
            Ok(()) => Decision::Allow,
            Err(not_until) => Decision::Deny {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        };
        self.prune(&limiter);
        Box::pin(std::future::ready(decision))
    }
}

/// The key of a client address: the IPv4 address, or the /64 of an IPv6 address (one
/// subscriber usually holds a whole /64, so keying by full address lets one client be many).
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, window: Duration) -> Limit {
        let n = NonZeroU32::new(requests).expect("non-zero");
        Limit {
            requests: n,
            window,
            burst: n,
        }
    }

    #[tokio::test]
    async fn allows_the_burst_then_denies_with_a_retry_time() {
        let l = MemoryLimiter::new(limit(5, Duration::from_secs(60))).expect("limiter");
        for _ in 0..5 {
            assert_eq!(l.check("a").await, Decision::Allow);
        }
        match l.check("a").await {
            Decision::Deny { retry_after } => {
                assert!(retry_after <= Duration::from_secs(12), "{retry_after:?}");
                assert!(retry_after > Duration::from_secs(10), "{retry_after:?}");
            }
            Decision::Allow => panic!("sixth request allowed"),
        }
        // Another key has its own budget.
        assert_eq!(l.check("b").await, Decision::Allow);
    }

    #[tokio::test]
    async fn keys_back_at_full_budget_are_pruned() {
        let l = MemoryLimiter::new(limit(1000, Duration::from_millis(10))).expect("limiter");
        for i in 0..1000 {
            l.check(&format!("k{i}")).await;
        }
        assert_eq!(l.tracked(), 1000);
        // Force the next check to prune; every key has long recovered its budget.
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.tracked() > 1 {
            assert!(Instant::now() < deadline, "keys were not pruned");
            tokio::task::yield_now().await;
            l.next_prune.store(0, Ordering::Relaxed);
            l.check("fresh").await;
        }
    }

    #[test]
    fn ipv6_keys_by_prefix() {
        assert_eq!(ip_key("192.0.2.7".parse().expect("ip")), "192.0.2.7");
        assert_eq!(
            ip_key("2001:db8:1:2:aaaa::1".parse().expect("ip")),
            ip_key("2001:db8:1:2:bbbb::9".parse().expect("ip"))
        );
        assert_eq!(ip_key("::ffff:192.0.2.7".parse().expect("ip")), "192.0.2.7");
    }
}
