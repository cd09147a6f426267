//! Messaging patterns over the [`aqueduct`] broker.
//!
//! - **Event sourcing**: [`EventStore`] keeps append-only streams with optimistic
//!   concurrency, global positions, catch-up subscriptions, snapshots and upcasting.
//!   [`Aggregate`] and [`Repository`] load, execute and append.
//!
//! - **CQRS**: a [`Projection`] builds a read model from an event store or a broker topic;
//!   [`ProjectionRunner`] feeds it with exactly-once effect, offers read-your-writes through
//!   [`ProjectionRunner::wait_for`] and rebuilds it without stopping queries.
//!
//! - **Transactional outbox**: [`Outbox`] enqueues events in the same sled transaction as the
//!   application's writes; [`OutboxRelay`] publishes them in order per key, retries while the
//!   target is unavailable and parks rows the target rejects.
//!
//! - **Competing consumers**: [`WorkerPool`] (threads) and [`AsyncWorkerPool`] (tokio) run
//!   resizable workers in one consumer group with retry backoff, dead letters and graceful
//!   shutdown; [`Inbox`] makes a handler's sled writes happen once per message.
//!
//! - **Sagas**: [`SagaOrchestrator`] runs [`Saga`] definitions step by step, with timeouts,
//!   retries and compensation in reverse order, stores each saga's state and history and
//!   resumes unfinished sagas after a crash; [`Choreography`] carries a correlation id through
//!   events and rebuilds one flow across topics.
//!
//! Everything lives in sled trees of the broker's database (opened with
//! [`Broker::tree`](aqueduct::Broker::tree)), so application data, events and projection
//! checkpoints can change in one sled transaction.

mod aggregate;
mod backoff;
mod cqrs;
mod event_store;
mod inbox;
mod outbox;
mod saga;
mod signal;
mod workers;

// Event sourcing.
pub use crate::aggregate::{Aggregate, AsOf, Executed, Loaded, Repository, RepositoryError};
pub use crate::event_store::{
    Appended, DomainEvent, EventStore, EventStoreConfig, EventStoreError, EventTypeInfo,
    ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamAppend, Subscription, Upcasters,
    WrongExpectedVersion, MAX_NAME_BYTES,
};

// CQRS.
pub use crate::cqrs::{
    ApplyError, Checkpoint, ModelView, ModelWriter, Position, Projection, ProjectionConfig,
    ProjectionError, ProjectionRunner, ReadModel, RebuildReport, SourceEvent, TopicMessage,
};

// Transactional outbox.
pub use crate::outbox::{
    BoxError, BrokerTarget, Outbox, OutboxConfig, OutboxError, OutboxRelay, OutboxStats,
    OutboxTarget, OutboxTransaction, ParkedRow, RelayConfig, RelayHandle, RelayStats, RoundReport,
    TargetError,
};

// Competing consumers.
pub use crate::inbox::{Inbox, InboxConfig, InboxError, Processed};
pub use crate::workers::{
    AsyncWorkerPool, HandlerError, PoolStats, ShutdownReport, WorkerConfig, WorkerContext,
    WorkerError, WorkerPool, MAX_WORKERS,
};

// Sagas.
pub use crate::saga::{
    Action, Activity, Choreography, ChoreographyError, FlowEvent, HistoryEntry, HistoryEvent,
    OrchestratorHandle, PollReport, RetryPolicy, Saga, SagaConfig, SagaError, SagaOrchestrator,
    SagaRequest, SagaState, SagaStatus, SagaSummary, Started, Step, StepContext, StepError,
    StepKind, CAUSATION_ID_HEADER, CORRELATION_ID_HEADER, IDEMPOTENCY_KEY_HEADER,
};

// Shared.
pub use crate::backoff::Backoff;
