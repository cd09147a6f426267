//! Rebuilding a projection into a fresh read-model generation.

use std::time::Instant;

use super::{Shared, Source};
use crate::cqrs::checkpoint::{self, Checkpoint, ACTIVE_KEY};
use crate::cqrs::error::ProjectionError;
use crate::cqrs::read_model::Generation;
use crate::cqrs::SourceEvent;
use crate::event_store::EventStore;

use super::config::RebuildReport;

impl Shared {
    pub(super) fn rebuild(&self) -> Result<RebuildReport, ProjectionError> {
        let store = match &self.source {
            Source::Store(store) => store,
            Source::Topic(topic) => {
                return Err(ProjectionError::RebuildUnsupported {
                    projection: self.name.clone(),
                    topic: topic.clone(),
                })
            }
        };
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
        let mut applied = self.catch_up(store, &generation, &mut checkpoint, true)?;
        let applying = self.apply_lock.lock();
        applied += self.catch_up(store, &generation, &mut checkpoint, false)?;
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
