//! Catch-up subscriptions over all streams.
//!
//! A subscription keeps the next global position it will return. It reads stored events in
//! batches, and once it has read everything it waits for the next append. Catching up and
//! following live appends are the same read by position, so the switch between them has no
//! gap and no duplicate: positions are dense, and [`EventStore::read_all`] stops before the
//! first position that is not visible yet.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::error::EventStoreError;
use super::types::RecordedEvent;
use super::EventStore;

/// Events read per batch.
const BATCH: usize = 256;

/// Maximum single wait, so that appends made through `append_in` without a call to
/// `committed` are still seen.
const POLL: Duration = Duration::from_millis(50);

/// A catch-up subscription from a global position; see [`EventStore::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    store: EventStore,
    next_position: u64,
    buffer: VecDeque<RecordedEvent>,
    live: bool,
}

impl Subscription {
    pub(crate) fn new(store: EventStore, next_position: u64) -> Self {
        Subscription {
            store,
            next_position,
            buffer: VecDeque::new(),
            live: false,
        }
    }

    /// The position of the next event this subscription returns.
    pub fn next_position(&self) -> u64 {
        self.buffer
            .front()
            .map_or(self.next_position, |event| event.position)
    }

    /// Returns whether the last read found no more stored events, so the subscription now
    /// follows live appends.
    pub fn is_live(&self) -> bool {
        self.live && self.buffer.is_empty()
    }

    /// Returns the next event if one is stored, without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = aqueduct_patterns::EventStore::open(&broker, "quiet")?;
    /// let mut subscription = store.subscribe(0);
    /// assert!(subscription.try_next()?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn try_next(&mut self) -> Result<Option<RecordedEvent>, EventStoreError> {
        if self.buffer.is_empty() {
            self.fill()?;
        }
        Ok(self.buffer.pop_front())
    }

    /// Waits up to `timeout` for the next event; `Ok(None)` when none arrived in time.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = aqueduct_patterns::EventStore::open(&broker, "waiting")?;
    /// let mut subscription = store.subscribe(0);
    /// assert!(subscription.recv_timeout(Duration::from_millis(10))?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`try_next`](Self::try_next).
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<RecordedEvent>, EventStoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.store.append_seq();
            if let Some(event) = self.try_next()? {
                return Ok(Some(event));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.store.wait_for_append(seen, (deadline - now).min(POLL));
        }
    }

    fn fill(&mut self) -> Result<(), EventStoreError> {
        let events = self.store.read_all(self.next_position, BATCH)?;
        self.live = events.len() < BATCH;
        if let Some(last) = events.last() {
            self.next_position = last.position + 1;
        }
        self.buffer.extend(events);
        Ok(())
    }
}
