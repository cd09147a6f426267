//! Events as appended and as read back, expected versions and the domain event trait.
//!
//! Stream versions count a stream's events: the first event of a stream has version 1, and a
//! stream without events is at version 0. Global positions count every event of the store
//! from 0, densely, in commit order.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::EventStoreError;

/// The stream version an append expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is. Never conflicts.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have exactly this version. `Exact(0)` is the same as
    /// [`NoStream`](Self::NoStream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Returns whether a stream at version `actual` (0 for no events) satisfies this
    /// expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(version) => actual == version,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// An application event that the store can encode, with a type name and schema version
/// stored next to it.
///
/// The payload is the postcard encoding of the whole value, so an event enum must keep its
/// variants in place. Add new variants at the end. When a variant's fields change, raise that
/// variant's [`event_version`](Self::event_version) and register an
/// [`Upcasters`](crate::Upcasters) step from the old version.
///
/// # Examples
///
/// ```
/// use aqueduct_patterns::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum AccountEvent {
///     Opened { owner: String },
///     Deposited { amount: u64 },
/// }
///
/// impl DomainEvent for AccountEvent {
///     fn event_type(&self) -> &'static str {
///         match self {
///             AccountEvent::Opened { .. } => "AccountOpened",
///             AccountEvent::Deposited { .. } => "MoneyDeposited",
///         }
///     }
/// }
///
/// assert_eq!(AccountEvent::Deposited { amount: 5 }.event_version(), 1);
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Returns the stable name of this event's type, stored with the event.
    fn event_type(&self) -> &'static str;

    /// Returns the schema version this build writes for this event's type. Starts at 1.
    fn event_version(&self) -> u32 {
        1
    }
}

/// An event to append: its type name, schema version and encoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The event type name, 1 to 255 bytes.
    pub event_type: String,
    /// The schema version of the payload.
    pub schema_version: u32,
    /// The encoded event.
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// Creates an event from raw parts.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct_patterns::NewEvent;
    ///
    /// let event = NewEvent::new("PriceChanged", 1, vec![1, 2, 3]);
    /// assert_eq!(event.event_type, "PriceChanged");
    /// ```
    pub fn new(event_type: impl Into<String>, schema_version: u32, payload: Vec<u8>) -> Self {
        NewEvent {
            event_type: event_type.into(),
            schema_version,
            payload,
        }
    }

    /// Encodes a domain event with postcard, taking its type name and schema version.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{DomainEvent, NewEvent};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct Renamed { name: String }
    ///
    /// impl DomainEvent for Renamed {
    ///     fn event_type(&self) -> &'static str { "Renamed" }
    /// }
    ///
    /// let event = NewEvent::encode(&Renamed { name: "tea".into() })?;
    /// assert_eq!(event.schema_version, 1);
    /// # Ok::<(), aqueduct_patterns::EventStoreError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Encode`] when serde cannot serialize the event.
    pub fn encode<E: DomainEvent>(event: &E) -> Result<Self, EventStoreError> {
        let payload = postcard::to_stdvec(event).map_err(|source| EventStoreError::Encode {
            type_name: std::any::type_name::<E>(),
            source,
        })?;
        Ok(NewEvent::new(
            event.event_type(),
            event.event_version(),
            payload,
        ))
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedEvent {
    /// The global position, dense from 0 across all streams.
    pub position: u64,
    /// The stream it belongs to.
    pub stream: String,
    /// Its version in the stream, dense from 1.
    pub version: u64,
    /// The event type name.
    pub event_type: String,
    /// The schema version it was written with.
    pub schema_version: u32,
    /// When it was appended, in milliseconds since the Unix epoch. Never decreases along
    /// global positions, even when the wall clock steps back.
    pub timestamp_ms: u64,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// The versions and positions an append assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Appended {
    /// The stream's version after the append: the version of its last event.
    pub version: u64,
    /// The global position of the first appended event.
    pub first_position: u64,
    /// The global position of the last appended event. Pass it to
    /// [`ProjectionRunner::wait_for`](crate::ProjectionRunner::wait_for) for read-your-writes.
    pub position: u64,
}

/// Stored event types of one stream category, for schema checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTypeInfo {
    /// The event type name.
    pub event_type: String,
    /// The schema version the events were written with.
    pub schema_version: u32,
    /// The first global position with this type and version.
    pub first_position: u64,
    /// The last global position with this type and version.
    pub last_position: u64,
}

/// A stored aggregate state at one stream version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version the state includes: events up to and including this version.
    pub version: u64,
    /// The global position of the event at `version`.
    pub position: u64,
    /// The schema version of the encoded state.
    pub schema_version: u32,
    /// The encoded state.
    pub state: Vec<u8>,
}
