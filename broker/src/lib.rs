//! Aqueduct: an embedded, persistent, partitioned message broker on sled.
//!
//! One process, one sled database, no server. Topics are split into partitions; each partition
//! is a log with dense offsets that survive restarts. Consumer groups track their own position
//! per partition, lease messages to their members, and redeliver what is not acknowledged in
//! time. Messages that fail too often move to a dead-letter topic together with where they came
//! from and why.
//!
//! # Guarantees
//!
//! - At-least-once delivery per group: a message is delivered until acked, acks may come in any
//!   order, and an acked message is not delivered to that group again, also after a restart
//!   (within what the [`Durability`] mode may lose).
//! - Attempt counts are written before a delivery is handed out, so a message that crashes the
//!   process on every delivery still reaches the dead-letter topic after `max_deliveries`.
//! - Dead-lettering moves the message and settles it in its group in one sled transaction.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use aqueduct::{Broker, Message, TopicConfig};
//!
//! # fn main() -> aqueduct::Result<()> {
//! let broker = Broker::temporary()?;
//! broker.create_topic("greetings", TopicConfig::default())?;
//! broker.publish("greetings", Message::new("hello").key("user-1"))?;
//!
//! let mut consumer = broker.subscribe("greetings", "printer")?;
//! let delivery = consumer.recv_timeout(Duration::from_secs(1))?.expect("a delivery");
//! assert_eq!(delivery.payload(), b"hello");
//! delivery.ack()?;
//! # Ok(())
//! # }
//! ```

mod broker;
mod clock;
mod config;
mod consumer;
mod dedup;
mod error;
mod flusher;
mod generation;
mod group;
mod hash;
mod log;
mod message;
mod name;
mod record;
mod signal;
mod stats;
mod storage;
mod window;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use crate::broker::Broker;
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::config::{
    BacklogLimit, BrokerConfig, ConsumerConfig, Durability, OrderingMode, Retention, StartPosition,
    TopicConfig, WhenFull, MAX_MESSAGE_BYTES_LIMIT,
};
pub use crate::consumer::{Consumer, Delivery, MAX_REASON_BYTES};
pub use crate::error::{Error, Result};
pub use crate::hash::{key_hash, partition_for_key};
pub use crate::message::{
    DeadLetterInfo, Message, ParkedKey, PeekedMessage, Receipt, RESERVED_HEADER_PREFIX,
};
pub use crate::name::{validate_group_name, validate_topic_name, MAX_NAME_LEN};
pub use crate::record::FORMAT_VERSION;
pub use crate::stats::{GroupPartitionStats, GroupStats, PartitionStats, Stats, TopicStats};
pub use crate::storage::RESERVED_PREFIX;

/// The README's code examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
