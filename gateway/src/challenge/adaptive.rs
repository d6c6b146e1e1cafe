//! Adaptive difficulty: the puzzle gets harder while new visitors arrive much faster than
//! usual, and easier again when they stop.
//!
//! New (unsigned) visitors are counted per second. A second is **hot** once its count reaches
//! the floor `min_per_second` and exceeds `multiple` times the baseline; the first moment it
//! becomes hot, difficulty rises by [`STEP_BITS`], up to the route's maximum. After
//! [`CALM_SECONDS_PER_STEP`] calm seconds in a row it falls by one step. Each bit doubles the
//! expected work, so one step per second reaches the maximum within seconds of a flood while
//! a single busy second costs real visitors little.
//!
//! The baseline is an exponential average over the route's averaging window, as in the
//! WebSocket spike detector, with two differences. Hot seconds teach it [`HOT_LEARNING_SLOWDOWN`]
//! times more slowly: a flood would otherwise become the new normal within one window and the
//! difficulty would fall while it goes on, yet a lasting rise in real traffic is still learned
//! (in about `window x HOT_LEARNING_SLOWDOWN / multiple`: 12 minutes with the defaults). And
//! as there, nothing is hot before the first full second has seeded the baseline, so a
//! gateway restarted under steady traffic does not start raised; a flood already under way
//! at start is met by the base difficulty.

use std::time::Duration;

/// Bits added per hot second: one doubles the work.
pub const STEP_BITS: u8 = 1;
/// Calm seconds in a row before the difficulty falls one step: long enough that a flood
/// pausing for a moment does not reset the defence, short enough that visitors pay the higher
/// price for well under a minute after it ends.
pub const CALM_SECONDS_PER_STEP: u64 = 10;
/// How many times more slowly hot seconds move the baseline than calm ones.
pub const HOT_LEARNING_SLOWDOWN: f64 = 60.0;

/// The knobs, from `[route.challenge]`.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveConfig {
    /// Difficulty with no flood.
    pub base: u8,
    /// Highest difficulty a flood can raise it to.
    pub max: u8,
    /// A second above this multiple of the baseline is hot.
    pub multiple: f64,
    /// Seconds with fewer new visitors than this are never hot.
    pub min_per_second: u64,
    /// Averaging window of the baseline.
    pub window: Duration,
}

/// The detector's state, advanced by explicit seconds so its arithmetic is testable.
#[derive(Debug, Clone)]
pub struct Adaptive {
    config: AdaptiveConfig,
    second: u64,
    count: u64,
    hot: bool,
    seeded: bool,
    baseline: f64,
    level: u8,
    calm: u64,
}

impl Adaptive {
    /// A detector at the base difficulty with an empty baseline.
    pub fn new(config: AdaptiveConfig) -> Adaptive {
        Adaptive {
            config,
            second: 0,
            count: 0,
            hot: false,
            seeded: false,
            baseline: 0.0,
            level: 0,
            calm: 0,
        }
    }

    /// The difficulty now.
    pub fn difficulty(&self) -> u8 {
        self.config
            .base
            .saturating_add(self.level)
            .min(self.config.max.max(self.config.base))
    }

    /// Whether the difficulty is raised (the route is under a flood of new visitors).
    pub fn raised(&self) -> bool {
        self.level > 0
    }

    /// Count one new visitor at `second` (seconds since any fixed start); returns the
    /// difficulty to issue.
    pub fn visitor(&mut self, second: u64) -> u8 {
        self.advance(second);
        self.count += 1;
        let threshold = self.config.multiple * self.baseline;
        if self.seeded
            && !self.hot
            && self.count >= self.config.min_per_second
            && self.count as f64 > threshold
        {
            self.hot = true;
            self.calm = 0;
            let headroom = self.config.max.saturating_sub(self.config.base);
            self.level = self.level.saturating_add(STEP_BITS).min(headroom);
        }
        self.difficulty()
    }

    /// The difficulty at `second`, for a metric, without counting a visitor.
    pub fn at(&mut self, second: u64) -> u8 {
        self.advance(second);
        self.difficulty()
    }

    fn advance(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let alpha = 1.0 / self.config.window.as_secs_f64().max(1.0);
        // The finished second, then the empty ones since it.
        let count = self.count as f64;
        if !self.seeded {
            self.baseline = count;
            self.seeded = true;
        } else if self.hot {
            self.baseline += alpha / HOT_LEARNING_SLOWDOWN * (count - self.baseline);
            self.calm = 0;
        } else {
            self.baseline += alpha * (count - self.baseline);
            self.calm_for(1);
        }
        let idle = (second - self.second - 1).min(100_000);
        self.baseline *= (1.0 - alpha).powi(idle as i32);
        self.calm_for(idle);
        self.second = second;
        self.count = 0;
        self.hot = false;
    }

    fn calm_for(&mut self, seconds: u64) {
        self.calm += seconds;
        while self.level > 0 && self.calm >= CALM_SECONDS_PER_STEP {
            self.calm -= CALM_SECONDS_PER_STEP;
            self.level = self.level.saturating_sub(STEP_BITS);
        }
        if self.level == 0 {
            self.calm = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> Adaptive {
        Adaptive::new(AdaptiveConfig {
            base: 16,
            max: 20,
            multiple: 3.0,
            min_per_second: 10,
            window: Duration::from_secs(10),
        })
    }

    /// Feed `n` visitors in `second`; the difficulties issued.
    fn feed(a: &mut Adaptive, second: u64, n: u64) -> Vec<u8> {
        (0..n).map(|_| a.visitor(second)).collect()
    }

    #[test]
    fn steady_traffic_stays_at_the_base_difficulty() {
        let mut a = adaptive();
        for s in 0..60 {
            assert!(feed(&mut a, s, 12).iter().all(|d| *d == 16), "second {s}");
        }
    }

    #[test]
    fn a_flood_raises_one_step_per_hot_second_up_to_the_maximum_and_calm_brings_it_back() {
        let mut a = adaptive();
        for s in 0..30 {
            feed(&mut a, s, 5);
        }
        // Baseline 5: the 16th visitor in a second is over 3x and over the floor.
        let issued = feed(&mut a, 30, 40);
        assert_eq!(issued[..15], [16; 15]);
        assert_eq!(issued[15..], [17; 25]);
        // Every further hot second adds one bit; the maximum holds.
        for (s, want) in [(31, 18), (32, 19), (33, 20), (34, 20), (35, 20)] {
            assert_eq!(
                *feed(&mut a, s, 40).last().expect("one"),
                want,
                "second {s}"
            );
        }
        // Hot seconds teach the baseline slowly: a flood of minutes stays hot.
        for s in 36..100 {
            assert_eq!(*feed(&mut a, s, 40).last().expect("one"), 20, "second {s}");
        }
        // Quiet again: one step down per 10 calm seconds.
        feed(&mut a, 100, 1);
        // Seconds 100..=109 are calm: the tenth lowers it once it is over.
        assert_eq!(a.at(109), 20);
        assert_eq!(a.at(110), 19);
        assert_eq!(a.at(120), 18);
        assert_eq!(a.at(200), 16);
        assert!(!a.raised());
    }

    #[test]
    fn the_floor_keeps_a_quiet_route_quiet_and_nothing_is_hot_before_a_baseline() {
        let mut a = adaptive();
        // The first second only seeds the baseline, however busy.
        assert!(feed(&mut a, 0, 100).iter().all(|d| *d == 16));
        // Then 3x of 2 is 6, but under the floor of 10 nothing is hot.
        let mut b = adaptive();
        feed(&mut b, 0, 2);
        assert!(feed(&mut b, 1, 9).iter().all(|d| *d == 16));
        assert_eq!(*feed(&mut b, 2, 10).last().expect("one"), 17);
        assert!(b.raised());
    }

    #[test]
    fn a_lasting_rise_in_real_traffic_is_learned() {
        let mut a = adaptive();
        for s in 0..30 {
            feed(&mut a, s, 10);
        }
        // Traffic quadruples for good: raised at first, back at the base within the bound
        // the module documents (window 10 s x 60 / multiple 3 = 200 s, plus the calm steps).
        let mut s = 30;
        while a.visitor(s) == 16 {
            feed(&mut a, s, 39);
            s += 1;
        }
        assert!(a.raised());
        while a.raised() {
            feed(&mut a, s, 40);
            s += 1;
            assert!(s < 30 + 400, "still raised at second {s}");
        }
    }

    #[test]
    fn a_route_with_no_headroom_never_changes() {
        let mut a = Adaptive::new(AdaptiveConfig {
            base: 12,
            max: 12,
            multiple: 2.0,
            min_per_second: 1,
            window: Duration::from_secs(5),
        });
        assert!(feed(&mut a, 0, 1000).iter().all(|d| *d == 12));
        assert!(!a.raised());
    }
}
