//! Errors the tool reports on stderr before it exits with status 1.

use std::io;
use std::path::PathBuf;

use crate::render::count_of;

/// A failed command: what went wrong, on which value, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The `--db` path does not exist.
    #[error(
        "database directory {} not found; pass the directory that the application opens \
         with Broker::open",
        path.display()
    )]
    DatabaseNotFound {
        /// The path given with `--db`.
        path: PathBuf,
    },

    /// The `--db` path exists but is not a directory with sled's files in it.
    #[error(
        "{} is not a broker database ({reason}); pass the directory that the application \
         opens with Broker::open",
        path.display()
    )]
    NotADatabase {
        /// The path given with `--db`.
        path: PathBuf,
        /// The reason, such as "it is not a directory".
        reason: String,
    },

    /// Another process has the database open.
    #[error(
        "database {} is locked by a running process (sled allows one process at a time); \
         stop the application that has it open and run the command again",
        path.display()
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },

    /// The named topic does not exist.
    #[error("topic {topic:?} not found in this database; the `topics` command lists them")]
    TopicNotFound {
        /// The topic name.
        topic: String,
    },

    /// `--partition` is not a partition of the topic.
    #[error(
        "partition {partition} not found in topic {topic:?}, which has {}; pass --partition \
         from 0 to {}",
        count_of(u64::from(*count), "partition"),
        count.saturating_sub(1)
    )]
    PartitionNotFound {
        /// The topic name.
        topic: String,
        /// The requested partition.
        partition: u32,
        /// The topic's partition count.
        count: u32,
    },

    /// A dead-letter command named a topic that no topic uses as its dead-letter topic.
    #[error("topic {topic:?} is not the dead-letter topic of any topic; {known}")]
    NotDeadLetterTopic {
        /// The topic name.
        topic: String,
        /// The dead-letter topics that do exist, as a phrase.
        known: String,
    },

    /// `purge` was run without `--yes`.
    #[error(
        "purge removes all {} of topic {topic:?} and cannot be undone; run it again with \
         --yes to confirm",
        count_of(*messages, "retained message")
    )]
    PurgeNotConfirmed {
        /// The topic name.
        topic: String,
        /// Messages the purge would remove.
        messages: u64,
    },

    /// `delete-group` named a group that the topic does not have.
    #[error("group {group:?} not found in topic {topic:?}; the `groups` command lists them")]
    GroupNotFound {
        /// The topic name.
        topic: String,
        /// The group name.
        group: String,
    },

    /// `delete-group` was run without `--yes`.
    #[error(
        "delete-group removes the offsets, attempt counts and parked keys of group {group:?} of \
         topic {topic:?} and cannot be undone; run it again with --yes to confirm"
    )]
    DeleteGroupNotConfirmed {
        /// The topic name.
        topic: String,
        /// The group name.
        group: String,
    },

    /// The broker returned an error.
    #[error(transparent)]
    Broker(aqueduct::Error),

    /// Writing to stdout failed.
    #[error("failed to write output: {0}")]
    Output(#[from] io::Error),
}

impl From<aqueduct::Error> for CliError {
    fn from(error: aqueduct::Error) -> Self {
        match error {
            aqueduct::Error::TopicNotFound { topic, .. } => CliError::TopicNotFound { topic },
            aqueduct::Error::Locked { path, .. } => CliError::Locked { path },
            other => CliError::Broker(other),
        }
    }
}

/// Result alias for commands.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
