//! Broker, topic and consumer configuration.
//!
//! Every setter documents its unit, default and bounds. Values are validated when they are used
//! (`Broker::open_with`, `create_topic`, `subscribe_with`); an out-of-range value is an
//! [`Error::InvalidConfig`] that names the setting, never a silent clamp.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};

/// Hard upper bound on [`BrokerConfig::max_message_bytes`]: 1 MiB, Kafka's default
/// `message.max.bytes`. A message is held in memory whole while its block is open and while
/// a group has it in flight, so large payloads belong in a file or object store, with a
/// reference in the message.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 1024 * 1024;

/// When a publish (and an ack) counts as durable.
///
/// Both modes survive a crash of the process that happens after the stated point. They differ in
/// what a crash of the machine (power loss, kernel panic) can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `publish` and `ack` return after the data is written by sled *and* the database file is
    /// fsynced. Concurrent callers share one flush (group commit). A machine crash loses
    /// nothing that was acknowledged to the caller.
    Flushed,
    /// `publish` and `ack` return at once; a background thread starts a flush round that
    /// writes and fsyncs the data at most `max_delay` later. A crash of the process or the
    /// machine can lose the publishes and acks of the last `max_delay` plus those of the round
    /// that was running, which lasts as long as sled's write and the fsync. A lost ack means a
    /// redelivery.
    Buffered {
        /// Maximum wait between a publish returning and the start of the flush round that
        /// writes and fsyncs it.
        max_delay: Duration,
    },
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Buffered {
            max_delay: Duration::from_millis(10),
        }
    }
}

/// Settings for one broker (one database).
#[derive(Clone)]
pub struct BrokerConfig {
    pub(crate) durability: Durability,
    pub(crate) max_message_bytes: usize,
    pub(crate) block_bytes: usize,
    pub(crate) cache_bytes: u64,
    pub(crate) retention_interval: Duration,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            durability: Durability::default(),
            max_message_bytes: 64 * 1024,
            block_bytes: 8 * 1024,
            cache_bytes: 256 * 1024 * 1024,
            retention_interval: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("durability", &self.durability)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("block_bytes", &self.block_bytes)
            .field("cache_bytes", &self.cache_bytes)
            .field("retention_interval", &self.retention_interval)
            .finish_non_exhaustive()
    }
}

impl BrokerConfig {
    /// Sets when publishes and acks count as durable. Default: `Buffered` with a 10 ms
    /// `max_delay`; `max_delay` must be between 1 ms and 60 s.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the largest accepted message in bytes (payload, key, headers and id together).
    /// Default 64 KiB; bounds 1 byte to [`MAX_MESSAGE_BYTES_LIMIT`].
    #[must_use]
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets the size in bytes at which a partition's open block is written to storage. Larger
    /// blocks mean fewer sled writes per message, up to a point. sled 0.34 keeps up to 16
    /// values in one tree node and writes a node larger than about 128 KiB to a blob file of
    /// its own, and each such file is created and fsynced. Default 8 KiB; bounds 1 KiB to 96 KiB.
    #[must_use]
    pub fn block_bytes(mut self, bytes: usize) -> Self {
        self.block_bytes = bytes;
        self
    }

    /// Sets sled's page cache size in bytes. Default 256 MiB; at least 1 MiB.
    #[must_use]
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Sets how often the background flusher enforces retention. Default 1 s; bounds 10 ms
    /// to 1 hour. [`Broker::enforce_retention`](crate::Broker::enforce_retention) runs a pass
    /// at once.
    #[must_use]
    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.retention_interval = interval;
        self
    }

    /// Replaces the clock used for ack timeouts, delays and message timestamps. Tests use
    /// [`ManualClock`](crate::ManualClock) to move time without sleeping. Default: the system
    /// clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Durability::Buffered { max_delay } = self.durability {
            check_duration(
                "BrokerConfig::durability max_delay",
                max_delay,
                Duration::from_millis(1),
                Duration::from_secs(60),
            )?;
        }
        check_range(
            "BrokerConfig::max_message_bytes",
            self.max_message_bytes as u64,
            1,
            MAX_MESSAGE_BYTES_LIMIT as u64,
        )?;
        check_range(
            "BrokerConfig::block_bytes",
            self.block_bytes as u64,
            1024,
            96 * 1024,
        )?;
        check_duration(
            "BrokerConfig::retention_interval",
            self.retention_interval,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        check_range(
            "BrokerConfig::cache_bytes",
            self.cache_bytes,
            1 << 20,
            u64::MAX,
        )
    }
}

/// Settings of one topic, fixed when the topic is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub(crate) partitions: u32,
    pub(crate) ack_timeout_ms: u64,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) dedup_window_ms: u64,
    pub(crate) retention: Retention,
    pub(crate) backlog: Option<BacklogLimit>,
}

/// How long a topic keeps messages. Removal works on whole blocks, in the background, and never
/// removes a partition's newest stored block, so a partition keeps its last few messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retention {
    /// Keep every message (an event log).
    #[default]
    Forever,
    /// Remove a block once every group of the topic has acknowledged all its messages (a work
    /// queue). A topic without groups keeps everything.
    UntilAcked,
    /// Remove blocks whose newest message is older than `max_age`, and the oldest blocks while a
    /// partition stores more than `max_bytes`. A message removed before a group acknowledged it is
    /// counted in that group's `unconsumed_removals` and logged.
    Limits {
        /// Age limit, measured from publish time; `None` for no limit.
        max_age: Option<Duration>,
        /// Size limit per partition in stored bytes; `None` for no limit.
        max_bytes: Option<u64>,
    },
}

impl Retention {
    /// Keeps messages for `age` after they were published.
    pub fn max_age(age: Duration) -> Self {
        Retention::Limits {
            max_age: Some(age),
            max_bytes: None,
        }
    }

    /// Keeps at most `bytes` of stored blocks per partition.
    pub fn max_bytes(bytes: u64) -> Self {
        Retention::Limits {
            max_age: None,
            max_bytes: Some(bytes),
        }
    }
}

/// The action a publish takes when the topic's backlog is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WhenFull {
    /// Wait up to `timeout` for consumers to make room, then fail with
    /// [`Error::BacklogFull`].
    Block {
        /// Longest wait.
        timeout: Duration,
    },
    /// Fail at once with [`Error::BacklogFull`].
    Reject,
}

/// A bound on a topic's backlog: the messages that its slowest group has not yet acknowledged
/// (every retained message when the topic has no group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogLimit {
    /// Most backlog messages; `None` for no limit.
    pub max_messages: Option<u64>,
    /// Most backlog bytes, counted in whole stored blocks plus the open blocks; `None` for no
    /// limit.
    pub max_bytes: Option<u64>,
    /// The action a publish takes when a limit would be exceeded.
    pub when_full: WhenFull,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            ack_timeout_ms: 30_000,
            max_deliveries: None,
            dead_letter_topic: None,
            dedup_window_ms: 120_000,
            retention: Retention::Forever,
            backlog: None,
        }
    }
}

impl fmt::Display for TopicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partitions={} ack_timeout={}ms max_deliveries={} dead_letter_topic={} \
             dedup_window={}ms retention={:?} backlog={}",
            self.partitions,
            self.ack_timeout_ms,
            self.max_deliveries
                .map_or("unlimited".to_string(), |n| n.to_string()),
            self.dead_letter_topic.as_deref().unwrap_or("none"),
            self.dedup_window_ms,
            self.retention,
            self.backlog
                .map_or("none".to_string(), |limit| format!("{limit:?}")),
        )
    }
}

impl TopicConfig {
    /// Sets the number of partitions. Default 1; bounds 1 to 1024. Messages with the same key
    /// always land in the same partition.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets how long a consumer may hold a delivery before it is redelivered. Default 30 s;
    /// bounds 1 ms to 7 days; whole milliseconds.
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets how many times a message is delivered to a group before it is moved to the
    /// dead-letter topic. Default: unlimited; bounds 1 to 10 000. Requires
    /// [`dead_letter_topic`](Self::dead_letter_topic).
    #[must_use]
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = Some(max);
        self
    }

    /// Sets the topic that receives dead-lettered messages. It must exist before this topic is
    /// created and must not be this topic. Default: none.
    #[must_use]
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Sets how long a message id is remembered: a message published with an id seen within
    /// this window is not stored again, and the publisher gets the original receipt, also
    /// after a restart. Messages without an id are never deduplicated. Default 2 minutes (the
    /// default duplicate window of NATS JetStream); `Duration::ZERO` turns deduplication off;
    /// at most 7 days; whole milliseconds.
    #[must_use]
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets how long messages are kept. Default [`Retention::Forever`].
    #[must_use]
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Bounds the backlog so that a fast producer cannot outrun slow consumers without limit.
    /// Default: no limit. Each set limit must be at least 1.
    #[must_use]
    pub fn backlog_limit(mut self, limit: BacklogLimit) -> Self {
        self.backlog = Some(limit);
        self
    }

    /// Returns the retention policy.
    pub fn retention_policy(&self) -> Retention {
        self.retention
    }

    /// Returns the backlog limit, if any.
    pub fn backlog(&self) -> Option<BacklogLimit> {
        self.backlog
    }

    /// Returns the dedup window; zero when deduplication is off.
    pub fn dedup_window_duration(&self) -> Duration {
        Duration::from_millis(self.dedup_window_ms)
    }

    /// Returns the number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// Returns the ack timeout.
    pub fn ack_timeout_duration(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// Returns the delivery limit, if any.
    pub fn max_deliveries_limit(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// Returns the dead-letter topic, if any.
    pub fn dead_letter_topic_name(&self) -> Option<&str> {
        self.dead_letter_topic.as_deref()
    }

    pub(crate) fn validate(&self, topic: &str) -> Result<()> {
        check_range(
            "TopicConfig::partitions",
            u64::from(self.partitions),
            1,
            1024,
        )?;
        check_range(
            "TopicConfig::ack_timeout (ms)",
            self.ack_timeout_ms,
            1,
            7 * 24 * 3600 * 1000,
        )?;
        check_range(
            "TopicConfig::dedup_window (ms)",
            self.dedup_window_ms,
            0,
            7 * 24 * 3600 * 1000,
        )?;
        if let Retention::Limits { max_age, max_bytes } = self.retention {
            if let Some(age) = max_age {
                check_duration(
                    "TopicConfig::retention max_age",
                    age,
                    Duration::from_millis(1),
                    Duration::from_secs(100 * 365 * 24 * 3600),
                )?;
            }
            if let Some(bytes) = max_bytes {
                check_range("TopicConfig::retention max_bytes", bytes, 1, u64::MAX)?;
            }
        }
        if let Some(limit) = self.backlog {
            if let Some(messages) = limit.max_messages {
                check_range(
                    "TopicConfig::backlog_limit max_messages",
                    messages,
                    1,
                    u64::MAX,
                )?;
            }
            if let Some(bytes) = limit.max_bytes {
                check_range("TopicConfig::backlog_limit max_bytes", bytes, 1, u64::MAX)?;
            }
            if let WhenFull::Block { timeout } = limit.when_full {
                check_duration(
                    "TopicConfig::backlog_limit timeout",
                    timeout,
                    Duration::ZERO,
                    Duration::from_secs(24 * 3600),
                )?;
            }
        }
        if let Some(max) = self.max_deliveries {
            check_range("TopicConfig::max_deliveries", u64::from(max), 1, 10_000)?;
            if self.dead_letter_topic.is_none() {
                return Err(Error::InvalidConfig {
                    setting: "TopicConfig::max_deliveries",
                    value: max.to_string(),
                    expected: "a dead-letter topic as well; set TopicConfig::dead_letter_topic"
                        .into(),
                });
            }
        }
        if let Some(dead_letter_topic) = &self.dead_letter_topic {
            crate::name::validate_name("topic", dead_letter_topic)?;
            if dead_letter_topic == topic {
                return Err(Error::InvalidConfig {
                    setting: "TopicConfig::dead_letter_topic",
                    value: dead_letter_topic.clone(),
                    expected: "a topic other than the topic itself".into(),
                });
            }
        }
        Ok(())
    }
}

/// The order in which a group hands out messages to its members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderingMode {
    /// Any member takes any message; maximum parallelism, no order between messages.
    #[default]
    Unordered,
    /// A message is held back while an earlier message with the same key in the same partition
    /// is unacknowledged, so per-key order survives nacks and redelivery. Keyless messages are
    /// unordered.
    PerKey,
    /// Each partition is owned by one member at a time and handed out in offset order, Kafka
    /// style; ownership moves when a member is dropped. A redelivered message goes to the owner
    /// before newer messages of its partition.
    PerPartition,
}

/// The position at which a new consumer group starts reading each partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// At the oldest retained message, so the group receives everything the topic retains.
    #[default]
    Earliest,
    /// At the partition's next offset when the group is created, so the group receives only
    /// messages published after that.
    Latest,
}

/// Settings of one consumer.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub(crate) ordering: OrderingMode,
    pub(crate) prefetch: usize,
    pub(crate) max_unacked: usize,
    pub(crate) start: StartPosition,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            ordering: OrderingMode::Unordered,
            prefetch: 1024,
            max_unacked: 10_000,
            start: StartPosition::Earliest,
        }
    }
}

impl ConsumerConfig {
    /// Sets the group's ordering mode. It is stored with the group on first subscribe, and
    /// later subscribers must use the same mode. Default: [`OrderingMode::Unordered`].
    #[must_use]
    pub fn ordering(mut self, ordering: OrderingMode) -> Self {
        self.ordering = ordering;
        self
    }

    /// Sets the most deliveries one fetch from the group takes into this consumer's buffer.
    /// Each fetch waits for one flush round (an fsync) that makes its attempt counts durable,
    /// so larger batches raise throughput. Fetches start at 16 and double while the consumer
    /// outpaces the flushes. Buffered deliveries are leased to this consumer; dropping it
    /// returns them. With a prefetch of 1 the consumer leases only the delivery it hands out,
    /// so the next message stays free for other members of the group. After a crash, a message
    /// that was buffered but never handed out counts that fetch as a delivery attempt. Default
    /// 1024; bounds 1 to 10 000.
    #[must_use]
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets the largest number of unsettled messages per partition that the group tracks.
    /// When a partition reaches it, newer messages wait until older ones are acked. Default
    /// 10 000; bounds 1 to 1 000 000.
    #[must_use]
    pub fn max_unacked(mut self, max: usize) -> Self {
        self.max_unacked = max;
        self
    }

    /// Sets where the group starts if this subscribe creates it. A group that exists keeps its
    /// committed offsets and ignores this setting. Default: [`StartPosition::Earliest`].
    #[must_use]
    pub fn start_position(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_range("ConsumerConfig::prefetch", self.prefetch as u64, 1, 10_000)?;
        check_range(
            "ConsumerConfig::max_unacked",
            self.max_unacked as u64,
            1,
            1_000_000,
        )
    }
}

fn check_range(setting: &'static str, value: u64, min: u64, max: u64) -> Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        setting,
        value: value.to_string(),
        expected: format!("a value from {min} to {max}"),
    })
}

fn check_duration(
    setting: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        setting,
        value: format!("{value:?}"),
        expected: format!("a duration from {min:?} to {max:?}"),
    })
}
