//! Error types.
//!
//! One umbrella [`Error`] covers every fallible broker operation. Variants name the topic, group,
//! partition or offset involved and state what to do. Expected outcomes are not errors: an empty
//! queue is `None` from [`Consumer::try_recv`](crate::Consumer::try_recv).

use std::path::PathBuf;

/// Result alias for broker operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic or group name is empty, too long or contains a character outside `[A-Za-z0-9._-]`.
    #[error("invalid {kind} name {name:?}: {reason}; use 1 to 249 characters from [A-Za-z0-9._-]")]
    InvalidName {
        /// The kind of name: `"topic"` or `"group"`.
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// A configuration value is outside its bounds.
    #[error("invalid setting {setting} = {value}: {expected}")]
    InvalidConfig {
        /// The setting, for example `"TopicConfig::partitions"`.
        setting: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// The accepted range or rule.
        expected: String,
    },

    /// An application tree name uses the prefix the broker reserves for itself.
    #[error("tree name {name:?} starts with the reserved prefix {prefix:?}; choose another name")]
    ReservedTreeName {
        /// The rejected tree name.
        name: String,
        /// The reserved prefix.
        prefix: &'static str,
    },

    /// The topic does not exist.
    #[error("topic {topic:?} not found; create it with Broker::create_topic first")]
    TopicNotFound {
        /// The topic name.
        topic: String,
    },

    /// `create_topic` was called for an existing topic with a different configuration.
    #[error(
        "topic {topic:?} already exists with {existing}, which differs from the requested \
         {requested}; use the existing configuration or another topic name"
    )]
    TopicConfigMismatch {
        /// The topic name.
        topic: String,
        /// The stored configuration, formatted.
        existing: String,
        /// The requested configuration, formatted.
        requested: String,
    },

    /// A group subscribed with a different ordering mode than the one it was created with.
    #[error(
        "group {group:?} on topic {topic:?} uses ordering {existing:?}, not {requested:?}; \
         subscribe with {existing:?} or use another group name"
    )]
    GroupConfigMismatch {
        /// The topic name.
        topic: String,
        /// The group name.
        group: String,
        /// The stored ordering mode, formatted.
        existing: String,
        /// The requested ordering mode, formatted.
        requested: String,
    },

    /// A group cannot be deleted while consumers are subscribed to it.
    #[error(
        "group {group:?} of topic {topic:?} has {consumers} subscribed consumer(s); drop them \
         before deleting the group"
    )]
    GroupInUse {
        /// The topic name.
        topic: String,
        /// The group name.
        group: String,
        /// Consumers subscribed when the delete was requested.
        consumers: usize,
    },

    /// The group was deleted while this delivery or consumer still referred to it.
    #[error("group {group:?} of topic {topic:?} was deleted; subscribe again to create it anew")]
    GroupDeleted {
        /// The topic name.
        topic: String,
        /// The group name.
        group: String,
    },

    /// The dead-letter topic named in a topic's configuration does not exist.
    #[error(
        "dead-letter topic {dead_letter_topic:?} of topic {topic:?} not found; create it before \
         the topic that names it"
    )]
    DeadLetterTopicNotFound {
        /// The topic whose configuration names the dead-letter topic.
        topic: String,
        /// The missing dead-letter topic.
        dead_letter_topic: String,
    },

    /// A message was dead-lettered on a topic that has no dead-letter topic.
    #[error(
        "topic {topic:?} has no dead-letter topic; set TopicConfig::dead_letter_topic to \
         dead-letter messages"
    )]
    NoDeadLetterTopic {
        /// The topic name.
        topic: String,
    },

    /// A message is larger than the broker accepts.
    #[error(
        "message of {size} bytes for topic {topic:?} exceeds the limit of {limit} bytes \
         (payload, key, headers and id together); store large payloads elsewhere and publish a \
         reference"
    )]
    MessageTooLarge {
        /// The topic name.
        topic: String,
        /// The encoded size of the message in bytes.
        size: usize,
        /// The configured maximum in bytes.
        limit: usize,
    },

    /// A publish would exceed the topic's backlog limit.
    #[error(
        "backlog of topic {topic:?} is full ({messages} messages, {bytes} bytes; limit \
         {limit}){waited}; consume or acknowledge faster, raise the limit, or retry later"
    )]
    BacklogFull {
        /// The topic name.
        topic: String,
        /// Backlog messages when the publish gave up.
        messages: u64,
        /// Backlog bytes when the publish gave up.
        bytes: u64,
        /// The configured limit, formatted.
        limit: String,
        /// How long the publish waited, formatted, or empty when it did not wait.
        waited: String,
    },

    /// A header name is empty or uses the prefix the broker reserves.
    #[error("invalid header name {name:?}: {reason}")]
    InvalidHeader {
        /// The header name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// An ack, nack or extend came from a lease that expired and was handed to another consumer,
    /// or from a delivery that was already settled.
    #[error(
        "lease on topic {topic:?} partition {partition} offset {offset} for group {group:?} is no \
         longer held (it expired and was redelivered, or the delivery was already settled); the \
         message will be or was processed by its current holder"
    )]
    LeaseExpired {
        /// The topic name.
        topic: String,
        /// The group name.
        group: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
    },

    /// A typed payload could not be encoded or decoded with postcard.
    #[error(
        "payload of topic {topic:?} at partition {partition} offset {offset} could not be \
         decoded as {type_name}: {source}; check that the publisher encoded this type"
    )]
    Decode {
        /// The topic name.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// The Rust type requested.
        type_name: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
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

    /// The database was written by a format version this build cannot read.
    #[error(
        "database at {path} has format version {found}, this build reads version {supported}; \
         open it with a matching aqueduct release"
    )]
    IncompatibleFormat {
        /// The database directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// A stored record could not be decoded, or sled reported damaged data.
    #[error("{}", corrupt_message(tree, key, reason))]
    Corrupt {
        /// The sled tree.
        tree: &'static str,
        /// The key, in hex.
        key: String,
        /// A description of the damage.
        reason: String,
    },

    /// Another handle, in this or another process, has the database open.
    #[error("database at {path} is locked by another process or handle; close that broker first")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },

    /// An earlier write or flush failed, and the broker rejects further writes.
    #[error(
        "broker stopped accepting writes after a storage failure: {cause}; reopen the database \
         once the cause (disk full, permissions, hardware) is fixed"
    )]
    Poisoned {
        /// The first failure, formatted.
        cause: String,
    },

    /// The broker was closed.
    #[error("broker is closed")]
    Closed,

    /// The storage engine reported an error other than damaged data.
    #[error("storage error: {0}")]
    Storage(#[source] sled::Error),

    /// A file system operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system error.
        #[source]
        source: std::io::Error,
    },
}

impl From<sled::Error> for Error {
    /// Converts a sled error, reporting damaged data as [`Error::Corrupt`] wherever sled finds
    /// it, not only while opening.
    fn from(error: sled::Error) -> Self {
        match error {
            sled::Error::Corruption { at, .. } => Error::Corrupt {
                tree: "sled",
                key: String::new(),
                reason: format!("sled read damaged data at {at:?}"),
            },
            other => Error::Storage(other),
        }
    }
}

fn corrupt_message(tree: &str, key: &str, reason: &str) -> String {
    let place = if key.is_empty() {
        format!("corrupt data in {tree}")
    } else {
        format!("corrupt record in {tree} at key {key}")
    };
    format!("{place}: {reason}; restore the database from a backup")
}
