//! The process the gateway and the connector run in: tokio's multi-thread runtime with the
//! configured number of workers, on the mimalloc allocator.
//!
//! mimalloc's per-thread free lists take about a quarter of a small request's CPU off the
//! glibc allocator (README, Performance). Its one habit an edge cannot keep: a page it freed
//! stays resident until the same thread allocates or frees near it again, so a worker that
//! goes quiet after a burst (a wave of handshakes, thousands of WebSockets opened and then
//! idle) keeps the burst's memory for as long as it stays quiet. Here a worker about to park
//! has mimalloc free its empty pages and return them to the system, at most once a
//! [`IDLE_COLLECT_INTERVAL`]; a task that only ticks at that interval makes sure a quiet
//! runtime still parks (and so collects) after its last burst. Setting mimalloc's purge delay
//! to zero instead costs a system call per freed page: bulk transfers took 60-70 % more CPU
//! per byte in the gateway and the connector when measured.

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The least time between two collections on one worker: often enough that memory freed by a
/// burst is back with the system a second after it, rarely enough that the walk over the
/// thread's heap (tens of microseconds) costs a busy worker nothing measurable.
pub const IDLE_COLLECT_INTERVAL: Duration = Duration::from_millis(250);

/// A multi-thread runtime with `workers` worker threads, all drivers enabled, whose idle
/// workers give freed memory back.
pub fn build(workers: usize) -> io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .on_thread_park(collect_if_due)
        .build()?;
    runtime.spawn(async {
        // Wakes a worker once an interval, so the one that served the last burst parks
        // again after its interval is up, and collects.
        let mut tick = tokio::time::interval(IDLE_COLLECT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    });
    Ok(runtime)
}

/// Run a collection on this thread if its last one is at least [`IDLE_COLLECT_INTERVAL`] old.
fn collect_if_due() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= IDLE_COLLECT_INTERVAL);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: `mi_collect` has no preconditions; it frees this thread's empty pages and
        // returns purged memory to the system, touching no block still in use.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident memory of this process, in KiB.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn an_idle_worker_gives_a_burst_s_memory_back() {
        let rt = build(1).expect("runtime");
        let base = rss_kib();
        // A burst: 64 MiB in small blocks, touched, then freed, on the worker.
        let peak = rt.block_on(async {
            tokio::spawn(async {
                let blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8; 4096]).collect();
                let peak = rss_kib();
                drop(blocks);
                peak
            })
            .await
            .expect("burst")
        });
        assert!(
            peak > base + 32 * 1024,
            "the burst was not resident: {base} -> {peak} KiB"
        );
        // The worker then parks; within a few collection intervals the memory is back.
        let deadline = Instant::now() + 10 * IDLE_COLLECT_INTERVAL;
        let after = loop {
            rt.block_on(async { tokio::time::sleep(IDLE_COLLECT_INTERVAL / 4).await });
            let now = rss_kib();
            if now < base + 16 * 1024 || Instant::now() > deadline {
                break now;
            }
        };
        assert!(
            after < base + 16 * 1024,
            "an idle worker kept the burst: {base} KiB before, {peak} at the peak, {after} after"
        );
    }
}
