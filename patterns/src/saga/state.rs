//! Saga states, history events and the status reports built from them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The stage of a saga's life.
///
/// `Running` and `Compensating` sagas make progress on their own. `NeedsOperator` waits for
/// [`SagaOrchestrator::compensate`](crate::SagaOrchestrator::compensate) or
/// [`SagaOrchestrator::abort`](crate::SagaOrchestrator::abort). The other three are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SagaState {
    /// Steps run forward.
    Running,
    /// A step failed, timed out or an operator asked for it: the steps that may have taken
    /// effect are being compensated in reverse order.
    Compensating,
    /// A compensation failed more often than its retry policy allows, or failed permanently.
    /// Nothing runs until an operator acts.
    NeedsOperator,
    /// Every step succeeded.
    Completed,
    /// A step failed and every step that may have taken effect was compensated.
    Compensated,
    /// An operator stopped the saga; nothing was compensated after that.
    Aborted,
}

impl SagaState {
    /// Every state, in index order.
    pub const ALL: [SagaState; 6] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::NeedsOperator,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Aborted,
    ];

    /// Returns true for `Completed`, `Compensated` and `Aborted`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Aborted
        )
    }

    /// Returns the byte that orders this state in the state index.
    pub(crate) fn index_byte(self) -> u8 {
        match self {
            SagaState::Running => 0,
            SagaState::Compensating => 1,
            SagaState::NeedsOperator => 2,
            SagaState::Completed => 3,
            SagaState::Compensated => 4,
            SagaState::Aborted => 5,
        }
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::NeedsOperator => "waiting for an operator",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Aborted => "aborted",
        };
        f.write_str(name)
    }
}

/// The side of a step that runs: its action or its compensation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepKind {
    /// The forward action.
    Action,
    /// The compensation that undoes the action.
    Compensation,
}

impl StepKind {
    /// `action` or `compensation`, as used in headers and idempotency keys.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Action => "action",
            StepKind::Compensation => "compensation",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "action" => Some(StepKind::Action),
            "compensation" => Some(StepKind::Compensation),
            _ => None,
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened to a saga, as stored in its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HistoryEvent {
    /// The saga was started.
    Started {
        /// The saga definition.
        saga: String,
    },
    /// A local action or compensation began an attempt.
    AttemptStarted {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// A request for a remote action or compensation was stored for publishing.
    RequestSent {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt, from 1.
        attempt: u32,
        /// The request topic.
        topic: String,
        /// The request's message id.
        message_id: String,
    },
    /// An attempt succeeded.
    Succeeded {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// An attempt failed; `retry_at_ms` is set when another attempt follows.
    Failed {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt, from 1.
        attempt: u32,
        /// The step's error, or why the attempt counts as failed.
        error: String,
        /// When the next attempt starts, in milliseconds since the Unix epoch.
        retry_at_ms: Option<u64>,
    },
    /// A local attempt was running when the process stopped. Its effect is unknown.
    Interrupted {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// A step without a compensation was passed over during compensation.
    NothingToCompensate {
        /// The step.
        step: String,
    },
    /// A result arrived for an attempt that the saga no longer waits for, and was ignored.
    LateResultIgnored {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// The saga entered a new state.
    StateChanged {
        /// The new state.
        state: SagaState,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for HistoryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryEvent::Started { saga } => write!(f, "started saga {saga}"),
            HistoryEvent::AttemptStarted {
                step,
                kind,
                attempt,
            } => write!(f, "{kind} of {step} attempt {attempt} started"),
            HistoryEvent::RequestSent {
                step,
                kind,
                attempt,
                topic,
                message_id,
            } => write!(
                f,
                "{kind} of {step} attempt {attempt} sent to {topic} as {message_id}"
            ),
            HistoryEvent::Succeeded {
                step,
                kind,
                attempt,
            } => write!(f, "{kind} of {step} attempt {attempt} succeeded"),
            HistoryEvent::Failed {
                step,
                kind,
                attempt,
                error,
                retry_at_ms,
            } => {
                write!(f, "{kind} of {step} attempt {attempt} failed: {error}")?;
                if retry_at_ms.is_some() {
                    f.write_str("; retrying")?;
                }
                Ok(())
            }
            HistoryEvent::Interrupted {
                step,
                kind,
                attempt,
            } => write!(
                f,
                "{kind} of {step} attempt {attempt} interrupted by a restart"
            ),
            HistoryEvent::NothingToCompensate { step } => {
                write!(f, "{step} has no compensation; skipped")
            }
            HistoryEvent::LateResultIgnored {
                step,
                kind,
                attempt,
            } => write!(
                f,
                "late result of {kind} of {step} attempt {attempt} ignored"
            ),
            HistoryEvent::StateChanged { state, reason } => write!(f, "now {state}: {reason}"),
        }
    }
}

/// A history event with its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When it happened, in milliseconds since the Unix epoch (orchestrator clock).
    pub at_ms: u64,
    /// What happened.
    pub event: HistoryEvent,
}

impl HistoryEntry {
    /// When it happened.
    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }
}

impl fmt::Display for HistoryEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.at_ms, self.event)
    }
}

/// The work a saga does right now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activity {
    /// The next attempt of a step starts at `due_ms` (now or after a retry delay).
    Scheduled {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt that starts next.
        attempt: u32,
        /// When it starts, in milliseconds since the Unix epoch.
        due_ms: u64,
    },
    /// An attempt is running, or its request was sent and the reply has not arrived.
    InFlight {
        /// The step.
        step: String,
        /// Action or compensation.
        kind: StepKind,
        /// The attempt.
        attempt: u32,
        /// When the attempt times out, in milliseconds since the Unix epoch.
        deadline_ms: u64,
    },
    /// Nothing runs: the saga is final or waits for an operator. For `NeedsOperator`, `step`
    /// names the compensation that failed.
    Idle {
        /// The step whose compensation waits for an operator, if any.
        step: Option<String>,
    },
}

/// A saga's state with its reason and history, from
/// [`SagaOrchestrator::status`](crate::SagaOrchestrator::status).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaStatus {
    /// The saga id.
    pub id: String,
    /// The saga definition.
    pub saga: String,
    /// The current state.
    pub state: SagaState,
    /// When the saga entered `state`, in milliseconds since the Unix epoch.
    pub state_since_ms: u64,
    /// The reason the saga entered `state`, for every state but `Running`.
    pub reason: Option<String>,
    /// The work that runs now.
    pub activity: Activity,
    /// The steps whose action succeeded, in step order.
    pub completed_steps: Vec<String>,
    /// The steps whose compensation succeeded, in the order they ran.
    pub compensated_steps: Vec<String>,
    /// When the saga was started, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When the saga last changed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Everything that happened, oldest first.
    pub history: Vec<HistoryEntry>,
}

impl SagaStatus {
    /// Returns how long the saga has been in its state, by the orchestrator's clock at
    /// `now_ms`.
    pub fn in_state_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.state_since_ms))
    }
}

/// One line of [`SagaOrchestrator::list`](crate::SagaOrchestrator::list).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaSummary {
    /// The saga id.
    pub id: String,
    /// The saga definition.
    pub saga: String,
    /// The current state.
    pub state: SagaState,
    /// When the saga last changed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// The reason the saga entered its state, for every state but `Running`.
    pub reason: Option<String>,
}
