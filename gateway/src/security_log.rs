//! Security events as log lines, bounded so that a flood cannot flood the logs.
//!
//! Every refusal is counted in metrics exactly. Its log line (target `netwall::security`,
//! level warn, one structured event a line so a SIEM can filter on it) is written while the
//! process is within [`LINES_PER_SECOND`] (bursts up to [`BURST`]); past that lines are
//! dropped, and the next line written carries `suppressed = N`, how many were dropped since
//! the last one.
//!
//! [`RecentEvents`], a log layer the binary installs, keeps the last [`RECENT_EVENTS`] lines
//! written for the admin status page ([`recent`]).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

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

/// The log target of security events.
pub const TARGET: &str = "netwall::security";
/// Security events the status page shows: enough to see what a scan or flood looks like,
/// few enough that the page stays small.
pub const RECENT_EVENTS: usize = 50;

/// Longest field value kept for the status page, in characters: a field can carry a client's
/// header, and fifty events of 64 KiB headers would make the page megabytes.
pub const RECENT_FIELD_CHARS: usize = 256;

static RECENT: LazyLock<Mutex<VecDeque<serde_json::Value>>> =
    LazyLock::new(|| Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)));

/// The last security events written, oldest first, each with its fields and `at` (Unix
/// seconds).
pub fn recent() -> Vec<serde_json::Value> {
    RECENT
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

/// A log layer that keeps the last [`RECENT_EVENTS`] security events for [`recent`].
pub struct RecentEvents;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        fields.0.insert("at".into(), at.into());
        if let Ok(mut r) = RECENT.lock() {
            if r.len() == RECENT_EVENTS {
                r.pop_front();
            }
            r.push_back(serde_json::Value::Object(fields.0));
        }
    }
}

struct Fields(serde_json::Map<String, serde_json::Value>);

/// `text`, cut to [`RECENT_FIELD_CHARS`] characters (an ellipsis marks a cut).
fn bounded(text: &str) -> String {
    match text.char_indices().nth(RECENT_FIELD_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), bounded(&format!("{value:?}")).into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), bounded(value).into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
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
    fn a_long_field_is_cut_on_a_character_boundary() {
        let long = "é".repeat(RECENT_FIELD_CHARS + 10);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), RECENT_FIELD_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("short"), "short");
    }

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
