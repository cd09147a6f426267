//! Errors of the saga orchestrator, of saga steps and of choreography helpers.

use std::fmt;

use super::state::SagaState;

/// Errors of [`SagaOrchestrator`](crate::SagaOrchestrator) and
/// [`SagaRequest`](crate::SagaRequest) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// An orchestrator, saga, step or saga id is empty, too long or contains a character outside
    /// `[A-Za-z0-9._-]`.
    #[error("invalid {what} {name:?}: {reason}; use 1 to {max} characters from [A-Za-z0-9._-]")]
    InvalidName {
        /// The kind of name: `orchestrator`, `saga`, `step` or `saga id`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
        /// The longest accepted name, in bytes.
        max: usize,
    },

    /// A saga definition cannot run as written.
    #[error("invalid definition of saga {saga:?}: {reason}")]
    InvalidDefinition {
        /// The saga definition.
        saga: String,
        /// The problem and its fix.
        reason: String,
    },

    /// A [`SagaConfig`](crate::SagaConfig) setting is out of range.
    #[error("invalid saga setting {setting}: {value}; expected {expected}")]
    InvalidConfig {
        /// The setting.
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },

    /// `start` named a saga definition that the orchestrator does not have.
    #[error(
        "saga definition {saga:?} is not registered with orchestrator {orchestrator:?}; pass it \
         to SagaOrchestrator::open"
    )]
    UnknownSaga {
        /// The orchestrator.
        orchestrator: String,
        /// The requested definition.
        saga: String,
    },

    /// No saga with this id exists.
    #[error("saga {saga_id:?} not found in orchestrator {orchestrator:?}")]
    NotFound {
        /// The orchestrator.
        orchestrator: String,
        /// The requested saga id.
        saga_id: String,
    },

    /// `start` reused a saga id for another definition or another input.
    #[error(
        "saga {saga_id:?} already exists as saga {existing:?} with {differs}; start it under a \
         new id"
    )]
    Conflict {
        /// The saga id.
        saga_id: String,
        /// The definition of the stored saga.
        existing: String,
        /// The part that differs: the definition or the input.
        differs: &'static str,
    },

    /// An operator action does not apply to the saga's current state.
    #[error("cannot {action} saga {saga_id:?}: it is {state}; {hint}")]
    InvalidTransition {
        /// The saga id.
        saga_id: String,
        /// The saga's state.
        state: SagaState,
        /// The requested action.
        action: &'static str,
        /// The action to take instead.
        hint: &'static str,
    },

    /// A remote step names a topic that does not exist.
    #[error(
        "step {step:?} of saga {saga:?} sends to topic {topic:?}, which does not exist; create it \
         with Broker::create_topic before opening the orchestrator"
    )]
    TopicNotFound {
        /// The saga definition.
        saga: String,
        /// The step.
        step: String,
        /// The missing topic.
        topic: String,
    },

    /// A delivery handed to [`SagaRequest::parse`](crate::SagaRequest::parse) is not a saga
    /// request.
    #[error(
        "message at topic {topic:?} partition {partition} offset {offset} is not a saga \
         request: {reason}; dead-letter it"
    )]
    InvalidRequest {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// The missing or invalid header.
        reason: String,
    },

    /// A saga's input or a step's output did not decode as the requested type.
    #[error("{what} of saga {saga_id:?} does not decode as {type_name}: {source}")]
    Decode {
        /// The saga id.
        saga_id: String,
        /// The decoded value, for example `input` or `output of step "book-flight"`.
        what: String,
        /// The requested Rust type.
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

    /// A stored saga record could not be decoded.
    #[error(
        "corrupt saga record {key:?} in tree {tree:?}: {reason}; restore the database from a \
         backup"
    )]
    Corrupt {
        /// The sled tree.
        tree: String,
        /// The record's key, printed lossily.
        key: String,
        /// The problem.
        reason: String,
    },

    /// The broker failed.
    #[error("broker error in orchestrator {orchestrator:?}: {source}")]
    Broker {
        /// The orchestrator.
        orchestrator: String,
        /// The broker error.
        #[source]
        source: Box<aqueduct::Error>,
    },

    /// The runner thread could not be started.
    #[error("could not start the runner thread of orchestrator {orchestrator:?}: {source}")]
    Spawn {
        /// The orchestrator.
        orchestrator: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// sled reported an error.
    #[error("storage error in orchestrator {orchestrator:?}: {source}")]
    Storage {
        /// The orchestrator.
        orchestrator: String,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
}

/// Errors of [`Choreography`](crate::Choreography) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChoreographyError {
    /// A choreography name or correlation id is empty, too long or contains a character outside
    /// `[A-Za-z0-9._-]`.
    #[error("invalid {what} {name:?}: {reason}; use 1 to {max} characters from [A-Za-z0-9._-]")]
    InvalidName {
        /// The kind of name: `choreography` or `correlation id`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
        /// The longest accepted name, in bytes.
        max: usize,
    },

    /// A message to publish already carries another correlation id.
    #[error(
        "message for topic {topic:?} already has correlation id {existing:?}, not {requested:?}; \
         publish it without a correlation-id header"
    )]
    CorrelationMismatch {
        /// The topic.
        topic: String,
        /// The header already on the message.
        existing: String,
        /// The correlation id of the flow.
        requested: String,
    },

    /// A delivery passed to [`Choreography::follow`](crate::Choreography::follow) has no
    /// correlation id.
    #[error(
        "message at topic {topic:?} partition {partition} offset {offset} has no correlation-id \
         header; start a flow with Choreography::start"
    )]
    MissingCorrelation {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
    },

    /// A topic could not be read while tracing a flow.
    #[error("reading topic {topic:?} to trace flow {correlation_id:?} failed: {source}")]
    Trace {
        /// The topic.
        topic: String,
        /// The flow's correlation id.
        correlation_id: String,
        /// The broker error.
        #[source]
        source: Box<aqueduct::Error>,
    },

    /// A recorded flow event could not be decoded.
    #[error("corrupt flow record in tree {tree:?}: {reason}; restore the database from a backup")]
    Corrupt {
        /// The sled tree.
        tree: String,
        /// The problem.
        reason: String,
    },

    /// The broker failed.
    #[error("broker error in choreography {choreography:?}: {source}")]
    Broker {
        /// The choreography.
        choreography: String,
        /// The broker error.
        #[source]
        source: Box<aqueduct::Error>,
    },

    /// sled reported an error.
    #[error("storage error in choreography {choreography:?}: {source}")]
    Storage {
        /// The choreography.
        choreography: String,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
}

/// Why a step's action or compensation did not succeed.
///
/// A [`retryable`](Self::retry) error is tried again under the step's retry policy. A
/// [`permanent`](Self::fail) one ends the step's action at once and starts compensation; for
/// a compensation it sends the saga to [`SagaState::NeedsOperator`] at once, because no retry
/// can help.
///
/// # Examples
///
/// ```
/// use aqueduct_patterns::StepError;
///
/// let declined = StepError::fail("card declined");
/// assert!(!declined.is_retryable());
/// assert_eq!(declined.to_string(), "card declined");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    retryable: bool,
    reason: String,
}

impl StepError {
    /// Creates a transient error: the step is tried again while its retry policy allows.
    pub fn retry(reason: impl Into<String>) -> Self {
        StepError {
            retryable: true,
            reason: reason.into(),
        }
    }

    /// Creates a permanent error: the step is not tried again.
    pub fn fail(reason: impl Into<String>) -> Self {
        StepError {
            retryable: false,
            reason: reason.into(),
        }
    }

    /// Returns true for an error created with [`retry`](Self::retry).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The reason given when the error was created.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for StepError {}

impl From<SagaError> for StepError {
    /// Converts decode and encode errors into permanent step errors, because the same bytes
    /// fail the same way again, and every other error into a retryable one.
    fn from(error: SagaError) -> Self {
        match error {
            SagaError::Decode { .. } | SagaError::Encode { .. } => {
                StepError::fail(error.to_string())
            }
            _ => StepError::retry(error.to_string()),
        }
    }
}
