//! Messaging patterns over the [`aqueduct`] broker.
//!
//! - **Event sourcing**: [`EventStore`] keeps append-only streams with optimistic
//!   concurrency, global positions, catch-up subscriptions, snapshots and upcasting.
//!   [`Aggregate`] and [`Repository`] load, execute and append.
//!
//! Everything lives in sled trees of the broker's database (opened with
//! [`Broker::tree`](aqueduct::Broker::tree)), so application data, events and projection
//! checkpoints can change in one sled transaction.

mod aggregate;
mod event_store;
mod signal;

// Event sourcing.
pub use crate::aggregate::{Aggregate, AsOf, Executed, Loaded, Repository, RepositoryError};
pub use crate::event_store::{
    Appended, DomainEvent, EventStore, EventStoreConfig, EventStoreError, EventTypeInfo,
    ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamAppend, Subscription, Upcasters,
    WrongExpectedVersion, MAX_NAME_BYTES,
};
