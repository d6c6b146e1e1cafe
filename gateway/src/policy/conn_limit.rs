//! Concurrent connections per client IP, across every public listener.
//!
//! Checked at accept, before TLS (and just after the PROXY header when the gateway sits
//! behind a TCP load balancer): one address cannot hold thousands of idle TLS sessions and
//! crowd everyone else out of the global connection cap. The table holds one entry per
//! address with an open connection, so it is bounded by the connections themselves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections by client address.
#[derive(Debug)]
pub struct IpConnLimit {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's claim; released when dropped.
#[derive(Debug)]
pub struct IpConnSlot {
    limit: Arc<IpConnLimit>,
    ip: IpAddr,
}

impl IpConnLimit {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Arc<IpConnLimit> {
        Arc::new(IpConnLimit {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Claim a slot for `ip`, or `None` when it already holds `max`.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<IpConnSlot> {
        let ip = canonical(ip);
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpConnSlot {
            limit: self.clone(),
            ip,
        })
    }

    /// Connections `ip` holds now.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.get(&canonical(ip)).copied())
            .unwrap_or(0)
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Drop for IpConnSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.limit.counts.lock()
            && let Some(n) = counts.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
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
}
