//! Topics and their partition logs.
//!
//! Each partition assigns dense offsets under its own lock and collects new messages in an open
//! block. The open block is written to storage as one sled value when it reaches the configured
//! size or when the flusher runs; readers see messages in the open block at once. The last few
//! written blocks stay decoded in memory so that consumers near the head do not touch sled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::TopicConfig;
use crate::dedup::DedupIndex;
use crate::error::Result;
use crate::hash::partition_for_key;
use crate::message::Receipt;
use crate::record::{self, Block, DedupRecord, Kind, StoredMessage};
use crate::signal::Signal;
use crate::storage::{BlockWrite, Storage};

/// Number of written blocks per partition kept decoded for readers.
const RECENT_BLOCKS: usize = 4;

/// Most messages in one block, whatever their size.
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
    next_keyless: AtomicU32,
    storage: Arc<Storage>,
    block_bytes: usize,
    dedup: Mutex<DedupIndex>,
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
    ) -> Result<Self> {
        let entries = storage.load_dedup(id)?;
        let (dedup, expired) = DedupIndex::restore(entries, now_ms, config.dedup_window_ms);
        storage.remove_dedup(id, &expired)?;

        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for partition in 0..config.partitions {
            let next_offset = match storage.last_block(id, partition)? {
                Some((base, bytes)) => {
                    let block = decode_block(&bytes, id, partition, base)?;
                    base + block.messages.len() as u64
                }
                None => 0,
            };
            partitions.push(Mutex::new(PartitionLog {
                next_offset,
                open_base: next_offset,
                ..PartitionLog::default()
            }));
        }
        Ok(TopicLog {
            name,
            id,
            config,
            signal: Arc::new(Signal::default()),
            partitions,
            next_keyless: AtomicU32::new(0),
            storage,
            block_bytes,
            dedup: Mutex::new(dedup),
        })
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
    /// and gets the original receipt.
    pub fn publish(&self, messages: Vec<StoredMessage>, now_ms: u64) -> Result<Vec<Receipt>> {
        let window = self.config.dedup_window_ms;
        if window == 0 || messages.iter().all(|message| message.id.is_none()) {
            let positioned = messages.into_iter().enumerate().collect();
            let receipts = self.append_positioned(positioned)?;
            return Ok(receipts.into_iter().map(|(_, receipt)| receipt).collect());
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
        let mut log = self.partitions[partition as usize].lock();
        let mut receipts = Vec::new();
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
        Ok(receipts)
    }

    /// Appends one message through `write`, which receives the message's offset and its
    /// encoded single-message block and must store it. Used for dead letters, whose block is
    /// written in a transaction with the source group's cursor.
    pub fn append_with(
        &self,
        partition: u32,
        message: StoredMessage,
        write: impl FnOnce(u64, Vec<u8>) -> Result<()>,
    ) -> Result<Receipt> {
        let mut log = self.partitions[partition as usize].lock();
        self.seal(partition, &mut log)?;
        let offset = log.next_offset;
        let message = Arc::new(message);
        let bytes = encode_block(std::slice::from_ref(&message))?;
        write(offset, bytes)?;
        log.next_offset += 1;
        log.open_base = log.next_offset;
        push_recent(&mut log.recent, (offset, Arc::from(vec![message])));
        Ok(Receipt { partition, offset })
    }

    /// Writes every partition's open block to storage.
    pub fn seal_all(&self) -> Result<()> {
        for (partition, log) in self.partitions.iter().enumerate() {
            let mut log = log.lock();
            self.seal(partition as u32, &mut log)?;
        }
        Ok(())
    }

    fn seal(&self, partition: u32, log: &mut PartitionLog) -> Result<()> {
        if log.open.is_empty() {
            return Ok(());
        }
        let bytes = encode_block(&log.open)?;
        let dedup = self.dedup_entries(partition, log);
        if dedup.is_empty() {
            self.storage
                .put_block(self.id, partition, log.open_base, bytes)?;
        } else {
            let block = BlockWrite {
                topic_id: self.id,
                partition,
                base: log.open_base,
                bytes,
            };
            self.storage.put_block_with_dedup(block, &dedup)?;
        }
        let messages: Arc<[Arc<StoredMessage>]> = Arc::from(std::mem::take(&mut log.open));
        push_recent(&mut log.recent, (log.open_base, messages));
        log.open_base = log.next_offset;
        log.open_bytes = 0;
        Ok(())
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

fn contains(base: u64, run: &[Arc<StoredMessage>], offset: u64) -> bool {
    offset >= base && offset < base + run.len() as u64
}

fn push_recent(recent: &mut VecDeque<Run>, run: Run) {
    if recent.len() == RECENT_BLOCKS {
        recent.pop_front();
    }
    recent.push_back(run);
}

fn encode_block(messages: &[Arc<StoredMessage>]) -> Result<Vec<u8>> {
    record::encode(Kind::Block, &BlockRef { messages })
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
