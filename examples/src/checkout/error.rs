//! Errors of a checkout run.

use std::path::PathBuf;
use std::time::Duration;

use super::data::DataError;
use super::lookup::LookupError;
use super::services::ServiceError;

/// The errors of a checkout run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckoutError {
    /// The order data could not be read.
    #[error(transparent)]
    Data(#[from] DataError),

    /// The broker failed.
    #[error("broker error: {0}")]
    Broker(#[from] aqueduct::Error),

    /// The saga orchestrator failed.
    #[error("saga error: {0}")]
    Saga(#[from] aqueduct_patterns::SagaError),

    /// The outbox or its relay failed.
    #[error("outbox error: {0}")]
    Outbox(#[from] aqueduct_patterns::OutboxError),

    /// An inbox could not be opened.
    #[error("inbox error: {0}")]
    Inbox(#[from] aqueduct_patterns::InboxError),

    /// A worker pool could not start.
    #[error("worker pool error: {0}")]
    Workers(#[from] aqueduct_patterns::WorkerError),

    /// The order-lookup projection failed.
    #[error("projection error: {0}")]
    Projection(#[from] aqueduct_patterns::ProjectionError),

    /// An order lookup failed.
    #[error(transparent)]
    Lookup(#[from] LookupError),

    /// sled failed outside the patterns.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),

    /// A record could not be encoded.
    #[error("could not encode a record: {0}")]
    Encode(#[from] postcard::Error),

    /// A stored record of a service does not decode.
    #[error("{reason}")]
    Corrupt {
        /// What failed.
        reason: String,
    },

    /// The database directory could not be removed for a fresh run.
    #[error("could not remove the old database {path}: {source}; remove it by hand")]
    RemoveDatabase {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// `--resume` was given but there is no database to resume.
    #[error("nothing to resume: {path} holds no checkout database; run without --resume first")]
    NothingToResume {
        /// The directory.
        path: PathBuf,
    },

    /// The database was written from other data or rules than this run's.
    #[error(
        "cannot resume {path}: it was written for {stored}, but this run has {current}; run \
         without --resume to start fresh"
    )]
    ResumeMismatch {
        /// The directory.
        path: PathBuf,
        /// The stored description of data and rules.
        stored: String,
        /// This run's description.
        current: String,
    },

    /// No saga finished for a long time.
    #[error(
        "no saga finished in {waited:?}: {finished} of {expected} are done; oldest unfinished: \
         {stuck:?}"
    )]
    Stalled {
        /// How long the run waited.
        waited: Duration,
        /// Sagas finished.
        finished: u64,
        /// Sagas expected.
        expected: u64,
        /// Ids and reasons of the oldest unfinished sagas.
        stuck: Vec<String>,
    },

    /// A thread of the run panicked.
    #[error("the {thread} thread panicked")]
    Panicked {
        /// The thread's role.
        thread: &'static str,
    },
}

impl From<ServiceError> for CheckoutError {
    fn from(error: ServiceError) -> Self {
        CheckoutError::Corrupt {
            reason: error.to_string(),
        }
    }
}
