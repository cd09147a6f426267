//! Rebuilding a projection into a fresh read-model generation.
//!
//! A store-fed projection replays the event store. A topic-fed projection reads the topic's
//! retained messages with `Broker::peek`, outside any consumer group, so the live runner's
//! group keeps its position. Both catch up once more while the live runner is paused, then
//! swap the new generation in with its own checkpoint. Topic messages that the live group
//! delivers afterwards and that the new checkpoint already covers are only acknowledged.

use std::time::Instant;

use super::{Shared, Source};
use crate::cqrs::checkpoint::{self, Checkpoint, ACTIVE_KEY};
use crate::cqrs::error::ProjectionError;
use crate::cqrs::read_model::Generation;
use crate::cqrs::{Position, SourceEvent, TopicMessage};
use crate::event_store::EventStore;

use super::config::RebuildReport;

impl Shared {
    pub(super) fn rebuild(&self) -> Result<RebuildReport, ProjectionError> {
        let _one_rebuild = self.rebuild_lock.lock();
        let started = Instant::now();
        let old = self.model.current().number;
        let number = checkpoint::stored_generations(&self.meta)?
            .into_iter()
            .chain([old])
            .max()
            .unwrap_or(old)
            + 1;
        let generation =
            Generation::open(&self.broker, &self.meta, &self.name, number, &self.tables)?;
        generation.clear()?;
        tracing::info!(projection = %self.name, generation = number, "rebuild started");

        let mut checkpoint = Checkpoint::default();
        let mut applied = self.catch_up_source(&generation, &mut checkpoint, true)?;
        let applying = self.apply_lock.lock();
        applied += self.catch_up_source(&generation, &mut checkpoint, false)?;
        self.meta.insert(ACTIVE_KEY, &number.to_be_bytes())?;
        self.flush()?;
        let retired = self.model.swap(generation);
        self.publish(checkpoint);
        drop(applying);
        // Emptying the old tables can take a while, so it happens after the live runner
        // is free to continue.
        drop(retired);

        let report = RebuildReport {
            generation: number,
            events: applied,
            elapsed: started.elapsed(),
        };
        tracing::info!(projection = %self.name, ?report, "rebuild swapped in");
        Ok(report)
    }

    fn catch_up_source(
        &self,
        generation: &Generation,
        checkpoint: &mut Checkpoint,
        stop_at_short_batch: bool,
    ) -> Result<u64, ProjectionError> {
        match &self.source {
            Source::Store(store) => {
                self.catch_up(store, generation, checkpoint, stop_at_short_batch)
            }
            Source::Topic(topic) => self.catch_up_topic(topic, generation, checkpoint),
        }
    }

    /// Applies a topic's retained messages to `generation`, partition by partition, from
    /// `checkpoint` on until each partition's end. Returns how many.
    fn catch_up_topic(
        &self,
        topic: &str,
        generation: &Generation,
        checkpoint: &mut Checkpoint,
    ) -> Result<u64, ProjectionError> {
        let partitions = self.broker.topic_config(topic)?.partition_count();
        let mut applied = 0;
        for partition in 0..partitions {
            loop {
                let from = checkpoint.next_offset(partition);
                let batch = self
                    .broker
                    .peek(topic, partition, from, self.config.batch_size)?;
                if batch.is_empty() {
                    break;
                }
                let events: Vec<SourceEvent> = batch
                    .into_iter()
                    .map(|message| {
                        let position = Position {
                            partition,
                            offset: message.offset,
                        };
                        SourceEvent::Message(position, peeked_message(topic, message))
                    })
                    .collect();
                *checkpoint = self.apply_with_retries(generation, checkpoint, &events)?;
                applied += events.len() as u64;
            }
        }
        Ok(applied)
    }

    /// Applies stored events to `generation` from `checkpoint` on until none are left, or,
    /// with `stop_at_short_batch`, until a batch comes back short. Returns how many.
    fn catch_up(
        &self,
        store: &EventStore,
        generation: &Generation,
        checkpoint: &mut Checkpoint,
        stop_at_short_batch: bool,
    ) -> Result<u64, ProjectionError> {
        let mut applied = 0;
        loop {
            let events = store.read_all(checkpoint.next_offset(0), self.config.batch_size)?;
            let count = events.len();
            if count == 0 {
                return Ok(applied);
            }
            let events: Vec<SourceEvent> = events.into_iter().map(SourceEvent::Stored).collect();
            *checkpoint = self.apply_with_retries(generation, checkpoint, &events)?;
            applied += count as u64;
            if stop_at_short_batch && count < self.config.batch_size {
                return Ok(applied);
            }
        }
    }
}

fn peeked_message(topic: &str, message: aqueduct::PeekedMessage) -> TopicMessage {
    TopicMessage {
        topic: topic.to_string(),
        key: message.key,
        headers: message.headers,
        id: message.id,
        timestamp_ms: message.timestamp_ms,
        payload: message.payload,
    }
}
