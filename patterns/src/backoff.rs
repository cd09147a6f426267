//! Exponential backoff, shared by the outbox relay and the worker pools.
//!
//! The delay before retry `n` (counting from 1) is `initial * 2^(n - 1)`, capped at `max`. The
//! delays carry no random jitter: the relay has one retry loop per outbox, and worker pools
//! retry through the broker's delayed redelivery, whose due times already differ per message.

use std::time::Duration;

/// An exponential backoff schedule: `initial`, doubling per retry, capped at `max`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct_patterns::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(backoff.delay(1), Duration::from_millis(100));
/// assert_eq!(backoff.delay(3), Duration::from_millis(400));
/// assert_eq!(backoff.delay(10), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Creates a schedule that starts at `initial` and doubles up to `max`. A `max` below
    /// `initial` is raised to `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// Returns the first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// Returns the largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Returns the delay before retry `retry`, counting from 1; retry 0 waits `initial` too.
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let factor = 1u32 << doublings;
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |delay| delay.min(self.max))
    }
}
