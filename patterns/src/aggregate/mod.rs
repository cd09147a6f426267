//! Event-sourced aggregates: commands in, events out, state rebuilt from events.
//!
//! An [`Aggregate`] decides which events a command produces ([`Aggregate::handle`]) and how an
//! event changes its state ([`Aggregate::apply`]). Its events live in one stream per
//! aggregate id, named `CATEGORY-ID`. The [`Repository`] loads an aggregate, runs a command
//! and appends the events with the version it loaded as the expected version, so a command
//! decided on stale state never lands.
//!
//! # Guarantees
//!
//! - A command whose append lost a race is run again on freshly loaded state, up to the
//!   configured number of retries. After the last retry the caller gets
//!   [`RepositoryError::Conflict`].
//! - Loading from a snapshot applies only the events after the snapshot's version, checks
//!   that each event's version is the next one, and returns the stream's current version.
//!   A snapshot whose state schema version differs from [`Aggregate::SNAPSHOT_VERSION`], or
//!   that does not decode, is ignored and the state is rebuilt from the first event.
//! - State as of a past global position or time includes exactly the events at or before it.

mod error;
mod repository;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event_store::DomainEvent;

pub use self::error::RepositoryError;
pub use self::repository::{AsOf, Executed, Loaded, Repository};

/// An event-sourced aggregate.
///
/// # Examples
///
/// ```
/// use aqueduct_patterns::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum CounterEvent { Added(u64) }
///
/// impl DomainEvent for CounterEvent {
///     fn event_type(&self) -> &'static str { "Added" }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter would overflow")]
/// struct Overflow;
///
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = Overflow;
///
///     fn handle(&self, amount: u64) -> Result<Vec<CounterEvent>, Overflow> {
///         self.value.checked_add(amount).ok_or(Overflow)?;
///         Ok(vec![CounterEvent::Added(amount)])
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         let CounterEvent::Added(amount) = event;
///         self.value += amount;
///     }
/// }
/// # let mut counter = Counter::default();
/// # for event in counter.handle(2).unwrap() { counter.apply(&event); }
/// # assert_eq!(counter.value, 2);
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Prefix of this aggregate's stream names: streams are `CATEGORY-ID`. 1 to 64 bytes
    /// without `-`.
    const CATEGORY: &'static str;

    /// Version of the state's encoding in snapshots. Raise it when the state's fields change;
    /// older snapshots are then ignored.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The commands the aggregate handles.
    type Command;

    /// The events the aggregate produces and applies.
    type Event: DomainEvent;

    /// The reason a command is rejected.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events `command` produces, or rejects it. Must not change state: the
    /// events change it through [`apply`](Self::apply).
    ///
    /// # Errors
    ///
    /// The aggregate's own error when the command is not allowed in the current state.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one event to the state. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);
}
