//! Slows down credential guessing on the tunnel listener.
//!
//! Every failed tunnel authentication (unknown tunnel name or wrong credential: the connector
//! is told the same for both) from a source address makes that address's next reject wait
//! longer, doubling from [`FIRST_DELAY`] up to [`MAX_DELAY`]; after [`LOCKOUT_AFTER`] failures
//! the address is refused at accept, before any handshake work, for [`LOCKOUT`]. A success
//! clears the address's record. With at most a few handshakes pending per address (the
//! listener's cap) a guesser gets a handful of tries a minute instead of thousands a second.
//!
//! The table is bounded: records idle for [`FORGET_AFTER`] are dropped, and past
//! [`MAX_TRACKED`] addresses the oldest half goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delay before the reject that answers an address's first failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest delay before a reject: well inside the 5 s handshake deadline, so the connector
/// still reads why it was refused.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Failures after which an address is refused outright.
pub const LOCKOUT_AFTER: u32 = 10;
/// How long a locked-out address is refused.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// A record with no failure for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most addresses tracked at once (about 48 bytes each).
pub const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
}

/// Failed tunnel authentications by source address.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl AuthThrottle {
    /// Whether `ip` is locked out now.
    pub fn locked_out(&self, ip: IpAddr, now: Instant) -> bool {
        self.records.lock().is_ok_and(|r| {
            r.get(&ip).is_some_and(|rec| {
                rec.failures >= LOCKOUT_AFTER && now.duration_since(rec.last) < LOCKOUT
            })
        })
    }

    /// Record a failure of `ip`; returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let Ok(mut records) = self.records.lock() else {
            return MAX_DELAY;
        };
        if records.len() >= MAX_TRACKED && !records.contains_key(&ip) {
            prune(&mut records, now);
        }
        let rec = records.entry(ip).or_insert(Record {
            failures: 0,
            last: now,
        });
        if now.duration_since(rec.last) >= FORGET_AFTER {
            rec.failures = 0;
        }
        rec.failures = rec.failures.saturating_add(1);
        rec.last = now;
        delay_for(rec.failures)
    }

    /// Forget `ip`'s failures (it authenticated).
    pub fn succeeded(&self, ip: IpAddr) {
        if let Ok(mut r) = self.records.lock() {
            r.remove(&ip);
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.records.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// The delay for the `n`th failure in a row.
fn delay_for(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// Drop records idle past [`FORGET_AFTER`]; if that frees nothing, the oldest half.
fn prune(records: &mut HashMap<IpAddr, Record>, now: Instant) {
    records.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
    if records.len() >= MAX_TRACKED {
        let mut ages: Vec<Instant> = records.values().map(|r| r.last).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 2];
        records.retain(|_, r| r.last > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_the_address_is_locked_out_and_forgiven() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        let other: IpAddr = "192.0.2.10".parse().expect("ip");
        let start = Instant::now();
        let delays: Vec<Duration> = (0..LOCKOUT_AFTER).map(|_| t.failed(ip, start)).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().expect("delays"), MAX_DELAY);
        assert!(t.locked_out(ip, start));
        assert!(!t.locked_out(other, start), "another address is unaffected");
        assert!(!t.locked_out(ip, start + LOCKOUT), "the lockout ends");
        // Quiet long enough, the count starts again.
        assert_eq!(t.failed(ip, start + FORGET_AFTER), FIRST_DELAY);
        t.succeeded(ip);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = AuthThrottle::default();
        let start = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let ip = IpAddr::from(i.to_be_bytes());
            t.failed(ip, start + Duration::from_millis(u64::from(i)));
        }
        assert!(t.tracked() <= MAX_TRACKED, "{}", t.tracked());
    }
}
