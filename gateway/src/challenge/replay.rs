//! Solutions are accepted once: the ids of seeds already redeemed, until they expire.
//!
//! Seeds all live for the same `seed_ttl`, so ids arrive in expiry order and a queue drops
//! the expired ones from its front. The set is bounded: when full, the id closest to expiry
//! is forgotten first. Filling it costs an attacker one solved puzzle per entry, and a
//! forgotten id could only buy a second pass for the same network, which solving once
//! already gave.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Redeemed seeds remembered at most (about 48 bytes each: some 12 MiB when full), enough for
/// 145 solutions a second over a seed's default 30-minute life.
pub const DEFAULT_REPLAY_CAPACITY: usize = 262_144;

/// Seeds already redeemed, shared by every challenged route of a gateway.
#[derive(Debug)]
pub struct Redeemed {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashSet<[u8; 16]>,
    order: VecDeque<(u64, [u8; 16])>,
}

impl Default for Redeemed {
    fn default() -> Self {
        Redeemed::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl Redeemed {
    /// A set holding at most `capacity` ids.
    pub fn new(capacity: usize) -> Redeemed {
        Redeemed {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Redeem `id` (valid until `expires`) at `now`: true the first time, false after.
    pub fn redeem(&self, id: [u8; 16], expires: u64, now: u64) -> bool {
        let Ok(mut s) = self.inner.lock() else {
            return false;
        };
        while let Some((exp, old)) = s.order.front().copied() {
            if exp > now && s.order.len() < self.capacity {
                break;
            }
            s.order.pop_front();
            s.ids.remove(&old);
        }
        if !s.ids.insert(id) {
            return false;
        }
        s.order.push_back((expires, id));
        true
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|s| s.ids.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_redeemed_once_and_forgotten_after_expiry_or_when_full() {
        let r = Redeemed::new(3);
        assert!(r.redeem([1; 16], 100, 0));
        assert!(!r.redeem([1; 16], 100, 1));
        assert!(r.redeem([2; 16], 110, 2));
        assert!(r.redeem([3; 16], 120, 3));
        // Full: the oldest goes to make room.
        assert!(r.redeem([4; 16], 130, 4));
        assert_eq!(r.len(), 3);
        assert!(!r.redeem([4; 16], 130, 5));
        // Expired entries leave on the next redemption.
        assert!(r.redeem([5; 16], 200, 125));
        assert_eq!(r.len(), 2);
    }
}
