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
//!   from 0 across all streams and follow commit order. sled 0.34.7 runs every transaction
//!   under one process-wide write lock, and once any transaction has run, plain reads and
//!   iterator steps take the same lock for reading (`src/concurrency_control.rs`). A reader
//!   therefore gets an append completely or not at all, and never gets position `p + 1`
//!   before `p`. Readers also stop at the first missing position.
//! - **Timestamps** never decrease along global positions: an append takes the later of the
//!   clock and the previous event's timestamp, so "state at time T" is a prefix of the log.
//! - **Durability** follows [`EventStoreConfig::durability`]; see the `durability` module.
//! - **Shared transactions.** [`EventStore::tree`] and [`EventStore::append_in`] let an
//!   application append events in the same sled transaction as writes to its own trees.
//!
//! Every transaction in the process takes sled's global lock, so appends are serialized with
//! each other and with the broker's dead-letter moves. Once the first append has run, every
//! other sled operation in the process, the broker's included, takes that lock for reading,
//! which makes plain sled writes slower. Keep transaction bodies short.

mod config;
mod durability;
mod error;
mod read;
mod record;
mod subscription;
mod types;
mod upcast;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, Clock};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};

use self::durability::DiskSync;
use self::record::{HeadOfLog, StreamHead, TypeRecord};
use self::validate::{check_format, validate_append, validate_store_name};
use crate::signal::Signal;

pub use self::config::{EventStoreConfig, StreamAppend};
pub use self::error::{EventStoreError, WrongExpectedVersion};
pub use self::subscription::Subscription;
pub use self::types::{
    Appended, DomainEvent, EventTypeInfo, ExpectedVersion, NewEvent, RecordedEvent, Snapshot,
};
pub use self::upcast::Upcasters;

/// Maximum length of stream and event type names, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// An event store on the broker's sled database.
///
/// `EventStore` is a cheap handle; clones share the tree and the append notifications. Open
/// a store once per process and clone the handle: subscriptions of a second handle opened on
/// the same name notice its appends only at their next poll (within 50 ms).
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

/// The reason an append transaction stopped without committing.
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

    /// Returns the store's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Returns the broker whose database contains the store.
    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// Returns the name of the sled tree that contains the store.
    pub(crate) fn tree_name(&self) -> String {
        self.inner.tree_name.clone()
    }

    /// Returns the sled tree that contains the store, for transactions that call
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
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`]. An
    /// [`EventStoreError::Io`] or [`EventStoreError::Storage`] from the flush that follows a
    /// committed append leaves the outcome open: the events are committed in memory, and
    /// readers in this process see them, but they may not survive a crash.
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
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("name", &self.inner.name)
            .field("tree", &self.inner.tree_name)
            .finish_non_exhaustive()
    }
}
