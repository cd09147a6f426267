//! Statistics for operators: watermarks per partition and lag per group.
//!
//! Counters (`redeliveries`, `dead_letters`, `unconsumed_removals`) count events since the
//! broker was opened; they are not stored. Groups without a live consumer in this process are
//! reported from their stored cursors.

use serde::Serialize;

use crate::config::{OrderingMode, TopicConfig};

/// A snapshot of every topic and group.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Topics sorted by name.
    pub topics: Vec<TopicStats>,
}

/// One topic's partitions, backlog and groups.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct TopicStats {
    /// The topic name.
    pub name: String,
    /// The topic's configuration.
    pub config: TopicConfig,
    /// Per-partition watermarks.
    pub partitions: Vec<PartitionStats>,
    /// Messages the slowest group has not acknowledged (all retained messages without groups).
    pub backlog_messages: u64,
    /// Bytes of the backlog, counted in whole stored blocks plus open blocks.
    pub backlog_bytes: u64,
    /// Groups sorted by name.
    pub groups: Vec<GroupStats>,
}

/// One partition's extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PartitionStats {
    /// The partition number.
    pub partition: u32,
    /// Offset of the oldest retained message.
    pub low_watermark: u64,
    /// Offset the next published message will get.
    pub high_watermark: u64,
    /// Bytes of stored blocks, not counting the open block.
    pub stored_bytes: u64,
}

/// One group's position and counters.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group name.
    pub name: String,
    /// The group's ordering mode, if its metadata was found.
    pub ordering: Option<OrderingMode>,
    /// Whether a consumer of this group is open in this process.
    pub active: bool,
    /// Per-partition positions.
    pub partitions: Vec<GroupPartitionStats>,
    /// Sum of the partitions' lag.
    pub lag: u64,
    /// Deliveries leased and not yet settled.
    pub in_flight: u64,
    /// Age of the oldest message this group has not acknowledged, in milliseconds.
    pub oldest_unacked_age_ms: Option<u64>,
    /// Redeliveries handed out since open.
    pub redeliveries: u64,
    /// Messages dead-lettered since open.
    pub dead_letters: u64,
    /// Messages that retention removed before this group acknowledged them, since open.
    pub unconsumed_removals: u64,
    /// Keys held back after a dead letter (per-key groups); see `Broker::parked_keys`.
    pub parked_keys: u64,
}

/// One group's position in one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupPartitionStats {
    /// The partition number.
    pub partition: u32,
    /// First offset the group has not settled.
    pub committed: u64,
    /// Messages from the committed offset (or the low watermark, if higher) to the high
    /// watermark, including ones settled out of order.
    pub lag: u64,
    /// Deliveries leased and not yet settled.
    pub in_flight: u64,
}

impl Stats {
    /// Returns the statistics of one topic.
    pub fn topic(&self, name: &str) -> Option<&TopicStats> {
        self.topics.iter().find(|topic| topic.name == name)
    }
}

impl TopicStats {
    /// Returns the statistics of one group.
    pub fn group(&self, name: &str) -> Option<&GroupStats> {
        self.groups.iter().find(|group| group.name == name)
    }
}
