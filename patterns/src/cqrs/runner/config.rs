//! Settings of a projection runner and the report of a rebuild.

use std::time::Duration;

use crate::cqrs::error::ProjectionError;

/// Settings of a [`ProjectionRunner`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct_patterns::ProjectionConfig;
///
/// let config = ProjectionConfig::default()
///     .batch_size(64)
///     .flush_interval(Duration::from_millis(200))
///     .max_attempts(3);
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
pub struct ProjectionConfig {
    pub(super) batch_size: usize,
    pub(super) flush_interval: Duration,
    pub(super) max_attempts: u32,
    pub(super) initial_backoff: Duration,
    pub(super) max_backoff: Duration,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            batch_size: 256,
            flush_interval: Duration::from_secs(1),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl ProjectionConfig {
    /// Sets the most events applied in one transaction. Default 256, from 1 to 65 536.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events;
        self
    }

    /// Sets how often the runner flushes the database while it applies events. Default 1 s.
    /// A crash loses at most this much read-model progress, which is then applied again.
    #[must_use]
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Sets how many times a failing batch is tried before the runner stops. Default 5, at
    /// least 1.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the wait before the first retry of a failing batch; it doubles per retry up to
    /// `max`. Defaults 50 ms and 2 s.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    pub(super) fn validate(&self) -> Result<(), ProjectionError> {
        if !(1..=65_536).contains(&self.batch_size) {
            return Err(ProjectionError::InvalidConfig {
                setting: "ProjectionConfig::batch_size",
                value: self.batch_size.to_string(),
                expected: "1 to 65536 events",
            });
        }
        if self.max_attempts == 0 {
            return Err(ProjectionError::InvalidConfig {
                setting: "ProjectionConfig::max_attempts",
                value: "0".to_string(),
                expected: "at least 1",
            });
        }
        if self.initial_backoff > self.max_backoff {
            return Err(ProjectionError::InvalidConfig {
                setting: "ProjectionConfig::backoff",
                value: format!("{:?} > {:?}", self.initial_backoff, self.max_backoff),
                expected: "an initial backoff no longer than the maximum",
            });
        }
        Ok(())
    }
}

/// The outcome of a rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// The generation now active.
    pub generation: u64,
    /// How many events the new generation applied.
    pub events: u64,
    /// How long the rebuild took.
    pub elapsed: Duration,
}
