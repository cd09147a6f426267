//! Time sources.
//!
//! The broker reads time only through [`Clock`], so tests can replace it with a [`ManualClock`]
//! and move time forward to expire leases and delays without sleeping. Times are milliseconds
//! since the Unix epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Returns the current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Registers a callback to run whenever time jumps forward other than by the passing of
    /// real time. Real clocks ignore it; [`ManualClock::advance`] calls it so that blocked
    /// consumers re-check their leases.
    fn on_advance(&self, _waker: Weak<dyn Fn() + Send + Sync>) {}
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to, for tests.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Default)]
pub struct ManualClock {
    now: AtomicU64,
    wakers: Mutex<Vec<Weak<dyn Fn() + Send + Sync>>>,
}

impl ManualClock {
    /// Creates a clock that reads `start_ms` until advanced.
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(ManualClock {
            now: AtomicU64::new(start_ms),
            wakers: Mutex::new(Vec::new()),
        })
    }

    /// Moves the clock forward and wakes every broker that uses it.
    pub fn advance(&self, by: std::time::Duration) {
        let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now.fetch_add(by_ms, Ordering::SeqCst);
        let mut wakers = self.wakers.lock();
        wakers.retain(|waker| match waker.upgrade() {
            Some(wake) => {
                wake();
                true
            }
            None => false,
        });
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn on_advance(&self, waker: Weak<dyn Fn() + Send + Sync>) {
        self.wakers.lock().push(waker);
    }
}
