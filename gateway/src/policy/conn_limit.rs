//! Concurrent connections per key: per client IP across every public listener, per
//! (route, client IP) for WebSockets, and requests in flight per client network.
//!
//! The per-IP connection cap is checked at accept, before TLS (and just after the PROXY
//! header when the gateway sits behind a TCP load balancer): one address cannot hold
//! thousands of idle TLS sessions and crowd everyone else out of the global connection cap.
//! A table holds one entry per key with an open connection, so it is bounded by the
//! connections themselves.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections by key, each claim released when its [`Slot`] drops.
#[derive(Debug)]
pub struct SlotTable<K: Hash + Eq + Clone> {
    counts: Mutex<HashMap<K, usize>>,
}

/// One open connection's claim; released when dropped.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    table: Arc<SlotTable<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Default for SlotTable<K> {
    fn default() -> Self {
        SlotTable {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> SlotTable<K> {
    /// Claim a slot for `key`, or `None` when it already holds `max`.
    pub fn claim(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            key,
        })
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.table.counts.lock()
            && let Some(n) = counts.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Open public connections by client address.
#[derive(Debug)]
pub struct IpConnLimit {
    max: usize,
    table: Arc<SlotTable<IpAddr>>,
}

/// A public connection's claim on its address's budget.
pub type IpConnSlot = Slot<IpAddr>;

impl IpConnLimit {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Arc<IpConnLimit> {
        Arc::new(IpConnLimit {
            max,
            table: Arc::default(),
        })
    }

    /// Claim a slot for `ip`, or `None` when it already holds `max`.
    pub fn claim(&self, ip: IpAddr) -> Option<IpConnSlot> {
        self.table.claim(canonical(ip), self.max)
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table.tracked()
    }
}

/// Requests in flight by client network (an IPv4 address, an IPv6 /64).
pub type RequestSlots = SlotTable<IpAddr>;

/// One request's claim on its client network's budget.
pub type RequestSlot = Slot<IpAddr>;

/// The network a client's requests are counted under: its IPv4 address (also when mapped
/// into IPv6), or its IPv6 /64, since one subscriber holds a whole /64.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 client it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_forgets_closed_ones() {
        let limit = IpConnLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let s1 = limit.claim(a).expect("first");
        let s2 = limit.claim(mapped).expect("second");
        assert!(limit.claim(a).is_none(), "third from the same address");
        let s3 = limit.claim(b).expect("another address");
        drop(s1);
        let s4 = limit.claim(a).expect("a slot was released");
        drop((s2, s3, s4));
        assert_eq!(limit.tracked(), 0);
    }

    #[test]
    fn requests_count_per_ipv4_address_and_ipv6_64() {
        let net = |s: &str| client_network(s.parse().expect("ip")).to_string();
        assert_eq!(net("192.0.2.1"), "192.0.2.1");
        assert_eq!(net("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(net("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(net("2001:db8:1:2:ffff::9"), "2001:db8:1:2::");
        assert_ne!(net("2001:db8:1:3::1"), net("2001:db8:1:2::1"));
    }
}
