//! Key encoding and record formats of the event store's tree.
//!
//! One sled tree per store, with a one-byte key prefix per kind of record. Numbers in keys are
//! big-endian, so sled's byte order is numeric order:
//!
//! | key | value |
//! |---|---|
//! | `f` | format byte |
//! | `n` | [`HeadOfLog`]: next global position and last timestamp |
//! | `e` position | [`EventRecord`] |
//! | `s` stream length (1 byte), stream, version | global position (8 bytes) |
//! | `h` stream | [`StreamHead`] |
//! | `t` category length, category, type length, type, schema version (4 bytes) | [`TypeRecord`] |
//! | `p` stream | [`SnapshotRecord`] |
//!
//! Every value except the raw position starts with [`RECORD_FORMAT`], then the postcard body.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::EventStoreError;

/// Format byte of every record this build writes.
pub(crate) const RECORD_FORMAT: u8 = 1;

pub(crate) const FORMAT_KEY: &[u8] = b"f";
pub(crate) const HEAD_OF_LOG_KEY: &[u8] = b"n";
const EVENT: u8 = b'e';
const STREAM_INDEX: u8 = b's';
const STREAM_HEAD: u8 = b'h';
const TYPE: u8 = b't';
const SNAPSHOT: u8 = b'p';

/// The next global position and the timestamp of the last event.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct HeadOfLog {
    pub next_position: u64,
    pub last_timestamp_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EventRecord {
    pub stream: String,
    pub version: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

/// The borrowed form of [`EventRecord`] for writing; both encode the same bytes.
#[derive(Serialize)]
pub(crate) struct EventRecordRef<'a> {
    pub stream: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub timestamp_ms: u64,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct StreamHead {
    pub version: u64,
    pub position: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct TypeRecord {
    pub first_position: u64,
    pub last_position: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub version: u64,
    pub position: u64,
    pub schema_version: u32,
    pub state: Vec<u8>,
}

/// The borrowed form of [`SnapshotRecord`] for writing; both encode the same bytes.
#[derive(Serialize)]
pub(crate) struct SnapshotRecordRef<'a> {
    pub version: u64,
    pub position: u64,
    pub schema_version: u32,
    pub state: &'a [u8],
}

pub(crate) fn event_key(position: u64) -> [u8; 9] {
    let mut key = [EVENT; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

pub(crate) fn event_position(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Returns the prefix of every index key of `stream`.
pub(crate) fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAM_INDEX);
    // Stream names are validated to at most 255 bytes.
    key.push(u8::try_from(stream.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(stream.as_bytes());
    key
}

pub(crate) fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

pub(crate) fn head_key(stream: &str) -> Vec<u8> {
    let mut key = vec![STREAM_HEAD];
    key.extend_from_slice(stream.as_bytes());
    key
}

pub(crate) fn snapshot_key(stream: &str) -> Vec<u8> {
    let mut key = vec![SNAPSHOT];
    key.extend_from_slice(stream.as_bytes());
    key
}

pub(crate) fn type_prefix(category: &str) -> Vec<u8> {
    let mut key = vec![TYPE];
    key.push(u8::try_from(category.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(category.as_bytes());
    key
}

pub(crate) fn type_key(category: &str, event_type: &str, schema_version: u32) -> Vec<u8> {
    let mut key = type_prefix(category);
    key.push(u8::try_from(event_type.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(event_type.as_bytes());
    key.extend_from_slice(&schema_version.to_be_bytes());
    key
}

/// Splits the type and schema version out of a key built by [`type_key`].
pub(crate) fn parse_type_key(category: &str, key: &[u8]) -> Option<(String, u32)> {
    let rest = key.get(2 + category.len()..)?;
    let (&length, rest) = rest.split_first()?;
    let name = rest.get(..usize::from(length))?;
    let version: [u8; 4] = rest.get(usize::from(length)..)?.try_into().ok()?;
    let name = String::from_utf8(name.to_vec()).ok()?;
    Some((name, u32::from_be_bytes(version)))
}

/// Returns the stream category: the part of the name before the first `-`, or the whole
/// name.
pub(crate) fn category(stream: &str) -> &str {
    stream.split('-').next().unwrap_or(stream)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EventStoreError> {
    let mut bytes = vec![RECORD_FORMAT];
    let body = postcard::to_stdvec(value).map_err(|source| EventStoreError::Encode {
        type_name: std::any::type_name::<T>(),
        source,
    })?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

pub(crate) fn decode<T: DeserializeOwned>(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, EventStoreError> {
    let corrupt = |reason: String| EventStoreError::Corrupt {
        tree: tree.to_string(),
        key: hex(key),
        reason,
    };
    let Some((&format, body)) = bytes.split_first() else {
        return Err(corrupt("the value is empty".to_string()));
    };
    if format != RECORD_FORMAT {
        return Err(EventStoreError::IncompatibleFormat {
            tree: tree.to_string(),
            found: format,
            supported: RECORD_FORMAT,
        });
    }
    postcard::from_bytes(body).map_err(|error| {
        corrupt(format!(
            "not a valid {}: {error}",
            std::any::type_name::<T>()
        ))
    })
}

pub(crate) fn decode_position(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<u64, EventStoreError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| EventStoreError::Corrupt {
        tree: tree.to_string(),
        key: hex(key),
        reason: format!("expected an 8-byte position, found {} bytes", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(raw))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
