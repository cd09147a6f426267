//! Competing consumers: a pool of workers in one consumer group, on threads
//! ([`WorkerPool`]) or tokio tasks ([`AsyncWorkerPool`]).
//!
//! # Guarantees
//!
//! - **At-least-once.** Every worker has its own [`Consumer`](aqueduct::Consumer) in the
//!   group, so the broker's guarantees hold: a message is handed to one worker at a time and
//!   delivered again until acked, also after a crash. Pair the handler with an
//!   [`Inbox`](crate::Inbox) to make its sled writes happen once.
//! - **Settling.** `Ok` acks. A retryable [`HandlerError`] or a panic returns the message with
//!   [`Delivery::nack_after`](aqueduct::Delivery::nack_after) and the pool's exponential
//!   backoff for its attempt. The broker counts attempts, and the counts survive restarts. A
//!   failure on the topic's last allowed delivery (`max_deliveries`) dead-letters the message
//!   with the handler's error as its reason. A permanent `HandlerError` dead-letters it at once.
//!   In a per-key group the broker then parks the message's key: later messages of that key
//!   wait until an operator calls [`Broker::release_key`](aqueduct::Broker::release_key).
//! - **Ordering.** With [`OrderingMode::PerKey`](aqueduct::OrderingMode::PerKey), a message
//!   waits while an earlier message of its key is in a handler or waiting for its retry, so
//!   each key is handled in order by one worker at a time, also across retries.
//!
//! # Resizing and shutdown
//!
//! `resize` adds workers at once and stops the newest ones after their current message. A
//! stopping worker returns the deliveries it fetched ahead (see
//! [`WorkerConfig::prefetch`]) to the group. `shutdown(deadline)` stops all workers and waits
//! up to the deadline: a thread still in its handler is left to finish and reported, a task is
//! cancelled and its message returned. Handlers see a stop request through
//! [`WorkerContext::stop_requested`] and can return a retryable error to give their message
//! back without backoff.
//!
//! # Logging
//!
//! Start, resize and shutdown at info, worker start and stop at debug, retries at info, dead
//! letters and failed settles at warn, handler panics at error.

mod async_pool;
mod config;
mod error;
mod pool;
mod settle;

pub use self::async_pool::AsyncWorkerPool;
pub use self::config::{PoolStats, ShutdownReport, WorkerConfig, WorkerContext, MAX_WORKERS};
pub use self::error::{HandlerError, WorkerError};
pub use self::pool::WorkerPool;
