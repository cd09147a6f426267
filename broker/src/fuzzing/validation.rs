//! Configuration, name and message validation through the public API, checked against the
//! documented bounds.
//!
//! Each numeric setting in a [`ConfigCase`] is left at its default, set to one of its boundary
//! values (just inside and just outside each bound) or set to any value, so that random bytes
//! reach both sides of every bound. The expected outcome comes from the bounds that the setters
//! document, restated here independently of `config.rs`.

use std::fmt::Debug;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};

use crate::broker::Broker;
use crate::config::{
    BacklogLimit, BrokerConfig, ConsumerConfig, Durability, OrderingMode, Retention, TopicConfig,
    WhenFull, MAX_MESSAGE_BYTES_LIMIT,
};
use crate::error::{Error, Result};
use crate::hash::partition_for_key;
use crate::message::{Message, RESERVED_HEADER_PREFIX};
use crate::name::MAX_NAME_LEN;

const MIB: u64 = 1024 * 1024;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Maximum length of a payload that a case builds by repetition: twice the largest accepted
/// message limit.
const MAX_REPEATED_PAYLOAD: u64 = 2 * MAX_MESSAGE_BYTES_LIMIT as u64;

/// Names that a [`NameInput::Known`] picks from: valid ones and ones just outside each rule.
const KNOWN_NAMES: [&str; 9] = [
    "orders",
    "orders.dead",
    "A-z_0.9",
    "",
    ".",
    "..",
    "orders/v2",
    "ordèrs",
    "orders v2",
];

/// Header names that a [`HeaderInput::Known`] picks from.
const KNOWN_HEADERS: [&str; 6] = [
    "content-type",
    "",
    "aqueduct.",
    "aqueduct.attempt",
    "Aqueduct.attempt",
    "aqueduct",
];

/// Builds a [`ConfigCase`] from fuzz input, checks it and returns the outcome of each step in
/// order, for example `["broker opened", "topic created", "subscribed", "published"]`. Input
/// that `arbitrary` cannot turn into a case returns no steps.
///
/// # Panics
///
/// When a public call panics, accepts a value outside its documented bounds, rejects a valid
/// one, or fails with an error that does not name an out-of-range value.
pub fn validate_config(data: &[u8]) -> Vec<&'static str> {
    match ConfigCase::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(case) => case.check(),
        Err(_) => Vec::new(),
    }
}

/// One broker, topic, consumer and message configuration.
#[derive(Arbitrary, Clone, Debug)]
pub struct ConfigCase {
    /// Settings of the temporary broker.
    pub broker: BrokerInput,
    /// The topic to create.
    pub topic: TopicInput,
    /// The group to subscribe and its consumer settings.
    pub consumer: ConsumerInput,
    /// The message to publish to the topic.
    pub message: MessageInput,
}

/// A numeric setting: its default, one of its boundary values, or any value.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum NumberInput {
    /// Leaves the setting at its default, or without a limit where the setting is optional.
    Default,
    /// Picks a boundary value of the setting, modulo their number.
    Boundary(u8),
    /// Sets this value, converted with saturation where the setting is narrower.
    Raw(u64),
}

/// A duration setting: its default, one of its boundary values, or any duration.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum DurationInput {
    /// Leaves the setting at its default, or without a limit where the setting is optional.
    Default,
    /// Picks a boundary value of the setting, modulo their number.
    Boundary(u8),
    /// Sets this duration.
    Raw(Duration),
}

/// A topic or group name.
#[derive(Arbitrary, Clone, Debug)]
pub enum NameInput {
    /// Picks from a list of valid and invalid names, modulo its length plus two. The two values
    /// past the list pick names of 249 and 250 bytes.
    Known(u8),
    /// Uses any string.
    Raw(String),
}

/// A header name.
#[derive(Arbitrary, Clone, Debug)]
pub enum HeaderInput {
    /// Picks from a list of valid, empty and reserved names, modulo its length.
    Known(u8),
    /// Uses any string.
    Raw(String),
}

/// The settings of a temporary broker.
#[derive(Arbitrary, Clone, Debug)]
pub struct BrokerInput {
    /// `Durability::Flushed` instead of `Buffered`.
    pub flushed: bool,
    /// `max_delay` of `Durability::Buffered`.
    pub max_delay: DurationInput,
    /// `BrokerConfig::max_message_bytes`.
    pub max_message_bytes: NumberInput,
    /// `BrokerConfig::block_bytes`.
    pub block_bytes: NumberInput,
    /// `BrokerConfig::cache_bytes`.
    pub cache_bytes: NumberInput,
    /// `BrokerConfig::retention_interval`.
    pub retention_interval: DurationInput,
}

/// A topic name and configuration.
#[derive(Arbitrary, Clone, Debug)]
pub struct TopicInput {
    /// The topic name.
    pub name: NameInput,
    /// `TopicConfig::partitions`.
    pub partitions: NumberInput,
    /// `TopicConfig::ack_timeout`.
    pub ack_timeout: DurationInput,
    /// `TopicConfig::max_deliveries`, unset for `Default`.
    pub max_deliveries: NumberInput,
    /// `TopicConfig::dead_letter_topic`.
    pub dead_letter_topic: Option<NameInput>,
    /// Whether the dead-letter topic is created first when its name is valid.
    pub create_dead_letter_topic: bool,
    /// `TopicConfig::dedup_window`.
    pub dedup_window: DurationInput,
    /// `TopicConfig::retention`.
    pub retention: RetentionInput,
    /// `TopicConfig::backlog_limit`.
    pub backlog: Option<BacklogInput>,
}

/// A retention policy.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum RetentionInput {
    /// Leaves the default, `Retention::Forever`.
    Default,
    /// `Retention::UntilAcked`.
    UntilAcked,
    /// `Retention::Limits`, where `Default` in a field means no limit.
    Limits {
        /// `max_age`.
        max_age: DurationInput,
        /// `max_bytes`.
        max_bytes: NumberInput,
    },
}

/// A backlog limit.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct BacklogInput {
    /// `max_messages`, without a limit for `Default`.
    pub max_messages: NumberInput,
    /// `max_bytes`, without a limit for `Default`.
    pub max_bytes: NumberInput,
    /// `WhenFull::Block` with this timeout, or `WhenFull::Reject` when `None`.
    pub block_timeout: Option<DurationInput>,
}

/// A consumer group name and consumer settings.
#[derive(Arbitrary, Clone, Debug)]
pub struct ConsumerInput {
    /// The group name.
    pub group: NameInput,
    /// The ordering mode, modulo 3: unordered, per key, per partition.
    pub ordering: u8,
    /// `ConsumerConfig::prefetch`.
    pub prefetch: NumberInput,
    /// `ConsumerConfig::max_unacked`.
    pub max_unacked: NumberInput,
}

/// A message.
#[derive(Arbitrary, Clone, Debug)]
pub struct MessageInput {
    /// The payload.
    pub payload: PayloadInput,
    /// The partition key.
    pub key: Option<Vec<u8>>,
    /// Header names and values.
    pub headers: Vec<(HeaderInput, Vec<u8>)>,
    /// The message id.
    pub id: Option<String>,
    /// `Message::deliver_at` as a time after the Unix epoch, unset for `Default`.
    pub deliver_at: DurationInput,
}

/// A payload given byte by byte or as one repeated byte.
#[derive(Arbitrary, Clone, Debug)]
pub enum PayloadInput {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `byte` repeated `len` times, with `len` capped at twice the largest message limit.
    Repeat {
        /// The repeated byte.
        byte: u8,
        /// The length, 0 for `Default`.
        len: NumberInput,
    },
}

/// Why a call is expected to fail.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Violation {
    /// `Error::InvalidConfig` naming this setting.
    Setting(&'static str),
    /// `Error::InvalidName` for this kind and name.
    Name(&'static str, String),
    /// `Error::MessageTooLarge` with this size and limit.
    TooLarge { size: usize, limit: usize },
    /// `Error::InvalidHeader` for this name.
    Header(String),
}

impl NumberInput {
    fn pick(self, boundaries: &[u64]) -> Option<u64> {
        match self {
            NumberInput::Default => None,
            NumberInput::Boundary(index) => Some(boundaries[usize::from(index) % boundaries.len()]),
            NumberInput::Raw(value) => Some(value),
        }
    }

    fn pick_usize(self, boundaries: &[u64]) -> Option<usize> {
        self.pick(boundaries)
            .map(|value| usize::try_from(value).unwrap_or(usize::MAX))
    }

    fn pick_u32(self, boundaries: &[u64]) -> Option<u32> {
        self.pick(boundaries)
            .map(|value| u32::try_from(value).unwrap_or(u32::MAX))
    }
}

impl DurationInput {
    fn pick(self, boundaries: &[Duration]) -> Option<Duration> {
        match self {
            DurationInput::Default => None,
            DurationInput::Boundary(index) => {
                Some(boundaries[usize::from(index) % boundaries.len()])
            }
            DurationInput::Raw(value) => Some(value),
        }
    }
}

impl NameInput {
    fn name(&self) -> String {
        match self {
            NameInput::Known(index) => {
                let index = usize::from(*index) % (KNOWN_NAMES.len() + 2);
                match KNOWN_NAMES.get(index) {
                    Some(name) => (*name).to_string(),
                    None => "n".repeat(MAX_NAME_LEN + index - KNOWN_NAMES.len()),
                }
            }
            NameInput::Raw(name) => name.clone(),
        }
    }
}

impl HeaderInput {
    fn name(&self) -> String {
        match self {
            HeaderInput::Known(index) => {
                KNOWN_HEADERS[usize::from(*index) % KNOWN_HEADERS.len()].to_string()
            }
            HeaderInput::Raw(name) => name.clone(),
        }
    }
}

/// Returns whether `name` follows the documented rules for topic and group names.
fn name_is_valid(name: &str) -> bool {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(allowed)
        && name != "."
        && name != ".."
}

/// A duration in whole milliseconds, as the topic setters store it.
fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl BrokerInput {
    const MAX_DELAY: [Duration; 7] = [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_millis(1),
        Duration::from_millis(10),
        Duration::from_secs(60),
        Duration::from_nanos(60_000_000_001),
        Duration::MAX,
    ];
    const MAX_MESSAGE_BYTES: [u64; 7] = [0, 1, 1024, 65_536, MIB, MIB + 1, u64::MAX];
    const BLOCK_BYTES: [u64; 6] = [0, 1023, 1024, 98_304, 98_305, u64::MAX];
    const CACHE_BYTES: [u64; 4] = [0, MIB - 1, MIB, u64::MAX];
    const RETENTION_INTERVAL: [Duration; 6] = [
        Duration::ZERO,
        Duration::from_millis(10),
        Duration::from_secs(1),
        Duration::from_secs(3600),
        Duration::from_nanos(3_600_000_000_001),
        Duration::MAX,
    ];

    fn config(&self) -> BrokerConfig {
        let mut config = BrokerConfig::default();
        if self.flushed {
            config = config.durability(Durability::Flushed);
        } else if let Some(max_delay) = self.max_delay.pick(&Self::MAX_DELAY) {
            config = config.durability(Durability::Buffered { max_delay });
        }
        if let Some(bytes) = self.max_message_bytes.pick_usize(&Self::MAX_MESSAGE_BYTES) {
            config = config.max_message_bytes(bytes);
        }
        if let Some(bytes) = self.block_bytes.pick_usize(&Self::BLOCK_BYTES) {
            config = config.block_bytes(bytes);
        }
        if let Some(bytes) = self.cache_bytes.pick(&Self::CACHE_BYTES) {
            config = config.cache_bytes(bytes);
        }
        if let Some(interval) = self.retention_interval.pick(&Self::RETENTION_INTERVAL) {
            config = config.retention_interval(interval);
        }
        config
    }

    /// Returns the largest accepted message for a broker opened with these settings.
    fn message_limit(&self) -> usize {
        let default = 64 * 1024;
        self.max_message_bytes
            .pick_usize(&Self::MAX_MESSAGE_BYTES)
            .unwrap_or(default)
    }

    fn violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        let interval = self.retention_interval.pick(&Self::RETENTION_INTERVAL);
        let interval_bounds = Duration::from_millis(10)..=Duration::from_secs(3600);
        if interval.is_some_and(|interval| !interval_bounds.contains(&interval)) {
            found.push(Violation::Setting("BrokerConfig::retention_interval"));
        }
        let max_delay = self.max_delay.pick(&Self::MAX_DELAY);
        let delay_bounds = Duration::from_millis(1)..=Duration::from_secs(60);
        if !self.flushed && max_delay.is_some_and(|delay| !delay_bounds.contains(&delay)) {
            found.push(Violation::Setting("BrokerConfig::durability max_delay"));
        }
        let limit = self.message_limit();
        if !(1..=MAX_MESSAGE_BYTES_LIMIT).contains(&limit) {
            found.push(Violation::Setting("BrokerConfig::max_message_bytes"));
        }
        let block = self.block_bytes.pick_usize(&Self::BLOCK_BYTES);
        if block.is_some_and(|bytes| !(1024..=96 * 1024).contains(&bytes)) {
            found.push(Violation::Setting("BrokerConfig::block_bytes"));
        }
        let cache = self.cache_bytes.pick(&Self::CACHE_BYTES);
        if cache.is_some_and(|bytes| bytes < MIB) {
            found.push(Violation::Setting("BrokerConfig::cache_bytes"));
        }
        found
    }
}

impl TopicInput {
    const PARTITIONS: [u64; 6] = [0, 1, 2, 1024, 1025, u64::MAX];
    const ACK_TIMEOUT: [Duration; 7] = [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_millis(1),
        Duration::from_secs(30),
        Duration::from_secs(7 * 24 * 3600),
        Duration::from_millis(7 * 24 * 3600 * 1000 + 1),
        Duration::MAX,
    ];
    const MAX_DELIVERIES: [u64; 5] = [0, 1, 10_000, 10_001, u64::MAX];
    const DEDUP_WINDOW: [Duration; 5] = [
        Duration::ZERO,
        Duration::from_secs(120),
        Duration::from_secs(7 * 24 * 3600),
        Duration::from_millis(7 * 24 * 3600 * 1000 + 1),
        Duration::MAX,
    ];
    const MAX_AGE: [Duration; 6] = [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_millis(1),
        Duration::from_secs(100 * 365 * 24 * 3600),
        Duration::from_nanos(100 * 365 * 24 * 3600 * 1_000_000_000 + 1),
        Duration::MAX,
    ];
    const LIMIT: [u64; 3] = [0, 1, u64::MAX];
    const BLOCK_TIMEOUT: [Duration; 5] = [
        Duration::ZERO,
        Duration::from_millis(1),
        DAY,
        Duration::from_nanos(24 * 3600 * 1_000_000_000 + 1),
        Duration::MAX,
    ];

    fn dead_letter_name(&self) -> Option<String> {
        self.dead_letter_topic.as_ref().map(NameInput::name)
    }

    fn retention(&self) -> Option<Retention> {
        match self.retention {
            RetentionInput::Default => None,
            RetentionInput::UntilAcked => Some(Retention::UntilAcked),
            RetentionInput::Limits { max_age, max_bytes } => Some(Retention::Limits {
                max_age: max_age.pick(&Self::MAX_AGE),
                max_bytes: max_bytes.pick(&Self::LIMIT),
            }),
        }
    }

    fn backlog(&self) -> Option<BacklogLimit> {
        let input = self.backlog?;
        let when_full = match input.block_timeout {
            Some(timeout) => WhenFull::Block {
                timeout: timeout.pick(&Self::BLOCK_TIMEOUT).unwrap_or(Duration::ZERO),
            },
            None => WhenFull::Reject,
        };
        Some(BacklogLimit {
            max_messages: input.max_messages.pick(&Self::LIMIT),
            max_bytes: input.max_bytes.pick(&Self::LIMIT),
            when_full,
        })
    }

    fn config(&self) -> TopicConfig {
        let mut config = TopicConfig::default();
        if let Some(partitions) = self.partitions.pick_u32(&Self::PARTITIONS) {
            config = config.partitions(partitions);
        }
        if let Some(timeout) = self.ack_timeout.pick(&Self::ACK_TIMEOUT) {
            config = config.ack_timeout(timeout);
        }
        if let Some(max) = self.max_deliveries.pick_u32(&Self::MAX_DELIVERIES) {
            config = config.max_deliveries(max);
        }
        if let Some(topic) = self.dead_letter_name() {
            config = config.dead_letter_topic(topic);
        }
        if let Some(window) = self.dedup_window.pick(&Self::DEDUP_WINDOW) {
            config = config.dedup_window(window);
        }
        if let Some(retention) = self.retention() {
            config = config.retention(retention);
        }
        if let Some(limit) = self.backlog() {
            config = config.backlog_limit(limit);
        }
        config
    }

    fn violations(&self) -> Vec<Violation> {
        let name = self.name.name();
        let mut found = Vec::new();
        if !name_is_valid(&name) {
            found.push(Violation::Name("topic", name.clone()));
        }
        let partitions = self.partitions.pick(&Self::PARTITIONS).unwrap_or(1);
        if !(1..=1024).contains(&partitions) {
            found.push(Violation::Setting("TopicConfig::partitions"));
        }
        let ack_timeout = self.ack_timeout.pick(&Self::ACK_TIMEOUT).map(whole_millis);
        if ack_timeout.is_some_and(|ms| !(1..=7 * 24 * 3600 * 1000).contains(&ms)) {
            found.push(Violation::Setting("TopicConfig::ack_timeout (ms)"));
        }
        let dedup_window = self
            .dedup_window
            .pick(&Self::DEDUP_WINDOW)
            .map(whole_millis);
        if dedup_window.is_some_and(|ms| ms > 7 * 24 * 3600 * 1000) {
            found.push(Violation::Setting("TopicConfig::dedup_window (ms)"));
        }
        found.extend(self.retention_violations());
        found.extend(self.backlog_violations());
        found.extend(self.dead_letter_violations(&name));
        found
    }

    fn retention_violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        if let Some(Retention::Limits { max_age, max_bytes }) = self.retention() {
            let age_bounds = Duration::from_millis(1)..=Duration::from_secs(100 * 365 * 24 * 3600);
            if max_age.is_some_and(|age| !age_bounds.contains(&age)) {
                found.push(Violation::Setting("TopicConfig::retention max_age"));
            }
            if max_bytes == Some(0) {
                found.push(Violation::Setting("TopicConfig::retention max_bytes"));
            }
        }
        found
    }

    fn backlog_violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        let Some(limit) = self.backlog() else {
            return found;
        };
        if limit.max_messages == Some(0) {
            found.push(Violation::Setting(
                "TopicConfig::backlog_limit max_messages",
            ));
        }
        if limit.max_bytes == Some(0) {
            found.push(Violation::Setting("TopicConfig::backlog_limit max_bytes"));
        }
        if matches!(limit.when_full, WhenFull::Block { timeout } if timeout > DAY) {
            found.push(Violation::Setting("TopicConfig::backlog_limit timeout"));
        }
        found
    }

    fn dead_letter_violations(&self, topic: &str) -> Vec<Violation> {
        let mut found = Vec::new();
        let dead_letter = self.dead_letter_name();
        if let Some(max) = self.max_deliveries.pick(&Self::MAX_DELIVERIES) {
            // The limit needs a dead-letter topic, so both failures name this setting.
            if !(1..=10_000).contains(&max) || dead_letter.is_none() {
                found.push(Violation::Setting("TopicConfig::max_deliveries"));
            }
        }
        if let Some(dead_letter) = dead_letter {
            if !name_is_valid(&dead_letter) {
                found.push(Violation::Name("topic", dead_letter));
            } else if dead_letter == topic {
                found.push(Violation::Setting("TopicConfig::dead_letter_topic"));
            }
        }
        found
    }
}

impl ConsumerInput {
    const PREFETCH: [u64; 5] = [0, 1, 10_000, 10_001, u64::MAX];
    const MAX_UNACKED: [u64; 5] = [0, 1, 1_000_000, 1_000_001, u64::MAX];

    fn config(&self) -> ConsumerConfig {
        let ordering = match self.ordering % 3 {
            0 => OrderingMode::Unordered,
            1 => OrderingMode::PerKey,
            _ => OrderingMode::PerPartition,
        };
        let mut config = ConsumerConfig::default().ordering(ordering);
        if let Some(prefetch) = self.prefetch.pick_usize(&Self::PREFETCH) {
            config = config.prefetch(prefetch);
        }
        if let Some(max) = self.max_unacked.pick_usize(&Self::MAX_UNACKED) {
            config = config.max_unacked(max);
        }
        config
    }

    fn violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        let group = self.group.name();
        if !name_is_valid(&group) {
            found.push(Violation::Name("group", group));
        }
        let prefetch = self.prefetch.pick_usize(&Self::PREFETCH);
        if prefetch.is_some_and(|value| !(1..=10_000).contains(&value)) {
            found.push(Violation::Setting("ConsumerConfig::prefetch"));
        }
        let max_unacked = self.max_unacked.pick_usize(&Self::MAX_UNACKED);
        if max_unacked.is_some_and(|value| !(1..=1_000_000).contains(&value)) {
            found.push(Violation::Setting("ConsumerConfig::max_unacked"));
        }
        found
    }
}

impl MessageInput {
    const REPEAT_LEN: [u64; 6] = [0, 1, 65_536, 65_537, MIB, MIB + 1];
    const DELIVER_AT: [Duration; 4] = [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(1_780_000_000_000),
        Duration::from_secs(u64::MAX / 1000),
    ];

    fn payload(&self) -> Vec<u8> {
        match &self.payload {
            PayloadInput::Bytes(bytes) => bytes.clone(),
            PayloadInput::Repeat { byte, len } => {
                let len = len.pick(&Self::REPEAT_LEN).unwrap_or(0);
                let len = usize::try_from(len.min(MAX_REPEATED_PAYLOAD)).unwrap_or(0);
                vec![*byte; len]
            }
        }
    }

    fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let named = self.headers.iter();
        named
            .map(|(name, value)| (name.name(), value.clone()))
            .collect()
    }

    /// Returns the delivery time in milliseconds since the Unix epoch, or `None` when the case
    /// sets none or the time does not fit in a `SystemTime`.
    fn deliver_at(&self) -> Option<Duration> {
        let since_epoch = self.deliver_at.pick(&Self::DELIVER_AT)?;
        UNIX_EPOCH.checked_add(since_epoch).map(|_| since_epoch)
    }

    fn message(&self) -> Message {
        let mut message = Message::new(self.payload());
        if let Some(key) = &self.key {
            message = message.key(key.clone());
        }
        for (name, value) in self.headers() {
            message = message.header(name, value);
        }
        if let Some(id) = &self.id {
            message = message.id(id.clone());
        }
        if let Some(since_epoch) = self.deliver_at() {
            message = message.deliver_at(UNIX_EPOCH + since_epoch);
        }
        message
    }

    /// Returns the size that counts against the limit: payload, key, header names and values,
    /// and id, as `docs/GUARANTEES.md` states.
    fn size(&self) -> usize {
        let headers: usize = self
            .headers()
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        self.payload().len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self.id.as_ref().map_or(0, String::len)
            + headers
    }

    fn violations(&self, limit: usize) -> Vec<Violation> {
        let mut found = Vec::new();
        let size = self.size();
        if size > limit {
            found.push(Violation::TooLarge { size, limit });
        }
        for (name, _) in self.headers() {
            if name.is_empty() || name.starts_with(RESERVED_HEADER_PREFIX) {
                found.push(Violation::Header(name));
            }
        }
        found
    }
}

impl ConfigCase {
    /// Runs every public call of the case on a temporary broker, checks each outcome and
    /// returns them.
    fn check(&self) -> Vec<&'static str> {
        let mut steps = Vec::new();
        let config = self.broker.config();
        let opened = Broker::temporary_with(config);
        expect_outcome("Broker::temporary_with", &opened, &self.broker.violations());
        // A case whose broker settings are invalid checks the rest on a default broker.
        let (broker, limit) = match opened {
            Ok(broker) => {
                steps.push("broker opened");
                (broker, self.broker.message_limit())
            }
            Err(_) => {
                steps.push("broker rejected");
                let broker = Broker::temporary()
                    .unwrap_or_else(|error| panic!("Broker::temporary failed: {error}"));
                (broker, 64 * 1024)
            }
        };
        if let Some(topic) = self.create_topic(&broker, &mut steps) {
            steps.push(self.subscribe(&broker, &topic));
            steps.push(self.publish(&broker, &topic, limit));
        }
        steps
    }

    /// Creates the case's topic, and its dead-letter topic first when the case asks for it.
    /// Returns the topic name when the topic was created.
    fn create_topic(&self, broker: &Broker, steps: &mut Vec<&'static str>) -> Option<String> {
        let topic = self.topic.name.name();
        let dead_letter = self.topic.dead_letter_name();
        let create_dead_letter = self.topic.create_dead_letter_topic
            && dead_letter
                .as_ref()
                .is_some_and(|name| name_is_valid(name) && *name != topic);
        if let (true, Some(name)) = (create_dead_letter, &dead_letter) {
            let created = broker.create_topic(name, TopicConfig::default());
            expect_outcome("create_topic for the dead-letter topic", &created, &[]);
            steps.push("dead-letter topic created");
        }

        let config = self.topic.config();
        let created = broker.create_topic(&topic, config.clone());
        let violations = self.topic.violations();
        match (&dead_letter, violations.is_empty() && !create_dead_letter) {
            (Some(dead_letter), true) => {
                expect_missing_dead_letter_topic(&created, &topic, dead_letter);
                steps.push("dead-letter topic missing");
                return None;
            }
            _ => expect_outcome("create_topic", &created, &violations),
        }
        if created.is_err() {
            steps.push("topic rejected");
            return None;
        }
        steps.push("topic created");
        let again = broker.create_topic(&topic, config);
        expect_outcome("create_topic with the same configuration", &again, &[]);
        Some(topic)
    }

    fn subscribe(&self, broker: &Broker, topic: &str) -> &'static str {
        let group = self.consumer.group.name();
        let subscribed = broker.subscribe_with(topic, &group, self.consumer.config());
        expect_outcome("subscribe_with", &subscribed, &self.consumer.violations());
        match subscribed {
            Ok(_) => "subscribed",
            Err(_) => "subscribe rejected",
        }
    }

    fn publish(&self, broker: &Broker, topic: &str, limit: usize) -> &'static str {
        let backlog = self.topic.backlog();
        // A byte limit below the payload size blocks a publish for the limit's timeout, up to
        // a day, so such a case does not publish. With `Reject` the publish fails at once.
        let byte_limit = backlog.is_some_and(|limit| limit.max_bytes.is_some());
        let blocks = backlog.is_some_and(|limit| matches!(limit.when_full, WhenFull::Block { .. }));
        if byte_limit && blocks {
            return "publish skipped";
        }
        let published = broker.publish(topic, self.message.message());
        let violations = self.message.violations(limit);
        if byte_limit && violations.is_empty() {
            if let Err(Error::BacklogFull { .. }) = published {
                return "backlog full";
            }
        }
        expect_outcome("publish", &published, &violations);
        match published {
            Ok(receipt) => {
                self.check_stored(broker, topic, receipt.partition, receipt.offset);
                "published"
            }
            Err(_) => "publish rejected",
        }
    }

    /// Checks where the published message went and that `peek` returns it unchanged.
    fn check_stored(&self, broker: &Broker, topic: &str, partition: u32, offset: u64) {
        let partitions = self.topic.config().partition_count();
        assert!(
            partition < partitions,
            "publish returned partition {partition} of {partitions}"
        );
        assert_eq!(offset, 0, "the first message of a new topic gets offset 0");
        if let Some(key) = &self.message.key {
            let expected = partition_for_key(key, partitions);
            assert_eq!(
                partition, expected,
                "a keyed message goes to its key's partition"
            );
        }
        let peeked = broker
            .peek(topic, partition, offset, 1)
            .unwrap_or_else(|error| panic!("peek of the published message failed: {error}"));
        let [stored] = peeked.as_slice() else {
            panic!(
                "peek returned {} messages instead of the published one",
                peeked.len()
            );
        };
        assert_eq!(stored.payload, self.message.payload(), "stored payload");
        assert_eq!(stored.key, self.message.key, "stored key");
        assert_eq!(stored.headers, self.message.headers(), "stored headers");
        assert_eq!(stored.id, self.message.id, "stored id");
        let deliver_at_ms = self.message.deliver_at().map(whole_millis);
        assert_eq!(stored.deliver_at_ms, deliver_at_ms, "stored delivery time");
    }
}

/// Checks that `result` succeeded when `violations` is empty, and otherwise failed with an
/// error that names one of them.
fn expect_outcome<T: Debug>(call: &str, result: &Result<T>, violations: &[Violation]) {
    match result {
        Ok(_) => assert!(
            violations.is_empty(),
            "{call} accepted values outside their bounds: {violations:?}"
        ),
        Err(error) => {
            assert!(
                !violations.is_empty(),
                "{call} rejected valid values: {error}"
            );
            let found = violation_of(error).unwrap_or_else(|| {
                panic!("{call} failed with {error:?}, which names no rejected value")
            });
            assert!(
                violations.contains(&found),
                "{call} rejected {found:?}, which is valid; the invalid values are {violations:?}"
            );
        }
    }
}

/// Returns the value that a validation error rejects, or `None` for any other error.
fn violation_of(error: &Error) -> Option<Violation> {
    match error {
        Error::InvalidConfig { setting, .. } => Some(Violation::Setting(setting)),
        Error::InvalidName { kind, name, .. } => Some(Violation::Name(kind, name.clone())),
        Error::MessageTooLarge { size, limit, .. } => Some(Violation::TooLarge {
            size: *size,
            limit: *limit,
        }),
        Error::InvalidHeader { name, .. } => Some(Violation::Header(name.clone())),
        _ => None,
    }
}

fn expect_missing_dead_letter_topic(result: &Result<()>, topic: &str, dead_letter: &str) {
    match result {
        Err(Error::DeadLetterTopicNotFound {
            topic: found_topic,
            dead_letter_topic,
        }) => {
            assert_eq!(
                found_topic, topic,
                "DeadLetterTopicNotFound names the topic"
            );
            assert_eq!(
                dead_letter_topic, dead_letter,
                "DeadLetterTopicNotFound names the dead-letter topic"
            );
        }
        other => panic!(
            "create_topic with the missing dead-letter topic {dead_letter:?} returned {other:?} \
             instead of DeadLetterTopicNotFound"
        ),
    }
}
