//! Worker pool settings, the handler's context and the pool's reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::OrderingMode;

use super::error::WorkerError;
use crate::backoff::Backoff;

/// Largest number of workers in one pool.
pub const MAX_WORKERS: usize = 1024;

/// Settings of a [`WorkerPool`](crate::WorkerPool) or
/// [`AsyncWorkerPool`](crate::AsyncWorkerPool).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub(crate) workers: usize,
    pub(crate) ordering: OrderingMode,
    pub(crate) prefetch: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) retry: Backoff,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: 4,
            ordering: OrderingMode::Unordered,
            prefetch: 4,
            poll_interval: Duration::from_millis(100),
            retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(60)),
        }
    }
}

impl WorkerConfig {
    /// Sets the number of workers at start. Default 4; bounds 0 to 1024 (a pool with no
    /// workers takes nothing until it is resized).
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets the group's ordering mode. The broker stores it with the group on first subscribe;
    /// a pool on an existing group must use the same mode. With [`OrderingMode::PerKey`] a
    /// message waits while an earlier message with its key is being processed or waits for a
    /// retry, so messages of one key are handled one at a time and in order. Default
    /// [`OrderingMode::Unordered`].
    #[must_use]
    pub fn ordering(mut self, ordering: OrderingMode) -> Self {
        self.ordering = ordering;
        self
    }

    /// Sets how many deliveries each worker's consumer fetches ahead. Fetched deliveries are
    /// leased to that worker, so a small value spreads a burst across workers and a large one
    /// saves flush rounds when handlers are fast. Default 4; bounds 1 to 10 000.
    #[must_use]
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets how long an idle worker waits for a message before it checks for a stop request.
    /// It bounds how long stopping an idle worker takes. Default 100 ms; bounds 1 ms to 10 s.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the delays before redelivery after a retryable handler error: the delay for
    /// attempt `n` is `backoff.delay(n)`. Default 100 ms doubling up to 60 s.
    #[must_use]
    pub fn retry(mut self, backoff: Backoff) -> Self {
        self.retry = backoff;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), WorkerError> {
        check_workers(self.workers)?;
        if !(1..=10_000).contains(&self.prefetch) {
            return Err(WorkerError::InvalidConfig {
                setting: "WorkerConfig::prefetch",
                value: self.prefetch.to_string(),
                expected: "a value from 1 to 10000",
            });
        }
        let interval = Duration::from_millis(1)..=Duration::from_secs(10);
        if !interval.contains(&self.poll_interval) {
            return Err(WorkerError::InvalidConfig {
                setting: "WorkerConfig::poll_interval",
                value: format!("{:?}", self.poll_interval),
                expected: "a duration from 1ms to 10s",
            });
        }
        Ok(())
    }
}

pub(crate) fn check_workers(workers: usize) -> Result<(), WorkerError> {
    if workers > MAX_WORKERS {
        return Err(WorkerError::InvalidConfig {
            setting: "WorkerConfig::workers",
            value: workers.to_string(),
            expected: "a value from 0 to 1024",
        });
    }
    Ok(())
}

/// The handler's view of the worker running it.
#[derive(Clone, Debug)]
pub struct WorkerContext {
    worker: usize,
    stop: Arc<AtomicBool>,
}

impl WorkerContext {
    pub(crate) fn new(worker: usize) -> Self {
        WorkerContext {
            worker,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Returns the worker's number, unique within its pool.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Returns true once the pool asked this worker to stop (shutdown or a smaller size). A
    /// long handler can check it and return a retryable [`HandlerError`](crate::HandlerError);
    /// the pool then returns the message to the group at once, without backoff.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Counters of a worker pool since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Workers the pool is sized to.
    pub workers: usize,
    /// Messages handled and acked.
    pub acked: u64,
    /// Messages returned for a retry after a handler error or panic.
    pub retried: u64,
    /// Messages dead-lettered: permanent errors and messages that reached the topic's
    /// `max_deliveries`.
    pub dead_lettered: u64,
    /// Handler panics (also counted in `retried` or `dead_lettered`).
    pub panics: u64,
    /// Messages being handled now.
    pub in_flight: u64,
}

/// The outcome of a pool's shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers that stopped before the deadline, after finishing or returning their message.
    pub stopped: usize,
    /// Async workers cancelled at the deadline; their messages went back to the group at
    /// once.
    pub cancelled: usize,
    /// Thread workers still running a handler at the deadline. They are left to finish; the
    /// message is settled when the handler returns, or redelivered after the topic's ack
    /// timeout if the process ends first.
    pub still_running: usize,
}
