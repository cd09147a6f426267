//! Parked rows: rows the target rejected, kept with the error until an operator acts.
//!
//! A parked row holds back every later row with its topic and key, so the relay never
//! publishes them out of order. Moving a row between the pending and parked trees is one sled
//! transaction, so a crash leaves it in exactly one of them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::record::{decode, encode, seq_from_key, seq_key, ParkedRecord, RowRecord};
use super::{Inner, Outbox, OutboxError};

/// A row the target rejected, as listed by [`Outbox::parked`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedRow {
    /// The row's sequence number, used by [`Outbox::retry_parked`] and
    /// [`Outbox::discard_parked`].
    pub seq: u64,
    /// The topic the row was for.
    pub topic: String,
    /// The partition key, if any.
    pub key: Option<Vec<u8>>,
    /// The message id the row is published with.
    pub message_id: String,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// The target's error.
    pub error: String,
    /// When the row was enqueued.
    pub enqueued_at: SystemTime,
    /// When the relay parked it.
    pub parked_at: SystemTime,
}

impl ParkedRow {
    /// Decodes the payload with postcard.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct_patterns::ParkedRow;
    ///
    /// # fn show(row: &ParkedRow) -> Result<(), postcard::Error> {
    /// let (order, total): (u64, u64) = row.decode()?;
    /// println!("order {order} ({total} cents) rejected: {}", row.error);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The postcard error when the payload does not decode as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        postcard::from_bytes(&self.payload)
    }

    fn from_record(seq: u64, record: ParkedRecord) -> Self {
        ParkedRow {
            seq,
            topic: record.row.topic,
            key: record.row.key.map(|key| key.into_vec()),
            message_id: record.row.id,
            payload: record.row.payload.into_vec(),
            error: record.error,
            enqueued_at: UNIX_EPOCH + Duration::from_millis(record.row.enqueued_at_ms),
            parked_at: UNIX_EPOCH + Duration::from_millis(record.parked_at_ms),
        }
    }
}

impl Outbox {
    /// Returns the parked rows in sequence order.
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
    /// for row in outbox.parked()? {
    ///     println!("row {} for {} rejected: {}", row.seq, row.topic, row.error);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::Storage`] and [`OutboxError::Corrupt`].
    pub fn parked(&self) -> Result<Vec<ParkedRow>, OutboxError> {
        let inner = self.inner();
        let mut rows = Vec::new();
        for item in inner.parked.iter() {
            let (key, value) = item.map_err(|e| inner.storage(e))?;
            let (seq, record) = decode_parked(inner, &key, &value)?;
            rows.push(ParkedRow::from_record(seq, record));
        }
        Ok(rows)
    }

    /// Moves parked row `seq` back to the pending rows with its sequence number and message id,
    /// so the relay publishes it again before the later rows of its key. Use it once the cause
    /// of the rejection is fixed on the target's side.
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
    /// let missing = outbox.retry_parked(7);
    /// assert!(matches!(missing, Err(OutboxError::ParkedRowNotFound { seq: 7, .. })));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::ParkedRowNotFound`], [`OutboxError::Storage`] and
    /// [`OutboxError::Corrupt`].
    pub fn retry_parked(&self, seq: u64) -> Result<(), OutboxError> {
        let inner = self.inner();
        let key = seq_key(seq);
        let result = (&inner.parked, &inner.rows).transaction(|(parked, rows)| {
            let Some(value) = parked.remove(&key[..])? else {
                return Err(ConflictableTransactionError::Abort(not_parked(inner, seq)));
            };
            let record: ParkedRecord = decode(&value).map_err(|reason| {
                ConflictableTransactionError::Abort(inner.corrupt("parked", seq, &reason))
            })?;
            let bytes = encode(&record.row).map_err(|error| {
                ConflictableTransactionError::Abort(inner.corrupt(
                    "parked",
                    seq,
                    &error.to_string(),
                ))
            })?;
            rows.insert(&key[..], bytes)?;
            Ok(())
        });
        finish(inner, result)?;
        tracing::info!(outbox = %inner.name, seq, "parked outbox row returned for publishing");
        inner.wake.bump();
        Ok(())
    }

    /// Deletes parked row `seq` without publishing it and returns it. The later rows of its
    /// key are then published.
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
    /// for row in outbox.parked()? {
    ///     let discarded = outbox.discard_parked(row.seq)?;
    ///     println!("discarded {} ({})", discarded.message_id, discarded.error);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::ParkedRowNotFound`], [`OutboxError::Storage`] and
    /// [`OutboxError::Corrupt`].
    pub fn discard_parked(&self, seq: u64) -> Result<ParkedRow, OutboxError> {
        let inner = self.inner();
        let key = seq_key(seq);
        let removed = inner
            .parked
            .remove(&key[..])
            .map_err(|e| inner.storage(e))?;
        let Some(value) = removed else {
            return Err(not_parked(inner, seq));
        };
        let (seq, record) = decode_parked(inner, &key, &value)?;
        let row = ParkedRow::from_record(seq, record);
        tracing::warn!(
            outbox = %inner.name,
            seq,
            topic = %row.topic,
            message_id = %row.message_id,
            "parked outbox row discarded by request"
        );
        inner.wake.bump();
        Ok(row)
    }
}

impl Inner {
    /// Moves pending row `seq` to the parked rows with `error`.
    pub(crate) fn park(&self, seq: u64, row: &RowRecord, error: &str) -> Result<(), OutboxError> {
        let record = ParkedRecord {
            row: row.clone(),
            error: error.to_string(),
            parked_at_ms: self.config.clock.now_ms(),
        };
        let bytes =
            encode(&record).map_err(|error| self.corrupt("parked", seq, &error.to_string()))?;
        let key = seq_key(seq);
        let result = (&self.rows, &self.parked).transaction(|(rows, parked)| {
            rows.remove(&key[..])?;
            parked.insert(&key[..], bytes.clone())?;
            Ok::<_, ConflictableTransactionError<OutboxError>>(())
        });
        finish(self, result)
    }

    /// Returns the topic and key of every parked row that has a key.
    pub(crate) fn parked_keys(&self) -> Result<HashSet<(String, Vec<u8>)>, OutboxError> {
        let mut keys = HashSet::new();
        for item in self.parked.iter() {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let (_, record) = decode_parked(self, &key, &value)?;
            keys.extend(record.row.order_key());
        }
        Ok(keys)
    }
}

fn decode_parked(
    inner: &Inner,
    key: &[u8],
    value: &[u8],
) -> Result<(u64, ParkedRecord), OutboxError> {
    let seq = seq_from_key(key).ok_or_else(|| inner.corrupt("parked", 0, "key is not 8 bytes"))?;
    let record = decode(value).map_err(|reason| inner.corrupt("parked", seq, &reason))?;
    Ok((seq, record))
}

fn not_parked(inner: &Inner, seq: u64) -> OutboxError {
    OutboxError::ParkedRowNotFound {
        outbox: inner.name.clone(),
        seq,
    }
}

fn finish(
    inner: &Inner,
    result: Result<(), TransactionError<OutboxError>>,
) -> Result<(), OutboxError> {
    match result {
        Ok(()) => Ok(()),
        Err(TransactionError::Abort(error)) => Err(error),
        Err(TransactionError::Storage(source)) => Err(inner.storage(source)),
    }
}
