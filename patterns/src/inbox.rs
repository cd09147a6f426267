//! Inbox: the message ids a handler has processed, recorded in the same sled transaction as the
//! handler's own writes.
//!
//! # Guarantees
//!
//! - **No second effect.** [`Inbox::process`] runs the handler and records the message's id in
//!   one sled transaction over the inbox tree and the handler's trees. A message whose id is
//!   recorded is not handed to the handler again: `process` returns [`Processed::Duplicate`]
//!   and writes nothing. This covers redeliveries after a crash between commit and ack, after
//!   an expired lease, and publishers that send the same id twice.
//! - **Effects in sled only.** Only writes through the transaction's trees are applied once.
//!   Calls to other systems from inside the handler happen on every run, and sled's transaction
//!   API allows it to run a closure more than once. Record such work in a tree instead, for
//!   example as an outbox row, and act on it after the commit.
//! - **Crash safety.** The mark and the handler's writes share one commit, so after a crash
//!   either both exist or neither does. The broker's flush of the ack also flushes every sled
//!   write made before it, so a message whose ack survived has its mark too.
//!
//! # Identity and expiry
//!
//! A delivery is identified by its message id, or by topic, partition and offset when it has
//! none (offsets are never reused). Marks are kept for at least the configured window (7 days
//! by default) and then removed by [`Inbox::expire`], which `process` also runs on its own at
//! most every tenth of the window. A message redelivered after its mark expired is processed
//! again, so the window must be longer than any redelivery or republish can take.
//!
//! # Layout
//!
//! One sled tree `inbox.NAME` with two kinds of keys: `i` + message key maps to the time the
//! mark was written (8 bytes big-endian, milliseconds since the Unix epoch), and `t` + that time
//! + message key, with an empty value, orders the marks for expiry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, Clock, Delivery, SystemClock};
use sled::transaction::{
    ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree,
};

/// Longest accepted inbox name, in bytes.
const MAX_NAME_LEN: usize = 100;

/// Marks removed per sled batch during expiry.
const EXPIRY_BATCH: usize = 1000;

/// Errors of [`Inbox`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// An inbox name is empty, too long or contains a character outside `[A-Za-z0-9._-]`.
    #[error("invalid inbox name {name:?}: {reason}; use 1 to 100 characters from [A-Za-z0-9._-]")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// The reason for the rejection.
        reason: &'static str,
    },

    /// The broker failed to open the inbox's tree.
    #[error("could not open the tree of inbox {inbox:?}: {source}")]
    Broker {
        /// The inbox.
        inbox: String,
        /// The broker error.
        #[source]
        source: Box<aqueduct::Error>,
    },

    /// sled reported an error.
    #[error("storage error in inbox {inbox:?}: {source}")]
    Storage {
        /// The inbox.
        inbox: String,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
}

/// Settings of an [`Inbox`].
#[derive(Clone)]
pub struct InboxConfig {
    window: Duration,
    clock: Arc<dyn Clock>,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            window: Duration::from_secs(7 * 24 * 3600),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for InboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConfig")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl InboxConfig {
    /// Sets how long processed ids are remembered at least. Default 7 days, the longest dedup
    /// window the broker accepts, so that an inbox remembers at least as long as a topic does.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Replaces the clock that stamps and expires marks, for tests. Default: the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The outcome of [`Inbox::process`] for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed<R> {
    /// The handler ran and its writes committed with the mark; it returned this value.
    Applied(R),
    /// The message was processed before; the handler did not run.
    Duplicate,
}

impl<R> Processed<R> {
    /// Returns true for [`Processed::Duplicate`].
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Processed::Duplicate)
    }
}

/// Processed message ids of one handler, in the broker's database.
///
/// `Inbox` is a cheap handle; clones share the tree.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Broker, Message, TopicConfig};
/// use aqueduct_patterns::{Inbox, InboxError, Processed};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("payments", TopicConfig::default())?;
/// broker.publish("payments", Message::new("10").id("payment-1"))?;
/// let balances = broker.tree("balances")?;
/// let inbox = Inbox::open(&broker, "ledger")?;
///
/// let mut consumer = broker.subscribe("payments", "ledger")?;
/// let delivery = consumer.recv_timeout(Duration::from_secs(1))?.expect("a delivery");
/// let outcome = inbox.process::<_, InboxError, _>(&delivery, &[balances.clone()], |trees| {
///     trees[0].insert("alice", delivery.payload())?;
///     Ok(())
/// })?;
/// assert_eq!(outcome, Processed::Applied(()));
///
/// // The same message again has no effect.
/// let again = inbox.process::<_, InboxError, _>(&delivery, &[balances], |_| Ok(()))?;
/// assert_eq!(again, Processed::Duplicate);
/// delivery.ack()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    tree: sled::Tree,
    config: InboxConfig,
    last_expiry_ms: AtomicU64,
}

impl Inbox {
    /// Opens or creates the inbox `name` in the broker's database with default settings.
    ///
    /// # Errors
    ///
    /// As for [`open_with`](Self::open_with).
    pub fn open(broker: &Broker, name: &str) -> Result<Self, InboxError> {
        Self::open_with(broker, name, InboxConfig::default())
    }

    /// Opens or creates the inbox `name` in the broker's database. Use one inbox per handler:
    /// two handlers that share one would skip each other's messages.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Inbox, InboxConfig};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let config = InboxConfig::default().window(Duration::from_secs(24 * 3600));
    /// let inbox = Inbox::open_with(&broker, "emails", config)?;
    /// assert_eq!(inbox.name(), "emails");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`InboxError::InvalidName`] for a name that is not 1 to 100 characters from
    /// `[A-Za-z0-9._-]`, and [`InboxError::Broker`] when the tree cannot be opened.
    pub fn open_with(broker: &Broker, name: &str, config: InboxConfig) -> Result<Self, InboxError> {
        validate_name(name)?;
        let tree = broker
            .tree(&format!("inbox.{name}"))
            .map_err(|source| InboxError::Broker {
                inbox: name.to_string(),
                source: Box::new(source),
            })?;
        let now = config.clock.now_ms();
        tracing::debug!(inbox = name, "inbox opened");
        Ok(Inbox {
            inner: Arc::new(Inner {
                name: name.to_string(),
                tree,
                config,
                last_expiry_ms: AtomicU64::new(now),
            }),
        })
    }

    /// Returns the inbox's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Returns the key that identifies `delivery` in an inbox: `id:` and its message id, or
    /// `at:TOPIC:PARTITION:OFFSET` for a message without an id.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::{Broker, Message, TopicConfig};
    /// use aqueduct_patterns::Inbox;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// broker.create_topic("jobs", TopicConfig::default())?;
    /// broker.publish("jobs", Message::new("a"))?;
    /// broker.publish("jobs", Message::new("b").id("job-2"))?;
    /// let mut consumer = broker.subscribe("jobs", "workers")?;
    /// let first = consumer.recv_timeout(Duration::from_secs(1))?.expect("a delivery");
    /// let second = consumer.recv_timeout(Duration::from_secs(1))?.expect("a delivery");
    /// assert_eq!(Inbox::message_key(&first), "at:jobs:0:0");
    /// assert_eq!(Inbox::message_key(&second), "id:job-2");
    /// # Ok(())
    /// # }
    /// ```
    pub fn message_key(delivery: &Delivery) -> String {
        match delivery.id() {
            Some(id) => format!("id:{id}"),
            None => format!(
                "at:{}:{}:{}",
                delivery.topic(),
                delivery.partition(),
                delivery.offset()
            ),
        }
    }

    /// Runs `handler` for `delivery` unless the inbox has seen it, in one sled transaction with
    /// the mark. The handler gets transactional views of `trees`, in the given order.
    ///
    /// Ack the delivery after this returns, for [`Processed::Duplicate`] too. The handler may
    /// run more than once, because sled retries a transaction after a conflict. Inside it,
    /// touch sled only through the views: the transaction holds sled's process-wide lock, so
    /// any other sled call, including a broker call, waits for that lock forever.
    ///
    /// # Examples
    ///
    /// See [`Inbox`].
    ///
    /// # Errors
    ///
    /// The error the handler aborted with, or [`InboxError::Storage`] converted into `E`.
    pub fn process<R, E, F>(
        &self,
        delivery: &Delivery,
        trees: &[sled::Tree],
        handler: F,
    ) -> Result<Processed<R>, E>
    where
        E: From<InboxError>,
        F: Fn(&[TransactionalTree]) -> ConflictableTransactionResult<R, E>,
    {
        self.process_key(&Self::message_key(delivery), trees, handler)
    }

    /// Like [`process`](Self::process), for a message identified by `key` instead of a
    /// delivery, such as an event read from an event store or a request id.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Inbox, InboxError};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let inbox = Inbox::open(&broker, "webhooks")?;
    /// let first = inbox.process_key::<_, InboxError, _>("request-9", &[], |_| Ok(1))?;
    /// let second = inbox.process_key::<_, InboxError, _>("request-9", &[], |_| Ok(2))?;
    /// assert!(!first.is_duplicate());
    /// assert!(second.is_duplicate());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`process`](Self::process).
    pub fn process_key<R, E, F>(
        &self,
        key: &str,
        trees: &[sled::Tree],
        handler: F,
    ) -> Result<Processed<R>, E>
    where
        E: From<InboxError>,
        F: Fn(&[TransactionalTree]) -> ConflictableTransactionResult<R, E>,
    {
        let inner = &self.inner;
        let mut all = Vec::with_capacity(trees.len() + 1);
        all.push(inner.tree.clone());
        all.extend_from_slice(trees);
        let now = inner.config.clock.now_ms();
        let mark = mark_key(key);

        let result = all.as_slice().transaction(|views| {
            if views[0].get(&mark)?.is_some() {
                return Ok(Processed::Duplicate);
            }
            let value = handler(&views[1..])?;
            views[0].insert(mark.clone(), &now.to_be_bytes()[..])?;
            views[0].insert(time_key(now, key), &[][..])?;
            Ok(Processed::Applied(value))
        });

        let processed = match result {
            Ok(processed) => processed,
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(source)) => return Err(E::from(inner.storage(source))),
        };
        if processed.is_duplicate() {
            tracing::debug!(inbox = %inner.name, key, "message already processed; skipped");
        } else {
            self.expire_if_due(now);
        }
        Ok(processed)
    }

    /// Returns true when the inbox has a mark for `delivery`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::{Broker, Message, TopicConfig};
    /// use aqueduct_patterns::Inbox;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// broker.create_topic("jobs", TopicConfig::default())?;
    /// broker.publish("jobs", Message::new("a").id("job-1"))?;
    /// let mut consumer = broker.subscribe("jobs", "workers")?;
    /// let delivery = consumer.recv_timeout(Duration::from_secs(1))?.expect("a delivery");
    /// let inbox = Inbox::open(&broker, "workers")?;
    /// assert!(!inbox.contains(&delivery)?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`InboxError::Storage`].
    pub fn contains(&self, delivery: &Delivery) -> Result<bool, InboxError> {
        let key = mark_key(&Self::message_key(delivery));
        let found = self
            .inner
            .tree
            .contains_key(key)
            .map_err(|e| self.inner.storage(e))?;
        Ok(found)
    }

    /// Returns how many marks the inbox contains. Counting walks the tree.
    pub fn len(&self) -> usize {
        self.inner.tree.scan_prefix(b"i").count()
    }

    /// Returns true when the inbox contains no marks.
    pub fn is_empty(&self) -> bool {
        self.inner.tree.scan_prefix(b"i").next().is_none()
    }

    /// Removes the marks older than the window and returns how many it removed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::{Broker, ManualClock};
    /// use aqueduct_patterns::{Inbox, InboxConfig, InboxError};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let clock = ManualClock::new(1_000_000);
    /// let config = InboxConfig::default().window(Duration::from_secs(60)).clock(clock.clone());
    /// let inbox = Inbox::open_with(&broker, "jobs", config)?;
    /// inbox.process_key::<_, InboxError, _>("job-1", &[], |_| Ok(()))?;
    /// clock.advance(Duration::from_secs(61));
    /// assert_eq!(inbox.expire()?, 1);
    /// assert!(inbox.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`InboxError::Storage`].
    pub fn expire(&self) -> Result<usize, InboxError> {
        let inner = &self.inner;
        let now = inner.config.clock.now_ms();
        inner.last_expiry_ms.store(now, Ordering::Relaxed);
        let window_ms = u64::try_from(inner.config.window.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(window_ms);
        let mut removed = 0;
        loop {
            let count = inner.expire_batch(cutoff)?;
            removed += count;
            if count < EXPIRY_BATCH {
                break;
            }
        }
        if removed > 0 {
            tracing::debug!(inbox = %inner.name, removed, "expired inbox marks");
        }
        Ok(removed)
    }

    fn expire_if_due(&self, now: u64) {
        let interval_ms =
            u64::try_from(self.inner.config.window.as_millis() / 10).unwrap_or(u64::MAX);
        let last = self.inner.last_expiry_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < interval_ms {
            return;
        }
        if let Err(error) = self.expire() {
            tracing::warn!(inbox = %self.inner.name, %error, "inbox expiry failed; retrying later");
        }
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn storage(&self, source: sled::Error) -> InboxError {
        InboxError::Storage {
            inbox: self.name.clone(),
            source,
        }
    }

    /// Removes up to one batch of marks written before `cutoff`; returns how many.
    fn expire_batch(&self, cutoff: u64) -> Result<usize, InboxError> {
        let mut end = vec![b't'];
        end.extend_from_slice(&cutoff.to_be_bytes());
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for item in self.tree.range(&b"t"[..]..&end[..]).take(EXPIRY_BATCH) {
            let (key, _) = item.map_err(|e| self.storage(e))?;
            batch.remove(key.clone());
            if let Some(message_key) = key.get(9..) {
                let mut mark = vec![b'i'];
                mark.extend_from_slice(message_key);
                batch.remove(mark);
            }
            count += 1;
        }
        if count > 0 {
            self.tree.apply_batch(batch).map_err(|e| self.storage(e))?;
        }
        Ok(count)
    }
}

fn mark_key(key: &str) -> Vec<u8> {
    let mut mark = Vec::with_capacity(key.len() + 1);
    mark.push(b'i');
    mark.extend_from_slice(key.as_bytes());
    mark
}

fn time_key(now_ms: u64, key: &str) -> Vec<u8> {
    let mut time = Vec::with_capacity(key.len() + 9);
    time.push(b't');
    time.extend_from_slice(&now_ms.to_be_bytes());
    time.extend_from_slice(key.as_bytes());
    time
}

fn validate_name(name: &str) -> Result<(), InboxError> {
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
    Err(InboxError::InvalidName {
        name: name.to_string(),
        reason,
    })
}
