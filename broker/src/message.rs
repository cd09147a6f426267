//! Messages as published and the receipts publishing returns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{ParkedRecord, StoredMessage};

/// Prefix of header names that the broker reserves.
pub const RESERVED_HEADER_PREFIX: &str = "aqueduct.";

/// A message to publish: a payload with an optional key, headers and id.
///
/// # Examples
///
/// ```
/// use aqueduct::Message;
///
/// let message = Message::new("hello").key("customer-7").header("content-type", "text/plain");
/// assert_eq!(message.payload(), b"hello");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub(crate) payload: Vec<u8>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) id: Option<String>,
    pub(crate) deliver_at_ms: Option<u64>,
}

impl Message {
    /// Creates a message with the given payload and nothing else.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Message {
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Creates a message whose payload is `value` encoded with postcard.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if serde cannot serialize the value.
    pub fn encode<T: Serialize>(value: &T) -> Result<Self> {
        let payload = postcard::to_stdvec(value).map_err(|source| Error::Encode {
            type_name: std::any::type_name::<T>(),
            source,
        })?;
        Ok(Message::new(payload))
    }

    /// Sets the partition key. Messages with equal keys land in the same partition and, in
    /// [`OrderingMode::PerKey`](crate::OrderingMode::PerKey) groups, are processed in order.
    #[must_use]
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header. Names must be non-empty and must not start with `aqueduct.`.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the message id, used for deduplication and carried to consumers.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Holds the message back from every group until `time`. The delay survives restarts.
    /// In a per-key group the message also holds back later messages with its key, and in a
    /// per-partition group later messages of its partition, so delays never reorder them.
    #[must_use]
    pub fn deliver_at(mut self, time: SystemTime) -> Self {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.deliver_at_ms = Some(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Returns the payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Returns the partition key, if any.
    pub fn key_bytes(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// Returns the headers in insertion order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// Returns the message id, if any.
    pub fn message_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Returns the earliest delivery time, if the message is delayed.
    pub fn delivery_time(&self) -> Option<SystemTime> {
        self.deliver_at_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Returns the number of bytes the message counts against the size limit.
    pub(crate) fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.payload.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self.id.as_ref().map_or(0, String::len)
            + headers
    }

    pub(crate) fn validate_headers(&self) -> Result<()> {
        for (name, _) in &self.headers {
            if name.is_empty() {
                return Err(Error::InvalidHeader {
                    name: name.clone(),
                    reason: "it is empty",
                });
            }
            if name.starts_with(RESERVED_HEADER_PREFIX) {
                return Err(Error::InvalidHeader {
                    name: name.clone(),
                    reason: "names starting with \"aqueduct.\" are reserved for the broker",
                });
            }
        }
        Ok(())
    }
}

/// The location of a published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Receipt {
    /// The partition the message went to.
    pub partition: u32,
    /// The message's offset in that partition, dense and starting at 0.
    pub offset: u64,
}

/// The origin of a dead-lettered message and the reason it was moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    /// The topic the message was published to.
    pub source_topic: String,
    /// Its partition in the source topic.
    pub source_partition: u32,
    /// Its offset in the source topic.
    pub source_offset: u64,
    /// The group that gave up on it.
    pub group: String,
    /// How many times the group had delivered it.
    pub attempts: u32,
    /// The reason given to `dead_letter`, or the broker's reason (delivery limit reached).
    pub last_error: String,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub dead_lettered_at_ms: u64,
}

impl DeadLetterInfo {
    /// When the message was dead-lettered.
    pub fn dead_lettered_at(&self) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.dead_lettered_at_ms)
    }
}

/// A key that a per-key group holds back because one of its messages was dead-lettered, so
/// that later messages of the key do not overtake it. Release it with
/// [`Broker::release_key`](crate::Broker::release_key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ParkedKey {
    /// The message key.
    pub key: Vec<u8>,
    /// The key's partition.
    pub partition: u32,
    /// Offset of the dead-lettered message.
    pub offset: u64,
    /// The dead-letter reason.
    pub reason: String,
    /// When the key was parked, in milliseconds since the Unix epoch.
    pub parked_at_ms: u64,
}

impl ParkedKey {
    pub(crate) fn new(record: &ParkedRecord) -> Self {
        ParkedKey {
            key: record.key.to_vec(),
            partition: record.partition,
            offset: record.offset,
            reason: record.reason.clone(),
            parked_at_ms: record.parked_at_ms,
        }
    }
}

/// A stored message read with [`Broker::peek`](crate::Broker::peek), outside any group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PeekedMessage {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// Publish time in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The partition key, if any.
    pub key: Option<Vec<u8>>,
    /// The headers in publish order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The message id, if any.
    pub id: Option<String>,
    /// Earliest delivery time in milliseconds since the Unix epoch, if delayed.
    pub deliver_at_ms: Option<u64>,
    /// Origin and reason, for a message in a dead-letter topic.
    pub dead_letter: Option<DeadLetterInfo>,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl PeekedMessage {
    pub(crate) fn new(partition: u32, offset: u64, message: &StoredMessage) -> Self {
        PeekedMessage {
            partition,
            offset,
            timestamp_ms: message.timestamp_ms,
            key: message.key.as_ref().map(|key| key.to_vec()),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.to_vec()))
                .collect(),
            id: message.id.clone(),
            deliver_at_ms: message.deliver_at_ms,
            dead_letter: message.dead_letter.clone(),
            payload: message.payload.clone(),
        }
    }
}
