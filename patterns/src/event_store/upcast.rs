//! Event schema versions and upcasting.
//!
//! Every stored event keeps the type name and schema version it was written with. Reading
//! decodes through a chain of upcasters: each step turns the payload of one event type from
//! schema version `v` into version `v + 1`, and steps run until none is registered for the
//! current version. The result must then decode as the requested type and report the same
//! type name and version, otherwise decoding fails with an error that names the missing step.
//! Stored events are never rewritten.

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::EventStoreError;
use super::types::{DomainEvent, RecordedEvent};

type Step = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Upcasting steps from old event schema versions to current ones.
///
/// # Examples
///
/// Version 1 of `Deposited` had no currency; version 2 adds one.
///
/// ```
/// use aqueduct_patterns::{DomainEvent, NewEvent, RecordedEvent, Upcasters};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum EventV1 { Deposited { amount: u64 } }
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum Event { Deposited { amount: u64, currency: String } }
///
/// impl DomainEvent for Event {
///     fn event_type(&self) -> &'static str { "Deposited" }
///     fn event_version(&self) -> u32 { 2 }
/// }
///
/// let upcasters = Upcasters::new().add("Deposited", 1, |old: EventV1| match old {
///     EventV1::Deposited { amount } => Event::Deposited { amount, currency: "EUR".into() },
/// });
/// # let broker = aqueduct::Broker::temporary()?;
/// # let store = aqueduct_patterns::EventStore::open(&broker, "docs")?;
/// # let old = postcard::to_stdvec(&EventV1::Deposited { amount: 5 }).unwrap();
/// # let appended = store
/// #     .append("account-1", aqueduct_patterns::ExpectedVersion::Any, vec![NewEvent::new("Deposited", 1, old)])?
/// #     .unwrap();
/// # let recorded: RecordedEvent = store.read_all(appended.position, 1)?.remove(0);
/// let event: Event = upcasters.decode(&recorded)?;
/// assert_eq!(event, Event::Deposited { amount: 5, currency: "EUR".into() });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Step>,
}

impl Upcasters {
    /// Creates an empty set: events decode only at the version they were written with.
    pub fn new() -> Self {
        Upcasters::default()
    }

    /// Adds a step that decodes a payload of `event_type` at `from_version` as `Old`, maps it
    /// with `upcast` and encodes the result as version `from_version + 1`. `Old` is a copy of
    /// the event enum as it was when that version was written, with its variants in the same
    /// order. `New` is the next version's enum, which may be the current one.
    #[must_use]
    pub fn add<Old, New>(
        self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        self.add_bytes(event_type, from_version, move |payload| {
            let old: Old = postcard::from_bytes(payload).map_err(|error| {
                format!(
                    "payload does not decode as {}: {error}",
                    std::any::type_name::<Old>()
                )
            })?;
            postcard::to_stdvec(&upcast(old)).map_err(|error| {
                format!(
                    "upcast value of type {} does not encode: {error}",
                    std::any::type_name::<New>()
                )
            })
        })
    }

    /// Adds a step on raw payload bytes from `from_version` to `from_version + 1`. The
    /// function returns the new payload, or a reason why it cannot convert this one.
    #[must_use]
    pub fn add_bytes(
        mut self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.to_string(), from_version), Box::new(upcast));
        self
    }

    /// Upcasts a recorded event to its newest registered version and decodes it as `E`.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Decode`] when a step fails, when the payload does not decode as
    /// `E`, or when the decoded event reports another type name or schema version than the
    /// upcast payload has (an upcaster is missing).
    pub fn decode<E: DomainEvent>(&self, event: &RecordedEvent) -> Result<E, EventStoreError> {
        let fail = |reason: String| EventStoreError::Decode {
            position: event.position,
            stream: event.stream.clone(),
            version: event.version,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            type_name: std::any::type_name::<E>(),
            reason,
        };

        let mut version = event.schema_version;
        let mut payload = std::borrow::Cow::Borrowed(&event.payload[..]);
        while let Some(step) = self.steps.get(&(event.event_type.clone(), version)) {
            let next = step(&payload).map_err(|reason| {
                fail(format!("upcast from version {version} failed: {reason}"))
            })?;
            payload = std::borrow::Cow::Owned(next);
            version += 1;
        }

        let decoded: E = postcard::from_bytes(&payload).map_err(|error| {
            fail(format!(
                "payload at schema version {version} does not decode ({error}); register an \
                 upcaster from version {version}"
            ))
        })?;
        if decoded.event_type() != event.event_type {
            return Err(fail(format!(
                "it decodes as type {:?}; the variant order of the event enum changed",
                decoded.event_type()
            )));
        }
        if decoded.event_version() != version {
            return Err(fail(format!(
                "the payload is at schema version {version}, but this build writes version {}; \
                 register an upcaster from version {version}",
                decoded.event_version()
            )));
        }
        Ok(decoded)
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<_> = self.steps.keys().collect();
        steps.sort();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}
