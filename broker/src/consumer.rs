//! Consumers and deliveries.
//!
//! A [`Consumer`] is one member of a group. It fetches deliveries in batches of
//! [`ConsumerConfig::prefetch`](crate::ConsumerConfig::prefetch) and hands them out one at a
//! time. Every [`Delivery`] must be settled with [`ack`](Delivery::ack),
//! [`nack`](Delivery::nack), [`nack_after`](Delivery::nack_after) or
//! [`dead_letter`](Delivery::dead_letter). A delivery that is dropped unsettled, including
//! during a panic, is returned for immediate redelivery. A delivery kept past the topic's ack
//! timeout is redelivered to any member.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::broker::Broker;
use crate::config::ConsumerConfig;
use crate::error::{Error, Result};
use crate::group::{Group, Leased, Outcome};
use crate::message::DeadLetterInfo;
use crate::record::StoredMessage;

/// Maximum single sleep of a waiting consumer, so that a lost wake-up costs at most this.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// Size of a new consumer's first fetch.
const INITIAL_BATCH: usize = 16;

/// One member of a consumer group.
///
/// # Examples
///
/// ```
/// use aqueduct::{Broker, Message, TopicConfig};
///
/// # fn main() -> aqueduct::Result<()> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("jobs", TopicConfig::default())?;
/// broker.publish("jobs", Message::new("resize image 7"))?;
///
/// let mut consumer = broker.subscribe("jobs", "workers")?;
/// let delivery = consumer.recv()?;
/// assert_eq!(delivery.payload(), b"resize image 7");
/// delivery.ack()?;
/// # Ok(())
/// # }
/// ```
pub struct Consumer {
    group: Arc<Group>,
    id: u64,
    config: ConsumerConfig,
    /// Deliveries whose attempt counts are durable, ready to hand out.
    buffer: VecDeque<Leased>,
    /// Clock time of the fetch that filled the buffer.
    fetched_at_ms: u64,
    generation: u64,
    /// The next batch, fetched while the buffer drains, whose flush round may still run.
    ahead: Option<Batch>,
    /// Set while the buffer contains a delivery that was in flight when the process last
    /// stopped. Nothing is fetched ahead until the application requests the next delivery.
    holding_suspect: bool,
    /// Size of the next fetch. It starts small and doubles, up to `prefetch`, each time the
    /// buffer ran dry before the next batch's flush round finished, so a fast consumer
    /// amortizes one fsync over more deliveries while a slow one holds few leases.
    batch_size: usize,
    broker: Broker,
}

/// A fetched batch waiting for the flush round that makes its attempt counts durable.
struct Batch {
    leased: Vec<Leased>,
    ticket: u64,
    fetched_at_ms: u64,
    generation: u64,
    /// Whether the batch is one delivery that was in flight when the process last stopped.
    suspect: bool,
}

impl Consumer {
    pub(crate) fn new(broker: Broker, group: Arc<Group>, id: u64, config: ConsumerConfig) -> Self {
        let generation = group.join(id, config.max_unacked);
        let batch_size = INITIAL_BATCH.min(config.prefetch);
        Consumer {
            group,
            id,
            config,
            buffer: VecDeque::new(),
            fetched_at_ms: 0,
            generation,
            ahead: None,
            holding_suspect: false,
            batch_size,
            broker,
        }
    }

    /// Returns the topic this consumer reads.
    pub fn topic(&self) -> &str {
        &self.group.topic.name
    }

    /// Returns the group this consumer belongs to.
    pub fn group(&self) -> &str {
        &self.group.name
    }

    /// Returns a delivery if one is available now, without waiting.
    ///
    /// # Errors
    ///
    /// Storage failures and [`Error::Closed`].
    pub fn try_recv(&mut self) -> Result<Option<Delivery>> {
        if let Some(delivery) = self.next_buffered()? {
            return Ok(Some(delivery));
        }
        self.fetch_ahead()?;
        self.next_buffered()
    }

    /// Waits up to `timeout` for a delivery; `Ok(None)` when none arrived.
    ///
    /// # Errors
    ///
    /// Storage failures and [`Error::Closed`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(delivery) = self.next_buffered()? {
                return Ok(Some(delivery));
            }
            let seen = self.group.topic.signal.seq();
            let next_due = self.fetch_ahead()?;
            if self.ahead.is_some() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = self.wait_time(deadline - now, next_due);
            self.group.topic.signal.wait(seen, wait);
        }
    }

    /// Waits for a delivery.
    ///
    /// # Errors
    ///
    /// Storage failures and [`Error::Closed`].
    pub fn recv(&mut self) -> Result<Delivery> {
        loop {
            if let Some(delivery) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(delivery);
            }
        }
    }

    /// Waits up to `timeout` for the first delivery, then returns it with up to `max - 1` more
    /// that are available without waiting.
    ///
    /// # Errors
    ///
    /// Storage failures and [`Error::Closed`].
    pub fn recv_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        let Some(first) = self.recv_timeout(timeout)? else {
            return Ok(batch);
        };
        batch.push(first);
        while batch.len() < max {
            match self.try_recv()? {
                Some(delivery) => batch.push(delivery),
                None => break,
            }
        }
        Ok(batch)
    }

    /// Waits for a delivery without blocking the tokio runtime.
    ///
    /// Cancel safety: if the future is dropped, deliveries already fetched stay in this
    /// consumer's buffer for the next call.
    ///
    /// Settling is synchronous: under `Durability::Flushed`, [`Delivery::ack`] and the other
    /// settle methods, like `Broker::publish`, block the calling thread until a flush round
    /// ends (milliseconds). In a tokio task, call them through
    /// `tokio::task::spawn_blocking` or `block_in_place` when that matters.
    ///
    /// # Errors
    ///
    /// Storage failures and [`Error::Closed`].
    pub async fn recv_async(&mut self) -> Result<Delivery> {
        loop {
            if self.buffer.is_empty() {
                if let Some(batch) = &self.ahead {
                    self.group.flusher.wait_async(batch.ticket).await?;
                }
            }
            if let Some(delivery) = self.next_buffered()? {
                return Ok(delivery);
            }
            let signal = Arc::clone(&self.group.topic.signal);
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = self.fetch_ahead()?;
            if self.ahead.is_some() {
                continue;
            }
            let wait = self.wait_time(MAX_WAIT, next_due);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Turns the consumer into a stream of deliveries for use with async combinators.
    pub fn into_stream(self) -> impl futures_core::Stream<Item = Result<Delivery>> + Send {
        futures_util::stream::unfold(self, |mut consumer| async move {
            let next = consumer.recv_async().await;
            Some((next, consumer))
        })
    }

    fn wait_time(&self, remaining: Duration, next_due_ms: Option<u64>) -> Duration {
        let mut wait = remaining.min(MAX_WAIT);
        if let Some(due) = next_due_ms {
            let until_due = due.saturating_sub(self.group.clock.now_ms());
            wait = wait.min(Duration::from_millis(until_due.max(1)));
        }
        wait
    }

    /// Fetches the next batch unless one is already waiting, and requests the flush round
    /// that makes its attempt counts durable without waiting for it. Returns when the next
    /// held-back message becomes due.
    fn fetch_ahead(&mut self) -> Result<Option<u64>> {
        if self.ahead.is_some() {
            return Ok(None);
        }
        let fetched = self.group.fetch(self.id, self.batch_size)?;
        if !fetched.leased.is_empty() {
            self.ahead = Some(Batch {
                leased: fetched.leased,
                ticket: self.group.flusher.request(),
                fetched_at_ms: self.group.clock.now_ms(),
                generation: fetched.generation,
                suspect: fetched.suspect,
            });
        }
        Ok(fetched.next_due_ms)
    }

    /// Pops the next delivery. The batch fetched ahead moves into the buffer once its flush
    /// round is done. While the buffer contains fewer than `prefetch` deliveries, the batch
    /// after it is fetched, so that its flush round runs while this batch is handed out. With
    /// a prefetch of 1 nothing is fetched ahead. Leases older than half the ack timeout, or from
    /// before a rebalance, are returned to the group instead, because they may already be gone.
    fn next_buffered(&mut self) -> Result<Option<Delivery>> {
        self.drop_stale();
        if self.buffer.is_empty() {
            let Some(batch) = self.ahead.take() else {
                // The application came back for more, so a suspect it was handed did not stop
                // the process; fetching may resume.
                self.holding_suspect = false;
                return Ok(None);
            };
            self.holding_suspect = batch.suspect;
            if !self.group.flusher.is_done(batch.ticket) {
                self.batch_size = (self.batch_size * 2).min(self.config.prefetch);
            }
            if let Err(error) = self.group.flusher.wait(batch.ticket) {
                self.group.release_unhanded(&batch.leased);
                return Err(error);
            }
            self.buffer.extend(batch.leased);
            self.fetched_at_ms = batch.fetched_at_ms;
            self.generation = batch.generation;
        }
        if self.buffer.len() < self.config.prefetch && !self.holding_suspect {
            self.fetch_ahead()?;
        }
        Ok(self
            .buffer
            .pop_front()
            .map(|leased| Delivery::new(Arc::clone(&self.group), self.broker.clone(), leased)))
    }

    fn drop_stale(&mut self) {
        let now = self.group.clock.now_ms();
        let max_age = self.group.topic.config.ack_timeout_ms / 2;
        let generation = self.group.generation();
        let buffer_stale = !self.buffer.is_empty()
            && (now.saturating_sub(self.fetched_at_ms) > max_age || self.generation != generation);
        if buffer_stale {
            let stale: Vec<Leased> = self.buffer.drain(..).collect();
            self.group.release_unhanded(&stale);
        }
        // The batch fetched ahead contains later offsets than the returned buffer, so it goes back
        // too. Handing it out first would put those offsets before the returned ones.
        let ahead_stale = buffer_stale
            || self.ahead.as_ref().is_some_and(|batch| {
                now.saturating_sub(batch.fetched_at_ms) > max_age || batch.generation != generation
            });
        if ahead_stale {
            if let Some(batch) = self.ahead.take() {
                self.group.release_unhanded(&batch.leased);
            }
        }
    }

    fn return_buffer(&mut self) {
        let mut unhanded: Vec<Leased> = self.buffer.drain(..).collect();
        if let Some(batch) = self.ahead.take() {
            unhanded.extend(batch.leased);
        }
        self.group.release_unhanded(&unhanded);
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.return_buffer();
        self.group.leave(self.id);
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.group.topic.name)
            .field("group", &self.group.name)
            .field("id", &self.id)
            .field("buffered", &self.buffer.len())
            .field(
                "fetched_ahead",
                &self.ahead.as_ref().map_or(0, |batch| batch.leased.len()),
            )
            .finish()
    }
}

/// A message leased to one consumer. The settle methods take `self`, so a delivery is settled
/// at most once.
pub struct Delivery {
    group: Arc<Group>,
    message: Arc<StoredMessage>,
    partition: u32,
    offset: u64,
    attempt: u32,
    epoch: u64,
    settled: bool,
    /// Keeps the flusher running until the delivery is settled, so that a settle after the
    /// last broker handle and consumer are dropped still reaches storage.
    _broker: Broker,
}

impl Delivery {
    fn new(group: Arc<Group>, broker: Broker, leased: Leased) -> Self {
        Delivery {
            group,
            _broker: broker,
            message: leased.message,
            partition: leased.partition,
            offset: leased.offset,
            attempt: leased.attempt,
            epoch: leased.epoch,
            settled: false,
        }
    }

    /// Returns the payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// Decodes the payload with postcard.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the topic, partition, offset and type when the bytes do not
    /// decode as `T`, including when bytes are left over after a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let decode_error = |source| Error::Decode {
            topic: self.group.topic.name.clone(),
            partition: self.partition,
            offset: self.offset,
            type_name: std::any::type_name::<T>(),
            source,
        };
        let (value, rest) =
            postcard::take_from_bytes(&self.message.payload).map_err(decode_error)?;
        // Bytes left over mean the payload is some other, longer value.
        if !rest.is_empty() {
            return Err(decode_error(postcard::Error::DeserializeBadEncoding));
        }
        Ok(value)
    }

    /// Returns the partition key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.message.key.as_deref().map(|key| &key[..])
    }

    /// Returns the headers in publish order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.message
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), &value[..]))
    }

    /// Returns the value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(header, _)| *header == name)
            .map(|(_, value)| value)
    }

    /// Returns the message id, if any.
    pub fn id(&self) -> Option<&str> {
        self.message.id.as_deref()
    }

    /// Returns the topic the delivery came from.
    pub fn topic(&self) -> &str {
        &self.group.topic.name
    }

    /// Returns the partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Returns the offset within the partition.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Which delivery of this message to this group this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the message was published, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.message.timestamp_ms
    }

    /// For a message in a dead-letter topic: where it came from and why it was moved.
    pub fn dead_letter_info(&self) -> Option<&DeadLetterInfo> {
        self.message.dead_letter.as_ref()
    }

    /// Settles the delivery; the group will not deliver this message again.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseExpired`] when the lease expired and the message was handed to another
    /// consumer; storage failures.
    pub fn ack(mut self) -> Result<()> {
        self.settled = true;
        self.group
            .settle(self.partition, self.offset, self.epoch, Outcome::Ack)
    }

    /// Settles every delivery in `deliveries`, which may come from any consumers and groups of
    /// one broker. With `Durability::Flushed` all of them share the wait for one flush round,
    /// where acking them one by one waits for a round each.
    ///
    /// # Errors
    ///
    /// The first failure, such as [`Error::LeaseExpired`] for a delivery whose lease expired.
    /// The other deliveries are settled all the same.
    ///
    /// ```
    /// # use aqueduct::{Broker, Delivery, Message, TopicConfig};
    /// # use std::time::Duration;
    /// # fn main() -> aqueduct::Result<()> {
    /// # let broker = Broker::temporary()?;
    /// # broker.create_topic("events", TopicConfig::default())?;
    /// # broker.publish_batch("events", (0..3).map(|i| Message::new(format!("event {i}"))))?;
    /// let mut consumer = broker.subscribe("events", "audit")?;
    /// let batch = consumer.recv_batch(100, Duration::from_secs(1))?;
    /// // Process the batch, then settle all of it at once.
    /// Delivery::ack_all(batch)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ack_all(deliveries: impl IntoIterator<Item = Delivery>) -> Result<()> {
        let mut first_error = None;
        let mut to_sync: Vec<Arc<Group>> = Vec::new();
        for mut delivery in deliveries {
            delivery.settled = true;
            let group = &delivery.group;
            let outcome = group.settle_unsynced(
                delivery.partition,
                delivery.offset,
                delivery.epoch,
                Outcome::Ack,
            );
            if let Err(error) = outcome {
                first_error.get_or_insert(error);
            }
            // Groups of one broker share its flusher, so one group per broker is enough.
            if !to_sync.iter().any(|known| known.shares_flusher(group)) {
                to_sync.push(Arc::clone(group));
            }
        }
        for group in &to_sync {
            if let Err(error) = group.sync_settled() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Returns the message for redelivery now. At the topic's delivery limit the message is
    /// dead-lettered instead.
    ///
    /// # Errors
    ///
    /// As for [`ack`](Self::ack).
    pub fn nack(self) -> Result<()> {
        self.nack_after(Duration::ZERO)
    }

    /// Returns the message for redelivery after `delay`. At the topic's delivery limit the
    /// message is dead-lettered instead.
    ///
    /// # Errors
    ///
    /// As for [`ack`](Self::ack).
    pub fn nack_after(mut self, delay: Duration) -> Result<()> {
        self.settled = true;
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.group.settle(
            self.partition,
            self.offset,
            self.epoch,
            Outcome::Nack { delay_ms },
        )
    }

    /// Moves the message to the topic's dead-letter topic now, with `reason` as its last error.
    /// A reason longer than [`MAX_REASON_BYTES`] is cut to that length and marked as cut.
    ///
    /// # Errors
    ///
    /// [`Error::NoDeadLetterTopic`] when the topic has none (the delivery stays leased until
    /// its ack timeout); otherwise as for [`ack`](Self::ack).
    pub fn dead_letter(mut self, reason: impl Into<String>) -> Result<()> {
        self.settled = true;
        let outcome = Outcome::DeadLetter {
            reason: bounded_reason(reason.into()),
        };
        self.group
            .settle(self.partition, self.offset, self.epoch, outcome)
    }

    /// Renews the lease for another ack timeout, for handlers that need longer.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseExpired`] when the lease is already gone.
    pub fn extend(&self) -> Result<()> {
        self.group.extend(self.partition, self.offset, self.epoch)
    }
}

/// Maximum length of a dead-letter reason, in bytes. Longer reasons are cut, so that a handler that
/// passes a whole error report cannot store more than a message's worth of text.
pub const MAX_REASON_BYTES: usize = 4096;

fn bounded_reason(mut reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let original = reason.len();
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.push_str(&format!(" [cut from {original} bytes]"));
    reason
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        tracing::debug!(
            topic = %self.group.topic.name,
            group = %self.group.name,
            partition = self.partition,
            offset = self.offset,
            "delivery dropped unsettled; returning it for redelivery"
        );
        let outcome = Outcome::Nack { delay_ms: 0 };
        if let Err(error) = self
            .group
            .settle(self.partition, self.offset, self.epoch, outcome)
        {
            tracing::debug!(%error, "dropped delivery was no longer leased");
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.group.topic.name)
            .field("group", &self.group.name)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("attempt", &self.attempt)
            .field("payload_len", &self.message.payload.len())
            .finish()
    }
}
