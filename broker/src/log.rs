//! Topics and their partition logs.
//!
//! Each partition assigns dense offsets under its own lock and collects new messages in an open
//! block. The open block is sealed when it reaches the configured size or when the flusher
//! runs, and each sealed block becomes one sled value. The publisher that sealed a block, or a
//! flush round, writes sealed blocks outside the partition's lock, in offset order. Readers see messages in the open block and in sealed blocks at once. The
//! newest blocks of each topic stay decoded in memory so that consumers near the head do not
//! touch sled.
//!
//! Each partition also keeps the index of its sealed blocks (base offset, message count, size
//! and newest timestamp), which gives the low watermark, the stored bytes and the input of
//! retention without reading a block. Retention removes whole written blocks from the front and
//! never the newest stored block, so the next offset is always recoverable from storage.
//!
//! Each group of the topic registers a [`GroupFloor`]: its committed offset per partition.
//! The minimum over floors decides what `Retention::UntilAcked` may remove and how large the
//! backlog is.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::config::{Retention, TopicConfig, WhenFull};
use crate::dedup::DedupIndex;
use crate::error::{Error, Result};
use crate::hash::partition_for_key;
use crate::message::Receipt;
use crate::record::{self, Block, DedupRecord, IndexRecord, Kind, StoredMessage};
use crate::signal::Signal;
use crate::storage::{BlockWrite, Storage};

/// Bytes of a topic's newest blocks kept decoded for readers, shared by its partitions, so that
/// a consumer a few thousand messages behind the head does not decode blocks from sled.
const RECENT_TOPIC_BYTES: usize = 2 * 1024 * 1024;

/// Minimum number of newest blocks each partition keeps decoded, whatever the topic's
/// partition count.
const MIN_RECENT_BLOCKS: usize = 16;

/// Maximum number of messages in one block, whatever their size.
const MAX_BLOCK_MESSAGES: usize = 4096;

/// Bytes a message adds to a block besides its payload, key, headers and id (an estimate of
/// postcard's length prefixes and the timestamp).
const MESSAGE_OVERHEAD: usize = 16;

/// A run of consecutive messages starting at `base`.
pub(crate) type Run = (u64, Arc<[Arc<StoredMessage>]>);

pub(crate) struct TopicLog {
    pub name: String,
    pub id: u32,
    pub config: TopicConfig,
    pub signal: Arc<Signal>,
    partitions: Vec<Mutex<PartitionLog>>,
    /// One per partition: held while writing sealed blocks, so they reach sled one at a time in
    /// offset order. Taken before the partition's lock, never while holding it.
    writers: Vec<Mutex<()>>,
    next_keyless: AtomicU32,
    storage: Arc<Storage>,
    block_bytes: usize,
    /// Newest blocks each partition keeps decoded.
    recent_blocks: usize,
    dedup: Mutex<DedupIndex>,
    floors: RwLock<Vec<Arc<GroupFloor>>>,
    /// Bumped when the backlog shrinks, for publishers blocked on a full backlog.
    pub space: Signal,
}

/// A group's committed offsets in one topic, shared by the group and the topic.
pub(crate) struct GroupFloor {
    pub group: String,
    pub committed: Vec<AtomicU64>,
    /// Messages that retention removed before this group acknowledged them, since open.
    pub unconsumed_removals: AtomicU64,
}

impl GroupFloor {
    pub fn new(group: String, committed: Vec<u64>) -> Self {
        GroupFloor {
            group,
            committed: committed.into_iter().map(AtomicU64::new).collect(),
            unconsumed_removals: AtomicU64::new(0),
        }
    }

    pub fn get(&self, partition: u32) -> u64 {
        self.committed[partition as usize].load(Ordering::Acquire)
    }

    pub fn set(&self, partition: u32, committed: u64) {
        self.committed[partition as usize].fetch_max(committed, Ordering::AcqRel);
    }
}

/// Index data of one stored block.
#[derive(Clone, Copy, Debug)]
struct BlockMeta {
    base: u64,
    count: u64,
    bytes: u64,
    last_timestamp_ms: u64,
}

impl BlockMeta {
    fn end(&self) -> u64 {
        self.base + self.count
    }
}

#[derive(Default)]
struct PartitionLog {
    /// Next offset to assign.
    next_offset: u64,
    /// Offset of the first message in `open`.
    open_base: u64,
    open: Vec<Arc<StoredMessage>>,
    open_bytes: usize,
    recent: VecDeque<Run>,
    /// Sealed blocks not yet written to sled, oldest first. They are in `blocks` already.
    unwritten: VecDeque<Sealed>,
    /// Stored and sealed blocks in offset order.
    blocks: VecDeque<BlockMeta>,
    stored_bytes: u64,
}

/// A sealed block waiting for its sled write, which happens outside the partition lock so that
/// readers and publishers of the partition do not wait for sled.
struct Sealed {
    base: u64,
    bytes: sled::IVec,
    index: IndexRecord,
    dedup: Vec<(String, DedupRecord)>,
    messages: Arc<[Arc<StoredMessage>]>,
}

impl PartitionLog {
    fn low_watermark(&self) -> u64 {
        self.blocks
            .front()
            .map_or(self.open_base, |block| block.base)
    }

    fn push_block(&mut self, meta: BlockMeta) {
        // An empty block written by a purge marks the next offset; the next block written at
        // that offset replaces it in storage.
        if let Some(last) = self.blocks.back() {
            if last.base == meta.base && last.count == 0 {
                self.stored_bytes -= last.bytes;
                self.blocks.pop_back();
            }
        }
        self.stored_bytes += meta.bytes;
        self.blocks.push_back(meta);
    }
}

/// A partition's watermarks and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PartitionExtent {
    pub low: u64,
    pub high: u64,
    pub stored_bytes: u64,
    pub open_bytes: u64,
}

#[derive(Serialize)]
struct BlockRef<'a> {
    messages: &'a [Arc<StoredMessage>],
}

impl TopicLog {
    /// Loads a topic, finding each partition's next offset from its last stored block and
    /// restoring the dedup index.
    pub fn load(
        storage: Arc<Storage>,
        id: u32,
        name: String,
        config: TopicConfig,
        block_bytes: usize,
        now_ms: u64,
    ) -> Result<Arc<Self>> {
        let entries = storage.load_dedup(id)?;
        let (dedup, expired) = DedupIndex::restore(entries, now_ms, config.dedup_window_ms);
        storage.remove_dedup(id, &expired)?;

        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for partition in 0..config.partitions {
            let describe = |base: u64, bytes: &[u8]| describe_block(bytes, id, partition, base);
            let entries = storage.reconcile_index(id, partition, describe)?;
            let mut log = PartitionLog::default();
            for (base, entry) in entries {
                log.push_block(BlockMeta {
                    base,
                    count: u64::from(entry.count),
                    bytes: entry.bytes,
                    last_timestamp_ms: entry.last_timestamp_ms,
                });
            }
            log.next_offset = log.blocks.back().map_or(0, BlockMeta::end);
            log.open_base = log.next_offset;
            partitions.push(Mutex::new(log));
        }
        Ok(Arc::new(TopicLog {
            name,
            id,
            recent_blocks: recent_blocks(block_bytes, config.partitions),
            config,
            signal: Arc::new(Signal::default()),
            writers: partitions.iter().map(|_| Mutex::new(())).collect(),
            partitions,
            next_keyless: AtomicU32::new(0),
            storage,
            block_bytes,
            dedup: Mutex::new(dedup),
            floors: RwLock::new(Vec::new()),
            space: Signal::default(),
        }))
    }

    /// Returns the floor of `group`, registering one with `committed` if it has none yet.
    pub fn floor(&self, group: &str, committed: impl FnOnce() -> Vec<u64>) -> Arc<GroupFloor> {
        if let Some(floor) = self.floors.read().iter().find(|floor| floor.group == group) {
            return Arc::clone(floor);
        }
        let mut floors = self.floors.write();
        if let Some(floor) = floors.iter().find(|floor| floor.group == group) {
            return Arc::clone(floor);
        }
        let floor = Arc::new(GroupFloor::new(group.to_string(), committed()));
        floors.push(Arc::clone(&floor));
        floor
    }

    /// Forgets a deleted group's floor, so retention and backlog limits no longer wait for it.
    pub fn remove_floor(&self, group: &str) {
        self.floors.write().retain(|floor| floor.group != group);
        self.space.bump();
    }

    /// Returns the registered group floors.
    pub fn floors(&self) -> Vec<Arc<GroupFloor>> {
        self.floors.read().clone()
    }

    /// Returns the lowest committed offset of any group in `partition`, or `None` without
    /// groups.
    fn min_committed(&self, partition: u32) -> Option<u64> {
        self.floors
            .read()
            .iter()
            .map(|floor| floor.get(partition))
            .min()
    }

    /// Returns a partition's watermarks and size.
    pub fn extent(&self, partition: u32) -> PartitionExtent {
        let log = self.partitions[partition as usize].lock();
        PartitionExtent {
            low: log.low_watermark(),
            high: log.next_offset,
            stored_bytes: log.stored_bytes,
            open_bytes: log.open_bytes as u64,
        }
    }

    /// Returns the backlog in messages and bytes: what the slowest group has not acknowledged,
    /// or everything retained without groups. Bytes count whole stored blocks that still hold
    /// backlog, plus the open blocks.
    pub fn backlog(&self) -> (u64, u64) {
        let mut messages = 0;
        let mut bytes = 0;
        for (partition, log) in self.partitions.iter().enumerate() {
            let committed = self.min_committed(partition as u32);
            let log = log.lock();
            let floor = committed.unwrap_or(0).max(log.low_watermark());
            messages += log.next_offset.saturating_sub(floor);
            bytes += log.open_bytes as u64;
            bytes += log
                .blocks
                .iter()
                .filter(|b| b.end() > floor)
                .map(|b| b.bytes)
                .sum::<u64>();
        }
        (messages, bytes)
    }

    /// Waits for room for `count` messages of `bytes` bytes under the topic's backlog limit,
    /// or fails with `BacklogFull` as the limit's `when_full` setting specifies.
    pub fn reserve(&self, count: u64, bytes: u64) -> Result<()> {
        let Some(limit) = self.config.backlog else {
            return Ok(());
        };
        let started = Instant::now();
        // A batch larger than the limit itself can never fit, so waiting for room is pointless.
        let never_fits = limit.max_messages.is_some_and(|max| count > max)
            || limit.max_bytes.is_some_and(|max| bytes > max);
        loop {
            let seen = self.space.seq();
            let (messages, backlog_bytes) = self.backlog();
            let over_messages = limit.max_messages.is_some_and(|max| messages + count > max);
            let over_bytes = limit
                .max_bytes
                .is_some_and(|max| backlog_bytes + bytes > max);
            if !over_messages && !over_bytes {
                return Ok(());
            }
            let remaining = match limit.when_full {
                WhenFull::Block { timeout } if !never_fits => {
                    timeout.checked_sub(started.elapsed())
                }
                _ => None,
            };
            let Some(remaining) = remaining.filter(|left| !left.is_zero()) else {
                let waited = match limit.when_full {
                    _ if never_fits => {
                        format!(" and a batch of {count} messages, {bytes} bytes never fits")
                    }
                    WhenFull::Reject => String::new(),
                    WhenFull::Block { .. } => format!(" after waiting {:?}", started.elapsed()),
                };
                tracing::warn!(topic = %self.name, messages, bytes = backlog_bytes, "backlog full");
                return Err(Error::BacklogFull {
                    topic: self.name.clone(),
                    messages,
                    bytes: backlog_bytes,
                    limit: format!(
                        "max_messages={:?} max_bytes={:?}",
                        limit.max_messages, limit.max_bytes
                    ),
                    waited,
                });
            };
            tracing::trace!(topic = %self.name, messages, "publisher waiting for backlog room");
            self.space.wait(seen, remaining.min(BACKLOG_RECHECK));
        }
    }

    /// Removes the leading blocks of every partition that the retention policy no longer
    /// keeps. Returns `(partition, new low watermark)` for each partition that changed.
    pub fn enforce_retention(&self, now_ms: u64) -> Result<Vec<(u32, u64)>> {
        let mut changed = Vec::new();
        for partition in 0..self.partition_count() {
            let committed = self.min_committed(partition);
            let mut log = self.partitions[partition as usize].lock();
            let mut removed = 0;
            while log.blocks.len() > 1 {
                let Some(&front) = log.blocks.front() else {
                    break;
                };
                let unwritten = log
                    .unwritten
                    .front()
                    .is_some_and(|sealed| sealed.base <= front.base);
                if unwritten || !self.retention_removes(&front, &log, committed, now_ms) {
                    break;
                }
                self.storage.remove_block(self.id, partition, front.base)?;
                log.blocks.pop_front();
                log.stored_bytes -= front.bytes;
                removed += 1;
            }
            if removed > 0 {
                let low = log.low_watermark();
                log.recent
                    .retain(|(base, run)| base + run.len() as u64 > low);
                let topic = &self.name;
                let blocks = removed;
                tracing::debug!(%topic, partition, blocks, low, "retention removed blocks");
                changed.push((partition, low));
            }
        }
        if !changed.is_empty() {
            self.space.bump();
        }
        Ok(changed)
    }

    /// Removes every message of every partition. Each partition keeps an empty block at its
    /// next offset, so offsets continue after a restart. Returns `(partition, new low
    /// watermark, messages removed)` per partition.
    pub fn purge(&self) -> Result<Vec<(u32, u64, u64)>> {
        let mut purged = Vec::new();
        for partition in 0..self.partition_count() {
            let _writer = self.writers[partition as usize].lock();
            let mut log = self.partitions[partition as usize].lock();
            self.seal(partition, &mut log)?;
            self.write_sealed_locked(partition, &mut log)?;
            let high = log.next_offset;
            let removed = high - log.low_watermark();
            if removed == 0 {
                continue;
            }
            let empty: [Arc<StoredMessage>; 0] = [];
            let bytes = encode_block(&empty, 0)?;
            let index = IndexRecord {
                count: 0,
                bytes: bytes.len() as u64,
                last_timestamp_ms: 0,
            };
            let block = BlockWrite {
                topic_id: self.id,
                partition,
                base: high,
                bytes: bytes.into(),
            };
            self.storage.put_block(block, &index, &[])?;
            while let Some(front) = log.blocks.front().copied() {
                self.storage.remove_block(self.id, partition, front.base)?;
                log.blocks.pop_front();
                log.stored_bytes -= front.bytes;
            }
            log.push_block(meta(high, &index));
            log.recent.clear();
            tracing::info!(topic = %self.name, partition, removed, "purged partition");
            purged.push((partition, high, removed));
        }
        self.space.bump();
        Ok(purged)
    }

    /// Returns up to `max` retained messages of `partition` from `offset` on.
    pub fn peek(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<(u64, Arc<StoredMessage>)>> {
        let mut messages = Vec::new();
        let mut next = offset.max(self.extent(partition).low);
        while messages.len() < max {
            let Some((base, run)) = self.read(partition, next)? else {
                break;
            };
            let start = (next - base) as usize;
            for message in run[start..].iter().take(max - messages.len()) {
                messages.push((next, Arc::clone(message)));
                next += 1;
            }
        }
        Ok(messages)
    }

    fn retention_removes(
        &self,
        block: &BlockMeta,
        log: &PartitionLog,
        committed: Option<u64>,
        now_ms: u64,
    ) -> bool {
        match self.config.retention {
            Retention::Forever => false,
            Retention::UntilAcked => committed.is_some_and(|committed| block.end() <= committed),
            Retention::Limits { max_age, max_bytes } => {
                let too_old = max_age.is_some_and(|age| {
                    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                    block.last_timestamp_ms.saturating_add(age_ms) <= now_ms
                });
                let too_big = max_bytes.is_some_and(|max| log.stored_bytes > max);
                too_old || too_big
            }
        }
    }

    pub fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    /// Chooses the partition for a message: by key hash, or round-robin without a key.
    pub fn choose_partition(&self, key: Option<&[u8]>) -> u32 {
        match key {
            Some(key) => partition_for_key(key, self.config.partitions),
            None => self.next_keyless.fetch_add(1, Ordering::Relaxed) % self.config.partitions,
        }
    }

    /// Stores messages and returns one receipt per message, in input order. A message whose id
    /// was published within the dedup window (earlier, or earlier in this batch) is not stored
    /// and gets the original receipt, unless `deduplicate` is false.
    pub fn publish(
        &self,
        messages: Vec<StoredMessage>,
        now_ms: u64,
        deduplicate: bool,
    ) -> Result<Vec<Receipt>> {
        let window = self.config.dedup_window_ms;
        let without_ids = messages.iter().all(|message| message.id.is_none());
        if !deduplicate || window == 0 || without_ids {
            return self.append_in_order(messages);
        }

        let mut index = self.dedup.lock();
        let mut receipts: Vec<Option<Receipt>> = vec![None; messages.len()];
        let mut first_in_batch: HashMap<String, usize> = HashMap::new();
        let mut repeats = Vec::new();
        let mut fresh = Vec::new();
        for (position, message) in messages.into_iter().enumerate() {
            if let Some(id) = &message.id {
                if let Some(original) = index.get(id, now_ms, window) {
                    receipts[position] = Some(original);
                    continue;
                }
                if let Some(&first) = first_in_batch.get(id) {
                    repeats.push((position, first));
                    continue;
                }
                first_in_batch.insert(id.clone(), position);
            }
            fresh.push((position, message));
        }

        let ids: HashMap<usize, String> = first_in_batch
            .into_iter()
            .map(|(id, position)| (position, id))
            .collect();
        for (position, receipt) in self.append_positioned(fresh)? {
            receipts[position] = Some(receipt);
            if let Some(id) = ids.get(&position) {
                index.insert(id.clone(), receipt, now_ms);
            }
        }
        for (position, first) in repeats {
            receipts[position] = receipts[first];
        }
        if receipts.len() > ids.len() {
            tracing::trace!(topic = %self.name, "deduplicated messages by id");
        }
        Ok(receipts.into_iter().flatten().collect())
    }

    /// Appends messages without consulting the dedup index and returns their receipts in input
    /// order.
    fn append_in_order(&self, messages: Vec<StoredMessage>) -> Result<Vec<Receipt>> {
        if let [message] = messages.as_slice() {
            // One message, the case of `Broker::publish`, needs no grouping by partition.
            let partition = self.choose_partition(message.key.as_deref().map(|key| &key[..]));
            return self.append(partition, messages);
        }
        let positioned = messages.into_iter().enumerate().collect();
        // `append_positioned` returns the receipts grouped by partition.
        let mut receipts = self.append_positioned(positioned)?;
        receipts.sort_unstable_by_key(|(position, _)| *position);
        Ok(receipts.into_iter().map(|(_, receipt)| receipt).collect())
    }

    /// Appends `(position, message)` pairs, grouped by partition, and returns each position's
    /// receipt.
    fn append_positioned(
        &self,
        messages: Vec<(usize, StoredMessage)>,
    ) -> Result<Vec<(usize, Receipt)>> {
        let mut per_partition: Vec<Vec<(usize, StoredMessage)>> =
            (0..self.partition_count()).map(|_| Vec::new()).collect();
        for (position, message) in messages {
            let partition = self.choose_partition(message.key.as_deref().map(|key| &key[..]));
            per_partition[partition as usize].push((position, message));
        }
        let mut receipts = Vec::new();
        for (partition, batch) in per_partition.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let (positions, batch): (Vec<usize>, Vec<StoredMessage>) = batch.into_iter().unzip();
            let assigned = self.append(partition as u32, batch)?;
            receipts.extend(positions.into_iter().zip(assigned));
        }
        Ok(receipts)
    }

    /// Removes dedup entries older than the window, in memory and in storage.
    pub fn expire_dedup(&self, now_ms: u64) -> Result<()> {
        let window = self.config.dedup_window_ms;
        if window == 0 {
            return Ok(());
        }
        // The index stays locked while storage entries are removed, so that a publish of an
        // expired id cannot write a new entry that the removal would then delete.
        let mut index = self.dedup.lock();
        let expired = index.expire(now_ms, window);
        self.storage.remove_dedup(self.id, &expired)
    }

    /// Appends messages to one partition and returns their receipts.
    fn append(
        &self,
        partition: u32,
        messages: impl IntoIterator<Item = StoredMessage>,
    ) -> Result<Vec<Receipt>> {
        let messages = messages.into_iter();
        let mut receipts = Vec::with_capacity(messages.size_hint().0);
        let mut log = self.partitions[partition as usize].lock();
        for message in messages {
            let offset = log.next_offset;
            log.open_bytes += stored_size(&message);
            log.open.push(Arc::new(message));
            log.next_offset += 1;
            receipts.push(Receipt { partition, offset });
            if log.open_bytes >= self.block_bytes || log.open.len() >= MAX_BLOCK_MESSAGES {
                self.seal(partition, &mut log)?;
            }
        }
        let sealed = !log.unwritten.is_empty();
        drop(log);
        if sealed {
            self.write_sealed(partition)?;
        }
        Ok(receipts)
    }

    /// Appends one message through `write`, which receives the message's offset and its
    /// encoded single-message block and must store it. Used for dead letters, whose block is
    /// written in a transaction with the source group's cursor.
    pub fn append_with(
        &self,
        partition: u32,
        message: StoredMessage,
        write: impl FnOnce(u64, Vec<u8>, &IndexRecord) -> Result<()>,
    ) -> Result<Receipt> {
        // Earlier blocks reach sled first, so a crash cannot keep this block and lose them.
        let _writer = self.writers[partition as usize].lock();
        let mut log = self.partitions[partition as usize].lock();
        self.seal(partition, &mut log)?;
        self.write_sealed_locked(partition, &mut log)?;
        let offset = log.next_offset;
        let message = Arc::new(message);
        let bytes = encode_block(std::slice::from_ref(&message), stored_size(&message))?;
        let index = IndexRecord {
            count: 1,
            bytes: bytes.len() as u64,
            last_timestamp_ms: message.timestamp_ms,
        };
        write(offset, bytes, &index)?;
        log.push_block(meta(offset, &index));
        log.next_offset += 1;
        log.open_base = log.next_offset;
        push_recent(
            &mut log.recent,
            (offset, Arc::from(vec![message])),
            self.recent_blocks,
        );
        Ok(Receipt { partition, offset })
    }

    /// Writes every partition's open block to storage.
    /// Writes every partition's open block and the sealed blocks before it to storage.
    pub fn seal_all(&self) -> Result<()> {
        for (partition, log) in self.partitions.iter().enumerate() {
            self.seal(partition as u32, &mut log.lock())?;
            self.write_sealed(partition as u32)?;
        }
        Ok(())
    }

    /// Closes the open block: encodes it, adds it to the block index and queues it for its
    /// sled write. Readers find its messages in memory until that write is done.
    fn seal(&self, partition: u32, log: &mut PartitionLog) -> Result<()> {
        if log.open.is_empty() {
            return Ok(());
        }
        let bytes = encode_block(&log.open, log.open_bytes)?;
        let dedup = self.dedup_entries(partition, log);
        let last_timestamp_ms = log.open.iter().map(|message| message.timestamp_ms).max();
        let index = IndexRecord {
            count: log.open.len() as u32,
            bytes: bytes.len() as u64,
            last_timestamp_ms: last_timestamp_ms.unwrap_or(0),
        };
        log.push_block(meta(log.open_base, &index));
        let capacity = log.open.len();
        let open = std::mem::replace(&mut log.open, Vec::with_capacity(capacity));
        let messages: Arc<[Arc<StoredMessage>]> = Arc::from(open);
        let run = (log.open_base, Arc::clone(&messages));
        push_recent(&mut log.recent, run, self.recent_blocks);
        log.unwritten.push_back(Sealed {
            base: log.open_base,
            bytes: bytes.into(),
            index,
            dedup,
            messages,
        });
        log.open_base = log.next_offset;
        log.open_bytes = 0;
        Ok(())
    }

    /// Writes the partition's sealed blocks to sled in offset order, without holding the
    /// partition's lock during a write. Returns once every block sealed before the call is
    /// written, by this caller or by another one that held the writer lock.
    fn write_sealed(&self, partition: u32) -> Result<()> {
        let _writer = self.writers[partition as usize].lock();
        loop {
            let (block, index, dedup) = {
                let log = self.partitions[partition as usize].lock();
                let Some(sealed) = log.unwritten.front() else {
                    return Ok(());
                };
                (
                    self.block_write(partition, sealed),
                    sealed.index,
                    sealed.dedup.clone(),
                )
            };
            let base = block.base;
            self.storage.put_block(block, &index, &dedup)?;
            let mut log = self.partitions[partition as usize].lock();
            if log
                .unwritten
                .front()
                .is_some_and(|sealed| sealed.base == base)
            {
                log.unwritten.pop_front();
            }
        }
    }

    /// Writes the partition's sealed blocks while holding its writer lock and its lock.
    fn write_sealed_locked(&self, partition: u32, log: &mut PartitionLog) -> Result<()> {
        while let Some(sealed) = log.unwritten.front() {
            let block = self.block_write(partition, sealed);
            self.storage
                .put_block(block, &sealed.index, &sealed.dedup)?;
            log.unwritten.pop_front();
        }
        Ok(())
    }

    fn block_write(&self, partition: u32, sealed: &Sealed) -> BlockWrite {
        BlockWrite {
            topic_id: self.id,
            partition,
            base: sealed.base,
            bytes: sealed.bytes.clone(),
        }
    }

    fn dedup_entries(&self, partition: u32, log: &PartitionLog) -> Vec<(String, DedupRecord)> {
        if self.config.dedup_window_ms == 0 {
            return Vec::new();
        }
        let mut entries = Vec::new();
        for (offset, message) in (log.open_base..).zip(&log.open) {
            if let Some(id) = &message.id {
                let entry = DedupRecord {
                    partition,
                    offset,
                    timestamp_ms: message.timestamp_ms,
                };
                entries.push((id.clone(), entry));
            }
        }
        entries
    }

    /// Returns the next offset to be assigned in `partition` (the high watermark).
    pub fn end_offset(&self, partition: u32) -> u64 {
        self.partitions[partition as usize].lock().next_offset
    }

    /// Returns the publish time of the message at `offset`, if it is retained.
    pub fn timestamp_at(&self, partition: u32, offset: u64) -> Result<Option<u64>> {
        let Some((base, run)) = self.read(partition, offset)? else {
            return Ok(None);
        };
        let index = (offset - base) as usize;
        Ok(run.get(index).map(|message| message.timestamp_ms))
    }

    /// Returns a run of messages that starts at `offset`, or `None` if `offset` is at or past
    /// the end of the partition.
    pub fn read(&self, partition: u32, offset: u64) -> Result<Option<Run>> {
        {
            let log = self.partitions[partition as usize].lock();
            if offset >= log.next_offset {
                return Ok(None);
            }
            if offset >= log.open_base {
                let start = (offset - log.open_base) as usize;
                return Ok(Some((offset, Arc::from(&log.open[start..]))));
            }
            if let Some(run) = log
                .recent
                .iter()
                .find(|(base, run)| contains(*base, run, offset))
            {
                return Ok(Some(run.clone()));
            }
            if let Some(sealed) = log
                .unwritten
                .iter()
                .find(|sealed| contains(sealed.base, &sealed.messages, offset))
            {
                return Ok(Some((sealed.base, Arc::clone(&sealed.messages))));
            }
        }
        self.read_stored(partition, offset)
    }

    fn read_stored(&self, partition: u32, offset: u64) -> Result<Option<Run>> {
        let Some((base, bytes)) = self.storage.block_containing(self.id, partition, offset)? else {
            return Ok(None);
        };
        let block = decode_block(&bytes, self.id, partition, base)?;
        let messages: Arc<[Arc<StoredMessage>]> = block
            .messages
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>()
            .into();
        if !contains(base, &messages, offset) {
            return Ok(None);
        }
        Ok(Some((base, messages)))
    }
}

/// Time a publisher blocked on a full backlog waits before it checks again, in case a wake-up
/// was missed.
const BACKLOG_RECHECK: Duration = Duration::from_millis(100);

fn meta(base: u64, index: &IndexRecord) -> BlockMeta {
    BlockMeta {
        base,
        count: u64::from(index.count),
        bytes: index.bytes,
        last_timestamp_ms: index.last_timestamp_ms,
    }
}

/// Reads a stored block's index entry from its bytes, for index repair after a crash.
fn describe_block(bytes: &[u8], topic_id: u32, partition: u32, base: u64) -> Result<IndexRecord> {
    let block = decode_block(bytes, topic_id, partition, base)?;
    let last_timestamp_ms = block
        .messages
        .iter()
        .map(|message| message.timestamp_ms)
        .max();
    Ok(IndexRecord {
        count: block.messages.len() as u32,
        bytes: bytes.len() as u64,
        last_timestamp_ms: last_timestamp_ms.unwrap_or(0),
    })
}

fn contains(base: u64, run: &[Arc<StoredMessage>], offset: u64) -> bool {
    offset >= base && offset < base + run.len() as u64
}

/// Returns how many newest blocks each partition keeps decoded: its share of
/// [`RECENT_TOPIC_BYTES`], and at least [`MIN_RECENT_BLOCKS`].
fn recent_blocks(block_bytes: usize, partitions: u32) -> usize {
    let per_partition = RECENT_TOPIC_BYTES / (partitions.max(1) as usize);
    (per_partition / block_bytes.max(1)).max(MIN_RECENT_BLOCKS)
}

fn push_recent(recent: &mut VecDeque<Run>, run: Run, capacity: usize) {
    while recent.len() >= capacity {
        recent.pop_front();
    }
    recent.push_back(run);
}

fn encode_block(messages: &[Arc<StoredMessage>], size_hint: usize) -> Result<Vec<u8>> {
    record::encode_sized(Kind::Block, &BlockRef { messages }, size_hint)
}

fn decode_block(bytes: &[u8], topic_id: u32, partition: u32, base: u64) -> Result<Block> {
    let key = [topic_id.to_be_bytes(), partition.to_be_bytes()].concat();
    let key = [key.as_slice(), &base.to_be_bytes()].concat();
    record::decode("__aqueduct.log", &key, Kind::Block, bytes)
}

/// Returns the bytes a message counts against the block size.
fn stored_size(message: &StoredMessage) -> usize {
    let headers: usize = message
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum();
    message.payload.len()
        + message.key.as_ref().map_or(0, |k| k.len())
        + message.id.as_ref().map_or(0, String::len)
        + headers
        + MESSAGE_OVERHEAD
}
