//! The saga state machine: how a record changes when an attempt ends, when compensation
//! starts and when an operator acts. These functions only change the record and the
//! [`Change`], and the store commits both in one transaction.

use super::definition::{RetryPolicy, Saga};
use super::record::{Phase, SagaRecord};
use super::state::{HistoryEvent, SagaState, StepKind};
use super::store::{Change, PendingChange};

/// The outcome of an attempt.
#[derive(Clone, Debug)]
pub(crate) enum AttemptEnd {
    /// The action or compensation succeeded with this output.
    Succeeded(Vec<u8>),
    /// It failed. `retryable` is true when another attempt can help.
    Failed { reason: String, retryable: bool },
    /// No reply arrived before the deadline. The effect is unknown.
    TimedOut { timeout_ms: u64 },
    /// The process stopped while a local attempt ran. The effect is unknown.
    Interrupted,
}

/// Applies the end of `attempt` of `kind` of `step`. When the saga no longer waits for that
/// attempt, only a history entry is added.
pub(crate) fn end_attempt(
    record: &mut SagaRecord,
    change: &mut Change,
    saga: &Saga,
    (step, kind, attempt): (u32, StepKind, u32),
    end: &AttemptEnd,
    now_ms: u64,
) {
    let step_name = step_name(record, step);
    let first_attempt = match record.phase.attempt() {
        Some((s, k, a, first)) if s == step && k == kind && a == attempt => first,
        _ => {
            change.history.push(HistoryEvent::LateResultIgnored {
                step: step_name,
                kind,
                attempt,
            });
            change.history_only = true;
            return;
        }
    };
    change.pending = Some(PendingChange::Remove);

    match end {
        AttemptEnd::Succeeded(output) => {
            change.history.push(HistoryEvent::Succeeded {
                step: step_name,
                kind,
                attempt,
            });
            succeed(record, change, saga, step, kind, output, now_ms);
        }
        AttemptEnd::Failed { reason, retryable } => {
            let failed = Failure {
                step,
                kind,
                attempt,
                first_attempt,
                reason: reason.clone(),
                retryable: *retryable,
            };
            fail(record, change, saga, failed, now_ms);
        }
        AttemptEnd::TimedOut { timeout_ms } => {
            if kind == StepKind::Action {
                record.uncertain = true;
            }
            let failed = Failure {
                step,
                kind,
                attempt,
                first_attempt,
                reason: format!("no reply within {timeout_ms} ms"),
                retryable: true,
            };
            fail(record, change, saga, failed, now_ms);
        }
        AttemptEnd::Interrupted => {
            if kind == StepKind::Action {
                record.uncertain = true;
            }
            change.history.push(HistoryEvent::Interrupted {
                step: step_name,
                kind,
                attempt,
            });
            let failed = Failure {
                step,
                kind,
                attempt,
                first_attempt,
                reason: "interrupted by a restart".to_string(),
                retryable: true,
            };
            fail(record, change, saga, failed, now_ms);
        }
    }
}

fn succeed(
    record: &mut SagaRecord,
    change: &mut Change,
    saga: &Saga,
    step: u32,
    kind: StepKind,
    output: &[u8],
    now_ms: u64,
) {
    match kind {
        StepKind::Action => {
            record
                .outputs
                .insert(step, serde_bytes::ByteBuf::from(output.to_vec()));
            record.uncertain = false;
            let next = step + 1;
            if (next as usize) < saga.steps.len() {
                schedule(record, (next, StepKind::Action, 1, 1), now_ms);
            } else {
                finish(record, change, SagaState::Completed, "every step succeeded");
            }
        }
        StepKind::Compensation => {
            record.compensated.push(step);
            record.to_compensate.retain(|&s| s != step);
            next_compensation(record, change, saga, now_ms);
        }
    }
}

struct Failure {
    step: u32,
    kind: StepKind,
    attempt: u32,
    first_attempt: u32,
    reason: String,
    retryable: bool,
}

fn fail(record: &mut SagaRecord, change: &mut Change, saga: &Saga, failed: Failure, now_ms: u64) {
    let step_name = step_name(record, failed.step);
    let policy = saga
        .steps
        .get(failed.step as usize)
        .map_or_else(RetryPolicy::once, |step| step.policy(failed.kind));
    let used = failed.attempt.saturating_sub(failed.first_attempt) + 1;

    if failed.retryable && used < policy.max_attempts() {
        let delay_ms = u64::try_from(policy.delay(used).as_millis()).unwrap_or(u64::MAX);
        let retry_at_ms = now_ms.saturating_add(delay_ms);
        change.history.push(HistoryEvent::Failed {
            step: step_name,
            kind: failed.kind,
            attempt: failed.attempt,
            error: failed.reason,
            retry_at_ms: Some(retry_at_ms),
        });
        let next = (
            failed.step,
            failed.kind,
            failed.attempt + 1,
            failed.first_attempt,
        );
        schedule(record, next, retry_at_ms);
        return;
    }

    change.history.push(HistoryEvent::Failed {
        step: step_name.clone(),
        kind: failed.kind,
        attempt: failed.attempt,
        error: failed.reason.clone(),
        retry_at_ms: None,
    });
    let attempts = if failed.retryable {
        format!("after {used} attempts")
    } else {
        "permanently".to_string()
    };
    match failed.kind {
        StepKind::Action => {
            let reason = format!("step {step_name} failed {attempts}: {}", failed.reason);
            begin_compensation(record, change, saga, reason, now_ms);
        }
        StepKind::Compensation => {
            let reason = format!(
                "compensation of step {step_name} failed {attempts}: {}; fix the cause, then \
                 call SagaOrchestrator::compensate to retry it or SagaOrchestrator::abort to \
                 give up",
                failed.reason
            );
            let next = failed.attempt + 1;
            record.phase = Phase::Scheduled {
                step: failed.step,
                kind: StepKind::Compensation,
                attempt: next,
                first_attempt: next,
            };
            record.timer_ms = None;
            set_state(record, change, SagaState::NeedsOperator, reason);
        }
    }
}

/// Starts compensating every step whose action succeeded, and the current step when its
/// effect is unknown, latest first.
pub(crate) fn begin_compensation(
    record: &mut SagaRecord,
    change: &mut Change,
    saga: &Saga,
    reason: String,
    now_ms: u64,
) {
    let mut steps: Vec<u32> = record.outputs.keys().copied().collect();
    if record.uncertain {
        if let Some((step, StepKind::Action, _, _)) = record.phase.attempt() {
            steps.push(step);
        }
    }
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps.dedup();
    record.to_compensate = steps;
    record.uncertain = false;
    change.pending = Some(PendingChange::Remove);
    set_state(record, change, SagaState::Compensating, reason);
    next_compensation(record, change, saga, now_ms);
}

/// Schedules the next compensation, passing over steps without one, or finishes the saga as
/// compensated when none is left.
fn next_compensation(record: &mut SagaRecord, change: &mut Change, saga: &Saga, now_ms: u64) {
    while let Some(&step) = record.to_compensate.first() {
        let has_compensation = saga
            .steps
            .get(step as usize)
            .is_some_and(|s| s.compensation.is_some());
        if has_compensation {
            schedule(record, (step, StepKind::Compensation, 1, 1), now_ms);
            return;
        }
        change.history.push(HistoryEvent::NothingToCompensate {
            step: step_name(record, step),
        });
        record.to_compensate.remove(0);
    }
    let reason = record.reason.clone().unwrap_or_default();
    finish(record, change, SagaState::Compensated, &reason);
}

/// Moves the saga to a final state.
pub(crate) fn finish(record: &mut SagaRecord, change: &mut Change, state: SagaState, reason: &str) {
    record.phase = Phase::Idle;
    record.timer_ms = None;
    record.to_compensate.clear();
    change.pending = Some(PendingChange::Remove);
    set_state(record, change, state, reason.to_string());
}

/// Sends the saga to an operator without a compensation to resume, for example because its
/// definition changed.
pub(crate) fn to_operator(record: &mut SagaRecord, change: &mut Change, reason: String) {
    record.phase = Phase::Idle;
    record.timer_ms = None;
    change.pending = Some(PendingChange::Remove);
    set_state(record, change, SagaState::NeedsOperator, reason);
}

/// Resumes a compensation that waits for an operator, with a fresh retry budget.
pub(crate) fn resume_compensation(
    record: &mut SagaRecord,
    change: &mut Change,
    reason: String,
    now_ms: u64,
) {
    if let Some((step, StepKind::Compensation, attempt, _)) = record.phase.attempt() {
        set_state(record, change, SagaState::Compensating, reason);
        schedule(
            record,
            (step, StepKind::Compensation, attempt, attempt),
            now_ms,
        );
    }
}

fn schedule(
    record: &mut SagaRecord,
    (step, kind, attempt, first_attempt): (u32, StepKind, u32, u32),
    due_ms: u64,
) {
    record.phase = Phase::Scheduled {
        step,
        kind,
        attempt,
        first_attempt,
    };
    record.timer_ms = Some(due_ms);
}

fn set_state(record: &mut SagaRecord, change: &mut Change, state: SagaState, reason: String) {
    record.state = state;
    record.reason = Some(reason.clone());
    change
        .history
        .push(HistoryEvent::StateChanged { state, reason });
}

pub(crate) fn step_name(record: &SagaRecord, step: u32) -> String {
    record
        .step_names
        .get(step as usize)
        .cloned()
        .unwrap_or_else(|| format!("#{step}"))
}
