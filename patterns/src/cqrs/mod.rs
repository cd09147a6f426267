//! CQRS read models: projections fed from an event store or a broker topic.
//!
//! A [`Projection`] turns events into writes on its read-model tables. A
//! [`ProjectionRunner`] feeds it and queries read the tables through a [`ReadModel`].
//!
//! # Guarantees
//!
//! - **Exactly-once effect.** The runner applies a batch of events and writes the
//!   projection's checkpoint in one sled transaction. A crash keeps both or neither, so after
//!   a restart the runner resumes at the first event whose changes are not in the read model:
//!   no event is applied twice or skipped. Topic messages that the broker delivers again
//!   (because an ack was lost) are recognised by their offset and only acknowledged.
//! - **Read-your-writes.** Commands return a position (an event store's global position or a
//!   publish [`Receipt`](aqueduct::Receipt)). [`ProjectionRunner::wait_for`] returns once the
//!   read model includes it.
//! - **Rebuild without downtime.** [`ProjectionRunner::rebuild`] replays the event store, or
//!   the retained messages of the source topic, into a fresh generation of tables while
//!   queries keep reading the current one, then swaps the new generation in once it has
//!   caught up with the live one. A query that keeps a
//!   [`ModelView`] reads the generation it started on.
//! - **Failures stop the runner.** A batch that keeps failing is retried with backoff, then
//!   the runner stops and reports the error through [`ProjectionRunner::wait_for`],
//!   [`ProjectionRunner::status`] and [`ProjectionRunner::stop`]; it never skips the event.
//!
//! # Durability
//!
//! The runner flushes the database every [`ProjectionConfig::flush_interval`] and when it
//! stops. A crash loses at most the read-model changes since the last flush, together with
//! their checkpoint, and the runner applies those events again after the restart.
//!
//! # Writing a projection
//!
//! [`Projection::apply`] runs inside a sled transaction that holds sled's process-wide
//! transaction lock. It must read and write only through the [`ModelWriter`] it is given:
//! a plain sled call on any tree of the same database from inside `apply` deadlocks. sled may
//! run the transaction again, so `apply` must have no side effects outside the model.

mod checkpoint;
mod error;
mod read_model;
mod runner;

use aqueduct::Receipt;
use serde::de::DeserializeOwned;
use sled::transaction::TransactionalTree;

use crate::event_store::{DomainEvent, RecordedEvent, Upcasters};

pub use self::checkpoint::Checkpoint;
pub use self::error::{ApplyError, ProjectionError};
pub use self::read_model::{ModelView, ReadModel};
pub use self::runner::{ProjectionConfig, ProjectionRunner, RebuildReport};

/// A position in a projection's source: a partition and an offset. An event store is a
/// single partition 0 whose offsets are global positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The partition; 0 for an event store.
    pub partition: u32,
    /// The offset in the partition, or the event store's global position.
    pub offset: u64,
}

impl From<u64> for Position {
    fn from(position: u64) -> Self {
        Position {
            partition: 0,
            offset: position,
        }
    }
}

impl From<Receipt> for Position {
    fn from(receipt: Receipt) -> Self {
        Position {
            partition: receipt.partition,
            offset: receipt.offset,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition {} offset {}", self.partition, self.offset)
    }
}

/// A message read from a broker topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicMessage {
    /// The topic.
    pub topic: String,
    /// The partition key, if any.
    pub key: Option<Vec<u8>>,
    /// The headers in publish order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The message id, if any.
    pub id: Option<String>,
    /// When it was published, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// One event handed to a projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// An event from an event store.
    Stored(RecordedEvent),
    /// A message from a broker topic, with its position.
    Message(Position, TopicMessage),
}

impl SourceEvent {
    /// Returns the event's position in its source.
    pub fn position(&self) -> Position {
        match self {
            SourceEvent::Stored(event) => Position::from(event.position),
            SourceEvent::Message(position, _) => *position,
        }
    }

    /// Returns the encoded event.
    pub fn payload(&self) -> &[u8] {
        match self {
            SourceEvent::Stored(event) => &event.payload,
            SourceEvent::Message(_, message) => &message.payload,
        }
    }

    /// When the event was appended or published, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        match self {
            SourceEvent::Stored(event) => event.timestamp_ms,
            SourceEvent::Message(_, message) => message.timestamp_ms,
        }
    }

    /// Decodes a stored event through `upcasters` as `E`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{DomainEvent, NewEvent, SourceEvent, Upcasters};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// # struct Named(String);
    /// # impl DomainEvent for Named { fn event_type(&self) -> &'static str { "Named" } }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = aqueduct_patterns::EventStore::open(&broker, "decode")?;
    /// # let new = NewEvent::encode(&Named("tea".into()))?;
    /// # store.append("item-1", aqueduct_patterns::ExpectedVersion::Any, vec![new])?.expect("ok");
    /// let event = SourceEvent::Stored(store.read_all(0, 1)?.remove(0));
    /// let named: Named = event.decode(&Upcasters::new())?;
    /// assert_eq!(named, Named("tea".into()));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ApplyError::Decode`] when the event is a topic message or does not decode.
    pub fn decode<E: DomainEvent>(&self, upcasters: &Upcasters) -> Result<E, ApplyError> {
        match self {
            SourceEvent::Stored(event) => {
                upcasters.decode(event).map_err(|error| ApplyError::Decode {
                    position: self.position().to_string(),
                    reason: error.to_string(),
                })
            }
            SourceEvent::Message(..) => Err(ApplyError::Decode {
                position: self.position().to_string(),
                reason: "a topic message has no event type; use decode_payload".to_string(),
            }),
        }
    }

    /// Decodes the payload with postcard as `T`, without upcasting.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Decode`] when the payload does not decode as `T`.
    pub fn decode_payload<T: DeserializeOwned>(&self) -> Result<T, ApplyError> {
        postcard::from_bytes(self.payload()).map_err(|error| ApplyError::Decode {
            position: self.position().to_string(),
            reason: format!(
                "payload is not a valid {}: {error}",
                std::any::type_name::<T>()
            ),
        })
    }
}

/// Builds a read model from events.
///
/// # Examples
///
/// A projection that counts events per stream.
///
/// ```
/// use aqueduct_patterns::{ApplyError, ModelWriter, Projection, SourceEvent};
///
/// struct CountPerStream;
///
/// impl Projection for CountPerStream {
///     fn tables(&self) -> &[&str] {
///         &["counts"]
///     }
///
///     fn apply(&self, event: &SourceEvent, model: &ModelWriter<'_>) -> Result<(), ApplyError> {
///         let SourceEvent::Stored(event) = event else { return Ok(()) };
///         let counts = model.table("counts")?;
///         let count = match counts.get(&event.stream)? {
///             Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().map_err(ApplyError::failed)?),
///             None => 0,
///         };
///         counts.insert(event.stream.as_bytes(), &(count + 1).to_be_bytes())?;
///         Ok(())
///     }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// Returns the names of the read-model tables this projection writes, each 1 to 100
    /// characters of `[A-Za-z0-9._-]`. Every table is one sled tree per read-model
    /// generation. After changing the tables or what `apply` writes, call
    /// [`ProjectionRunner::rebuild`], because the checkpoint covers the old read model.
    fn tables(&self) -> &[&str];

    /// Applies one event to the read model, reading and writing only through `model`.
    ///
    /// # Errors
    ///
    /// Any [`ApplyError`]; the runner rolls back the batch and retries it with backoff.
    fn apply(&self, event: &SourceEvent, model: &ModelWriter<'_>) -> Result<(), ApplyError>;
}

/// The read-model tables of one transaction, as handed to [`Projection::apply`].
pub struct ModelWriter<'a> {
    names: &'a [String],
    tables: &'a [TransactionalTree],
}

impl<'a> ModelWriter<'a> {
    pub(crate) fn new(names: &'a [String], tables: &'a [TransactionalTree]) -> Self {
        ModelWriter { names, tables }
    }

    /// Returns the declared table names.
    pub fn table_names(&self) -> &[String] {
        self.names
    }

    /// Returns the transactional view of table `name`.
    ///
    /// # Errors
    ///
    /// [`ApplyError::UnknownTable`] when the projection did not declare `name`.
    pub fn table(&self, name: &str) -> Result<&'a TransactionalTree, ApplyError> {
        self.names
            .iter()
            .position(|declared| declared == name)
            .and_then(|index| self.tables.get(index))
            .ok_or_else(|| ApplyError::UnknownTable {
                table: name.to_string(),
            })
    }
}

impl std::fmt::Debug for ModelWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWriter")
            .field("tables", &self.names)
            .finish()
    }
}
