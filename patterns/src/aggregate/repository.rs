//! Loading aggregates, executing commands and taking snapshots.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;

use super::error::RepositoryError;
use super::Aggregate;
use crate::event_store::{
    EventStore, EventStoreError, EventTypeInfo, ExpectedVersion, NewEvent, RecordedEvent, Snapshot,
    StreamAppend, Upcasters, WrongExpectedVersion,
};

/// One execution attempt: the results, or the conflict that made it lose.
type Attempt<A> = Result<Vec<Executed<A>>, WrongExpectedVersion>;

/// Events read per call while loading.
const LOAD_BATCH: usize = 512;

/// An aggregate's state at a stream version.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The state after applying every event up to `version`.
    pub state: A,
    /// The stream version the state includes; 0 when the stream has no events.
    pub version: u64,
    /// The global position of the event at `version`, or `None` for version 0.
    pub position: Option<u64>,
}

/// The outcome of a command.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The aggregate id.
    pub id: String,
    /// The events the command produced, now stored.
    pub events: Vec<A::Event>,
    /// The state after the events.
    pub state: A,
    /// The stream version after the events.
    pub version: u64,
    /// The global position of the last stored event, for
    /// [`ProjectionRunner::wait_for`](crate::ProjectionRunner::wait_for); `None` when the
    /// command produced no events.
    pub position: Option<u64>,
    /// How many times the command ran: 1, plus one per append race it lost and retried.
    pub attempts: u32,
}

/// A point in the past to load state at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Include events at global positions up to and including this one.
    Position(u64),
    /// Include events appended at or before this time, in milliseconds since the Unix epoch.
    Time(u64),
}

/// Loads aggregates of type `A`, executes commands and appends their events.
///
/// # Examples
///
/// ```
/// # use aqueduct_patterns::{Aggregate, DomainEvent};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)]
/// # struct Counter { value: u64 }
/// # #[derive(Debug, Serialize, Deserialize)]
/// # enum CounterEvent { Added(u64) }
/// # impl DomainEvent for CounterEvent { fn event_type(&self) -> &'static str { "Added" } }
/// # impl Aggregate for Counter {
/// #     const CATEGORY: &'static str = "counter";
/// #     type Command = u64;
/// #     type Event = CounterEvent;
/// #     type Error = std::convert::Infallible;
/// #     fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, Self::Error> { Ok(vec![CounterEvent::Added(n)]) }
/// #     fn apply(&mut self, CounterEvent::Added(n): &CounterEvent) { self.value += n; }
/// # }
/// use aqueduct_patterns::{EventStore, Repository};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let broker = aqueduct::Broker::temporary()?;
/// let store = EventStore::open(&broker, "counters")?;
/// let counters = Repository::<Counter>::new(store)?.snapshot_every(100).retry_on_conflict(3);
/// counters.execute("c1", 5)?;
/// let executed = counters.execute("c1", 2)?;
/// assert_eq!(executed.state.value, 7);
/// assert_eq!(counters.load("c1")?.version, 2);
/// # Ok(())
/// # }
/// ```
pub struct Repository<A: Aggregate> {
    store: EventStore,
    upcasters: Arc<Upcasters>,
    snapshot_every: Option<u64>,
    retries: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            upcasters: Arc::clone(&self.upcasters),
            snapshot_every: self.snapshot_every,
            retries: self.retries,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("category", &A::CATEGORY)
            .field("store", &self.store)
            .field("snapshot_every", &self.snapshot_every)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    /// Creates a repository without snapshots, upcasters or retries.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::InvalidCategory`] when `A::CATEGORY` is empty, longer than 64
    /// bytes, or contains `-` or NUL.
    pub fn new(store: EventStore) -> Result<Self, EventStoreError> {
        validate_category(A::CATEGORY)?;
        Ok(Repository {
            store,
            upcasters: Arc::new(Upcasters::new()),
            snapshot_every: None,
            retries: 0,
            _aggregate: PhantomData,
        })
    }

    /// Sets the upcasters that turn old event schema versions into current ones.
    #[must_use]
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// Stores a snapshot each time a stream's version crosses a multiple of `events`.
    /// `0` turns snapshots off. Default: off.
    #[must_use]
    pub fn snapshot_every(mut self, events: u64) -> Self {
        self.snapshot_every = (events > 0).then_some(events);
        self
    }

    /// Runs a command up to `retries` more times when its append loses a race, each time on
    /// freshly loaded state. Default: 0.
    #[must_use]
    pub fn retry_on_conflict(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Returns the event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Returns the upcasters in use.
    pub fn upcaster_set(&self) -> &Upcasters {
        &self.upcasters
    }

    /// Returns the stream name of aggregate `id`: `CATEGORY-ID`.
    pub fn stream(&self, id: &str) -> String {
        format!("{}-{id}", A::CATEGORY)
    }

    /// Loads the current state of aggregate `id`, from its snapshot when one is usable.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Decode`] for an event that does not decode,
    /// [`EventStoreError::Corrupt`] for a gap in the stream, and storage errors.
    pub fn load(&self, id: &str) -> Result<Loaded<A>, EventStoreError> {
        self.load_until(id, u64::MAX)
    }

    /// Loads the state of aggregate `id` as of a past position or time.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{Aggregate, DomainEvent};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Default, Serialize, Deserialize)]
    /// # struct Counter { value: u64 }
    /// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// # enum CounterEvent { Added(u64) }
    /// # impl DomainEvent for CounterEvent { fn event_type(&self) -> &'static str { "Added" } }
    /// # impl Aggregate for Counter {
    /// #     const CATEGORY: &'static str = "counter";
    /// #     type Command = u64;
    /// #     type Event = CounterEvent;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, Self::Error> { Ok(vec![CounterEvent::Added(n)]) }
    /// #     fn apply(&mut self, CounterEvent::Added(n): &CounterEvent) { self.value += n; }
    /// # }
    /// use aqueduct_patterns::{AsOf, EventStore, Repository};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let counters = Repository::<Counter>::new(EventStore::open(&broker, "audit")?)?;
    /// let first = counters.execute("c1", 5)?;
    /// counters.execute("c1", 2)?;
    ///
    /// let then = AsOf::Position(first.position.expect("an event"));
    /// assert_eq!(counters.load_at("c1", then)?.state.value, 5);
    /// let events: Vec<CounterEvent> =
    ///     counters.history("c1", then)?.into_iter().map(|(_, event)| event).collect();
    /// assert_eq!(events, [CounterEvent::Added(5)]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`load`](Self::load).
    pub fn load_at(&self, id: &str, as_of: AsOf) -> Result<Loaded<A>, EventStoreError> {
        match self.last_position(as_of)? {
            Some(position) => self.load_until(id, position),
            None => Ok(empty()),
        }
    }

    /// Returns the events of aggregate `id` up to a past position or time, oldest first,
    /// decoded and with their stored metadata: the events that made [`load_at`](Self::load_at)'s
    /// state.
    ///
    /// # Errors
    ///
    /// As for [`load`](Self::load).
    pub fn history(
        &self,
        id: &str,
        as_of: AsOf,
    ) -> Result<Vec<(RecordedEvent, A::Event)>, EventStoreError> {
        let Some(last) = self.last_position(as_of)? else {
            return Ok(Vec::new());
        };
        let stream = self.stream(id);
        let mut history = Vec::new();
        let mut next_version = 1;
        loop {
            let batch = self.store.read_stream(&stream, next_version, LOAD_BATCH)?;
            let done = batch.len() < LOAD_BATCH;
            for recorded in batch {
                if recorded.position > last {
                    return Ok(history);
                }
                next_version = recorded.version + 1;
                let event = self.upcasters.decode(&recorded)?;
                history.push((recorded, event));
            }
            if done {
                return Ok(history);
            }
        }
    }

    fn last_position(&self, as_of: AsOf) -> Result<Option<u64>, EventStoreError> {
        match as_of {
            AsOf::Position(position) => Ok(Some(position)),
            AsOf::Time(time_ms) => self.store.position_at(time_ms),
        }
    }

    /// Loads `id` with the events at positions up to `last`.
    fn load_until(&self, id: &str, last: u64) -> Result<Loaded<A>, EventStoreError> {
        let stream = self.stream(id);
        let mut loaded = self.load_snapshot(&stream, last)?.unwrap_or_else(empty);
        loop {
            let batch = self
                .store
                .read_stream(&stream, loaded.version + 1, LOAD_BATCH)?;
            let done = batch.len() < LOAD_BATCH;
            for recorded in batch {
                if recorded.position > last {
                    return Ok(loaded);
                }
                if recorded.version != loaded.version + 1 {
                    return Err(EventStoreError::Corrupt {
                        tree: self.store.tree_name(),
                        key: format!("stream {stream:?}"),
                        reason: format!(
                            "expected version {} after version {}, found {}",
                            loaded.version + 1,
                            loaded.version,
                            recorded.version
                        ),
                    });
                }
                let event = self.upcasters.decode(&recorded)?;
                loaded.state.apply(&event);
                loaded.version = recorded.version;
                loaded.position = Some(recorded.position);
            }
            if done {
                return Ok(loaded);
            }
        }
    }

    /// Returns the snapshot's state when it exists, has this build's schema version, decodes,
    /// and lies at or before position `last`.
    fn load_snapshot(&self, stream: &str, last: u64) -> Result<Option<Loaded<A>>, EventStoreError> {
        let Some(snapshot) = self.store.load_snapshot(stream)? else {
            return Ok(None);
        };
        if snapshot.position > last {
            return Ok(None);
        }
        if snapshot.schema_version != A::SNAPSHOT_VERSION {
            tracing::debug!(
                stream,
                found = snapshot.schema_version,
                current = A::SNAPSHOT_VERSION,
                "ignoring snapshot of another state schema version; replaying all events"
            );
            return Ok(None);
        }
        let current = self.store.stream_version(stream)?;
        if snapshot.version > current {
            tracing::warn!(
                stream,
                snapshot_version = snapshot.version,
                stream_version = current,
                "ignoring snapshot newer than its stream; replaying all events"
            );
            return Ok(None);
        }
        match postcard::from_bytes::<A>(&snapshot.state) {
            Ok(state) => Ok(Some(Loaded {
                state,
                version: snapshot.version,
                position: Some(snapshot.position),
            })),
            Err(error) => {
                tracing::warn!(
                    stream,
                    version = snapshot.version,
                    %error,
                    "ignoring snapshot that does not decode; replaying all events"
                );
                Ok(None)
            }
        }
    }

    /// Loads aggregate `id`, handles `command` and appends the events, retrying on conflict
    /// as configured.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::Rejected`] when the aggregate rejects the command,
    /// [`RepositoryError::Conflict`] when every attempt lost a race, and
    /// [`RepositoryError::Store`].
    pub fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Executed<A>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let mut executed = self.execute_all(vec![(id.to_string(), command)])?;
        Ok(executed.remove(0))
    }

    /// Executes commands on several aggregates and appends all their events in one
    /// transaction: all are stored or none. Retries the whole batch on conflict as
    /// configured. Returns one [`Executed`] per command, in order.
    ///
    /// # Errors
    ///
    /// As for [`execute`](Self::execute), and [`RepositoryError::DuplicateId`] when two
    /// commands name the same aggregate.
    pub fn execute_all(
        &self,
        commands: Vec<(String, A::Command)>,
    ) -> Result<Vec<Executed<A>>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        check_unique(&commands)?;
        let attempts = self.retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            match self.try_execute(&commands)? {
                Ok(mut executed) => {
                    for outcome in &mut executed {
                        outcome.attempts = attempt;
                    }
                    return Ok(executed);
                }
                Err(conflict) if attempt < attempts => {
                    tracing::debug!(
                        stream = %conflict.stream,
                        attempt,
                        %conflict,
                        "command lost an append race; retrying on reloaded state"
                    );
                    attempt += 1;
                }
                Err(conflict) => {
                    return Err(RepositoryError::Conflict {
                        stream: conflict.stream.clone(),
                        attempts,
                        source: conflict,
                    })
                }
            }
        }
    }

    fn try_execute(
        &self,
        commands: &[(String, A::Command)],
    ) -> Result<Attempt<A>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let mut pending = Vec::with_capacity(commands.len());
        for (id, command) in commands {
            let loaded = self.load(id)?;
            let events = loaded
                .state
                .handle(command.clone())
                .map_err(RepositoryError::Rejected)?;
            pending.push((id, loaded, events));
        }

        let mut appends = Vec::new();
        for (id, loaded, events) in &pending {
            if events.is_empty() {
                continue;
            }
            let encoded = events
                .iter()
                .map(NewEvent::encode)
                .collect::<Result<Vec<_>, _>>()?;
            let expected = ExpectedVersion::Exact(loaded.version);
            appends.push(StreamAppend::new(self.stream(id), expected, encoded));
        }
        let mut appended = if appends.is_empty() {
            Vec::new()
        } else {
            match self.store.append_streams(appends)? {
                Ok(appended) => appended,
                Err(conflict) => return Ok(Err(conflict)),
            }
        }
        .into_iter();

        let mut executed = Vec::with_capacity(pending.len());
        for (id, mut loaded, events) in pending {
            let stored = if events.is_empty() {
                None
            } else {
                appended.next()
            };
            for event in &events {
                loaded.state.apply(event);
            }
            if let Some(stored) = stored {
                self.maybe_snapshot(
                    id,
                    loaded.version,
                    stored.version,
                    stored.position,
                    &loaded.state,
                );
            }
            executed.push(Executed {
                id: id.clone(),
                events,
                state: loaded.state,
                version: stored.map_or(loaded.version, |stored| stored.version),
                position: stored.map(|stored| stored.position),
                attempts: 1,
            });
        }
        Ok(Ok(executed))
    }

    /// Saves a snapshot when the append moved the stream across a multiple of the interval.
    /// A failed snapshot is logged and skipped: it only speeds up loading.
    fn maybe_snapshot(&self, id: &str, before: u64, after: u64, position: u64, state: &A) {
        let Some(every) = self.snapshot_every else {
            return;
        };
        if before / every == after / every {
            return;
        }
        let stream = self.stream(id);
        let result = postcard::to_stdvec(state)
            .map_err(|source| EventStoreError::Encode {
                type_name: std::any::type_name::<A>(),
                source,
            })
            .and_then(|state| {
                let snapshot = Snapshot {
                    version: after,
                    position,
                    schema_version: A::SNAPSHOT_VERSION,
                    state,
                };
                self.store.save_snapshot(&stream, &snapshot)
            });
        match result {
            Ok(()) => tracing::trace!(%stream, version = after, "snapshot saved"),
            Err(error) => tracing::warn!(%stream, version = after, %error, "snapshot not saved"),
        }
    }

    /// Checks that every event type and schema version stored for this aggregate's category
    /// still decodes with the current event type and upcasters, by decoding the first and
    /// the last stored event of each. Run it at startup, before serving commands.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{Aggregate, DomainEvent};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Default, Serialize, Deserialize)]
    /// # struct Counter { value: u64 }
    /// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// # enum CounterEvent { Added(u64) }
    /// # impl DomainEvent for CounterEvent { fn event_type(&self) -> &'static str { "Added" } }
    /// # impl Aggregate for Counter {
    /// #     const CATEGORY: &'static str = "counter";
    /// #     type Command = u64;
    /// #     type Event = CounterEvent;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, Self::Error> { Ok(vec![CounterEvent::Added(n)]) }
    /// #     fn apply(&mut self, CounterEvent::Added(n): &CounterEvent) { self.value += n; }
    /// # }
    /// use aqueduct_patterns::{EventStore, Repository};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let counters = Repository::<Counter>::new(EventStore::open(&broker, "checked")?)?;
    /// counters.execute("c1", 5)?;
    /// let types = counters.check_event_types()?;
    /// assert_eq!((types[0].event_type.as_str(), types[0].schema_version), ("Added", 1));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::SchemaCheckFailed`] listing every type and version that fails, and
    /// storage errors.
    pub fn check_event_types(&self) -> Result<Vec<EventTypeInfo>, EventStoreError> {
        let types = self.store.event_types(A::CATEGORY)?;
        let mut failures = Vec::new();
        for info in &types {
            for position in [info.first_position, info.last_position] {
                let Some(recorded) = self.store.read_event(position)? else {
                    failures.push(format!(
                        "{} version {}: position {position} is missing",
                        info.event_type, info.schema_version
                    ));
                    break;
                };
                if let Err(error) = self.upcasters.decode::<A::Event>(&recorded) {
                    failures.push(format!(
                        "{} version {}: {error}",
                        info.event_type, info.schema_version
                    ));
                    break;
                }
            }
        }
        if !failures.is_empty() {
            return Err(EventStoreError::SchemaCheckFailed {
                category: A::CATEGORY.to_string(),
                failures,
            });
        }
        tracing::info!(
            category = A::CATEGORY,
            types = types.len(),
            "stored event types decode"
        );
        Ok(types)
    }
}

fn empty<A: Default>() -> Loaded<A> {
    Loaded {
        state: A::default(),
        version: 0,
        position: None,
    }
}

fn check_unique<C, E: std::error::Error + 'static>(
    commands: &[(String, C)],
) -> Result<(), RepositoryError<E>> {
    let mut seen = HashSet::with_capacity(commands.len());
    for (id, _) in commands {
        if !seen.insert(id.as_str()) {
            return Err(RepositoryError::DuplicateId { id: id.clone() });
        }
    }
    Ok(())
}

fn validate_category(category: &'static str) -> Result<(), EventStoreError> {
    let reason = if category.is_empty() {
        Some("it is empty")
    } else if category.len() > 64 {
        Some("it is longer than 64 bytes")
    } else if category.contains('-') || category.contains('\0') {
        Some("it contains '-' or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EventStoreError::InvalidCategory {
            category: category.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}
