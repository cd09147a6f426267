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
//! Everything lives in sled trees of the broker's database (opened with
//! [`Broker::tree`](aqueduct::Broker::tree)), so application data, events and projection
//! checkpoints can change in one sled transaction.

mod aggregate;
mod cqrs;
mod event_store;
mod signal;

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
