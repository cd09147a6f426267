//! Stored saga records and their keys.
//!
//! One sled tree `saga.NAME` per orchestrator stores every record, and the first key byte
//! tells the kinds apart. Numbers in keys are big-endian so that keys sort by them. Saga ids
//! contain no zero byte, so a zero byte ends an id inside a key.
//!
//! | key | value |
//! |---|---|
//! | `r` id | [`SagaRecord`] |
//! | `h` id `0` seq (u32) | [`HistoryEntry`](super::state::HistoryEntry) |
//! | `x` state (u8) updated (u64 ms) id | empty: sagas by state, oldest change first |
//! | `t` due (u64 ms) id | empty: the one timer of each saga that has one |
//! | `p` id | [`PendingRequest`]: a request to publish |
//! | `m` id `0` step (u32) kind (u8) | output of [`StepContext::run_once`](super::StepContext::run_once) |
//!
//! Values are postcard; each record struct starts with [`FORMAT_VERSION`].

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::error::SagaError;
use super::state::{SagaState, StepKind};

/// Version of the saga record formats. A store written by a newer version is reported as
/// corrupt rather than misread.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// The stored state machine of one saga.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SagaRecord {
    pub version: u8,
    pub saga: String,
    pub id: String,
    pub input: ByteBuf,
    pub state: SagaState,
    pub reason: Option<String>,
    pub created_ms: u64,
    pub state_since_ms: u64,
    pub updated_ms: u64,
    pub phase: Phase,
    /// Outputs of the steps whose action succeeded, by step index.
    pub outputs: BTreeMap<u32, ByteBuf>,
    /// Steps whose compensation succeeded, in the order they ran.
    pub compensated: Vec<u32>,
    /// Steps still to compensate, next first.
    pub to_compensate: Vec<u32>,
    /// True when an attempt of the current action ended without a known result (timeout,
    /// restart, operator), so the step may have taken effect and is compensated too.
    pub uncertain: bool,
    pub timer_ms: Option<u64>,
    pub history_len: u32,
    /// Step names of the definition when the saga started, to detect a changed definition.
    pub step_names: Vec<String>,
}

/// The next work of a saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    /// `attempt` of `kind` of `step` starts when the timer fires. In `NeedsOperator` there is
    /// no timer. `first_attempt` is where the current retry budget began.
    Scheduled {
        step: u32,
        kind: StepKind,
        attempt: u32,
        first_attempt: u32,
    },
    /// `attempt` runs (local) or waits for its reply (request) until `deadline_ms`.
    InFlight {
        step: u32,
        kind: StepKind,
        attempt: u32,
        first_attempt: u32,
        deadline_ms: u64,
        local: bool,
    },
    /// Nothing runs.
    Idle,
}

impl Phase {
    /// `(step, kind, attempt, first_attempt)` of a scheduled or in-flight attempt.
    pub(crate) fn attempt(&self) -> Option<(u32, StepKind, u32, u32)> {
        match *self {
            Phase::Scheduled {
                step,
                kind,
                attempt,
                first_attempt,
            }
            | Phase::InFlight {
                step,
                kind,
                attempt,
                first_attempt,
                ..
            } => Some((step, kind, attempt, first_attempt)),
            Phase::Idle => None,
        }
    }
}

/// A request stored in the same transaction as the state change that sends it, and removed
/// after the broker stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingRequest {
    pub version: u8,
    pub topic: String,
    pub message_id: String,
    pub key: ByteBuf,
    pub headers: Vec<(String, ByteBuf)>,
    pub payload: ByteBuf,
}

pub(crate) fn record_key(id: &str) -> Vec<u8> {
    prefixed(b'r', id)
}

pub(crate) fn pending_key(id: &str) -> Vec<u8> {
    prefixed(b'p', id)
}

pub(crate) fn history_prefix(id: &str) -> Vec<u8> {
    let mut key = prefixed(b'h', id);
    key.push(0);
    key
}

pub(crate) fn history_key(id: &str, seq: u32) -> Vec<u8> {
    let mut key = history_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn state_prefix(state: SagaState) -> Vec<u8> {
    vec![b'x', state.index_byte()]
}

pub(crate) fn state_key(state: SagaState, updated_ms: u64, id: &str) -> Vec<u8> {
    let mut key = state_prefix(state);
    key.extend_from_slice(&updated_ms.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Returns the saga id at the end of a state index key.
pub(crate) fn id_from_state_key(key: &[u8]) -> Option<&str> {
    key.get(10..).and_then(|id| std::str::from_utf8(id).ok())
}

pub(crate) fn timer_key(due_ms: u64, id: &str) -> Vec<u8> {
    let mut key = vec![b't'];
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Returns `(due_ms, id)` of a timer key.
pub(crate) fn parse_timer_key(key: &[u8]) -> Option<(u64, &str)> {
    let due = key.get(1..9)?;
    let due = u64::from_be_bytes(due.try_into().ok()?);
    let id = std::str::from_utf8(key.get(9..)?).ok()?;
    Some((due, id))
}

pub(crate) fn memo_key(id: &str, step: u32, kind: StepKind) -> Vec<u8> {
    let mut key = prefixed(b'm', id);
    key.push(0);
    key.extend_from_slice(&step.to_be_bytes());
    key.push(match kind {
        StepKind::Action => 0,
        StepKind::Compensation => 1,
    });
    key
}

fn prefixed(prefix: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 1);
    key.push(prefix);
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, SagaError> {
    postcard::to_stdvec(value).map_err(|source| SagaError::Encode {
        type_name: std::any::type_name::<T>(),
        source,
    })
}

/// Decodes a stored value whose first byte is the format version.
pub(crate) fn decode<T: DeserializeOwned>(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, SagaError> {
    let corrupt = |reason: String| SagaError::Corrupt {
        tree: tree.to_string(),
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    match bytes.first() {
        Some(&FORMAT_VERSION) => {}
        Some(version) => {
            return Err(corrupt(format!(
                "format version {version}, but this build reads version {FORMAT_VERSION}"
            )))
        }
        None => return Err(corrupt("the value is empty".to_string())),
    }
    postcard::from_bytes(bytes).map_err(|error| corrupt(error.to_string()))
}
