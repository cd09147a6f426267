//! The event store: append-only streams with optimistic concurrency, on one sled tree of the
//! broker's database.
//!
//! # Guarantees
//!
//! - **Optimistic concurrency.** [`EventStore::append`] checks the stream's version against
//!   an [`ExpectedVersion`] and writes in the same sled transaction. Of two appends with the
//!   same expected version, exactly one wins; the other gets
//!   `Ok(Err(`[`WrongExpectedVersion`]`))`.
//! - **Versions and positions.** Stream versions are dense from 1. Global positions are dense
//!   from 0 across all streams and follow commit order. sled 0.34 runs every transaction under
//!   one process-wide write lock that plain reads also take once any transaction has run, so a
//!   reader sees an append completely or not at all, and never sees position `p + 1` before
//!   `p`. Readers also stop at the first missing position.
//! - **Timestamps** never decrease along global positions: an append takes the later of the
//!   clock and the previous event's timestamp, so "state at time T" is a prefix of the log.
//! - **Durability** follows [`EventStoreConfig::durability`]; see the `durability` module.
//! - **Shared transactions.** [`EventStore::tree`] and [`EventStore::append_in`] let an
//!   application append events in the same sled transaction as writes to its own trees.
//!
//! Every transaction in the process takes sled's global lock, so appends are serialized with
//! each other and with the broker's dead-letter moves. Keep transaction bodies short.

mod durability;
mod error;
mod record;
mod subscription;
mod types;
mod upcast;

use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, Clock, Durability, SystemClock};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};

use self::durability::DiskSync;
use self::record::{EventRecord, HeadOfLog, SnapshotRecord, StreamHead, TypeRecord};
use crate::signal::Signal;

pub use self::error::{EventStoreError, WrongExpectedVersion};
pub use self::subscription::Subscription;
pub use self::types::{
    Appended, DomainEvent, EventTypeInfo, ExpectedVersion, NewEvent, RecordedEvent, Snapshot,
};
pub use self::upcast::Upcasters;

/// Longest stream and event type name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

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
    durability: Durability,
    clock: Arc<dyn Clock>,
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
    /// What the stream's version must be.
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

/// An event store on the broker's sled database.
///
/// `EventStore` is a cheap handle; clones share the tree and the append notifications.
///
/// # Examples
///
/// ```
/// use aqueduct::Broker;
/// use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// let store = EventStore::open(&broker, "bank")?;
/// let opened = NewEvent::new("Opened", 1, b"alice".to_vec());
/// let appended = store.append("account-1", ExpectedVersion::NoStream, vec![opened])?;
/// assert_eq!(appended.map(|a| a.version), Ok(1));
///
/// let again = NewEvent::new("Opened", 1, b"bob".to_vec());
/// let conflict = store.append("account-1", ExpectedVersion::NoStream, vec![again])?;
/// assert_eq!(conflict.map_err(|c| c.actual), Err(1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    tree_name: String,
    tree: sled::Tree,
    clock: Arc<dyn Clock>,
    disk: Arc<DiskSync>,
    appended: Signal,
    broker: Broker,
}

/// Why an append transaction stopped without committing.
enum Abort {
    Conflict(WrongExpectedVersion),
    Store(EventStoreError),
}

impl EventStore {
    /// Opens or creates the event store `name` with default settings. Its tree is
    /// `event_store.NAME` in the broker's database.
    ///
    /// # Errors
    ///
    /// As for [`open_with`](Self::open_with).
    pub fn open(broker: &Broker, name: &str) -> Result<Self, EventStoreError> {
        Self::open_with(broker, name, EventStoreConfig::default())
    }

    /// Opens or creates the event store `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct_patterns::{EventStore, EventStoreConfig};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = aqueduct::Broker::temporary()?;
    /// let store = EventStore::open_with(&broker, "orders", EventStoreConfig::default())?;
    /// assert_eq!(store.next_position()?, 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::InvalidName`] for a name outside `[A-Za-z0-9._-]{1,200}`,
    /// [`EventStoreError::IncompatibleFormat`] for a tree written by another record format,
    /// [`EventStoreError::Broker`] and [`EventStoreError::Storage`] when the tree cannot be
    /// opened.
    pub fn open_with(
        broker: &Broker,
        name: &str,
        config: EventStoreConfig,
    ) -> Result<Self, EventStoreError> {
        validate_store_name(name)?;
        let tree_name = format!("event_store.{name}");
        let tree = broker.tree(&tree_name)?;
        check_format(&tree_name, &tree)?;
        let disk = DiskSync::start(
            tree.clone(),
            broker.path().map(std::path::Path::to_path_buf),
            config.durability,
        )?;
        let store = EventStore {
            inner: Arc::new(Inner {
                name: name.to_string(),
                tree_name,
                tree,
                clock: config.clock,
                disk,
                appended: Signal::default(),
                broker: broker.clone(),
            }),
        };
        tracing::debug!(
            store = name,
            next_position = store.next_position()?,
            "event store opened"
        );
        Ok(store)
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The broker whose database holds the store.
    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The name of the sled tree that holds the store.
    pub(crate) fn tree_name(&self) -> String {
        self.inner.tree_name.clone()
    }

    /// The sled tree that holds the store, for transactions that call
    /// [`append_in`](Self::append_in).
    pub fn tree(&self) -> &sled::Tree {
        &self.inner.tree
    }

    /// Appends events to `stream` if its version matches `expected`.
    ///
    /// Returns `Ok(Err(conflict))` when another writer appended first: reload the stream and
    /// retry. With [`Durability::Flushed`] this returns once the events are on disk.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = EventStore::open(&broker, "cart")?;
    /// let added = NewEvent::new("ItemAdded", 1, b"tea".to_vec());
    /// let first = store.append("cart-7", ExpectedVersion::Any, vec![added.clone()])?;
    /// let second = store.append("cart-7", ExpectedVersion::Exact(1), vec![added])?;
    /// assert_eq!(second.map(|a| (a.version, a.position)), Ok((2, 1)));
    /// # let _ = first;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::InvalidStream`], [`EventStoreError::InvalidEventType`],
    /// [`EventStoreError::EmptyAppend`], [`EventStoreError::Poisoned`] after a failed flush,
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Result<Appended, WrongExpectedVersion>, EventStoreError> {
        let appends = vec![StreamAppend::new(stream, expected, events)];
        Ok(self.append_streams(appends)?.map(|mut all| all.remove(0)))
    }

    /// Appends to several streams in one transaction: either every stream's events are
    /// appended or none are. Returns the first conflict when any stream is not at its
    /// expected version.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent, StreamAppend};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = EventStore::open(&broker, "transfers")?;
    /// let out = NewEvent::new("Withdrawn", 1, b"10".to_vec());
    /// let into = NewEvent::new("Deposited", 1, b"10".to_vec());
    /// let appended = store.append_streams(vec![
    ///     StreamAppend::new("account-1", ExpectedVersion::Any, vec![out]),
    ///     StreamAppend::new("account-2", ExpectedVersion::Any, vec![into]),
    /// ])?;
    /// assert_eq!(appended.map(|all| all.len()), Ok(2));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`append`](Self::append).
    pub fn append_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Result<Vec<Appended>, WrongExpectedVersion>, EventStoreError> {
        for append in &appends {
            validate_append(&append.stream, &append.events)?;
        }
        self.inner.disk.check_writable()?;
        let now_ms = self.inner.clock.now_ms();

        let result = self.inner.tree.transaction(|tx| {
            let mut all = Vec::with_capacity(appends.len());
            for append in &appends {
                let appended = self.append_tx(tx, now_ms, append)?;
                all.push(appended);
            }
            Ok(all)
        });

        match result {
            Ok(all) => {
                self.committed()?;
                for (append, appended) in appends.iter().zip(&all) {
                    tracing::trace!(
                        store = %self.inner.name,
                        stream = %append.stream,
                        version = appended.version,
                        position = appended.position,
                        "events appended"
                    );
                }
                Ok(Ok(all))
            }
            Err(TransactionError::Abort(Abort::Conflict(conflict))) => {
                tracing::debug!(store = %self.inner.name, %conflict, "append conflict");
                Ok(Err(conflict))
            }
            Err(TransactionError::Abort(Abort::Store(error))) => Err(error),
            Err(TransactionError::Storage(error)) => Err(error.into()),
        }
    }

    /// Appends events to `stream` inside a transaction the caller runs on [`tree`](Self::tree)
    /// and its own trees, so that the events and the caller's writes commit together. After
    /// the transaction commits, call [`committed`](Self::committed); subscriptions otherwise
    /// notice the events only at their next poll (within 50 ms).
    ///
    /// On a conflict nothing is written, and the caller decides whether to abort.
    ///
    /// # Examples
    ///
    /// ```
    /// use sled::Transactional;
    /// use sled::transaction::ConflictableTransactionError;
    /// use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = EventStore::open(&broker, "shop")?;
    /// let stock = broker.tree("stock")?;
    /// let event = NewEvent::new("Reserved", 1, b"sku-1".to_vec());
    /// (store.tree(), &stock)
    ///     .transaction(|(events, stock)| {
    ///         stock.insert("sku-1", &[4u8])?;
    ///         match store.append_in(events, "order-1", ExpectedVersion::NoStream, &[event.clone()])? {
    ///             Ok(_) => Ok(()),
    ///             Err(conflict) => Err(ConflictableTransactionError::Abort(conflict.into())),
    ///         }
    ///     })
    ///     .map_err(|error: sled::transaction::TransactionError<Box<dyn std::error::Error>>| {
    ///         error.to_string()
    ///     })?;
    /// store.committed()?;
    /// assert_eq!(store.stream_version("order-1")?, 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `Abort` with [`EventStoreError::InvalidStream`], [`EventStoreError::InvalidEventType`],
    /// [`EventStoreError::EmptyAppend`] or [`EventStoreError::Corrupt`]; `Storage` and
    /// `Conflict` as sled reports them.
    pub fn append_in<E>(
        &self,
        tx: &TransactionalTree,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> ConflictableTransactionResult<Result<Appended, WrongExpectedVersion>, E>
    where
        E: From<EventStoreError>,
    {
        let abort = |error: EventStoreError| ConflictableTransactionError::Abort(E::from(error));
        validate_append(stream, events).map_err(abort)?;
        let append = StreamAppend::new(stream, expected, events.to_vec());
        match self.append_tx(tx, self.inner.clock.now_ms(), &append) {
            Ok(appended) => Ok(Ok(appended)),
            Err(ConflictableTransactionError::Abort(Abort::Conflict(conflict))) => {
                Ok(Err(conflict))
            }
            Err(ConflictableTransactionError::Abort(Abort::Store(error))) => Err(abort(error)),
            Err(ConflictableTransactionError::Conflict) => {
                Err(ConflictableTransactionError::Conflict)
            }
            Err(ConflictableTransactionError::Storage(error)) => {
                Err(ConflictableTransactionError::Storage(error))
            }
        }
    }

    /// Applies the durability mode to writes committed so far and wakes subscriptions. Call
    /// it after a transaction that used [`append_in`](Self::append_in) has committed.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Poisoned`], [`EventStoreError::Storage`] or [`EventStoreError::Io`]
    /// when flushing fails.
    pub fn committed(&self) -> Result<(), EventStoreError> {
        let result = self.inner.disk.after_write();
        self.inner.appended.bump();
        result
    }

    /// Flushes every append so far to disk and waits for it, whatever the durability mode.
    ///
    /// # Errors
    ///
    /// As for [`committed`](Self::committed).
    pub fn flush(&self) -> Result<(), EventStoreError> {
        self.inner.disk.sync_all()
    }

    fn append_tx(
        &self,
        tx: &TransactionalTree,
        now_ms: u64,
        append: &StreamAppend,
    ) -> ConflictableTransactionResult<Appended, Abort> {
        let tree = &self.inner.tree_name;
        let store_error = |error| ConflictableTransactionError::Abort(Abort::Store(error));
        let stream = append.stream.as_str();

        let head_key = record::head_key(stream);
        let current = match tx.get(&head_key)? {
            Some(bytes) => {
                let head: StreamHead =
                    record::decode(tree, &head_key, &bytes).map_err(store_error)?;
                head.version
            }
            None => 0,
        };
        if !append.expected.matches(current) {
            return Err(ConflictableTransactionError::Abort(Abort::Conflict(
                WrongExpectedVersion {
                    stream: stream.to_string(),
                    expected: append.expected,
                    actual: current,
                },
            )));
        }

        let mut log: HeadOfLog = match tx.get(record::HEAD_OF_LOG_KEY)? {
            Some(bytes) => {
                record::decode(tree, record::HEAD_OF_LOG_KEY, &bytes).map_err(store_error)?
            }
            None => HeadOfLog::default(),
        };
        let timestamp_ms = now_ms.max(log.last_timestamp_ms);
        let first_position = log.next_position;
        let mut version = current;
        let mut position = first_position;
        for event in &append.events {
            version += 1;
            let value = record::encode(&record::EventRecordRef {
                stream,
                version,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                timestamp_ms,
                payload: &event.payload,
            })
            .map_err(store_error)?;
            tx.insert(&record::event_key(position), value)?;
            tx.insert(record::stream_key(stream, version), &position.to_be_bytes())?;
            position += 1;
        }
        let last_position = position - 1;

        self.record_types_tx(tx, stream, first_position, &append.events)?;
        let head = record::encode(&StreamHead {
            version,
            position: last_position,
        })
        .map_err(store_error)?;
        tx.insert(head_key, head)?;
        log.next_position = position;
        log.last_timestamp_ms = timestamp_ms;
        let log_value = record::encode(&log).map_err(store_error)?;
        tx.insert(record::HEAD_OF_LOG_KEY, log_value)?;

        Ok(Appended {
            version,
            first_position,
            position: last_position,
        })
    }

    /// Updates the first and last position of every event type and schema version in the
    /// append, for the schema check.
    fn record_types_tx(
        &self,
        tx: &TransactionalTree,
        stream: &str,
        first_position: u64,
        events: &[NewEvent],
    ) -> ConflictableTransactionResult<(), Abort> {
        let tree = &self.inner.tree_name;
        let store_error = |error| ConflictableTransactionError::Abort(Abort::Store(error));
        let category = record::category(stream);
        let mut seen: Vec<(&str, u32, u64, u64)> = Vec::new();
        for (offset, event) in (0u64..).zip(events) {
            let position = first_position + offset;
            let existing = seen.iter_mut().find(|(name, version, _, _)| {
                *name == event.event_type && *version == event.schema_version
            });
            match existing {
                Some(entry) => entry.3 = position,
                None => seen.push((&event.event_type, event.schema_version, position, position)),
            }
        }
        for (event_type, schema_version, first, last) in seen {
            let key = record::type_key(category, event_type, schema_version);
            let first_position = match tx.get(&key)? {
                Some(bytes) => {
                    let stored: TypeRecord =
                        record::decode(tree, &key, &bytes).map_err(store_error)?;
                    stored.first_position
                }
                None => first,
            };
            let value = record::encode(&TypeRecord {
                first_position,
                last_position: last,
            })
            .map_err(store_error)?;
            tx.insert(key, value)?;
        }
        Ok(())
    }

    /// Returns the stream's version: the version of its last event, or 0 for no events.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = aqueduct_patterns::EventStore::open(&broker, "empty")?;
    /// assert_eq!(store.stream_version("nobody-1")?, 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn stream_version(&self, stream: &str) -> Result<u64, EventStoreError> {
        let key = record::head_key(stream);
        match self.inner.tree.get(&key)? {
            Some(bytes) => {
                let head: StreamHead = record::decode(&self.inner.tree_name, &key, &bytes)?;
                Ok(head.version)
            }
            None => Ok(0),
        }
    }

    /// Returns the position the next appended event will get, which is also the number of
    /// events in the store.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn next_position(&self) -> Result<u64, EventStoreError> {
        Ok(self.head_of_log()?.next_position)
    }

    fn head_of_log(&self) -> Result<HeadOfLog, EventStoreError> {
        match self.inner.tree.get(record::HEAD_OF_LOG_KEY)? {
            Some(bytes) => record::decode(&self.inner.tree_name, record::HEAD_OF_LOG_KEY, &bytes),
            None => Ok(HeadOfLog::default()),
        }
    }

    /// Reads up to `max` events of `stream` with versions from `from_version` on, oldest
    /// first.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "read")?;
    /// let events = (0..3).map(|i| NewEvent::new("Ticked", 1, vec![i])).collect();
    /// store.append("clock-1", ExpectedVersion::Any, events)?.expect("no conflict");
    /// let tail = store.read_stream("clock-1", 2, 10)?;
    /// assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let start = record::stream_key(stream, from_version);
        let end = record::stream_key(stream, u64::MAX);
        let range = self.inner.tree.range(start..=end);
        self.resolve_index(range.take(max))
    }

    /// Reads up to `max` events of `stream` with versions from `from_version` down, newest
    /// first. Pass `u64::MAX` to start at the stream's last event.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "backward")?;
    /// let events = (0..3).map(|i| NewEvent::new("Ticked", 1, vec![i])).collect();
    /// store.append("clock-1", ExpectedVersion::Any, events)?.expect("no conflict");
    /// let last_two = store.read_stream_backward("clock-1", u64::MAX, 2)?;
    /// assert_eq!(last_two.iter().map(|e| e.version).collect::<Vec<_>>(), [3, 2]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_stream_backward(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let start = record::stream_key(stream, 0);
        let end = record::stream_key(stream, from_version);
        let range = self.inner.tree.range(start..=end).rev();
        self.resolve_index(range.take(max))
    }

    fn resolve_index(
        &self,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events = Vec::new();
        for entry in entries {
            let (key, value) = entry?;
            let position = record::decode_position(&self.inner.tree_name, &key, &value)?;
            match self.read_event(position)? {
                Some(event) => events.push(event),
                None => {
                    return Err(EventStoreError::Corrupt {
                        tree: self.inner.tree_name.clone(),
                        key: record::hex(&key),
                        reason: format!("the stream index points to missing position {position}"),
                    })
                }
            }
        }
        Ok(events)
    }

    /// Reads the event at global `position`, or `None` when there is none yet.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_event(&self, position: u64) -> Result<Option<RecordedEvent>, EventStoreError> {
        let key = record::event_key(position);
        match self.inner.tree.get(key)? {
            Some(bytes) => Ok(Some(self.to_recorded(position, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads up to `max` events of all streams from global position `from_position` on, in
    /// position order. The result is dense: it stops before the first missing position.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "all")?;
    /// store.append("a-1", ExpectedVersion::Any, vec![NewEvent::new("X", 1, vec![])])?.expect("ok");
    /// store.append("b-1", ExpectedVersion::Any, vec![NewEvent::new("Y", 1, vec![])])?.expect("ok");
    /// let all = store.read_all(0, 100)?;
    /// assert_eq!(all.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(), ["a-1", "b-1"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let start = record::event_key(from_position);
        let end = record::event_key(u64::MAX);
        let mut events = Vec::new();
        let entries = self.inner.tree.range(start..=end).take(max);
        for (expected, entry) in (from_position..).zip(entries) {
            let (key, value) = entry?;
            if record::event_position(&key) != Some(expected) {
                break;
            }
            events.push(self.to_recorded(expected, &key, &value)?);
        }
        Ok(events)
    }

    /// Returns the last global position whose event was appended at or before `time_ms`
    /// (milliseconds since the Unix epoch), or `None` when the first event is later.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "time")?;
    /// store.append("a-1", ExpectedVersion::Any, vec![NewEvent::new("X", 1, vec![])])?.expect("ok");
    /// assert_eq!(store.position_at(0)?, None);
    /// assert_eq!(store.position_at(u64::MAX)?, Some(0));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn position_at(&self, time_ms: u64) -> Result<Option<u64>, EventStoreError> {
        // Timestamps never decrease along positions, so binary search finds the boundary.
        let mut low = 0;
        let mut high = self.next_position()?;
        while low < high {
            let middle = low + (high - low) / 2;
            let timestamp = match self.read_event(middle)? {
                Some(event) => event.timestamp_ms,
                None => u64::MAX,
            };
            if timestamp <= time_ms {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low.checked_sub(1))
    }

    /// Lists the event types and schema versions stored in streams of `category` (the part
    /// of a stream name before its first `-`).
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn event_types(&self, category: &str) -> Result<Vec<EventTypeInfo>, EventStoreError> {
        let mut types = Vec::new();
        for entry in self.inner.tree.scan_prefix(record::type_prefix(category)) {
            let (key, value) = entry?;
            let Some((event_type, schema_version)) = record::parse_type_key(category, &key) else {
                return Err(EventStoreError::Corrupt {
                    tree: self.inner.tree_name.clone(),
                    key: record::hex(&key),
                    reason: "malformed event type key".to_string(),
                });
            };
            let stored: TypeRecord = record::decode(&self.inner.tree_name, &key, &value)?;
            types.push(EventTypeInfo {
                event_type,
                schema_version,
                first_position: stored.first_position,
                last_position: stored.last_position,
            });
        }
        Ok(types)
    }

    /// Stores `snapshot` as the latest snapshot of `stream`, replacing the previous one.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::InvalidStream`], [`EventStoreError::Encode`] and
    /// [`EventStoreError::Storage`].
    pub fn save_snapshot(&self, stream: &str, snapshot: &Snapshot) -> Result<(), EventStoreError> {
        validate_stream(stream)?;
        let value = record::encode(&record::SnapshotRecordRef {
            version: snapshot.version,
            position: snapshot.position,
            schema_version: snapshot.schema_version,
            state: &snapshot.state,
        })?;
        self.inner
            .tree
            .insert(record::snapshot_key(stream), value)?;
        Ok(())
    }

    /// Loads the latest snapshot of `stream`, if any.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, EventStoreError> {
        let key = record::snapshot_key(stream);
        let Some(bytes) = self.inner.tree.get(&key)? else {
            return Ok(None);
        };
        let stored: SnapshotRecord = record::decode(&self.inner.tree_name, &key, &bytes)?;
        Ok(Some(Snapshot {
            version: stored.version,
            position: stored.position,
            schema_version: stored.schema_version,
            state: stored.state,
        }))
    }

    /// Starts a catch-up subscription at global position `from_position`. It reads stored
    /// events first and then waits for new ones, without gaps or duplicates.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "subscribe")?;
    /// let mut subscription = store.subscribe(0);
    /// store.append("a-1", ExpectedVersion::Any, vec![NewEvent::new("X", 1, vec![])])?.expect("ok");
    /// let event = subscription.recv_timeout(Duration::from_secs(1))?.expect("an event");
    /// assert_eq!(event.position, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self, from_position: u64) -> Subscription {
        Subscription::new(self.clone(), from_position)
    }

    /// Returns the append counter that subscriptions wait on.
    pub(crate) fn append_seq(&self) -> u64 {
        self.inner.appended.seq()
    }

    /// Waits up to `timeout` for an append after the counter read `seen`.
    pub(crate) fn wait_for_append(&self, seen: u64, timeout: Duration) {
        self.inner.appended.wait(seen, timeout);
    }

    fn to_recorded(
        &self,
        position: u64,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<RecordedEvent, EventStoreError> {
        let stored: EventRecord = record::decode(&self.inner.tree_name, key, bytes)?;
        Ok(RecordedEvent {
            position,
            stream: stored.stream,
            version: stored.version,
            event_type: stored.event_type,
            schema_version: stored.schema_version,
            timestamp_ms: stored.timestamp_ms,
            payload: stored.payload,
        })
    }
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("name", &self.inner.name)
            .field("tree", &self.inner.tree_name)
            .finish_non_exhaustive()
    }
}

fn check_format(tree_name: &str, tree: &sled::Tree) -> Result<(), EventStoreError> {
    match tree.get(record::FORMAT_KEY)? {
        Some(found) => match found.first() {
            Some(&record::RECORD_FORMAT) => Ok(()),
            Some(&other) => Err(EventStoreError::IncompatibleFormat {
                tree: tree_name.to_string(),
                found: other,
                supported: record::RECORD_FORMAT,
            }),
            None => Err(EventStoreError::Corrupt {
                tree: tree_name.to_string(),
                key: record::hex(record::FORMAT_KEY),
                reason: "the format record is empty".to_string(),
            }),
        },
        None => {
            tree.insert(record::FORMAT_KEY, &[record::RECORD_FORMAT])?;
            Ok(())
        }
    }
}

fn validate_store_name(name: &str) -> Result<(), EventStoreError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        Some("use only [A-Za-z0-9._-]")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EventStoreError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(crate) fn validate_stream(stream: &str) -> Result<(), EventStoreError> {
    let reason = if stream.is_empty() {
        Some("it is empty")
    } else if stream.len() > MAX_NAME_BYTES {
        Some("it is longer than 255 bytes")
    } else if stream.contains('\0') {
        Some("it contains NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EventStoreError::InvalidStream {
            stream: stream.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_append(stream: &str, events: &[NewEvent]) -> Result<(), EventStoreError> {
    validate_stream(stream)?;
    if events.is_empty() {
        return Err(EventStoreError::EmptyAppend {
            stream: stream.to_string(),
        });
    }
    for event in events {
        let reason = if event.event_type.is_empty() {
            Some("it is empty")
        } else if event.event_type.len() > MAX_NAME_BYTES {
            Some("it is longer than 255 bytes")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(EventStoreError::InvalidEventType {
                event_type: event.event_type.clone(),
                reason,
            });
        }
    }
    Ok(())
}
