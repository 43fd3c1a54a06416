//! The shield's one time source: rate limits, behaviour windows and ban
//! expiry all read it, so a test can move all of them forward together.
//!
//! It is monotonic and counted in nanoseconds since the clock was made.
//! Wall-clock seconds (for bans that outlive a restart) are derived from
//! it, so both views move together when a test advances the clock.

use governor::nanos::Nanos;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A cheap-to-clone clock shared by every part of one shield.
#[derive(Debug, Clone)]
pub struct ShieldClock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
struct ClockInner {
    /// `None` for a manual clock, which only moves when advanced.
    start: Option<Instant>,
    /// Unix time at `start`, in seconds.
    start_unix: u64,
    /// Added to every reading, in nanoseconds. Only [`ShieldClock::advance`]
    /// changes it.
    offset: AtomicU64,
    /// The real elapsed nanoseconds at which [`ShieldClock::freeze`]
    /// stopped the clock, or [`RUNNING`].
    frozen: AtomicU64,
}

const RUNNING: u64 = u64::MAX;

impl ShieldClock {
    /// The real clock.
    pub fn system() -> ShieldClock {
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ShieldClock {
            inner: Arc::new(ClockInner {
                start: Some(Instant::now()),
                start_unix,
                offset: AtomicU64::new(0),
                frozen: AtomicU64::new(RUNNING),
            }),
        }
    }

    /// A clock that stands still until advanced, starting at `unix` seconds.
    pub fn manual(unix: u64) -> ShieldClock {
        ShieldClock {
            inner: Arc::new(ClockInner {
                start: None,
                start_unix: unix,
                offset: AtomicU64::new(0),
                frozen: AtomicU64::new(RUNNING),
            }),
        }
    }

    /// Moves the clock forward by `by` for every holder of a clone.
    ///
    /// Production code never calls this. Unit tests do, and so does the
    /// test-clock API route, which exists only in debug builds.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.offset.fetch_add(by, Ordering::Relaxed);
    }

    /// Stops real time for every holder of a clone: from now on the clock
    /// moves only when advanced, so a test can meet a boundary of a fast
    /// limit (100 a minute earns one back every 0.6 s) exactly.
    ///
    /// Production code never calls this; the debug build's test-clock
    /// route does.
    pub fn freeze(&self) {
        let real = self.inner.start.map_or(0, |s| {
            u64::try_from(s.elapsed().as_nanos()).unwrap_or(RUNNING - 1)
        });
        let _ = self.inner.frozen.compare_exchange(
            RUNNING,
            real.min(RUNNING - 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        let frozen = self.inner.frozen.load(Ordering::Relaxed);
        let real = if frozen != RUNNING {
            Duration::from_nanos(frozen)
        } else {
            self.inner.start.map_or(Duration::ZERO, |s| s.elapsed())
        };
        real + Duration::from_nanos(self.inner.offset.load(Ordering::Relaxed))
    }

    /// Seconds since the Unix epoch, as this clock sees them.
    pub fn unix_now(&self) -> u64 {
        self.inner.start_unix + self.elapsed().as_secs()
    }
}

impl governor::clock::Clock for ShieldClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(u64::try_from(self.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let clock = ShieldClock::system();
        clock.freeze();
        let at = clock.elapsed();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.elapsed(), at);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.elapsed(), at + Duration::from_secs(2));
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = ShieldClock::manual(1_000);
        let other = clock.clone();
        assert_eq!(clock.unix_now(), 1_000);
        other.advance(Duration::from_secs(90));
        assert_eq!(clock.unix_now(), 1_090);
        assert_eq!(clock.elapsed(), Duration::from_secs(90));
    }
}
