//! The closure API that writes application trees and enqueues events in one sled transaction.
//!
//! sled 0.34 runs every transaction under a process-wide write lock, and every other sled
//! operation in the process waits for it. Keep the closure short, and call nothing in it that
//! touches sled outside the transaction (the broker, `sled::Tree` methods): that would wait for
//! the lock the closure holds and never return.

use std::cell::Cell;

use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree,
};

use aqueduct::Message;

use super::record::{encode, seq_from_key, seq_key, RowRecord, NEXT_SEQ_KEY};
use super::{validate_message, Inner, Outbox, OutboxError};

/// The view of one outbox transaction: the application's trees and the outbox.
///
/// Created by [`Outbox::transaction`].
pub struct OutboxTransaction<'a> {
    inner: &'a Inner,
    rows: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    trees: &'a [TransactionalTree],
    now_ms: u64,
    enqueued: &'a Cell<u64>,
}

impl Outbox {
    /// Runs `f` in one sled transaction over `trees` and the outbox's trees, and returns its
    /// value. Everything `f` writes to the trees and every event it enqueues commit together,
    /// or nothing does when `f` returns an error.
    ///
    /// `f` may run more than once (sled retries a transaction after a conflict), so it must not
    /// have effects outside the transaction. Inside `f`, touch sled only through
    /// [`OutboxTransaction::tree`]: the transaction holds sled's process-wide lock, and any
    /// other sled call, including a broker call, waits for that lock forever.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Outbox, OutboxError};
    /// use serde::Serialize;
    /// use sled::transaction::ConflictableTransactionError;
    ///
    /// #[derive(Serialize)]
    /// struct OrderCreated {
    ///     order: u64,
    ///     total_cents: u64,
    /// }
    ///
    /// #[derive(Debug)]
    /// enum PlaceOrderError {
    ///     EmptyOrder,
    ///     Outbox(OutboxError),
    /// }
    ///
    /// impl From<OutboxError> for PlaceOrderError {
    ///     fn from(error: OutboxError) -> Self {
    ///         PlaceOrderError::Outbox(error)
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let orders = broker.tree("orders")?;
    /// let outbox = Outbox::open(&broker, "orders")?;
    ///
    /// let total_cents = 0;
    /// let result = outbox.transaction(&[orders.clone()], |tx| {
    ///     if total_cents == 0 {
    ///         return Err(ConflictableTransactionError::Abort(PlaceOrderError::EmptyOrder));
    ///     }
    ///     tx.tree(0).insert("order-42", "2 books")?;
    ///     tx.enqueue("order.created", "customer-7", &OrderCreated { order: 42, total_cents })?;
    ///     Ok(())
    /// });
    /// assert!(matches!(result, Err(PlaceOrderError::EmptyOrder)));
    /// assert!(orders.is_empty());
    /// assert_eq!(outbox.stats().expect("stats").pending, 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The error `f` aborted with, or [`OutboxError::Storage`] (converted into `E`) when sled
    /// fails. The errors of [`OutboxTransaction::enqueue`] abort the transaction the same way
    /// when passed on with `?`.
    pub fn transaction<R, E, F>(&self, trees: &[sled::Tree], f: F) -> Result<R, E>
    where
        E: From<OutboxError>,
        F: Fn(&OutboxTransaction<'_>) -> ConflictableTransactionResult<R, E>,
    {
        let inner = self.inner();
        let mut all = Vec::with_capacity(trees.len() + 2);
        all.push(inner.rows.clone());
        all.push(inner.meta.clone());
        all.extend_from_slice(trees);

        let enqueued = Cell::new(0);
        let result = all.as_slice().transaction(|views| {
            enqueued.set(0);
            let tx = OutboxTransaction {
                inner,
                rows: &views[0],
                meta: &views[1],
                trees: &views[2..],
                now_ms: inner.config.clock.now_ms(),
                enqueued: &enqueued,
            };
            let value = f(&tx)?;
            if inner.config.flush_on_commit {
                views[0].flush();
            }
            Ok(value)
        });

        match result {
            Ok(value) => {
                if enqueued.get() > 0 {
                    inner.wake.bump();
                }
                Ok(value)
            }
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(source)) => Err(E::from(inner.storage(source))),
        }
    }
}

impl OutboxTransaction<'_> {
    /// Returns the application tree at `index` in the slice passed to [`Outbox::transaction`].
    ///
    /// # Panics
    ///
    /// When `index` is out of range of that slice.
    pub fn tree(&self, index: usize) -> &TransactionalTree {
        &self.trees[index]
    }

    /// Returns the application trees, in the order passed to [`Outbox::transaction`].
    pub fn trees(&self) -> &[TransactionalTree] {
        self.trees
    }

    /// Enqueues `event`, encoded with postcard, for `topic` with partition key `key`, and
    /// returns the row's sequence number. The event is published with the message id
    /// `OUTBOX-INSTANCE-SEQ`.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Outbox, OutboxError};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let outbox = Outbox::open(&broker, "accounts")?;
    /// let first = outbox.transaction(&[], |tx| {
    ///     tx.enqueue::<_, OutboxError>("account.opened", "account-1", &"alice")
    /// })?;
    /// let second = outbox.transaction(&[], |tx| {
    ///     tx.enqueue::<_, OutboxError>("account.opened", "account-2", &"bob")
    /// })?;
    /// assert!(second > first);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Aborts with [`OutboxError::Encode`] when serde cannot encode the event and with
    /// [`OutboxError::InvalidTopic`] for a topic name the broker would reject.
    pub fn enqueue<T, E>(
        &self,
        topic: &str,
        key: impl AsRef<[u8]>,
        event: &T,
    ) -> ConflictableTransactionResult<u64, E>
    where
        T: Serialize + ?Sized,
        E: From<OutboxError>,
    {
        let payload = postcard::to_stdvec(event).map_err(|source| {
            abort(OutboxError::Encode {
                topic: topic.to_string(),
                type_name: std::any::type_name::<T>(),
                source,
            })
        })?;
        self.enqueue_message(topic, Message::new(payload).key(key.as_ref()))
    }

    /// Enqueues a prepared message for `topic`, for events without a key or with headers or
    /// a delivery time. A message with an id is published with that id, so the target
    /// deduplicates rows with equal ids. A message without one gets `OUTBOX-INSTANCE-SEQ`.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::{Broker, Message};
    /// use aqueduct_patterns::{Outbox, OutboxError};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let outbox = Outbox::open(&broker, "audit")?;
    /// outbox.transaction(&[], |tx| {
    ///     let message = Message::new("login").header("source", "web");
    ///     tx.enqueue_message::<OutboxError>("audit.events", message)
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Aborts with [`OutboxError::InvalidTopic`] or [`OutboxError::InvalidHeader`] for a topic
    /// or header name the broker would reject.
    pub fn enqueue_message<E>(
        &self,
        topic: &str,
        message: Message,
    ) -> ConflictableTransactionResult<u64, E>
    where
        E: From<OutboxError>,
    {
        validate_message(self.inner, topic, &message).map_err(abort)?;
        let seq = match self.meta.get(NEXT_SEQ_KEY)? {
            None => 0,
            Some(bytes) => seq_from_key(&bytes)
                .ok_or_else(|| abort(self.inner.corrupt("meta", 0, "next_seq is not 8 bytes")))?,
        };
        let row = RowRecord {
            topic: topic.to_string(),
            key: message.key_bytes().map(|key| key.to_vec().into()),
            payload: message.payload().to_vec().into(),
            headers: message
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone().into()))
                .collect(),
            id: message
                .message_id()
                .map_or_else(|| self.inner.message_id(seq), str::to_string),
            enqueued_at_ms: self.now_ms,
            deliver_at_ms: message.delivery_time().map(system_time_ms),
        };
        let bytes = encode(&row).map_err(|source| {
            abort(OutboxError::Encode {
                topic: topic.to_string(),
                type_name: "outbox row",
                source,
            })
        })?;
        self.rows.insert(&seq_key(seq)[..], bytes)?;
        self.meta.insert(NEXT_SEQ_KEY, &seq_key(seq + 1)[..])?;
        self.enqueued.set(self.enqueued.get() + 1);
        Ok(seq)
    }
}

fn abort<E: From<OutboxError>>(error: OutboxError) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(E::from(error))
}

fn system_time_ms(time: std::time::SystemTime) -> u64 {
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
