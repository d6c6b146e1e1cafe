//! The connector's status file, for probes that cannot reach it over the network (a
//! Kubernetes exec probe, a container health check): how many tunnel connections are live,
//! and when the running connector last said so. Text in, text out; the writing is in
//! `lib.rs` and the reading in `netwall-connector probe`.

use std::time::Duration;

/// How often the running connector rewrites its status even when nothing changed, so that
/// a probe can tell a live connector from a file left by a dead one.
pub const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// A status older than this comes from a connector that is gone or stuck: three refreshes
/// missed, more than any scheduling hiccup.
pub const STATUS_STALE_AFTER: Duration = Duration::from_secs(15);

/// What the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Live tunnel connections.
    pub live: usize,
    /// When it was written, in seconds since the Unix epoch.
    pub updated: u64,
}

impl Status {
    /// The file's text.
    pub fn render(&self) -> String {
        format!("live={} updated={}\n", self.live, self.updated)
    }

    /// Read a file's text back.
    pub fn parse(text: &str) -> Option<Status> {
        let mut live = None;
        let mut updated = None;
        for field in text.split_whitespace() {
            match field.split_once('=') {
                Some(("live", v)) => live = v.parse().ok(),
                Some(("updated", v)) => updated = v.parse().ok(),
                _ => {}
            }
        }
        Some(Status {
            live: live?,
            updated: updated?,
        })
    }

    /// Whether a connector wrote this within [`STATUS_STALE_AFTER`] of `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now.saturating_sub(self.updated) <= STATUS_STALE_AFTER.as_secs()
    }

    /// Whether the connector can serve requests: fresh and at least one tunnel connection.
    pub fn is_ready(&self, now: u64) -> bool {
        self.is_fresh(now) && self.live > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ages() {
        let s = Status {
            live: 2,
            updated: 1_000,
        };
        assert_eq!(Status::parse(&s.render()), Some(s));
        assert!(s.is_ready(1_010));
        assert!(!s.is_fresh(1_016), "stale after 15 s");
        assert!(
            !Status { live: 0, ..s }.is_ready(1_000),
            "no tunnel, not ready"
        );
        assert_eq!(Status::parse("live=x updated=1"), None);
        assert_eq!(Status::parse(""), None);
    }
}
