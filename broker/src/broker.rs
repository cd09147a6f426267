//! The broker handle: opening, topics, publishing and subscribing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::config::{
    BrokerConfig, ConsumerConfig, Durability, OrderingMode, StartPosition, TopicConfig,
};
use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::flusher::Flusher;
use crate::group::{Group, GroupParts};
use crate::log::{GroupFloor, TopicLog};
use crate::message::{Message, ParkedKey, PeekedMessage, Receipt};
use crate::name::validate_name;
use crate::record::{CursorRecord, GroupMetaRecord, StoredMessage, TopicRecord};
use crate::stats::{GroupPartitionStats, GroupStats, PartitionStats, Stats, TopicStats};
use crate::storage::Storage;

/// Interval of the flusher's idle rounds in `Durability::Flushed` mode, where every publish
/// and ack requests its own round.
const FLUSHED_IDLE_INTERVAL: Duration = Duration::from_millis(100);

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// An embedded message broker on one sled database.
///
/// `Broker` is a cheap handle: clones share the database, topics and groups. The database is
/// flushed and closed when the last clone, consumer and delivery are dropped.
///
/// # Examples
///
/// ```
/// use aqueduct::{Broker, Message, TopicConfig};
///
/// # fn main() -> aqueduct::Result<()> {
/// let dir = tempfile::tempdir().expect("temporary directory");
/// let broker = Broker::open(dir.path())?;
/// broker.create_topic("orders", TopicConfig::default().partitions(4))?;
/// let receipt = broker.publish("orders", Message::new("order 1").key("customer-9"))?;
/// assert_eq!(receipt.offset, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    flusher: Arc<Flusher>,
    flusher_thread: Mutex<Option<JoinHandle<()>>>,
    /// Kept alive so that the clock's weak reference to it stays valid.
    _clock_waker: Arc<dyn Fn() + Send + Sync>,
}

struct Shared {
    storage: Arc<Storage>,
    config: BrokerConfig,
    topics: RwLock<HashMap<String, Arc<TopicLog>>>,
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    /// Serializes topic creation.
    topic_creation: Mutex<()>,
    /// When the flusher last enforced retention.
    last_retention: Mutex<Instant>,
}

impl Broker {
    /// Opens or creates a broker database in directory `path` with default settings.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] when another handle has the database open,
    /// [`Error::IncompatibleFormat`] or [`Error::Corrupt`] for unreadable stores, [`Error::Io`]
    /// for file system failures.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, BrokerConfig::default())
    }

    /// Opens or creates a broker database in directory `path`.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open), and [`Error::InvalidConfig`] for out-of-range settings.
    pub fn open_with(path: impl AsRef<Path>, config: BrokerConfig) -> Result<Self> {
        config.validate()?;
        let path = path.as_ref();
        // sled would create its files in the working directory and then fail.
        if path.as_os_str().is_empty() {
            return Err(Error::InvalidConfig {
                setting: "database path",
                value: "\"\"".into(),
                expected: "a directory path, such as \"./data\"".into(),
            });
        }
        if path.exists() && !path.is_dir() {
            let source = std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "this is a file, not a directory; pass a directory path for the database",
            );
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
        let storage = Storage::open(path, config.cache_bytes)?;
        let broker = Self::start(storage, config)?;
        tracing::info!(path = %path.display(), "broker opened");
        Ok(broker)
    }

    /// Creates a broker on a temporary database that is deleted when the broker is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when sled cannot create the temporary files.
    pub fn temporary() -> Result<Self> {
        Self::temporary_with(BrokerConfig::default())
    }

    /// Creates a broker on a temporary database with the given settings.
    ///
    /// # Errors
    ///
    /// As for [`temporary`](Self::temporary), and [`Error::InvalidConfig`].
    pub fn temporary_with(config: BrokerConfig) -> Result<Self> {
        config.validate()?;
        let storage = Storage::temporary(config.cache_bytes)?;
        Self::start(storage, config)
    }

    fn start(storage: Storage, config: BrokerConfig) -> Result<Self> {
        let storage = Arc::new(storage);
        let mut topics = HashMap::new();
        for record in storage.load_topics()? {
            let topic = TopicLog::load(
                Arc::clone(&storage),
                record.id,
                record.name.clone(),
                record.config,
                config.block_bytes,
                config.clock.now_ms(),
            )?;
            register_stored_groups(&storage, &topic)?;
            topics.insert(record.name, topic);
        }
        // Only a store that loaded cleanly gets a new generation, and no flush round runs yet.
        storage.begin_generation()?;
        let shared = Arc::new(Shared {
            storage,
            config: config.clone(),
            topics: RwLock::new(topics),
            groups: Mutex::new(HashMap::new()),
            topic_creation: Mutex::new(()),
            last_retention: Mutex::new(Instant::now()),
        });

        let interval = match config.durability {
            Durability::Flushed => FLUSHED_IDLE_INTERVAL,
            Durability::Buffered { max_delay } => max_delay,
        };
        let round_shared = Arc::clone(&shared);
        let (flusher, thread) = Flusher::start(interval, Box::new(move || round_shared.round()))?;

        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let clock_waker: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.wake_all();
            }
        });
        config.clock.on_advance(Arc::downgrade(&clock_waker));

        Ok(Broker {
            inner: Arc::new(Inner {
                shared,
                flusher,
                flusher_thread: Mutex::new(Some(thread)),
                _clock_waker: clock_waker,
            }),
        })
    }

    /// Creates a topic, or confirms that it exists with the same configuration.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::InvalidConfig`], [`Error::DeadLetterTopicNotFound`],
    /// and [`Error::TopicConfigMismatch`] when the topic exists with another configuration.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        validate_name("topic", name)?;
        config.validate(name)?;
        let shared = &self.inner.shared;
        let _creating = shared.topic_creation.lock();

        if let Some(existing) = shared.topics.read().get(name) {
            if existing.config == config {
                return Ok(());
            }
            return Err(Error::TopicConfigMismatch {
                topic: name.to_string(),
                existing: existing.config.to_string(),
                requested: config.to_string(),
            });
        }
        if let Some(dead_letter_topic) = &config.dead_letter_topic {
            if !shared.topics.read().contains_key(dead_letter_topic) {
                return Err(Error::DeadLetterTopicNotFound {
                    topic: name.to_string(),
                    dead_letter_topic: dead_letter_topic.clone(),
                });
            }
        }

        let id = shared
            .topics
            .read()
            .values()
            .map(|topic| topic.id + 1)
            .max()
            .unwrap_or(0);
        let record = TopicRecord {
            id,
            name: name.to_string(),
            config: config.clone(),
        };
        shared.storage.put_topic(&record)?;
        let storage = Arc::clone(&shared.storage);
        let now = shared.config.clock.now_ms();
        let block_bytes = shared.config.block_bytes;
        let topic = TopicLog::load(storage, id, name.to_string(), config, block_bytes, now)?;
        shared.topics.write().insert(name.to_string(), topic);
        tracing::debug!(topic = name, id, "topic created");
        Ok(())
    }

    /// Returns every topic with its configuration, sorted by name.
    pub fn topics(&self) -> Vec<(String, TopicConfig)> {
        let topics = self.inner.shared.topics.read();
        let mut list: Vec<_> = topics
            .values()
            .map(|topic| (topic.name.clone(), topic.config.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Returns a topic's configuration.
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`].
    pub fn topic_config(&self, topic: &str) -> Result<TopicConfig> {
        Ok(self.inner.shared.topic(topic)?.config.clone())
    }

    /// Returns the next offset that `partition` of `topic` will assign (its high watermark).
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`], or [`Error::InvalidConfig`] for a partition out of range.
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        let topic = self.inner.shared.topic(topic)?;
        check_partition(&topic, partition)?;
        Ok(topic.end_offset(partition))
    }

    /// Publishes one message.
    ///
    /// With `Durability::Flushed` this returns once the message is fsynced; with `Buffered` it
    /// returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`], [`Error::MessageTooLarge`], [`Error::InvalidHeader`],
    /// [`Error::Poisoned`] after a storage failure.
    pub fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut receipts = self.publish_batch(topic, std::iter::once(message))?;
        receipts.pop().ok_or(Error::Closed)
    }

    /// Publishes messages and returns one receipt per message, in input order. Messages with the
    /// same partition keep their relative order. The batch is validated as a whole before
    /// anything is stored.
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish).
    pub fn publish_batch(
        &self,
        topic: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<Receipt>> {
        self.publish_messages(topic, messages, true)
    }

    /// Publishes messages, deduplicating by id when `deduplicate` is set.
    fn publish_messages(
        &self,
        topic: &str,
        messages: impl IntoIterator<Item = Message>,
        deduplicate: bool,
    ) -> Result<Vec<Receipt>> {
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        shared.storage.check_writable()?;
        let now = shared.config.clock.now_ms();

        let messages = messages.into_iter();
        let mut stored_messages = Vec::with_capacity(messages.size_hint().0);
        for message in messages {
            shared.validate_message(&topic.name, &message)?;
            stored_messages.push(stored(message, now));
        }
        let count = stored_messages.len();
        let bytes: usize = stored_messages
            .iter()
            .map(|message| message.payload.len())
            .sum();
        topic.reserve(count as u64, bytes as u64)?;
        let receipts = topic.publish(stored_messages, now, deduplicate)?;
        topic.signal.bump();

        if shared.config.durability == Durability::Flushed && count > 0 {
            self.inner.flusher.sync()?;
        }
        Ok(receipts)
    }

    /// Joins consumer group `group` on `topic` with default settings (unordered).
    ///
    /// # Errors
    ///
    /// As for [`subscribe_with`](Self::subscribe_with).
    pub fn subscribe(&self, topic: &str, group: &str) -> Result<Consumer> {
        self.subscribe_with(topic, group, ConsumerConfig::default())
    }

    /// Joins consumer group `group` on `topic`. A new group starts at the earliest stored
    /// message of every partition.
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`], [`Error::InvalidName`], [`Error::InvalidConfig`],
    /// [`Error::GroupConfigMismatch`] when the group exists with another ordering mode.
    pub fn subscribe_with(
        &self,
        topic: &str,
        group: &str,
        config: ConsumerConfig,
    ) -> Result<Consumer> {
        validate_name("group", group)?;
        config.validate()?;
        let group = self
            .inner
            .shared
            .group(topic, group, &config, &self.inner.flusher)?;
        let id = NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Consumer::new(self.clone(), group, id, config))
    }

    /// Republishes up to `max` dead letters from `dead_letter_topic` to their source topics and
    /// returns how many were replayed. Progress is tracked by consumer group `group` on the
    /// dead-letter topic, so a second call continues where the first stopped. The replayed
    /// copy keeps payload, key, headers and id, is not deduplicated against the original, and
    /// is a new message at a new offset.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when no topic names `dead_letter_topic` as its dead-letter
    /// topic; otherwise as for [`subscribe`](Self::subscribe) and [`publish`](Self::publish).
    pub fn replay_dead_letters(
        &self,
        dead_letter_topic: &str,
        group: &str,
        max: usize,
    ) -> Result<usize> {
        let is_dead_letter_topic = self
            .topics()
            .iter()
            .any(|(_, config)| config.dead_letter_topic.as_deref() == Some(dead_letter_topic));
        if !is_dead_letter_topic {
            // Replaying would ack the topic's messages in `group` without moving any of them.
            return Err(Error::InvalidConfig {
                setting: "replay_dead_letters dead_letter_topic",
                value: dead_letter_topic.to_string(),
                expected: "a topic that another topic names as its dead-letter topic".into(),
            });
        }
        let mut consumer = self.subscribe(dead_letter_topic, group)?;
        let mut replayed = 0;
        while replayed < max {
            let Some(delivery) = consumer.try_recv()? else {
                break;
            };
            let Some(info) = delivery.dead_letter_info().cloned() else {
                tracing::warn!(
                    topic = dead_letter_topic,
                    offset = delivery.offset(),
                    "message has no dead-letter metadata; skipping it"
                );
                delivery.ack()?;
                continue;
            };
            let mut message = Message::new(delivery.payload().to_vec());
            message.key = delivery.key().map(<[u8]>::to_vec);
            message.id = delivery.id().map(str::to_string);
            message.headers = delivery
                .headers()
                .map(|(name, value)| (name.to_string(), value.to_vec()))
                .collect();
            // The copy keeps its id, which the source topic's dedup window may still hold.
            self.publish_messages(&info.source_topic, std::iter::once(message), false)?;
            delivery.ack()?;
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(topic = dead_letter_topic, replayed, "replayed dead letters");
        }
        Ok(replayed)
    }

    /// Opens an application tree in the broker's database, for data that must change in one
    /// sled transaction with outbox or inbox records.
    ///
    /// # Errors
    ///
    /// [`Error::ReservedTreeName`] for names starting with `__aqueduct`.
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.inner.shared.storage.app_tree(name)
    }

    /// Returns watermarks per partition and lag, in-flight counts and counters per group, for
    /// every topic.
    ///
    /// # Errors
    ///
    /// Storage failures while reading group metadata or the oldest unacknowledged message.
    pub fn stats(&self) -> Result<Stats> {
        let shared = &self.inner.shared;
        let mut topics: Vec<Arc<TopicLog>> = shared.topics.read().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let mut stats = Stats { topics: Vec::new() };
        for topic in topics {
            stats.topics.push(shared.topic_stats(&topic)?);
        }
        Ok(stats)
    }

    /// Returns the keys that per-key group `group` holds back after dead-lettering one of their
    /// messages.
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`], storage failures.
    pub fn parked_keys(&self, topic: &str, group: &str) -> Result<Vec<ParkedKey>> {
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        let parked = shared.storage.load_parked(topic.id, group)?;
        Ok(parked.iter().map(ParkedKey::new).collect())
    }

    /// Deletes consumer group `group` of `topic`: its committed offsets, attempt counts, delays
    /// and parked keys. Retention and backlog limits stop waiting for it, and a later subscribe
    /// with the same name creates a new group. Returns whether the group existed. Deliveries
    /// still held from the group fail with [`Error::GroupDeleted`] when settled.
    ///
    /// # Errors
    ///
    /// [`Error::GroupInUse`] while consumers are subscribed to the group,
    /// [`Error::TopicNotFound`], [`Error::InvalidName`], storage failures.
    pub fn delete_group(&self, topic: &str, group: &str) -> Result<bool> {
        validate_name("group", group)?;
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        let mut groups = shared.groups.lock();
        let key = (topic.name.clone(), group.to_string());
        if let Some(loaded) = groups.get(&key) {
            loaded.delete()?;
        }
        let existed = shared.storage.load_group_meta(topic.id, group)?.is_some();
        shared
            .storage
            .remove_group(topic.id, topic.partition_count(), group)?;
        groups.remove(&key);
        drop(groups);
        topic.remove_floor(group);
        if existed {
            tracing::info!(topic = %topic.name, group, "deleted consumer group");
        }
        Ok(existed)
    }

    /// Releases a parked key, so that group `group` delivers its later messages again; returns
    /// whether the key was parked. Replay the dead letter first if it should be processed
    /// before them.
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`], storage failures.
    pub fn release_key(&self, topic: &str, group: &str, key: &[u8]) -> Result<bool> {
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        let loaded = shared
            .groups
            .lock()
            .get(&(topic.name.clone(), group.to_string()))
            .cloned();
        let released = match loaded {
            Some(group) => group.release_key(key)?,
            None => shared.storage.remove_parked(topic.id, group, key)?,
        };
        if released {
            tracing::info!(topic = %topic.name, group, "released parked key");
        }
        Ok(released)
    }

    /// Returns up to `max` retained messages of `partition` of `topic`, starting at `offset`
    /// (or at the low watermark, if that is higher), without consuming them.
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`], [`Error::InvalidConfig`] for a partition out of range, storage
    /// failures.
    pub fn peek(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<PeekedMessage>> {
        let topic = self.inner.shared.topic(topic)?;
        check_partition(&topic, partition)?;
        let messages = topic.peek(partition, offset, max)?;
        Ok(messages
            .into_iter()
            .map(|(offset, message)| PeekedMessage::new(partition, offset, &message))
            .collect())
    }

    /// Removes every message of `topic` and moves every group past them; returns how many
    /// messages were removed. Offsets continue where they were. Groups count the removed
    /// messages they had not acknowledged in `unconsumed_removals`.
    ///
    /// # Errors
    ///
    /// [`Error::TopicNotFound`], storage failures.
    pub fn purge_topic(&self, topic: &str) -> Result<u64> {
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        let mut total = 0;
        for (partition, low, removed) in topic.purge()? {
            shared.settle_removed(&topic, partition, low)?;
            total += removed;
        }
        self.flush()?;
        Ok(total)
    }

    /// Removes the messages that each topic's retention policy no longer keeps, now rather than
    /// at the flusher's next retention pass.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub fn enforce_retention(&self) -> Result<()> {
        self.inner.shared.enforce_retention()
    }

    /// Makes everything written to the database so far durable, and waits for it: messages,
    /// acks, and writes to application trees opened with [`tree`](Self::tree). It always runs
    /// sled's flush and an fsync, even when the broker itself wrote nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] after a storage failure.
    pub fn flush(&self) -> Result<()> {
        self.inner.shared.storage.mark_unsynced();
        self.inner.flusher.sync()
    }

    /// Returns how many flush rounds have fsynced the database since it was opened.
    pub fn fsync_count(&self) -> u64 {
        self.inner.flusher.rounds()
    }

    /// Returns `(committed offset, in-flight deliveries)` per partition for a group that has a
    /// live consumer in this process, or `None`.
    pub fn group_positions(&self, topic: &str, group: &str) -> Option<Vec<(u64, usize)>> {
        let groups = self.inner.shared.groups.lock();
        groups
            .get(&(topic.to_string(), group.to_string()))
            .map(|group| group.positions())
    }

    /// Returns the database directory, or `None` for a temporary broker.
    pub fn path(&self) -> Option<&Path> {
        self.inner.shared.storage.path()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("path", &self.path())
            .field("config", &self.inner.shared.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.shutdown();
        if let Some(thread) = self.flusher_thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("flusher thread panicked during shutdown");
            }
        }
        tracing::debug!(path = ?self.shared.storage.path(), "broker closed");
    }
}

impl Shared {
    fn topic(&self, name: &str) -> Result<Arc<TopicLog>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::TopicNotFound {
                topic: name.to_string(),
            })
    }

    fn validate_message(&self, topic: &str, message: &Message) -> Result<()> {
        let size = message.size();
        if size > self.config.max_message_bytes {
            return Err(Error::MessageTooLarge {
                topic: topic.to_string(),
                size,
                limit: self.config.max_message_bytes,
            });
        }
        message.validate_headers()
    }

    fn group(
        &self,
        topic: &str,
        name: &str,
        config: &ConsumerConfig,
        flusher: &Arc<Flusher>,
    ) -> Result<Arc<Group>> {
        let topic = self.topic(topic)?;
        let mut groups = self.groups.lock();
        let key = (topic.name.clone(), name.to_string());
        if let Some(group) = groups.get(&key) {
            check_ordering(&topic.name, name, group.ordering, config)?;
            return Ok(Arc::clone(group));
        }

        match self.storage.load_group_meta(topic.id, name)? {
            Some(meta) => check_ordering(&topic.name, name, meta.ordering, config)?,
            None => {
                if config.start == StartPosition::Latest {
                    // The cursors go first: a crash that keeps the group record keeps them.
                    for partition in 0..topic.partition_count() {
                        let record = CursorRecord {
                            committed: topic.end_offset(partition),
                            entries: Vec::new(),
                        };
                        self.storage
                            .put_cursor(topic.id, partition, name, &record)?;
                    }
                }
                let meta = GroupMetaRecord {
                    topic: topic.name.clone(),
                    group: name.to_string(),
                    ordering: config.ordering,
                };
                self.storage.put_group_meta(topic.id, &meta)?;
                tracing::info!(topic = %topic.name, group = name, start = ?config.start, "group created");
            }
        }
        let dead_letter = match &topic.config.dead_letter_topic {
            Some(dead_letter) => Some(self.topic(dead_letter)?),
            None => None,
        };
        let group = Arc::new(Group::open(GroupParts {
            topic,
            name: name.to_string(),
            ordering: config.ordering,
            dead_letter,
            storage: Arc::clone(&self.storage),
            flusher: Arc::clone(flusher),
            clock: Arc::clone(&self.config.clock),
            durability: self.config.durability,
            max_unacked: config.max_unacked,
        })?);
        groups.insert(key, Arc::clone(&group));
        Ok(group)
    }

    /// Runs one flush round: writes changed cursors and open blocks, then fsyncs.
    ///
    /// Cursors are written before blocks. A publish that happened before an ack is then in an
    /// open block when the ack's cursor is written, so the block write that follows stores it.
    /// A crash can therefore lose an ack whose publish survived (a redelivery), never the
    /// reverse.
    fn round(&self) -> Result<bool> {
        let groups: Vec<Arc<Group>> = self.groups.lock().values().cloned().collect();
        for group in &groups {
            group.persist_dirty()?;
        }
        let topics: Vec<Arc<TopicLog>> = self.topics.read().values().cloned().collect();
        let now = self.config.clock.now_ms();
        for topic in &topics {
            topic.seal_all()?;
            topic.expire_dedup(now)?;
        }
        let retention_due = {
            let mut last = self.last_retention.lock();
            let due = last.elapsed() >= self.config.retention_interval;
            if due {
                *last = Instant::now();
            }
            due
        };
        if retention_due {
            self.enforce_retention()?;
        }
        self.storage.flush_durable()
    }

    /// Runs retention on every topic and settles the removed offsets in every group. Loaded
    /// groups drop them from their windows, and each group counts the ones it had not
    /// acknowledged.
    fn enforce_retention(&self) -> Result<()> {
        let topics: Vec<Arc<TopicLog>> = self.topics.read().values().cloned().collect();
        let now = self.config.clock.now_ms();
        for topic in topics {
            for (partition, low) in topic.enforce_retention(now)? {
                self.settle_removed(&topic, partition, low)?;
            }
        }
        Ok(())
    }

    /// Moves every group of `topic` past offsets below `low` in `partition`, which retention or
    /// a purge removed: loaded groups drop them from their windows, and each group counts and
    /// logs the ones it had not acknowledged.
    fn settle_removed(&self, topic: &TopicLog, partition: u32, low: u64) -> Result<()> {
        for floor in topic.floors() {
            if floor.get(partition) >= low {
                continue;
            }
            let key = (topic.name.clone(), floor.group.clone());
            let loaded = self.groups.lock().get(&key).cloned();
            let removed = match loaded {
                Some(group) => group.truncate(partition, low),
                None => self.unsettled_below(topic, partition, &floor.group, low)?,
            };
            floor.set(partition, low);
            if removed > 0 {
                floor
                    .unconsumed_removals
                    .fetch_add(removed, Ordering::Relaxed);
                tracing::warn!(
                    topic = %topic.name,
                    group = %floor.group,
                    partition,
                    removed,
                    low,
                    "removed messages this group had not acknowledged"
                );
            }
        }
        Ok(())
    }

    fn topic_stats(&self, topic: &TopicLog) -> Result<TopicStats> {
        let partitions: Vec<PartitionStats> = (0..topic.partition_count())
            .map(|partition| {
                let extent = topic.extent(partition);
                PartitionStats {
                    partition,
                    low_watermark: extent.low,
                    high_watermark: extent.high,
                    stored_bytes: extent.stored_bytes,
                }
            })
            .collect();
        let (backlog_messages, backlog_bytes) = topic.backlog();
        let orderings: HashMap<String, OrderingMode> = self
            .storage
            .list_group_meta(topic.id)?
            .into_iter()
            .map(|meta| (meta.group, meta.ordering))
            .collect();
        let mut groups = Vec::new();
        for floor in topic.floors() {
            let key = (topic.name.clone(), floor.group.clone());
            let loaded = self.groups.lock().get(&key).cloned();
            let mut group = self.group_stats(topic, &partitions, &floor, loaded.as_deref())?;
            group.ordering = orderings.get(&floor.group).copied();
            groups.push(group);
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(TopicStats {
            name: topic.name.clone(),
            config: topic.config.clone(),
            partitions,
            backlog_messages,
            backlog_bytes,
            groups,
        })
    }

    fn group_stats(
        &self,
        topic: &TopicLog,
        partitions: &[PartitionStats],
        floor: &GroupFloor,
        loaded: Option<&Group>,
    ) -> Result<GroupStats> {
        let positions = loaded.map(Group::positions);
        let now = self.config.clock.now_ms();
        let mut stats = GroupStats {
            name: floor.group.clone(),
            ordering: None,
            active: loaded.is_some(),
            partitions: Vec::new(),
            lag: 0,
            in_flight: 0,
            oldest_unacked_age_ms: None,
            redeliveries: loaded.map_or(0, |group| group.redeliveries.load(Ordering::Relaxed)),
            dead_letters: loaded.map_or(0, |group| group.dead_letters.load(Ordering::Relaxed)),
            unconsumed_removals: floor.unconsumed_removals.load(Ordering::Relaxed),
            parked_keys: self.storage.load_parked(topic.id, &floor.group)?.len() as u64,
        };
        for extent in partitions {
            let index = extent.partition as usize;
            let (committed, in_flight) = match &positions {
                Some(positions) => (positions[index].0, positions[index].1 as u64),
                None => (floor.get(extent.partition), 0),
            };
            let first_unacked = committed.max(extent.low_watermark);
            let lag = extent.high_watermark.saturating_sub(first_unacked);
            if lag > 0 {
                if let Some(timestamp) = topic.timestamp_at(extent.partition, first_unacked)? {
                    let age = now.saturating_sub(timestamp);
                    let oldest = stats.oldest_unacked_age_ms.map_or(age, |max| max.max(age));
                    stats.oldest_unacked_age_ms = Some(oldest);
                }
            }
            stats.lag += lag;
            stats.in_flight += in_flight;
            stats.partitions.push(GroupPartitionStats {
                partition: extent.partition,
                committed,
                lag,
                in_flight,
            });
        }
        Ok(stats)
    }

    /// Counts the offsets below `low` that a group without a live consumer has not settled,
    /// from its stored cursor.
    fn unsettled_below(
        &self,
        topic: &TopicLog,
        partition: u32,
        group: &str,
        low: u64,
    ) -> Result<u64> {
        let cursor = self
            .storage
            .load_cursor(topic.id, partition, group)?
            .unwrap_or_default();
        if cursor.committed >= low {
            return Ok(0);
        }
        let settled = cursor
            .entries
            .iter()
            .filter(|(delta, _, settled)| *settled && cursor.committed + delta < low)
            .count() as u64;
        Ok(low - cursor.committed - settled)
    }

    fn wake_all(&self) {
        for topic in self.topics.read().values() {
            topic.signal.bump();
        }
    }
}

fn check_partition(topic: &TopicLog, partition: u32) -> Result<()> {
    if partition < topic.partition_count() {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        setting: "partition",
        value: partition.to_string(),
        expected: format!(
            "a partition below {} for topic {:?}",
            topic.partition_count(),
            topic.name
        ),
    })
}

/// Registers the committed offsets of every stored group of `topic`, so that retention and
/// backlog limits account for groups without a live consumer.
fn register_stored_groups(storage: &Storage, topic: &TopicLog) -> Result<()> {
    for meta in storage.list_group_meta(topic.id)? {
        let mut committed = Vec::new();
        for partition in 0..topic.partition_count() {
            let cursor = storage.load_cursor(topic.id, partition, &meta.group)?;
            committed.push(cursor.map_or(0, |cursor| cursor.committed));
        }
        topic.floor(&meta.group, || committed);
    }
    Ok(())
}

fn check_ordering(
    topic: &str,
    group: &str,
    existing: OrderingMode,
    config: &ConsumerConfig,
) -> Result<()> {
    if existing == config.ordering {
        return Ok(());
    }
    Err(Error::GroupConfigMismatch {
        topic: topic.to_string(),
        group: group.to_string(),
        existing: format!("{existing:?}"),
        requested: format!("{:?}", config.ordering),
    })
}

fn stored(message: Message, now: u64) -> StoredMessage {
    StoredMessage {
        timestamp_ms: now,
        payload: message.payload,
        key: message.key.map(serde_bytes::ByteBuf::from),
        headers: message
            .headers
            .into_iter()
            .map(|(name, value)| (name, serde_bytes::ByteBuf::from(value)))
            .collect(),
        id: message.id,
        deliver_at_ms: message.deliver_at_ms,
        dead_letter: None,
    }
}
