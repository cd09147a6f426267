//! Errors of projections and their runner.

use sled::transaction::UnabortableTransactionError;

use crate::event_store::EventStoreError;

/// The reason a projection could not apply an event. Returned by
/// [`Projection::apply`](crate::Projection::apply).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A read-model write inside the transaction failed; sled retries or reports it.
    #[error("read-model write failed: {0}")]
    Storage(#[from] UnabortableTransactionError),

    /// The projection asked for a table it did not declare in
    /// [`Projection::tables`](crate::Projection::tables).
    #[error("table {table:?} is not declared by the projection; add it to Projection::tables")]
    UnknownTable {
        /// The table name.
        table: String,
    },

    /// The event's payload does not decode into the projection's event type.
    #[error("event at {position} does not decode: {reason}")]
    Decode {
        /// The event's position, formatted.
        position: String,
        /// The cause of the failure.
        reason: String,
    },

    /// The projection's own failure.
    #[error("{0}")]
    Failed(String),
}

impl ApplyError {
    /// Creates a projection failure from any message.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = aqueduct_patterns::ApplyError::failed("price is negative");
    /// assert_eq!(error.to_string(), "price is negative");
    /// ```
    pub fn failed(reason: impl std::fmt::Display) -> Self {
        ApplyError::Failed(reason.to_string())
    }
}

/// Errors of [`ProjectionRunner`](crate::ProjectionRunner) and read models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// A projection or table name would make an invalid tree or group name.
    #[error("invalid {kind} name {name:?}: {reason}; use 1 to 100 characters of [A-Za-z0-9._-]")]
    InvalidName {
        /// The kind of name: `"projection"` or `"table"`.
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// A configuration value is outside its bounds.
    #[error("invalid setting {setting} = {value}: {expected}")]
    InvalidConfig {
        /// The setting, for example `"ProjectionConfig::batch_size"`.
        setting: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },

    /// A query asked for a table the projection does not declare.
    #[error("projection {projection:?} has no table {table:?}; use one of {tables:?}")]
    UnknownTable {
        /// The projection.
        projection: String,
        /// The requested table.
        table: String,
        /// The declared tables.
        tables: Vec<String>,
    },

    /// Applying a batch kept failing, and the runner stopped.
    #[error(
        "projection {projection:?} failed {attempts} time(s) on the batch starting at {position}: \
         {reason}; fix the projection or the event and restart the runner"
    )]
    ApplyFailed {
        /// The projection.
        projection: String,
        /// The first position of the failing batch, formatted.
        position: String,
        /// How many times the batch was tried.
        attempts: u32,
        /// The last failure.
        reason: String,
    },

    /// The runner is not running: it was stopped or it failed.
    #[error("projection {projection:?} is not running: {cause}; start a new runner")]
    Stopped {
        /// The projection.
        projection: String,
        /// The cause of the stop.
        cause: String,
    },

    /// A stored checkpoint could not be decoded.
    #[error(
        "corrupt record in tree {tree:?} at key {key}: {reason}; rebuild the projection or \
         restore the database from a backup"
    )]
    Corrupt {
        /// The sled tree.
        tree: String,
        /// The key, in hex.
        key: String,
        /// The defect found.
        reason: String,
    },

    /// The event store failed.
    #[error(transparent)]
    Store(#[from] EventStoreError),

    /// The broker failed.
    #[error("broker error: {0}")]
    Broker(#[from] aqueduct::Error),

    /// The storage engine reported an error.
    #[error("storage error in projection: {0}")]
    Storage(#[from] sled::Error),

    /// The runner thread could not be started.
    #[error("could not start the runner thread for projection {projection:?}: {source}")]
    Spawn {
        /// The projection.
        projection: String,
        /// The operating system error.
        #[source]
        source: std::io::Error,
    },
}
