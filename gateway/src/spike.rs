//! Spike detection: new WebSocket connections per second against their recent average.
//!
//! Each second's count is folded into an exponential moving average whose time constant is
//! the configured window. A second whose count exceeds `multiple` times that average (and an
//! absolute floor, so a quiet gateway does not alarm on a handful of clients) is a spike: it is
//! logged once under the security target and counted. The average is seeded by the first full
//! second; nothing is flagged before there is a baseline.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::warn;

use netwall_config::duration;

/// Default multiple of the recent average that counts as a spike.
pub const DEFAULT_MULTIPLE: f64 = 5.0;
/// Default floor: fewer new connections per second than this are never a spike.
pub const DEFAULT_MIN_PER_SECOND: u64 = 50;
/// Default averaging window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

fn d_multiple() -> f64 {
    DEFAULT_MULTIPLE
}
fn d_min() -> u64 {
    DEFAULT_MIN_PER_SECOND
}
fn d_window() -> Duration {
    DEFAULT_WINDOW
}

/// `[spike]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeConfig {
    /// A second with more than this multiple of the recent average is a spike.
    #[serde(default = "d_multiple")]
    pub multiple: f64,
    /// Seconds with fewer new connections than this are never spikes.
    #[serde(default = "d_min")]
    pub min_per_second: u64,
    /// Averaging window.
    #[serde(default = "d_window", deserialize_with = "duration")]
    pub window: Duration,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        SpikeConfig {
            multiple: DEFAULT_MULTIPLE,
            min_per_second: DEFAULT_MIN_PER_SECOND,
            window: DEFAULT_WINDOW,
        }
    }
}

struct State {
    second: u64,
    count: u64,
    average: f64,
    flagged: bool,
    /// Whether a full second has been seen (there is no baseline before).
    seeded: bool,
}

/// Counts new connections and reports spikes.
pub struct SpikeDetector {
    config: SpikeConfig,
    start: Instant,
    state: Mutex<State>,
}

impl SpikeDetector {
    /// A detector with `config`.
    pub fn new(config: SpikeConfig) -> Self {
        SpikeDetector {
            config,
            start: Instant::now(),
            state: Mutex::new(State {
                second: 0,
                count: 0,
                average: 0.0,
                flagged: false,
                seeded: false,
            }),
        }
    }

    /// Record one new connection; returns true when it makes this second a spike (once per
    /// second).
    pub fn record(&self) -> bool {
        self.record_at(self.start.elapsed().as_secs())
    }

    fn record_at(&self, second: u64) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if second != s.second {
            // Fold the finished second, then the empty seconds since, into the average.
            let alpha = 1.0 / self.config.window.as_secs_f64().max(1.0);
            let finished = s.count as f64;
            if s.seeded {
                s.average += alpha * (finished - s.average);
            } else {
                s.average = finished;
                s.seeded = true;
            }
            let idle = second.saturating_sub(s.second + 1).min(10_000);
            s.average *= (1.0 - alpha).powi(idle as i32);
            s.second = second;
            s.count = 0;
            s.flagged = false;
        }
        s.count += 1;
        let spike = s.seeded
            && !s.flagged
            && s.count >= self.config.min_per_second
            && s.count as f64 > self.config.multiple * s.average;
        if spike {
            s.flagged = true;
            warn!(target: "netwall::security", event = "spike", new_connections_this_second = s.count, recent_average = s.average, multiple = self.config.multiple);
        }
        spike
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> SpikeDetector {
        SpikeDetector::new(SpikeConfig {
            multiple: 3.0,
            min_per_second: 10,
            window: Duration::from_secs(10),
        })
    }

    #[test]
    fn steady_load_is_not_a_spike_and_a_burst_is_flagged_once() {
        let d = detector();
        // Forty seconds of 12 per second: the average settles near 12.
        for second in 0..40 {
            for _ in 0..12 {
                assert!(
                    !d.record_at(second),
                    "steady load flagged at second {second}"
                );
            }
        }
        // 50 in one second is over 3x the average: flagged exactly once.
        let flagged = (0..50).filter(|_| d.record_at(40)).count();
        assert_eq!(flagged, 1);
    }

    #[test]
    fn the_floor_keeps_small_numbers_quiet() {
        let d = detector();
        assert_eq!((0..9).filter(|_| d.record_at(0)).count(), 0);
        assert_eq!((0..20).filter(|_| d.record_at(100)).count(), 1);
    }
}
