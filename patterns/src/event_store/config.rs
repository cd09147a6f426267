//! Settings of an event store and the parts of a multi-stream append.

use std::sync::Arc;

use aqueduct::{Clock, Durability, SystemClock};

use super::types::{ExpectedVersion, NewEvent};

/// Settings of an [`EventStore`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::Durability;
/// use aqueduct_patterns::EventStoreConfig;
///
/// let config = EventStoreConfig::default()
///     .durability(Durability::Buffered { max_delay: Duration::from_millis(5) });
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct EventStoreConfig {
    pub(super) durability: Durability,
    pub(super) clock: Arc<dyn Clock>,
}

impl Default for EventStoreConfig {
    fn default() -> Self {
        EventStoreConfig {
            durability: Durability::Flushed,
            clock: Arc::new(SystemClock),
        }
    }
}

impl EventStoreConfig {
    /// Sets when an append is on disk. Default: [`Durability::Flushed`], so an append that
    /// returned survives a crash of the process or the machine.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the clock that stamps appended events. Default: the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

impl std::fmt::Debug for EventStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStoreConfig")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// The appends of one stream inside a multi-stream append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAppend {
    /// The stream.
    pub stream: String,
    /// The expected version of the stream.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// Creates the appends of one stream.
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        StreamAppend {
            stream: stream.into(),
            expected,
            events,
        }
    }
}
