//! The `memory` driver: shared state of one gateway, in this process.
//!
//! Limits are [`MemoryLimiter`]s; an event is applied to this gateway at once; per-user
//! WebSocket limits are the local table's own ([`crate::ws::UserSessions`]), so the session
//! calls have nothing to add.

use std::sync::Arc;

use super::{Event, Local, OnError, SessionKey, Store, StoreError, StoreFuture};
use crate::fanout::Pushed;
use crate::policy::rate_limit::{Limit, MemoryLimiter, RateLimiter};

/// Shared state of a single gateway.
#[derive(Debug)]
pub struct MemoryStore {
    local: Arc<Local>,
}

impl MemoryStore {
    /// A store acting on `local` only.
    pub fn new(local: Arc<Local>) -> MemoryStore {
        MemoryStore { local }
    }
}

impl Store for MemoryStore {
    fn driver(&self) -> &'static str {
        "memory"
    }

    fn limiter(
        &self,
        _scope: &str,
        limit: Limit,
        _on_error: OnError,
    ) -> Option<Arc<dyn RateLimiter>> {
        Some(Arc::new(MemoryLimiter::new(limit)?))
    }

    fn publish(&self, event: Event) -> StoreFuture<'_, (usize, Result<(), StoreError>)> {
        let closed = self.local.apply(&event);
        Box::pin(std::future::ready((closed, Ok(()))))
    }

    fn session_opened<'a>(&'a self, _key: &'a SessionKey, _max: usize) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn session_closed(&self, _key: SessionKey) {}

    fn fanout(&self, pushed: Pushed) -> StoreFuture<'_, Result<(), StoreError>> {
        self.local.hub.deliver(pushed, &self.local.metrics);
        Box::pin(std::future::ready(Ok(())))
    }
}
