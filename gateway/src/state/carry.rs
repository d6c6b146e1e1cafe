//! Counters that outlive a configuration: what a reload must not reset.
//!
//! A reload builds a new route table from the new file, but the counters behind its
//! policies (rate-limit budgets, WebSocket attempt counts, a challenge's learned baseline,
//! the challenge's keys and redeemed seeds) come from here. A client over a limit stays
//! over it and a flood stays a flood across a reload.
//!
//! Entries are keyed by the route's name and the settings that shape them: a route whose
//! limit changed starts with a fresh budget, one whose limit did not keeps its own. A build
//! draws on a [`Carry`]; [`PolicyState::commit`] makes what it used the new state, which
//! drops the entries of routes that are gone. A build that fails is simply dropped, and the
//! state is as it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{OnError, Store};
use crate::challenge::config::ChallengeConfig;
use crate::challenge::token::KeyRing;
use crate::challenge::{Challenge, Shared};
use crate::policy::rate_limit::{Limit, RateLimiter};
use crate::status::RouteStats;

/// One reusable challenge: the route, its prefix and settings, and the gate itself.
type ChallengeEntry = (String, String, ChallengeConfig, Arc<Challenge>);

#[derive(Default, Clone)]
struct Entries {
    rate: HashMap<(String, Limit, OnError), Arc<dyn RateLimiter>>,
    attempts: HashMap<(String, Limit), Arc<dyn RateLimiter>>,
    challenges: Vec<ChallengeEntry>,
    shared: Option<Arc<Shared>>,
    stats: HashMap<String, Arc<RouteStats>>,
}

/// The counters of a gateway's policies, across reloads, drawn from its [`Store`].
pub struct PolicyState {
    entries: Mutex<Entries>,
    store: Arc<dyn Store>,
}

impl Default for PolicyState {
    /// Counters of one gateway in this process.
    fn default() -> Self {
        let local = super::Local::new("gateway", Arc::default(), Arc::default(), Arc::default());
        PolicyState::new(Arc::new(super::memory::MemoryStore::new(Arc::new(local))))
    }
}

impl std::fmt::Debug for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyState").finish_non_exhaustive()
    }
}

/// What one build of the route table draws from the state and what it uses.
pub struct Carry {
    old: Entries,
    next: Entries,
    keys: Option<KeyRing>,
    store: Arc<dyn Store>,
}

impl PolicyState {
    /// Counters drawn from `store`.
    pub fn new(store: Arc<dyn Store>) -> PolicyState {
        PolicyState {
            entries: Mutex::default(),
            store,
        }
    }

    /// Begin a build.
    pub fn begin(&self) -> Carry {
        let old = self.entries.lock().map(|e| e.clone()).unwrap_or_default();
        Carry {
            old,
            next: Entries::default(),
            keys: None,
            store: self.store.clone(),
        }
    }

    /// Make what `carry` used the state: entries it did not use are dropped, challenge keys
    /// it loaded replace the old ones.
    pub fn commit(&self, carry: Carry) {
        let Carry { next, keys, .. } = carry;
        if let (Some(shared), Some(keys)) = (&next.shared, keys) {
            shared.set_keys(keys);
        }
        if let Ok(mut e) = self.entries.lock() {
            *e = next;
        }
    }
}

impl Carry {
    /// The rate limiter of `route` for `limit`: the running one when the limit is unchanged.
    /// `None` when the limit cannot be expressed.
    pub fn rate_limiter(
        &mut self,
        route: &str,
        limit: Limit,
        on_error: OnError,
    ) -> Option<Arc<dyn RateLimiter>> {
        let key = (route.to_owned(), limit, on_error);
        let limiter = match self.old.rate.get(&key) {
            Some(l) => l.clone(),
            None => self
                .store
                .limiter(&format!("http/{route}"), limit, on_error)?,
        };
        self.next.rate.insert(key, limiter.clone());
        Some(limiter)
    }

    /// The status-page figures of `route`: the running ones while its name is kept.
    pub fn route_stats(&mut self, route: &str) -> Arc<RouteStats> {
        let stats = self.old.stats.get(route).cloned().unwrap_or_default();
        self.next.stats.insert(route.to_owned(), stats.clone());
        stats
    }

    /// The WebSocket attempt limiter of `route` for `limit`, kept like
    /// [`Carry::rate_limiter`].
    /// Attempts are counted fail-open while a shared store is down: refusing every user's
    /// reconnects because Redis is away would turn its outage into everyone's.
    pub fn attempt_limiter(&mut self, route: &str, limit: Limit) -> Option<Arc<dyn RateLimiter>> {
        let key = (route.to_owned(), limit);
        let limiter = match self.old.attempts.get(&key) {
            Some(l) => l.clone(),
            None => self
                .store
                .limiter(&format!("ws_attempts/{route}"), limit, OnError::Allow)?,
        };
        self.next.attempts.insert(key, limiter.clone());
        Some(limiter)
    }

    /// The state every challenged route shares. `keys` are the ones `[challenge]` names
    /// (`None`: it names none, so the running random key stays, or one is made).
    pub fn challenge_shared(&mut self, keys: Option<KeyRing>) -> Arc<Shared> {
        if let Some(s) = &self.next.shared {
            return s.clone();
        }
        let shared = match self.old.shared.clone() {
            Some(s) => {
                // Applied at commit, so a build that fails leaves the running keys alone.
                self.keys = keys;
                s
            }
            None => Arc::new(Shared::new(
                keys.unwrap_or_else(crate::challenge::keys::random),
            )),
        };
        self.next.shared = Some(shared.clone());
        shared
    }

    /// The challenge of `route` at `prefix`: the running one (with its learned baseline)
    /// when its settings are unchanged, else `make()`.
    pub fn challenge(
        &mut self,
        route: &str,
        prefix: &str,
        config: &ChallengeConfig,
        make: impl FnOnce() -> Result<Challenge, String>,
    ) -> Result<Arc<Challenge>, String> {
        let found = self
            .old
            .challenges
            .iter()
            .find(|(r, p, c, _)| r == route && p == prefix && c == config)
            .map(|(_, _, _, g)| g.clone());
        let gate = match found {
            Some(g) => g,
            None => Arc::new(make()?),
        };
        self.next.challenges.push((
            route.to_owned(),
            prefix.to_owned(),
            config.clone(),
            gate.clone(),
        ));
        Ok(gate)
    }
}
