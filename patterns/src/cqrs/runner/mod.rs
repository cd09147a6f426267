//! The projection runner: a thread that feeds a projection and keeps its checkpoint.

mod config;
mod rebuild;
mod topic;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Consumer, ConsumerConfig, OrderingMode};
use parking_lot::{Condvar, Mutex};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::checkpoint::{self, Checkpoint, ACTIVE_KEY};
use super::error::{ApplyError, ProjectionError};
use super::read_model::{Generation, ReadModel};
use super::{ModelWriter, Position, Projection, SourceEvent};
use crate::event_store::EventStore;

pub use self::config::{ProjectionConfig, RebuildReport};

/// Maximum wait for new events before the runner checks for a stop or a due flush.
const IDLE_WAIT: Duration = Duration::from_millis(100);

enum Source {
    Store(EventStore),
    Topic(String),
}

#[derive(Default)]
struct Progress {
    checkpoint: Checkpoint,
    failure: Option<String>,
    running: bool,
}

struct Shared {
    name: String,
    projection: Box<dyn Projection>,
    tables: Vec<String>,
    broker: Broker,
    meta: sled::Tree,
    meta_name: String,
    source: Source,
    config: ProjectionConfig,
    model: ReadModel,
    /// Held while applying to the active generation, so a rebuild can swap between batches.
    apply_lock: Mutex<()>,
    rebuild_lock: Mutex<()>,
    progress: Mutex<Progress>,
    progress_changed: Condvar,
    stop: AtomicBool,
}

/// Feeds a [`Projection`] from an event store or a broker topic on a background thread.
///
/// The runner stops when it is dropped or [`stop`](Self::stop)ped, after flushing its
/// progress. Run at most one runner per projection name and database: two runners of one
/// name would both write its checkpoint.
///
/// # Examples
///
/// ```
/// # use aqueduct_patterns::{ApplyError, ModelWriter, Projection, SourceEvent};
/// # struct Counter;
/// # impl Projection for Counter {
/// #     fn tables(&self) -> &[&str] { &["count"] }
/// #     fn apply(&self, _: &SourceEvent, m: &ModelWriter<'_>) -> Result<(), ApplyError> {
/// #         let table = m.table("count")?;
/// #         let n = table.get("n")?.map_or(0, |v| v[0]);
/// #         table.insert("n", &[n + 1])?;
/// #         Ok(())
/// #     }
/// # }
/// use std::time::Duration;
/// use aqueduct::{Broker, Message, TopicConfig};
/// use aqueduct_patterns::ProjectionRunner;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("clicks", TopicConfig::default())?;
/// let runner = ProjectionRunner::from_topic(&broker, "clicks", "click-count", Counter, Default::default())?;
/// let receipt = broker.publish("clicks", Message::new("home"))?;
/// assert!(runner.wait_for(receipt, Duration::from_secs(5))?);
/// let view = runner.read_model().view();
/// assert_eq!(view.table("count")?.get("n")?.map(|v| v[0]), Some(1));
/// runner.stop()?;
/// # Ok(())
/// # }
/// ```
pub struct ProjectionRunner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ProjectionRunner {
    /// Starts feeding `projection` from every stream of `store`, resuming at its checkpoint.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::InvalidName`], [`ProjectionError::InvalidConfig`],
    /// [`ProjectionError::Corrupt`] for an unreadable checkpoint, and storage errors.
    pub fn from_store<P: Projection>(
        store: &EventStore,
        name: &str,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<Self, ProjectionError> {
        let source = Source::Store(store.clone());
        Self::start(
            store.broker(),
            source,
            name,
            Box::new(projection),
            config,
            None,
        )
    }

    /// Starts feeding `projection` from broker topic `topic`, through consumer group
    /// `projection.NAME` in per-partition order, resuming at its checkpoint.
    ///
    /// # Errors
    ///
    /// As for [`from_store`](Self::from_store), and [`ProjectionError::Broker`] when the topic
    /// does not exist or the group exists with another ordering mode.
    pub fn from_topic<P: Projection>(
        broker: &Broker,
        topic: &str,
        name: &str,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<Self, ProjectionError> {
        validate_name("projection", name)?;
        let group = format!("projection.{name}");
        let consumer_config = ConsumerConfig::default().ordering(OrderingMode::PerPartition);
        let consumer = broker.subscribe_with(topic, &group, consumer_config)?;
        let source = Source::Topic(topic.to_string());
        Self::start(
            broker,
            source,
            name,
            Box::new(projection),
            config,
            Some(consumer),
        )
    }

    fn start(
        broker: &Broker,
        source: Source,
        name: &str,
        projection: Box<dyn Projection>,
        config: ProjectionConfig,
        consumer: Option<Consumer>,
    ) -> Result<Self, ProjectionError> {
        validate_name("projection", name)?;
        config.validate()?;
        let tables: Vec<String> = projection.tables().iter().map(|t| t.to_string()).collect();
        for table in &tables {
            validate_name("table", table)?;
        }
        let meta_name = format!("projection.{name}");
        let meta = broker.tree(&meta_name)?;
        let active = active_generation(&meta_name, &meta)?;
        clear_inactive(broker, &meta, name, active, &tables)?;

        let generation = Generation::open(broker, &meta, name, active, &tables)?;
        let checkpoint = match meta.get(checkpoint::checkpoint_key(active))? {
            Some(bytes) => {
                Checkpoint::decode(&meta_name, &checkpoint::checkpoint_key(active), &bytes)?
            }
            None => Checkpoint::default(),
        };
        tracing::info!(
            projection = name,
            generation = active,
            ?checkpoint,
            "projection started"
        );

        let shared = Arc::new(Shared {
            name: name.to_string(),
            projection,
            tables,
            broker: broker.clone(),
            meta,
            meta_name,
            source,
            config,
            model: ReadModel::new(generation),
            apply_lock: Mutex::new(()),
            rebuild_lock: Mutex::new(()),
            progress: Mutex::new(Progress {
                checkpoint,
                failure: None,
                running: true,
            }),
            progress_changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("aqueduct-projection-{name}"))
            .spawn(move || thread_shared.run(consumer))
            .map_err(|source| ProjectionError::Spawn {
                projection: name.to_string(),
                source,
            })?;
        Ok(ProjectionRunner {
            shared,
            thread: Some(thread),
        })
    }

    /// Returns the projection's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Returns the query side of the projection.
    pub fn read_model(&self) -> ReadModel {
        self.shared.model.clone()
    }

    /// Returns how far the read model has applied its source.
    pub fn checkpoint(&self) -> Checkpoint {
        self.shared.progress.lock().checkpoint.clone()
    }

    /// Returns the checkpoint while the runner runs.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Stopped`] with the cause once the runner has stopped or failed.
    pub fn status(&self) -> Result<Checkpoint, ProjectionError> {
        let progress = self.shared.progress.lock();
        match self.shared.stopped_error(&progress) {
            Some(error) => Err(error),
            None => Ok(progress.checkpoint.clone()),
        }
    }

    /// Waits until the read model includes the event at `position`, for read-your-writes.
    /// Returns `Ok(false)` when `timeout` passed first.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Stopped`] when the runner stopped or failed before reaching the
    /// position.
    pub fn wait_for(
        &self,
        position: impl Into<Position>,
        timeout: Duration,
    ) -> Result<bool, ProjectionError> {
        let position = position.into();
        let deadline = Instant::now() + timeout;
        let mut progress = self.shared.progress.lock();
        loop {
            if progress.checkpoint.includes(position) {
                return Ok(true);
            }
            if let Some(error) = self.shared.stopped_error(&progress) {
                return Err(error);
            }
            let waited = self
                .shared
                .progress_changed
                .wait_until(&mut progress, deadline);
            if waited.timed_out() {
                return Ok(progress.checkpoint.includes(position));
            }
        }
    }

    /// Replays the event store into a fresh generation of the read model, then swaps it in at
    /// the live generation's checkpoint. Queries keep reading the old generation meanwhile,
    /// and the live runner keeps applying new events to it until the swap. Blocks until the
    /// swap is done.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{ApplyError, ModelWriter, Projection, SourceEvent};
    /// # struct Streams;
    /// # impl Projection for Streams {
    /// #     fn tables(&self) -> &[&str] { &["streams"] }
    /// #     fn apply(&self, e: &SourceEvent, m: &ModelWriter<'_>) -> Result<(), ApplyError> {
    /// #         let SourceEvent::Stored(e) = e else { return Ok(()) };
    /// #         m.table("streams")?.insert(e.stream.as_bytes(), &[])?;
    /// #         Ok(())
    /// #     }
    /// # }
    /// use std::time::Duration;
    /// use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent, ProjectionRunner};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = EventStore::open(&broker, "rebuilt")?;
    /// let runner = ProjectionRunner::from_store(&store, "streams", Streams, Default::default())?;
    /// let event = NewEvent::new("Seen", 1, Vec::new());
    /// let appended = store.append("cart-1", ExpectedVersion::Any, vec![event])?.expect("ok");
    /// assert!(runner.wait_for(appended.position, Duration::from_secs(5))?);
    ///
    /// let report = runner.rebuild()?;
    /// assert_eq!((report.generation, report.events), (1, 1));
    /// assert!(runner.read_model().view().table("streams")?.contains_key("cart-1")?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ProjectionError::ApplyFailed`] when the projection keeps failing on an event, and
    /// storage and broker errors. The active generation stays as it was. A topic-fed runner
    /// rebuilds from the topic's retained messages, so it cannot bring back messages that
    /// retention removed.
    pub fn rebuild(&self) -> Result<RebuildReport, ProjectionError> {
        self.shared.rebuild()
    }

    /// Stops the runner, flushes its progress and waits for its thread.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Stopped`] with the cause when the runner had already failed.
    pub fn stop(mut self) -> Result<(), ProjectionError> {
        self.shutdown();
        let progress = self.shared.progress.lock();
        match &progress.failure {
            Some(cause) => Err(ProjectionError::Stopped {
                projection: self.shared.name.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(projection = %self.shared.name, "runner thread panicked");
            }
        }
    }
}

impl Drop for ProjectionRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("name", &self.shared.name)
            .field("checkpoint", &self.checkpoint())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn run(&self, consumer: Option<Consumer>) {
        let result = catch_unwind(AssertUnwindSafe(|| match (&self.source, consumer) {
            (Source::Store(store), _) => self.run_store(store),
            (Source::Topic(_), Some(mut consumer)) => self.run_topic(&mut consumer),
            (Source::Topic(topic), None) => Err(ProjectionError::Stopped {
                projection: self.name.clone(),
                cause: format!("no consumer for topic {topic:?}"),
            }),
        }));
        let failure = match result {
            Ok(Ok(())) => self.flush().err().map(|error| error.to_string()),
            Ok(Err(error)) => Some(error.to_string()),
            Err(panic) => Some(format!(
                "the projection panicked: {}",
                panic_message(&panic)
            )),
        };
        match &failure {
            Some(cause) => tracing::error!(projection = %self.name, %cause, "projection stopped"),
            None => tracing::info!(projection = %self.name, "projection stopped"),
        }
        let mut progress = self.progress.lock();
        progress.running = false;
        progress.failure = failure;
        self.progress_changed.notify_all();
    }

    fn run_store(&self, store: &EventStore) -> Result<(), ProjectionError> {
        let mut flusher = PeriodicFlush::new(self.config.flush_interval);
        while !self.stop.load(Ordering::SeqCst) {
            let seen = store.append_seq();
            let applied = {
                let _applying = self.apply_lock.lock();
                let generation = self.model.current();
                let checkpoint = self.progress.lock().checkpoint.clone();
                let events = store.read_all(checkpoint.next_offset(0), self.config.batch_size)?;
                if events.is_empty() {
                    false
                } else {
                    let events: Vec<SourceEvent> =
                        events.into_iter().map(SourceEvent::Stored).collect();
                    let after = self.apply_with_retries(&generation, &checkpoint, &events)?;
                    self.publish(after);
                    true
                }
            };
            flusher.record(applied);
            if flusher.is_due() {
                self.flush()?;
                flusher.flushed();
            }
            if !applied {
                store.wait_for_append(seen, IDLE_WAIT);
            }
        }
        Ok(())
    }

    /// Applies `events` to `generation` with retries and backoff; returns the new checkpoint.
    fn apply_with_retries(
        &self,
        generation: &Generation,
        checkpoint: &Checkpoint,
        events: &[SourceEvent],
    ) -> Result<Checkpoint, ProjectionError> {
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 1;
        loop {
            let error = match self.apply_batch(generation, checkpoint, events) {
                Ok(after) => return Ok(after),
                Err(TransactionError::Storage(error)) => return Err(error.into()),
                Err(TransactionError::Abort(error)) => error,
            };
            let position = events
                .first()
                .map_or_else(String::new, |event| event.position().to_string());
            if attempt >= self.config.max_attempts {
                return Err(ProjectionError::ApplyFailed {
                    projection: self.name.clone(),
                    position,
                    attempts: attempt,
                    reason: error.to_string(),
                });
            }
            tracing::warn!(
                projection = %self.name,
                %position,
                attempt,
                %error,
                "applying a batch failed; retrying after {backoff:?}"
            );
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.config.max_backoff);
            attempt += 1;
        }
    }

    /// Applies the events not yet in `checkpoint` and writes the new checkpoint, in one
    /// transaction over the meta tree and the generation's tables.
    fn apply_batch(
        &self,
        generation: &Generation,
        checkpoint: &Checkpoint,
        events: &[SourceEvent],
    ) -> Result<Checkpoint, TransactionError<ApplyError>> {
        let mut after = checkpoint.clone();
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            if !after.includes(event.position()) {
                after.advance(event.position());
                fresh.push(event);
            }
        }
        if fresh.is_empty() {
            return Ok(after);
        }

        let mut trees = Vec::with_capacity(generation.trees.len() + 1);
        trees.push(self.meta.clone());
        trees.extend(generation.trees.iter().cloned());
        let key = checkpoint::checkpoint_key(generation.number);
        let value = after.encode();
        trees[..].transaction(|transaction| {
            let Some((meta, tables)) = transaction.split_first() else {
                return Err(ConflictableTransactionError::Abort(ApplyError::failed(
                    "transaction has no trees",
                )));
            };
            let writer = ModelWriter::new(&generation.names, tables);
            for event in &fresh {
                self.projection
                    .apply(event, &writer)
                    .map_err(into_transaction_error)?;
            }
            meta.insert(key.as_slice(), value.as_slice())?;
            Ok(())
        })?;
        Ok(after)
    }

    fn publish(&self, checkpoint: Checkpoint) {
        self.progress.lock().checkpoint = checkpoint;
        self.progress_changed.notify_all();
    }

    fn flush(&self) -> Result<(), ProjectionError> {
        self.meta.flush()?;
        Ok(())
    }

    fn stopped_error(&self, progress: &Progress) -> Option<ProjectionError> {
        if progress.running {
            return None;
        }
        let cause = progress
            .failure
            .clone()
            .unwrap_or_else(|| "the runner was stopped".to_string());
        Some(ProjectionError::Stopped {
            projection: self.name.clone(),
            cause,
        })
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("meta", &self.meta_name)
            .finish_non_exhaustive()
    }
}

/// Tracks when applied changes are due for a flush.
struct PeriodicFlush {
    interval: Duration,
    last: Instant,
    dirty: bool,
}

impl PeriodicFlush {
    fn new(interval: Duration) -> Self {
        PeriodicFlush {
            interval,
            last: Instant::now(),
            dirty: false,
        }
    }

    fn record(&mut self, applied: bool) {
        self.dirty |= applied;
    }

    fn is_due(&self) -> bool {
        self.dirty && self.last.elapsed() >= self.interval
    }

    fn flushed(&mut self) {
        self.dirty = false;
        self.last = Instant::now();
    }
}

fn into_transaction_error(error: ApplyError) -> ConflictableTransactionError<ApplyError> {
    match error {
        ApplyError::Storage(error) => error.into(),
        other => ConflictableTransactionError::Abort(other),
    }
}

fn active_generation(meta_name: &str, meta: &sled::Tree) -> Result<u64, ProjectionError> {
    match meta.get(ACTIVE_KEY)? {
        Some(bytes) => {
            let raw: [u8; 8] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| ProjectionError::Corrupt {
                    tree: meta_name.to_string(),
                    key: checkpoint::hex(ACTIVE_KEY),
                    reason: format!("expected 8 bytes, found {}", bytes.len()),
                })?;
            Ok(u64::from_be_bytes(raw))
        }
        None => {
            meta.insert(ACTIVE_KEY, &0u64.to_be_bytes())?;
            Ok(0)
        }
    }
}

/// Clears generations left behind by an interrupted rebuild or swap.
fn clear_inactive(
    broker: &Broker,
    meta: &sled::Tree,
    name: &str,
    active: u64,
    tables: &[String],
) -> Result<(), ProjectionError> {
    for number in checkpoint::stored_generations(meta)? {
        if number == active {
            continue;
        }
        let generation = Generation::open(broker, meta, name, number, tables)?;
        generation.clear()?;
        meta.remove(checkpoint::checkpoint_key(number))?;
        tracing::info!(
            projection = name,
            generation = number,
            "cleared inactive read-model generation"
        );
    }
    Ok(())
}

fn validate_name(kind: &'static str, name: &str) -> Result<(), ProjectionError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 100 {
        Some("it is longer than 100 characters")
    } else if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        Some("it contains a character outside [A-Za-z0-9._-]")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ProjectionError::InvalidName {
            kind,
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        return (*message).to_string();
    }
    if let Some(message) = panic.downcast_ref::<String>() {
        return message.clone();
    }
    "no message".to_string()
}
