//! Feeding a projection from a broker topic.
//!
//! The runner reads through consumer group `projection.NAME` in per-partition order. A
//! delivery at or below the checkpoint was applied before (its ack was lost) and is only
//! acknowledged. A delivery ahead of the next expected offset is returned for redelivery
//! until the missing offsets arrive, because applying it would let the checkpoint skip them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aqueduct::{Consumer, Delivery};

use super::{PeriodicFlush, Shared, IDLE_WAIT};
use crate::cqrs::error::ProjectionError;
use crate::cqrs::{Position, SourceEvent, TopicMessage};

/// Delay before a topic message that arrived ahead of an earlier one is offered again.
const EARLY_RETRY: Duration = Duration::from_millis(50);

/// Deliveries of a message that arrived ahead of a missing earlier offset, after which the
/// runner accepts the gap (removed by retention or dead-lettered) and applies it.
const GAP_ATTEMPTS: u32 = 3;

impl Shared {
    pub(super) fn run_topic(&self, consumer: &mut Consumer) -> Result<(), ProjectionError> {
        let mut flusher = PeriodicFlush::new(self.config.flush_interval);
        while !self.stop.load(Ordering::SeqCst) {
            let deliveries = consumer.recv_batch(self.config.batch_size, IDLE_WAIT)?;
            let applied = !deliveries.is_empty();
            if applied {
                self.apply_deliveries(deliveries)?;
            }
            flusher.record(applied);
            if flusher.is_due() {
                self.flush()?;
                flusher.flushed();
            }
        }
        Ok(())
    }

    /// Applies the deliveries that continue the checkpoint, acknowledges those and the ones
    /// already applied, and returns early arrivals for redelivery.
    fn apply_deliveries(&self, deliveries: Vec<Delivery>) -> Result<(), ProjectionError> {
        let _applying = self.apply_lock.lock();
        let generation = self.model.current();
        let checkpoint = self.progress.lock().checkpoint.clone();

        let mut next = checkpoint.clone();
        let mut events = Vec::new();
        let mut settle = Vec::new();
        let mut early = Vec::new();
        for delivery in deliveries {
            let position = Position {
                partition: delivery.partition(),
                offset: delivery.offset(),
            };
            let expected = next.next_offset(position.partition);
            if next.includes(position) {
                settle.push(delivery);
            } else if position.offset == expected || self.accepts_gap(&delivery, expected) {
                next.advance(position);
                events.push(SourceEvent::Message(position, topic_message(&delivery)));
                settle.push(delivery);
            } else {
                early.push(delivery);
            }
        }

        let after = self.apply_with_retries(&generation, &checkpoint, &events)?;
        self.publish(after);
        for delivery in settle {
            let (partition, offset) = (delivery.partition(), delivery.offset());
            if let Err(error) = delivery.ack() {
                // The checkpoint already covers it, so a redelivery is only acknowledged.
                tracing::debug!(projection = %self.name, partition, offset, %error, "ack failed");
            }
        }
        for delivery in early {
            let (partition, offset) = (delivery.partition(), delivery.offset());
            if let Err(error) = delivery.nack_after(EARLY_RETRY) {
                tracing::debug!(projection = %self.name, partition, offset, %error, "nack failed");
            }
        }
        Ok(())
    }

    /// Decides whether a delivery ahead of the expected offset is applied anyway: when the
    /// partition has no checkpoint yet (the group starts at the earliest retained message),
    /// or when it came back `GAP_ATTEMPTS` times without the missing offsets arriving.
    // NOTE: a topic whose max_deliveries is below GAP_ATTEMPTS dead-letters such a message
    // before the runner accepts the gap.
    fn accepts_gap(&self, delivery: &Delivery, expected: u64) -> bool {
        if expected == 0 {
            return true;
        }
        if delivery.attempt() >= GAP_ATTEMPTS {
            tracing::warn!(
                projection = %self.name,
                topic = delivery.topic(),
                partition = delivery.partition(),
                missing_from = expected,
                missing_to = delivery.offset(),
                "offsets never arrived (retention or dead letters); continuing after them"
            );
            return true;
        }
        false
    }
}

fn topic_message(delivery: &Delivery) -> TopicMessage {
    TopicMessage {
        topic: delivery.topic().to_string(),
        key: delivery.key().map(<[u8]>::to_vec),
        headers: delivery
            .headers()
            .map(|(name, value)| (name.to_string(), value.to_vec()))
            .collect(),
        id: delivery.id().map(str::to_string),
        timestamp_ms: delivery.timestamp_ms(),
        payload: delivery.payload().to_vec(),
    }
}
