//! Errors of the event store, and the optimistic-concurrency conflict.
//!
//! A lost race is not an error: [`EventStore::append`](crate::EventStore::append) returns
//! `Ok(Err(WrongExpectedVersion))`, which the caller matches on to reload and retry.
//! [`EventStoreError`] covers invalid input, undecodable records and storage failures.

use std::path::PathBuf;

use super::types::ExpectedVersion;

/// The stream was not at the version the append expected, because another writer appended
/// first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "stream {stream:?} is at version {actual}, but the append expected {expected}; reload the \
     stream and retry the command"
)]
pub struct WrongExpectedVersion {
    /// The stream.
    pub stream: String,
    /// The version the append expected.
    pub expected: ExpectedVersion,
    /// The stream's version when the append ran; 0 for a stream without events.
    pub actual: u64,
}

/// Errors of the event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventStoreError {
    /// The stream name is empty, too long or has a character the store reserves.
    #[error("invalid stream name {stream:?}: {reason}; use 1 to 255 bytes without NUL")]
    InvalidStream {
        /// The rejected name.
        stream: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// An aggregate's category cannot prefix stream names.
    #[error(
        "aggregate category {category:?} is invalid: {reason}; use 1 to 64 bytes without '-' \
         or NUL"
    )]
    InvalidCategory {
        /// The category.
        category: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// An event type name is empty or too long.
    #[error("invalid event type {event_type:?}: {reason}; use 1 to 255 bytes")]
    InvalidEventType {
        /// The rejected name.
        event_type: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// An append carried no events.
    #[error("append to stream {stream:?} has no events; pass at least one event")]
    EmptyAppend {
        /// The stream.
        stream: String,
    },

    /// The store name would make an invalid sled tree name.
    #[error("invalid event store name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// A value could not be encoded with postcard.
    #[error("value of type {type_name} could not be encoded: {source}")]
    Encode {
        /// The Rust type.
        type_name: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },

    /// A stored event could not be upcast or decoded into the requested type.
    #[error(
        "event at position {position} (stream {stream:?} version {version}, type {event_type:?} \
         schema version {schema_version}) does not decode as {type_name}: {reason}"
    )]
    Decode {
        /// The event's global position.
        position: u64,
        /// The event's stream.
        stream: String,
        /// The event's version in its stream.
        version: u64,
        /// The stored event type.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The Rust type it was decoded into.
        type_name: &'static str,
        /// The cause, and what to register or fix.
        reason: String,
    },

    /// The startup check found stored event types that no longer decode.
    #[error(
        "{} stored event type(s) of category {category:?} no longer decode: {}; register \
         upcasters for the old schema versions",
        failures.len(),
        failures.join("; ")
    )]
    SchemaCheckFailed {
        /// The stream category checked.
        category: String,
        /// One line per failing event type and schema version.
        failures: Vec<String>,
    },

    /// A stored record could not be decoded.
    #[error(
        "corrupt record in tree {tree:?} at key {key}: {reason}; restore the database from a \
         backup"
    )]
    Corrupt {
        /// The sled tree.
        tree: String,
        /// The key, in hex.
        key: String,
        /// The defect found.
        reason: String,
    },

    /// The store was written by a record format this build cannot read.
    #[error(
        "tree {tree:?} has record format {found}, this build reads format {supported}; open it \
         with a matching aqueduct-patterns release"
    )]
    IncompatibleFormat {
        /// The sled tree.
        tree: String,
        /// The format found on disk.
        found: u8,
        /// The format this build reads and writes.
        supported: u8,
    },

    /// An earlier flush failed, and the store rejects further appends.
    #[error(
        "event store stopped accepting appends after a storage failure: {cause}; reopen the \
         database once the cause (disk full, permissions, hardware) is fixed"
    )]
    Poisoned {
        /// The first failure, formatted.
        cause: String,
    },

    /// The broker failed to open a tree.
    #[error("broker error: {0}")]
    Broker(#[from] aqueduct::Error),

    /// The storage engine reported an error.
    #[error("storage error in event store: {0}")]
    Storage(#[from] sled::Error),

    /// Syncing the database file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system error.
        #[source]
        source: std::io::Error,
    },
}
