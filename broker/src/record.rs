//! On-disk records and their encoding.
//!
//! Every value the broker stores starts with two bytes: the format version and the record kind.
//! The body is postcard. Decoding checks both bytes and reports a mismatch as
//! [`Error::Corrupt`] or [`Error::IncompatibleFormat`] instead of guessing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{OrderingMode, TopicConfig};
use crate::error::{Error, Result};
use crate::message::DeadLetterInfo;

/// Format version written into every record.
pub const FORMAT_VERSION: u8 = 1;

/// Record kinds, the second byte of every value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Format = 1,
    Topic = 2,
    Block = 3,
    GroupMeta = 4,
    GroupCursor = 5,
    Dedup = 6,
    Index = 7,
    Parked = 8,
    Generation = 9,
    Delays = 10,
}

/// One stored message inside a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredMessage {
    pub timestamp_ms: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub key: Option<serde_bytes::ByteBuf>,
    pub headers: Vec<(String, serde_bytes::ByteBuf)>,
    pub id: Option<String>,
    /// Earliest delivery time in milliseconds since the Unix epoch.
    pub deliver_at_ms: Option<u64>,
    pub dead_letter: Option<DeadLetterInfo>,
}

/// Consecutive messages of one partition starting at the block key's offset.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Block {
    pub messages: Vec<StoredMessage>,
}

/// A key that a per-key group stopped delivering after dead-lettering one of its messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ParkedRecord {
    pub partition: u32,
    /// Offset of the dead-lettered message.
    pub offset: u64,
    pub key: serde_bytes::ByteBuf,
    pub reason: String,
    pub parked_at_ms: u64,
}

/// Redelivery times that `nack_after` set in one partition of a group, as
/// `(offset, not before, in milliseconds since the Unix epoch)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DelaysRecord {
    pub entries: Vec<(u64, u64)>,
}

/// Index data of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexRecord {
    /// Number of messages in the block.
    pub count: u32,
    /// Size of the stored block value in bytes.
    pub bytes: u64,
    /// Publish time of the block's newest message, in milliseconds since the Unix epoch.
    pub last_timestamp_ms: u64,
}

/// Location of the first message with a given id, for deduplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: u64,
}

/// A topic's identity and configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TopicRecord {
    pub id: u32,
    pub name: String,
    pub config: TopicConfig,
}

/// A group's identity and mode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GroupMetaRecord {
    pub topic: String,
    pub group: String,
    pub ordering: OrderingMode,
}

/// A group's durable position in one partition.
///
/// Every offset below `committed` is settled. Each entry describes an offset at or above
/// `committed`: its delivery count so far, and whether it is settled (acked or dead-lettered).
/// Offsets at or above `committed` without an entry have never been delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CursorRecord {
    pub committed: u64,
    /// `(offset - committed, attempts, settled)`, ascending by offset.
    pub entries: Vec<(u64, u32, bool)>,
}

pub(crate) fn encode<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>> {
    encode_sized(kind, value, 0)
}

/// As [`encode`], with room reserved for `size_hint` bytes of the value, so that a large value
/// is not copied each time the buffer grows.
pub(crate) fn encode_sized<T: Serialize>(
    kind: Kind,
    value: &T,
    size_hint: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(2 + size_hint);
    out.extend_from_slice(&[FORMAT_VERSION, kind as u8]);
    postcard::to_extend(value, out).map_err(|source| Error::Encode {
        type_name: std::any::type_name::<T>(),
        source,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    kind: Kind,
    bytes: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        tree,
        key: hex(key),
        reason,
    };
    match bytes {
        [FORMAT_VERSION, found_kind, body @ ..] if *found_kind == kind as u8 => {
            postcard::from_bytes(body).map_err(|e| corrupt(format!("undecodable {kind:?}: {e}")))
        }
        [FORMAT_VERSION, found_kind, ..] => Err(corrupt(format!(
            "expected record kind {kind:?}, found kind byte {found_kind}"
        ))),
        [version, ..] => Err(corrupt(format!(
            "record format version {version}, this build reads version {FORMAT_VERSION}"
        ))),
        [] => Err(corrupt("empty value".into())),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
