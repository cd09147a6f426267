//! Errors of executing commands through a [`Repository`](crate::Repository).

use crate::event_store::{EventStoreError, WrongExpectedVersion};

/// The reason a command did not produce stored events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The aggregate rejected the command; nothing was appended.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),

    /// Other writers appended to the stream on every attempt.
    #[error(
        "stream {stream:?} changed concurrently on all {attempts} attempt(s): {source}; retry \
         later or allow more retries with Repository::retry_on_conflict"
    )]
    Conflict {
        /// The stream that conflicted last.
        stream: String,
        /// How many times the command ran.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: WrongExpectedVersion,
    },

    /// Two commands of one atomic batch name the same aggregate id.
    #[error("aggregate id {id:?} appears twice in one batch; merge those commands or send them in order")]
    DuplicateId {
        /// The repeated id.
        id: String,
    },

    /// The event store failed.
    #[error(transparent)]
    Store(#[from] EventStoreError),
}
