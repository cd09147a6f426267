//! Errors of the outbox, its relay and its targets.

use std::error::Error as StdError;

/// A boxed error from a target, kept as the `source` of a [`TargetError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Errors of [`Outbox`](crate::Outbox) and [`OutboxRelay`](crate::OutboxRelay) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// An outbox name is empty, too long or contains a character outside `[A-Za-z0-9._-]`.
    #[error("invalid outbox name {name:?}: {reason}; use 1 to 100 characters from [A-Za-z0-9._-]")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// An event was enqueued for a topic whose name the broker would reject.
    #[error(
        "invalid topic name {topic:?} for an event in outbox {outbox:?}: {reason}; use 1 to 249 \
         characters from [A-Za-z0-9._-]"
    )]
    InvalidTopic {
        /// The outbox.
        outbox: String,
        /// The rejected topic name.
        topic: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// An event carries a header name that is empty or reserved by the broker.
    #[error(
        "invalid header name {header:?} on an event for topic {topic:?} in outbox {outbox:?}: \
         {reason}"
    )]
    InvalidHeader {
        /// The outbox.
        outbox: String,
        /// The topic of the event.
        topic: String,
        /// The rejected header name.
        header: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// An event could not be encoded with postcard.
    #[error("event of type {type_name} for topic {topic:?} could not be encoded: {source}")]
    Encode {
        /// The topic of the event.
        topic: String,
        /// The Rust type of the event.
        type_name: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },

    /// A stored outbox record could not be decoded.
    #[error(
        "corrupt record in tree {tree:?} at row {seq}: {reason}; discard the row with \
         Outbox::discard_pending after saving its bytes, or restore the database from a backup"
    )]
    Corrupt {
        /// The sled tree.
        tree: String,
        /// The row's sequence number.
        seq: u64,
        /// The decoding problem.
        reason: String,
    },

    /// `retry_parked` or `discard_parked` named a row that is not parked.
    #[error("row {seq} is not parked in outbox {outbox:?}; list parked rows with Outbox::parked")]
    ParkedRowNotFound {
        /// The outbox.
        outbox: String,
        /// The requested sequence number.
        seq: u64,
    },

    /// `discard_pending` named a row that is not pending.
    #[error("row {seq} is not pending in outbox {outbox:?}; it was published or parked")]
    PendingRowNotFound {
        /// The outbox.
        outbox: String,
        /// The requested sequence number.
        seq: u64,
    },

    /// A relay was started while another relay of the same outbox is running in this process.
    #[error(
        "a relay for outbox {outbox:?} is already running; stop it before starting another, \
         since two relays would publish rows of one key out of order"
    )]
    RelayRunning {
        /// The outbox.
        outbox: String,
    },

    /// The relay thread could not be started.
    #[error("could not start the relay thread for outbox {outbox:?}: {source}")]
    Spawn {
        /// The outbox.
        outbox: String,
        /// The operating system error.
        #[source]
        source: std::io::Error,
    },

    /// The broker failed to open the outbox's trees.
    #[error("could not open the trees of outbox {outbox:?}: {source}")]
    Broker {
        /// The outbox.
        outbox: String,
        /// The broker error.
        #[source]
        source: Box<aqueduct::Error>,
    },

    /// sled reported an error.
    #[error("storage error in outbox {outbox:?}: {source}")]
    Storage {
        /// The outbox.
        outbox: String,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
}

/// The reason a target did not store messages.
///
/// The relay retries [`Unavailable`](Self::Unavailable) with backoff and parks the row behind
/// [`Rejected`](Self::Rejected), so a target decides per error whether waiting can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The target cannot take messages now (down, unreachable, out of space). The relay keeps
    /// the rows and retries with backoff.
    #[error("target unavailable for topic {topic:?}: {source}; the relay retries with backoff")]
    Unavailable {
        /// The topic being published to.
        topic: String,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// The target will never accept this message (too large, invalid). The relay moves the
    /// row to the outbox's parked rows, where an operator retries or discards it.
    #[error("target rejected a message for topic {topic:?}: {source}")]
    Rejected {
        /// The topic being published to.
        topic: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl TargetError {
    /// Creates an [`Unavailable`](Self::Unavailable) error.
    pub fn unavailable(topic: impl Into<String>, source: impl Into<BoxError>) -> Self {
        TargetError::Unavailable {
            topic: topic.into(),
            source: source.into(),
        }
    }

    /// Creates a [`Rejected`](Self::Rejected) error.
    pub fn rejected(topic: impl Into<String>, source: impl Into<BoxError>) -> Self {
        TargetError::Rejected {
            topic: topic.into(),
            source: source.into(),
        }
    }

    /// Returns true for [`Rejected`](Self::Rejected).
    pub fn is_rejected(&self) -> bool {
        matches!(self, TargetError::Rejected { .. })
    }
}
