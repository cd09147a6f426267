//! Errors of the worker pools and of handlers.

use std::fmt;

use crate::outbox::BoxError;

/// Errors of [`WorkerPool`](crate::WorkerPool) and [`AsyncWorkerPool`](crate::AsyncWorkerPool)
/// operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A worker could not join the consumer group.
    #[error("could not join group {group:?} on topic {topic:?}: {source}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The broker error.
        #[source]
        source: Box<aqueduct::Error>,
    },

    /// A setting is outside its bounds.
    #[error("invalid setting {setting} = {value}: expected {expected}")]
    InvalidConfig {
        /// The setting, for example `"WorkerConfig::workers"`.
        setting: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },

    /// A worker thread could not be started.
    #[error("could not start a worker thread for group {group:?} on topic {topic:?}: {source}")]
    Spawn {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The operating system error.
        #[source]
        source: std::io::Error,
    },

    /// [`AsyncWorkerPool::start`](crate::AsyncWorkerPool::start) was called outside a tokio
    /// runtime.
    #[error("AsyncWorkerPool::start needs a tokio runtime; call it from inside one")]
    NoRuntime,
}

/// Why a handler did not process a message, and whether a retry can help.
///
/// A retryable error (the default, also for `?` on any error type) returns the message to the
/// group after the pool's backoff for its attempt. On the topic's last allowed delivery
/// (`max_deliveries`) the pool dead-letters it instead. A permanent error dead-letters it at
/// once.
///
/// # Examples
///
/// ```
/// use aqueduct::Delivery;
/// use aqueduct_patterns::{HandlerError, WorkerContext};
///
/// fn handle(delivery: &Delivery, _context: &WorkerContext) -> Result<(), HandlerError> {
///     let text = std::str::from_utf8(delivery.payload()).map_err(HandlerError::permanent)?;
///     let amount: u64 = text.parse()?; // retried, then dead-lettered at max_deliveries
///     println!("amount {amount}");
///     Ok(())
/// }
/// ```
pub struct HandlerError {
    permanent: bool,
    source: BoxError,
}

impl HandlerError {
    /// Creates an error after which the message is retried with backoff.
    pub fn retry(source: impl Into<BoxError>) -> Self {
        HandlerError {
            permanent: false,
            source: source.into(),
        }
    }

    /// Creates an error after which the message is dead-lettered at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        HandlerError {
            permanent: true,
            source: source.into(),
        }
    }

    /// Returns true for an error made with [`permanent`](Self::permanent).
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Returns the underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::retry(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("permanent", &self.permanent)
            .field("source", &self.source)
            .finish()
    }
}
