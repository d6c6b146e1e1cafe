//! Security events as log lines, bounded so that a flood cannot flood the logs.
//!
//! Every refusal is counted in metrics exactly. Its log line (target `netwall::security`,
//! level warn, one structured event a line so a SIEM can filter on it) is written while the
//! process is within [`LINES_PER_SECOND`] (bursts up to [`BURST`]); past that lines are
//! dropped, and the next line written carries `suppressed = N`, how many were dropped since
//! the last one.

use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Security log lines per second, sustained: enough to see every event of a normal day, few
/// enough that a flood of junk costs the log pipeline nothing.
pub const LINES_PER_SECOND: u32 = 50;
/// Lines allowed in one burst.
pub const BURST: u32 = 200;

struct Budget {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

static BUDGET: LazyLock<Budget> = LazyLock::new(|| {
    let per_second = NonZeroU32::new(LINES_PER_SECOND).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN);
    Budget {
        limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
        suppressed: AtomicU64::new(0),
    }
});

/// Whether a security line may be written now: `Some(lines dropped since the last one)`.
pub fn allow() -> Option<u64> {
    let b = &*BUDGET;
    if b.limiter.check().is_ok() {
        Some(b.suppressed.swap(0, Ordering::Relaxed))
    } else {
        b.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Log a security event (fields as for `tracing::warn!`) within the budget.
#[macro_export]
macro_rules! security_event {
    ($($field:tt)*) => {
        if let Some(suppressed) = $crate::security_log::allow() {
            ::tracing::warn!(target: "netwall::security", suppressed, $($field)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_and_the_next_line_says_how_much() {
        let tries = 2 * BURST as usize;
        let written = (0..tries).filter(|_| allow().is_some()).count();
        assert!(written <= BURST as usize + 5, "{written} lines of {tries}");
        let dropped = (tries - written) as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let reported = loop {
            if let Some(n) = allow() {
                break n;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the budget never refilled"
            );
            std::thread::yield_now();
        };
        assert!(
            reported >= dropped,
            "{reported} reported, {dropped} dropped"
        );
    }
}
