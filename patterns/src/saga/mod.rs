//! Sagas: long-running business transactions made of steps, each undone by a compensation
//! when a later step fails.
//!
//! # Orchestration
//!
//! A [`Saga`] is a named list of [`Step`]s. Each step has an [`Action`], an optional
//! compensation, a timeout and a [`RetryPolicy`] for each side. An action is a local closure
//! or a request to a service through a topic. The service replies on the orchestrator's
//! reply topic with [`SagaRequest::reply`], and correlation headers match the reply to its
//! request.
//! [`SagaOrchestrator`] runs sagas: [`poll`](SagaOrchestrator::poll) or a runner from
//! [`spawn`](SagaOrchestrator::spawn) starts due attempts, applies replies and times out
//! requests.
//!
//! - **Order.** Steps run one at a time in definition order. When an action fails
//!   permanently, runs out of attempts or times out on its last attempt, the saga compensates
//!   in reverse order every step whose action succeeded, and the failed step too when its
//!   effect is unknown (a timeout or a restart ended one of its attempts). Steps without a
//!   compensation are passed over. The saga ends [`Compensated`](SagaState::Compensated).
//! - **Retries.** A retryable error, a timeout or an interrupted attempt is tried again after
//!   the policy's backoff. A compensation that keeps failing, or fails permanently, moves the
//!   saga to [`NeedsOperator`](SagaState::NeedsOperator) with the reason; nothing runs until
//!   [`SagaOrchestrator::compensate`] retries it or [`SagaOrchestrator::abort`] gives up.
//! - **Time.** Deadlines and retry times come from [`SagaConfig::clock`], so tests drive them
//!   with a [`ManualClock`](aqueduct::ManualClock) without sleeping.
//!
//! # Atomicity and redelivery
//!
//! Every state change is one sled transaction on the orchestrator's tree that writes the saga
//! record, its indexes, its history and, when it sends a request, the request itself. The
//! request is published after the commit with a message id that is stable per attempt
//! (`ORCHESTRATOR/SAGA_ID/STEP/KIND/ATTEMPT`). Its stored copy is removed at the end of the
//! poll, after one broker flush made the poll's requests durable; a crash before that
//! publishes it again, and the topic's dedup window drops the copy. A restart later than the
//! dedup window (two minutes by default) can deliver such a request twice, which the
//! idempotency key below makes harmless.
//!
//! A reply is applied only while the saga waits for exactly that step, side and attempt;
//! duplicates, redeliveries and replies that arrive after a timeout are recorded in the
//! history as ignored. The reply is acked after the transaction, so a crash in between
//! redelivers it and the second copy is ignored.
//!
//! # No second effect
//!
//! Attempts can repeat: after a retryable error, after a timeout whose request was processed
//! late, after a crash. Each side of each step has an idempotency key,
//! `ORCHESTRATOR/SAGA_ID/STEP/action` or `.../compensation`, the same for every attempt
//! ([`StepContext::idempotency_key`], the `idempotency-key` request header). A service that
//! records the key with the [`Inbox`](crate::Inbox) in the transaction of its effect acts
//! once per step. Local closures get the same guarantee from [`StepContext::run_once`], which
//! commits the closure's sled writes together with a record of its output.
//!
//! # Crash recovery
//!
//! [`SagaOrchestrator::open`] resumes every unfinished saga where its record says it is: a
//! local attempt that was running counts as interrupted and is retried under its policy
//! (its effect is unknown, so the step is compensated if the saga fails later), stored
//! requests are published again, sagas waiting for replies keep waiting until their
//! deadlines, and scheduled attempts and retries run when due. With
//! [`SagaConfig::flush_on_commit`] (the default) every state change is flushed before the
//! call that made it returns.
//!
//! # Operators
//!
//! [`SagaOrchestrator::status`] returns the state, since when, why, the current activity and
//! the full history. [`SagaOrchestrator::list`] and [`SagaOrchestrator::stuck`] find sagas by
//! state and by the age of their last change. Every event is logged with `tracing`: starts,
//! finished sagas and retries at info, compensation and aborts at warn, sagas that need an
//! operator at error.
//!
//! # Choreography
//!
//! [`Choreography`] publishes events with a `correlation-id` and a `causation-id` header and
//! rebuilds one flow across topics from its correlation id. Saga requests and replies carry
//! the saga id as their correlation id, so [`Choreography::trace`] finds them too.

mod choreography;
mod config;
mod context;
mod definition;
mod error;
mod messages;
mod names;
mod orchestrator;
mod poll;
mod record;
mod runner;
mod state;
mod store;
mod transition;

pub use self::choreography::{Choreography, FlowEvent, CAUSATION_ID_HEADER};
pub use self::config::SagaConfig;
pub use self::context::StepContext;
pub use self::definition::{Action, RetryPolicy, Saga, Step};
pub use self::error::{ChoreographyError, SagaError, StepError};
pub use self::messages::{SagaRequest, CORRELATION_ID_HEADER, IDEMPOTENCY_KEY_HEADER};
pub use self::orchestrator::{SagaOrchestrator, Started};
pub use self::poll::PollReport;
pub use self::runner::OrchestratorHandle;
pub use self::state::{
    Activity, HistoryEntry, HistoryEvent, SagaState, SagaStatus, SagaSummary, StepKind,
};
