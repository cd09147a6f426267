//! Transactional outbox: events enqueued in the same sled transaction as the application's own
//! writes, and a relay that publishes them.
//!
//! # Guarantees
//!
//! - **Atomic with the application's data.** [`Outbox::transaction`] runs one sled transaction
//!   over the application's trees and the outbox's trees. Its writes and its events commit
//!   together or not at all, so an event exists exactly when the change it describes exists.
//! - **Order per key.** Rows get sequence numbers from a counter inside the transaction. sled
//!   0.34 runs transactions one at a time under a process-wide lock, so sequence order is commit
//!   order. [`OutboxRelay`] publishes rows in sequence order, so two events with the same topic
//!   and key reach the topic in commit order. Rows without a key have no order.
//! - **No loss and no duplicate across relay crashes.** Every row gets a message id when it is
//!   enqueued (`NAME-INSTANCE-SEQ`, or the id of a [`Message`] passed to
//!   [`OutboxTransaction::enqueue_message`]). The relay removes a row only after the target
//!   confirmed the publish as durable. A crash between publish and removal republishes the row
//!   with the same id, and the target's deduplication returns the original receipt. This works
//!   as long as the relay restarts within the target topic's dedup window (two minutes by
//!   default, see [`aqueduct::TopicConfig::dedup_window`]). A topic with deduplication turned off
//!   can receive such a row twice.
//! - **Rejected rows park, they do not block.** A row the target rejects permanently moves to
//!   the parked rows with the error, and later rows with its topic and key stay pending behind
//!   it, so order per key is never broken silently. Other keys keep flowing. An operator lists
//!   parked rows with [`Outbox::parked`] and calls [`Outbox::retry_parked`] (the row goes back to
//!   the head of its key) or [`Outbox::discard_parked`] (the key flows again).
//!
//! # Durability
//!
//! With [`OutboxConfig::flush_on_commit`] (the default), [`Outbox::transaction`] returns after
//! sled wrote the commit to the operating system, so it survives a crash of the process. sled
//! 0.34's flush ends in `sync_file_range`, not `fsync`, so a power loss can still lose it until
//! the broker's next flush round fsyncs the database file.
//!
//! # Observability
//!
//! [`Outbox::stats`] returns the pending and parked row counts and the age of the oldest pending
//! row. The relay logs with `tracing`: starts and stops at debug, retries while the target is
//! unavailable at warn (the first and every tenth), parked rows at warn.

mod error;
mod parked;
mod record;
mod relay;
mod target;
mod transaction;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, Clock, Message, SystemClock};
use parking_lot::{Condvar, Mutex};

use self::record::{decode, seq_from_key, RowRecord, INSTANCE_KEY, NEXT_SEQ_KEY};

pub use self::error::{BoxError, OutboxError, TargetError};
pub use self::parked::ParkedRow;
pub use self::relay::{OutboxRelay, RelayConfig, RelayHandle, RelayStats, RoundReport};
pub use self::target::{BrokerTarget, OutboxTarget};
pub use self::transaction::OutboxTransaction;

/// Longest accepted outbox name, in bytes.
const MAX_NAME_LEN: usize = 100;

/// Settings of an [`Outbox`].
#[derive(Clone)]
pub struct OutboxConfig {
    flush_on_commit: bool,
    clock: Arc<dyn Clock>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            flush_on_commit: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for OutboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxConfig")
            .field("flush_on_commit", &self.flush_on_commit)
            .finish_non_exhaustive()
    }
}

impl OutboxConfig {
    /// Sets whether [`Outbox::transaction`] flushes sled before it returns. Default `true`:
    /// a committed transaction survives a crash of the process. With `false`, a commit
    /// becomes durable at the next flush of the database (the broker's next flush round), and
    /// a crash before that loses the application's writes and their events together.
    #[must_use]
    pub fn flush_on_commit(mut self, flush: bool) -> Self {
        self.flush_on_commit = flush;
        self
    }

    /// Replaces the clock that stamps rows, for tests. Default: the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// Pending and parked rows of an outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows waiting to be published, including rows held behind a parked row.
    pub pending: u64,
    /// Rows the target rejected, waiting for an operator.
    pub parked: u64,
    /// Age of the oldest pending row, or `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
}

/// A transactional outbox in the broker's database.
///
/// `Outbox` is a cheap handle; clones share the trees and wake the same relay.
///
/// # Examples
///
/// ```
/// use aqueduct::Broker;
/// use aqueduct_patterns::{Outbox, OutboxError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// let orders = broker.tree("orders")?;
/// let outbox = Outbox::open(&broker, "orders")?;
///
/// outbox.transaction(&[orders], |tx| {
///     tx.tree(0).insert("order-1", "2 books")?;
///     tx.enqueue::<_, OutboxError>("order.created", "customer-7", &("order-1", 2u32))?;
///     Ok(())
/// })?;
/// assert_eq!(outbox.stats()?.pending, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub name: String,
    pub rows: sled::Tree,
    pub parked: sled::Tree,
    pub meta: sled::Tree,
    /// Random part of generated message ids, so that two databases that publish to one target
    /// never generate the same id.
    pub instance: String,
    pub config: OutboxConfig,
    pub wake: Wake,
    pub relay_running: AtomicBool,
}

impl Outbox {
    /// Opens or creates the outbox `name` in the broker's database with default settings.
    ///
    /// # Errors
    ///
    /// As for [`open_with`](Self::open_with).
    pub fn open(broker: &Broker, name: &str) -> Result<Self, OutboxError> {
        Self::open_with(broker, name, OutboxConfig::default())
    }

    /// Opens or creates the outbox `name` in the broker's database.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Outbox, OutboxConfig};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let config = OutboxConfig::default().flush_on_commit(false);
    /// let outbox = Outbox::open_with(&broker, "billing", config)?;
    /// assert_eq!(outbox.name(), "billing");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::InvalidName`] for a name that is not 1 to 100 characters from
    /// `[A-Za-z0-9._-]`, [`OutboxError::Broker`] and [`OutboxError::Storage`] when the trees
    /// cannot be opened.
    pub fn open_with(
        broker: &Broker,
        name: &str,
        config: OutboxConfig,
    ) -> Result<Self, OutboxError> {
        validate_name(name)?;
        let tree = |suffix: &str| {
            broker
                .tree(&format!("outbox.{name}.{suffix}"))
                .map_err(|source| OutboxError::Broker {
                    outbox: name.to_string(),
                    source: Box::new(source),
                })
        };
        let rows = tree("rows")?;
        let parked = tree("parked")?;
        let meta = tree("meta")?;
        let instance = load_instance(name, &meta)?;
        tracing::debug!(outbox = name, instance = %instance, "outbox opened");
        Ok(Outbox {
            inner: Arc::new(Inner {
                name: name.to_string(),
                rows,
                parked,
                meta,
                instance,
                config,
                wake: Wake::default(),
                relay_running: AtomicBool::new(false),
            }),
        })
    }

    /// Returns the outbox's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Returns the pending and parked row counts and the age of the oldest pending row.
    ///
    /// Counting walks both trees, so it takes time in proportion to the number of rows; call
    /// it for monitoring, not per event.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::Outbox;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let outbox = Outbox::open(&broker, "orders")?;
    /// let stats = outbox.stats()?;
    /// assert_eq!(stats.pending, 0);
    /// assert_eq!(stats.oldest_pending_age, None);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::Storage`], and [`OutboxError::Corrupt`] when the oldest row cannot be
    /// decoded.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let inner = &self.inner;
        let oldest = match inner.rows.first().map_err(|e| inner.storage(e))? {
            Some((key, value)) => Some(inner.decode_row(&key, &value)?),
            None => None,
        };
        let now = inner.config.clock.now_ms();
        Ok(OutboxStats {
            pending: inner.rows.len() as u64,
            parked: inner.parked.len() as u64,
            oldest_pending_age: oldest
                .map(|row| Duration::from_millis(now.saturating_sub(row.enqueued_at_ms))),
        })
    }

    /// Removes a pending row without publishing it, for a row that cannot be decoded
    /// ([`OutboxError::Corrupt`]) and so blocks the relay.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Outbox, OutboxError};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let outbox = Outbox::open(&broker, "orders")?;
    /// let seq = outbox.transaction(&[], |tx| tx.enqueue::<_, OutboxError>("t", "k", &1u8))?;
    /// let bytes = outbox.discard_pending(seq)?;
    /// assert!(!bytes.is_empty());
    /// assert_eq!(outbox.stats()?.pending, 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::PendingRowNotFound`] when no such row is pending, and
    /// [`OutboxError::Storage`].
    pub fn discard_pending(&self, seq: u64) -> Result<Vec<u8>, OutboxError> {
        let inner = &self.inner;
        let removed = inner
            .rows
            .remove(record::seq_key(seq))
            .map_err(|e| inner.storage(e))?;
        let Some(bytes) = removed else {
            return Err(OutboxError::PendingRowNotFound {
                outbox: inner.name.clone(),
                seq,
            });
        };
        tracing::warn!(outbox = %inner.name, seq, "pending outbox row discarded by request");
        inner.wake.bump();
        Ok(bytes.to_vec())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("name", &self.inner.name)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub fn storage(&self, source: sled::Error) -> OutboxError {
        OutboxError::Storage {
            outbox: self.name.clone(),
            source,
        }
    }

    pub fn decode_row(&self, key: &[u8], value: &[u8]) -> Result<RowRecord, OutboxError> {
        let seq = seq_from_key(key).ok_or_else(|| self.corrupt("rows", 0, "key is not 8 bytes"))?;
        decode(value).map_err(|reason| self.corrupt("rows", seq, &reason))
    }

    pub fn corrupt(&self, tree: &str, seq: u64, reason: &str) -> OutboxError {
        OutboxError::Corrupt {
            tree: format!("outbox.{}.{tree}", self.name),
            seq,
            reason: reason.to_string(),
        }
    }

    /// Returns the sequence number the next row will get. Every row below it is committed.
    pub fn next_seq(&self) -> Result<u64, OutboxError> {
        let value = self.meta.get(NEXT_SEQ_KEY).map_err(|e| self.storage(e))?;
        match value {
            None => Ok(0),
            Some(bytes) => seq_from_key(&bytes)
                .ok_or_else(|| self.corrupt("meta", 0, "next_seq is not 8 bytes")),
        }
    }

    /// Builds the message id of row `seq`.
    pub fn message_id(&self, seq: u64) -> String {
        format!("{}-{}-{seq}", self.name, self.instance)
    }
}

/// A change counter that the relay waits on, bumped by commits and operator actions.
#[derive(Default)]
pub(crate) struct Wake {
    seq: Mutex<u64>,
    changed: Condvar,
}

impl Wake {
    pub fn seq(&self) -> u64 {
        *self.seq.lock()
    }

    pub fn bump(&self) {
        *self.seq.lock() += 1;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for the counter to move past `seen`.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let mut seq = self.seq.lock();
        if *seq == seen {
            self.changed.wait_for(&mut seq, timeout);
        }
    }
}

fn validate_name(name: &str) -> Result<(), OutboxError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 100 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "it contains a character outside [A-Za-z0-9._-]"
    } else {
        return Ok(());
    };
    Err(OutboxError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Reads the outbox's instance id, creating a random one on first open.
fn load_instance(name: &str, meta: &sled::Tree) -> Result<String, OutboxError> {
    let storage = |source| OutboxError::Storage {
        outbox: name.to_string(),
        source,
    };
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    let fresh = format!("{:016x}", hasher.finish());
    // A concurrent first open may win the race; both then read the winner's id.
    let _ = meta
        .compare_and_swap(INSTANCE_KEY, None as Option<&[u8]>, Some(fresh.as_bytes()))
        .map_err(storage)?;
    let stored = meta.get(INSTANCE_KEY).map_err(storage)?;
    stored
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .ok_or_else(|| OutboxError::Corrupt {
            tree: format!("outbox.{name}.meta"),
            seq: 0,
            reason: "instance id missing after it was written".to_string(),
        })
}

/// Checks the parts of a message that the broker would reject for every topic, so that the
/// enqueuing transaction fails instead of the row being parked later.
fn validate_message(inner: &Inner, topic: &str, message: &Message) -> Result<(), OutboxError> {
    if let Some(reason) = topic_name_problem(topic) {
        return Err(OutboxError::InvalidTopic {
            outbox: inner.name.clone(),
            topic: topic.to_string(),
            reason,
        });
    }
    for (header, _) in message.headers() {
        let reason = if header.is_empty() {
            "it is empty"
        } else if header.starts_with(aqueduct::RESERVED_HEADER_PREFIX) {
            "names starting with \"aqueduct.\" are reserved for the broker"
        } else {
            continue;
        };
        return Err(OutboxError::InvalidHeader {
            outbox: inner.name.clone(),
            topic: topic.to_string(),
            header: header.clone(),
            reason,
        });
    }
    Ok(())
}

/// Applies the broker's topic name rules (1 to 249 characters from `[A-Za-z0-9._-]`, not `.`
/// or `..`). The broker keeps its own check private, so the rules are repeated here.
fn topic_name_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("it is empty")
    } else if topic.len() > aqueduct::MAX_NAME_LEN {
        Some("it is longer than 249 bytes")
    } else if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("it contains a character outside [A-Za-z0-9._-]")
    } else if topic == "." || topic == ".." {
        Some("it is a path component")
    } else {
        None
    }
}
