//! On-disk records of the outbox.
//!
//! Each outbox has three sled trees, named after the outbox:
//!
//! - `outbox.NAME.rows`: pending rows. Key: the row's sequence number, 8 bytes big-endian, so
//!   iteration follows enqueue order. Value: a [`RowRecord`].
//! - `outbox.NAME.parked`: rows the target rejected. Same key; value: a [`ParkedRecord`].
//! - `outbox.NAME.meta`: `next_seq` (8 bytes big-endian, the sequence number of the next row)
//!   and `instance` (the random part of generated message ids).
//!
//! Values are one format-version byte followed by the postcard encoding of the record.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use aqueduct::Message;

/// Version byte in front of every row and parked record.
pub(crate) const RECORD_VERSION: u8 = 1;

/// Meta key of the next sequence number.
pub(crate) const NEXT_SEQ_KEY: &[u8] = b"next_seq";

/// Meta key of the instance id used in generated message ids.
pub(crate) const INSTANCE_KEY: &[u8] = b"instance";

/// A pending event as stored in the rows tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RowRecord {
    pub topic: String,
    pub key: Option<ByteBuf>,
    pub payload: ByteBuf,
    pub headers: Vec<(String, ByteBuf)>,
    /// The message id the relay publishes with, fixed at enqueue so a republish after a crash
    /// is deduplicated by the target.
    pub id: String,
    pub enqueued_at_ms: u64,
    pub deliver_at_ms: Option<u64>,
}

/// A row the target rejected, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ParkedRecord {
    pub row: RowRecord,
    pub error: String,
    pub parked_at_ms: u64,
}

impl RowRecord {
    /// Builds the message the relay publishes for this row.
    pub fn to_message(&self) -> Message {
        let mut message = Message::new(self.payload.to_vec()).id(self.id.clone());
        if let Some(key) = &self.key {
            message = message.key(key.to_vec());
        }
        for (name, value) in &self.headers {
            message = message.header(name.clone(), value.to_vec());
        }
        if let Some(ms) = self.deliver_at_ms {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            message = message.deliver_at(at);
        }
        message
    }

    /// Returns the unit of ordering: rows with the same topic and key are published in order.
    pub fn order_key(&self) -> Option<(String, Vec<u8>)> {
        self.key
            .as_ref()
            .map(|key| (self.topic.clone(), key.to_vec()))
    }
}

/// Encodes a sequence number as a tree key.
pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes a tree key into a sequence number.
pub(crate) fn seq_from_key(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// Encodes a record with its version byte.
pub(crate) fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = vec![RECORD_VERSION];
    bytes.extend(postcard::to_stdvec(record)?);
    Ok(bytes)
}

/// Decodes a record, checking its version byte.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((version, _)) => Err(format!(
            "record format version {version}, this build reads version {RECORD_VERSION}"
        )),
        None => Err("empty record".to_string()),
    }
}
