//! Every sled call the broker makes.
//!
//! Trees, all under the reserved prefix `__aqueduct`:
//! - `__aqueduct.meta`: the format record, topic records and group records.
//! - `__aqueduct.log`: message blocks keyed by topic id, partition and base offset, and dedup
//!   entries keyed by topic id, the marker partition `u32::MAX` and the message id. Both live
//!   in one tree so that a block and its dedup entries are written in one atomic sled batch.
//! - `__aqueduct.groups`: cursor records keyed by topic id, partition and group name.
//! - `__aqueduct.index`: one small record per block (message count, size, newest timestamp),
//!   keyed like the block, so that opening a topic and enforcing retention read no block.
//!   An index entry is written after its block and removed before it; `reconcile_index`
//!   repairs the difference a crash can leave between the two.
//!
//! Keys are big-endian so that sled's byte order is numeric order. `docs/FORMAT.md` describes
//! the layout. After a failed write or flush the store is poisoned: every later write returns
//! [`Error::Poisoned`] instead of building on state that may not be on disk.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::error::{Error, Result};
use crate::generation::{self, GenerationRecord, GENERATION_FILE};
use crate::record::{
    self, CursorRecord, DedupRecord, DelaysRecord, GroupMetaRecord, IndexRecord, Kind,
    ParkedRecord, TopicRecord, FORMAT_VERSION,
};

/// Prefix of every tree the broker owns; application trees may not use it.
pub const RESERVED_PREFIX: &str = "__aqueduct";

const META_TREE: &str = "__aqueduct.meta";
const LOG_TREE: &str = "__aqueduct.log";
const GROUPS_TREE: &str = "__aqueduct.groups";

/// How long opening keeps retrying a database whose lock is held. sled 0.34 finishes log writes
/// and file truncations on its own thread pool, and those jobs keep the database file, and with
/// it the lock, open for a moment after the last handle is dropped. The bound is an estimate.
const LOCK_RETRY: Duration = Duration::from_secs(1);
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(10);
const INDEX_TREE: &str = "__aqueduct.index";

const FORMAT_KEY: &[u8] = b"format";
const TOPIC_PREFIX: &[u8] = b"topic/";
const GROUP_PREFIX: &[u8] = b"group/";
const PARKED_PREFIX: &[u8] = b"parked/";
const GENERATION_KEY: &[u8] = b"generation";

#[derive(Debug, Serialize, Deserialize)]
struct FormatRecord {
    version: u32,
}

/// The sled database and the broker's trees.
pub(crate) struct Storage {
    db: sled::Db,
    meta: sled::Tree,
    log: sled::Tree,
    groups: sled::Tree,
    index: sled::Tree,
    /// The database file, kept open to fsync it after sled's flush.
    db_file: Option<File>,
    path: Option<PathBuf>,
    poisoned: Mutex<Option<String>>,
    /// Blob files already fsynced, by file name.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// Set by every write, cleared by `flush_durable`.
    unsynced: AtomicBool,
    /// Generation read from the generation file on open; `None` without the file.
    recorded_generation: Option<u64>,
    /// Generation written by `begin_generation`; 0 before that and for temporary databases.
    generation: AtomicU64,
}

impl Storage {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None);
        let db = open_guarded(path, &config)?;
        let db_path = path.join("db");
        let db_file = File::open(&db_path).map_err(|source| Error::Io {
            path: db_path,
            source,
        })?;
        // Read only while sled's lock is held, so no other broker is replacing the file.
        let recorded_generation = generation::read(path)?;
        Self::from_db(
            db,
            Some(db_file),
            Some(path.to_path_buf()),
            recorded_generation,
        )
    }

    /// Creates a database in a temporary directory that sled removes on drop.
    pub fn temporary(cache_bytes: u64) -> Result<Self> {
        let config = sled::Config::new()
            .temporary(true)
            .cache_capacity(cache_bytes);
        let db = config.open()?;
        Self::from_db(db, None, None, None)
    }

    fn from_db(
        db: sled::Db,
        db_file: Option<File>,
        path: Option<PathBuf>,
        recorded_generation: Option<u64>,
    ) -> Result<Self> {
        let storage = Storage {
            meta: db.open_tree(META_TREE)?,
            log: db.open_tree(LOG_TREE)?,
            groups: db.open_tree(GROUPS_TREE)?,
            index: db.open_tree(INDEX_TREE)?,
            db,
            db_file,
            path,
            poisoned: Mutex::new(None),
            synced_blobs: Mutex::new(HashSet::new()),
            unsynced: AtomicBool::new(false),
            recorded_generation,
            generation: AtomicU64::new(0),
        };
        storage.check_generation()?;
        storage.check_format()?;
        Ok(storage)
    }

    fn check_format(&self) -> Result<()> {
        match self.meta.get(FORMAT_KEY)? {
            Some(bytes) => {
                // Another format version may lay out even the format record differently, so
                // its version byte is checked before the body is decoded.
                let version_byte = bytes.first().copied().unwrap_or(FORMAT_VERSION);
                let found = if version_byte == FORMAT_VERSION {
                    let record: FormatRecord =
                        record::decode(META_TREE, FORMAT_KEY, Kind::Format, &bytes)?;
                    record.version
                } else {
                    u32::from(version_byte)
                };
                if found != u32::from(FORMAT_VERSION) {
                    return Err(Error::IncompatibleFormat {
                        path: self.path.clone().unwrap_or_default(),
                        found,
                        supported: u32::from(FORMAT_VERSION),
                    });
                }
                Ok(())
            }
            None => {
                let value = FormatRecord {
                    version: u32::from(FORMAT_VERSION),
                };
                let bytes = record::encode(Kind::Format, &value)?;
                self.meta.insert(FORMAT_KEY, bytes)?;
                Ok(())
            }
        }
    }

    /// Fails with [`Error::Corrupt`] when sled recovered an older generation than the
    /// generation file records, because then sled dropped data that had been made durable.
    fn check_generation(&self) -> Result<()> {
        let Some(recorded) = self.recorded_generation else {
            return Ok(());
        };
        let stored = self.stored_generation()?;
        if stored >= recorded {
            return Ok(());
        }
        let file = self.path.clone().unwrap_or_default().join(GENERATION_FILE);
        Err(Error::Corrupt {
            tree: META_TREE,
            key: record::hex(GENERATION_KEY),
            reason: format!(
                "sled recovered generation {stored}, but {} records generation {recorded}, so \
                 sled dropped data that had been durable because the db file or a file under \
                 blobs/ is damaged. To accept the database as it is instead, delete {}",
                file.display(),
                file.display()
            ),
        })
    }

    fn stored_generation(&self) -> Result<u64> {
        let Some(bytes) = self.meta.get(GENERATION_KEY)? else {
            return Ok(0);
        };
        let record: GenerationRecord =
            record::decode(META_TREE, GENERATION_KEY, Kind::Generation, &bytes)?;
        Ok(record.generation)
    }

    /// Records the next generation, in the meta tree and then in the generation file. Called
    /// once the broker has loaded the store, before any flush round runs.
    pub fn begin_generation(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let previous = self
            .stored_generation()?
            .max(self.recorded_generation.unwrap_or(0));
        self.record_generation(path, previous + 1)?;
        self.generation.store(previous + 1, Ordering::SeqCst);
        Ok(())
    }

    fn record_generation(&self, dir: &Path, generation: u64) -> Result<()> {
        self.check_writable()?;
        let bytes = record::encode(Kind::Generation, &GenerationRecord { generation })?;
        let result = self.meta.insert(GENERATION_KEY, bytes).map(drop);
        self.guard(result)?;
        self.flush_durable()?;
        generation::write(dir, generation)
    }

    /// Opens an application tree, rejecting names under the reserved prefix.
    pub fn app_tree(&self, name: &str) -> Result<sled::Tree> {
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Error::ReservedTreeName {
                name: name.to_string(),
                prefix: RESERVED_PREFIX,
            });
        }
        Ok(self.db.open_tree(name)?)
    }

    /// Returns the database directory, or `None` for a temporary database.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn load_topics(&self) -> Result<Vec<TopicRecord>> {
        let mut topics = Vec::new();
        for item in self.meta.scan_prefix(TOPIC_PREFIX) {
            let (key, value) = item?;
            let topic: TopicRecord = record::decode(META_TREE, &key, Kind::Topic, &value)?;
            // A record that decodes can still hold a configuration that `create_topic` rejects,
            // such as zero partitions, which the broker cannot serve.
            topic
                .config
                .validate(&topic.name)
                .map_err(|error| Error::Corrupt {
                    tree: META_TREE,
                    key: record::hex(&key),
                    reason: format!("stored topic configuration is invalid: {error}"),
                })?;
            topics.push(topic);
        }
        Ok(topics)
    }

    pub fn put_topic(&self, topic: &TopicRecord) -> Result<()> {
        self.check_writable()?;
        let key = [TOPIC_PREFIX, topic.name.as_bytes()].concat();
        let bytes = record::encode(Kind::Topic, topic)?;
        let result = self.meta.insert(key, bytes).map(drop);
        self.guard(result)
    }

    pub fn load_group_meta(&self, topic_id: u32, group: &str) -> Result<Option<GroupMetaRecord>> {
        let key = group_meta_key(topic_id, group);
        match self.meta.get(&key)? {
            Some(bytes) => Ok(Some(record::decode(
                META_TREE,
                &key,
                Kind::GroupMeta,
                &bytes,
            )?)),
            None => Ok(None),
        }
    }

    /// Returns the keys a group has parked.
    pub fn load_parked(&self, topic_id: u32, group: &str) -> Result<Vec<ParkedRecord>> {
        let prefix = parked_key(topic_id, group, b"");
        let mut parked = Vec::new();
        for item in self.meta.scan_prefix(&prefix) {
            let (key, value) = item?;
            parked.push(record::decode(META_TREE, &key, Kind::Parked, &value)?);
        }
        Ok(parked)
    }

    /// Removes a parked key; returns whether it was parked.
    pub fn remove_parked(&self, topic_id: u32, group: &str, key: &[u8]) -> Result<bool> {
        self.check_writable()?;
        let result = self.meta.remove(parked_key(topic_id, group, key));
        Ok(self.guard(result)?.is_some())
    }

    /// Returns the metadata of every group of a topic.
    pub fn list_group_meta(&self, topic_id: u32) -> Result<Vec<GroupMetaRecord>> {
        let prefix = group_meta_key(topic_id, "");
        let mut groups = Vec::new();
        for item in self.meta.scan_prefix(&prefix) {
            let (key, value) = item?;
            groups.push(record::decode(META_TREE, &key, Kind::GroupMeta, &value)?);
        }
        Ok(groups)
    }

    /// Removes everything stored for a group: its cursors, delays and parked keys, then its
    /// record. A crash in between leaves the record, so the group still exists and a second
    /// delete finishes the job.
    pub fn remove_group(&self, topic_id: u32, partitions: u32, group: &str) -> Result<()> {
        // Plain removes, not a batch: sled 0.34 slows every later operation in the process once
        // a batch or transaction has run.
        self.check_writable()?;
        for partition in 0..partitions {
            let result = self.groups.remove(cursor_key(topic_id, partition, group));
            self.guard(result)?;
            let result = self.groups.remove(delays_key(topic_id, partition, group));
            self.guard(result)?;
        }
        let parked: Vec<sled::IVec> = self
            .meta
            .scan_prefix(parked_key(topic_id, group, b""))
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        for key in parked {
            let result = self.meta.remove(key);
            self.guard(result)?;
        }
        let result = self.meta.remove(group_meta_key(topic_id, group)).map(drop);
        self.guard(result)
    }

    pub fn put_group_meta(&self, topic_id: u32, meta: &GroupMetaRecord) -> Result<()> {
        self.check_writable()?;
        let bytes = record::encode(Kind::GroupMeta, meta)?;
        let result = self
            .meta
            .insert(group_meta_key(topic_id, &meta.group), bytes)
            .map(drop);
        self.guard(result)
    }

    /// Writes an encoded block, the dedup entries of its messages (in one atomic sled batch
    /// with the block) and then its index entry.
    pub fn put_block(
        &self,
        block: BlockWrite,
        index: &IndexRecord,
        dedup: &[(String, DedupRecord)],
    ) -> Result<()> {
        self.check_writable()?;
        let key = block_key(block.topic_id, block.partition, block.base);
        let result = if dedup.is_empty() {
            self.log.insert(key, block.bytes).map(drop)
        } else {
            let mut batch = sled::Batch::default();
            batch.insert(&key, block.bytes);
            for (id, entry) in dedup {
                batch.insert(
                    dedup_key(block.topic_id, id),
                    record::encode(Kind::Dedup, entry)?,
                );
            }
            self.log.apply_batch(batch)
        };
        self.guard(result)?;
        let index_bytes = record::encode(Kind::Index, index)?;
        let result = self.index.insert(key, index_bytes).map(drop);
        self.guard(result)
    }

    /// Returns a partition's index entries in offset order.
    pub fn load_index(&self, topic_id: u32, partition: u32) -> Result<Vec<(u64, IndexRecord)>> {
        let start = block_key(topic_id, partition, 0);
        let end = block_key(topic_id, partition, u64::MAX);
        let mut entries = Vec::new();
        for item in self.index.range(start..=end) {
            let (key, value) = item?;
            let base = block_base(&key)?;
            let entry: IndexRecord = record::decode(INDEX_TREE, &key, Kind::Index, &value)?;
            check_block_end(INDEX_TREE, &key, base, entry.count)?;
            entries.push((base, entry));
        }
        Ok(entries)
    }

    /// Makes a partition's index match its blocks after a crash, and returns the repaired index.
    /// Blocks after the last indexed one get entries, which `describe` reads from a block's
    /// bytes. Blocks before the first indexed one were left by an interrupted removal and are
    /// removed.
    pub fn reconcile_index(
        &self,
        topic_id: u32,
        partition: u32,
        describe: impl Fn(u64, &[u8]) -> Result<IndexRecord>,
    ) -> Result<Vec<(u64, IndexRecord)>> {
        let mut entries = self.load_index(topic_id, partition)?;
        let first_indexed = entries.first().map(|(base, _)| *base);
        let resume_from = entries.last().map_or(0, |(base, _)| base + 1);

        if let Some(first) = first_indexed {
            let start = block_key(topic_id, partition, 0);
            let end = block_key(topic_id, partition, first);
            for item in self.log.range(start..end) {
                let (key, _) = item?;
                tracing::info!(
                    topic_id,
                    partition,
                    "removing a block whose removal was interrupted"
                );
                let result = self.log.remove(key).map(drop);
                self.guard(result)?;
            }
        }

        let start = block_key(topic_id, partition, resume_from);
        let end = block_key(topic_id, partition, u64::MAX);
        for item in self.log.range(start..=end) {
            let (key, value) = item?;
            let base = block_base(&key)?;
            let entry = describe(base, &value)?;
            check_block_end(LOG_TREE, &key, base, entry.count)?;
            let result = self
                .index
                .insert(&key, record::encode(Kind::Index, &entry)?)
                .map(drop);
            self.guard(result)?;
            entries.push((base, entry));
        }
        Ok(entries)
    }

    /// Removes a block: first its index entry, then the block.
    pub fn remove_block(&self, topic_id: u32, partition: u32, base: u64) -> Result<()> {
        self.check_writable()?;
        let key = block_key(topic_id, partition, base);
        let result = self.index.remove(key).map(drop);
        self.guard(result)?;
        let result = self.log.remove(key).map(drop);
        self.guard(result)
    }

    /// Returns a topic's stored dedup entries.
    pub fn load_dedup(&self, topic_id: u32) -> Result<Vec<(String, DedupRecord)>> {
        let prefix = dedup_key(topic_id, "");
        let mut entries = Vec::new();
        for item in self.log.scan_prefix(&prefix) {
            let (key, value) = item?;
            let record: DedupRecord = record::decode(LOG_TREE, &key, Kind::Dedup, &value)?;
            let id =
                String::from_utf8(key[prefix.len()..].to_vec()).map_err(|_| Error::Corrupt {
                    tree: LOG_TREE,
                    key: record::hex(&key),
                    reason: "dedup key contains an id that is not UTF-8".into(),
                })?;
            entries.push((id, record));
        }
        Ok(entries)
    }

    /// Removes expired dedup entries.
    pub fn remove_dedup(&self, topic_id: u32, ids: &[String]) -> Result<()> {
        self.check_writable()?;
        for id in ids {
            let result = self.log.remove(dedup_key(topic_id, id)).map(drop);
            self.guard(result)?;
        }
        Ok(())
    }

    /// Returns the base offset and raw bytes of the block that contains `offset`, if stored.
    pub fn block_containing(
        &self,
        topic_id: u32,
        partition: u32,
        offset: u64,
    ) -> Result<Option<(u64, sled::IVec)>> {
        let start = block_key(topic_id, partition, 0);
        let end = block_key(topic_id, partition, offset);
        match self.log.range(start..=end).next_back() {
            Some(item) => {
                let (key, value) = item?;
                Ok(Some((block_base(&key)?, value)))
            }
            None => Ok(None),
        }
    }

    /// Returns the `nack_after` delays of a group in one partition.
    pub fn load_delays(&self, topic_id: u32, partition: u32, group: &str) -> Result<DelaysRecord> {
        let key = delays_key(topic_id, partition, group);
        match self.groups.get(&key)? {
            Some(bytes) => record::decode(GROUPS_TREE, &key, Kind::Delays, &bytes),
            None => Ok(DelaysRecord::default()),
        }
    }

    /// Stores a group's `nack_after` delays in one partition, or removes them when empty.
    pub fn put_delays(
        &self,
        topic_id: u32,
        partition: u32,
        group: &str,
        delays: &DelaysRecord,
    ) -> Result<()> {
        self.check_writable()?;
        let key = delays_key(topic_id, partition, group);
        let result = if delays.entries.is_empty() {
            self.groups.remove(key).map(drop)
        } else {
            let bytes = record::encode(Kind::Delays, delays)?;
            self.groups.insert(key, bytes).map(drop)
        };
        self.guard(result)
    }

    pub fn load_cursor(
        &self,
        topic_id: u32,
        partition: u32,
        group: &str,
    ) -> Result<Option<CursorRecord>> {
        let key = cursor_key(topic_id, partition, group);
        let Some(bytes) = self.groups.get(&key)? else {
            return Ok(None);
        };
        let cursor: CursorRecord = record::decode(GROUPS_TREE, &key, Kind::GroupCursor, &bytes)?;
        check_cursor(&key, &cursor)?;
        Ok(Some(cursor))
    }

    pub fn put_cursor(
        &self,
        topic_id: u32,
        partition: u32,
        group: &str,
        cursor: &CursorRecord,
    ) -> Result<()> {
        self.check_writable()?;
        let bytes = record::encode(Kind::GroupCursor, cursor)?;
        let result = self
            .groups
            .insert(cursor_key(topic_id, partition, group), bytes)
            .map(drop);
        self.guard(result)
    }

    /// Writes a dead-letter block and the source group's cursor in one sled transaction, so the
    /// message is either in the dead-letter topic and settled in its group, or neither.
    pub fn put_dead_letter(
        &self,
        block: BlockWrite,
        index: &IndexRecord,
        cursor: CursorWrite<'_>,
        parked: Option<&ParkedRecord>,
    ) -> Result<()> {
        self.check_writable()?;
        let parked = match parked {
            Some(record) => Some((
                parked_key(cursor.topic_id, cursor.group, &record.key),
                record::encode(Kind::Parked, record)?,
            )),
            None => None,
        };
        let block_key = block_key(block.topic_id, block.partition, block.base);
        let index_bytes = record::encode(Kind::Index, index)?;
        let cursor_key = cursor_key(cursor.topic_id, cursor.partition, cursor.group);
        let cursor_bytes = record::encode(Kind::GroupCursor, cursor.record)?;
        let trees = (&self.log, &self.index, &self.groups, &self.meta);
        let result = trees.transaction(|(log, index, groups, meta)| {
            if let Some((key, value)) = &parked {
                meta.insert(key.as_slice(), value.as_slice())?;
            }
            log.insert(block_key.as_slice(), &*block.bytes)?;
            index.insert(block_key.as_slice(), index_bytes.as_slice())?;
            groups.insert(cursor_key.as_slice(), cursor_bytes.as_slice())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        let result = result.map_err(|error| match error {
            TransactionError::Storage(error) => error,
            TransactionError::Abort(()) => {
                sled::Error::Unsupported("dead-letter transaction aborted".into())
            }
        });
        self.guard(result)
    }

    /// Writes sled's buffers to the file and fsyncs it.
    ///
    /// sled 0.34's `flush` writes with `pwrite` and then calls `sync_file_range`, which starts
    /// and waits for writeback of the data pages but neither flushes the drive's write cache nor
    /// persists file metadata. The `fdatasync` that follows does both. sled also writes any page
    /// larger than a quarter of its 512 KiB segment to its own file under `blobs/` without
    /// syncing it; a tree node with several large blocks is such a page. So new blob files and
    /// the directory are fsynced as well. Returns `false` when nothing was written since the
    /// last call.
    pub fn flush_durable(&self) -> Result<bool> {
        self.check_writable()?;
        if !self.unsynced.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        if let Err(error) = self.db.flush() {
            self.poison(error.to_string());
            return Err(Error::Storage(error));
        }
        if let Some(file) = &self.db_file {
            if let Err(source) = file.sync_data() {
                let path = self.path.clone().unwrap_or_default().join("db");
                self.poison(format!("fsync of {} failed: {source}", path.display()));
                return Err(Error::Io { path, source });
            }
        }
        if let Some(path) = &self.path {
            if let Err(error) = self.sync_new_blobs(&path.join("blobs")) {
                self.poison(error.to_string());
                return Err(error);
            }
        }
        Ok(true)
    }

    /// Fsyncs blob files created since the last call, then their directory.
    fn sync_new_blobs(&self, dir: &Path) -> Result<()> {
        let io_error = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(dir, error)),
        };
        let mut synced = self.synced_blobs.lock();
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(|error| io_error(dir, error))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let path = entry.path();
                match File::open(&path).and_then(|file| file.sync_all()) {
                    Ok(()) => any_new = true,
                    // sled removes blobs that a newer page version replaced.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(io_error(&path, error)),
                }
            }
            present.insert(name);
        }
        *synced = present;
        if any_new {
            File::open(dir)
                .and_then(|file| file.sync_all())
                .map_err(|error| io_error(dir, error))?;
        }
        Ok(())
    }

    /// Makes the next `flush_durable` flush and fsync even if the broker wrote nothing, for
    /// writes that applications made to their own trees.
    pub fn mark_unsynced(&self) {
        self.unsynced.store(true, Ordering::SeqCst);
    }

    /// Returns `Poisoned` once any write has failed.
    pub fn check_writable(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn guard<T>(&self, result: sled::Result<T>) -> Result<T> {
        self.unsynced.store(true, Ordering::SeqCst);
        result.map_err(|error| {
            self.poison(error.to_string());
            Error::Storage(error)
        })
    }

    fn poison(&self, cause: String) {
        let mut poisoned = self.poisoned.lock();
        if poisoned.is_none() {
            tracing::error!(%cause, "storage write failed; rejecting further writes");
            *poisoned = Some(cause);
        }
    }
}

impl Drop for Storage {
    /// Records a closing generation, so that the next open also notices damage to what was
    /// written after this store was opened.
    fn drop(&mut self) {
        let generation = *self.generation.get_mut();
        let Some(path) = self.path.clone() else {
            return;
        };
        if generation == 0 || self.check_writable().is_err() {
            return;
        }
        if let Err(error) = self.record_generation(&path, generation + 1) {
            tracing::warn!(
                %error,
                path = %path.display(),
                "failed to record the closing generation; the next open checks against the \
                 opening one"
            );
        }
    }
}

/// A block to write.
pub(crate) struct BlockWrite {
    pub topic_id: u32,
    pub partition: u32,
    pub base: u64,
    pub bytes: sled::IVec,
}

/// A cursor record to write with a dead-letter block.
pub(crate) struct CursorWrite<'a> {
    pub topic_id: u32,
    pub partition: u32,
    pub group: &'a str,
    pub record: &'a CursorRecord,
}

/// Opens sled, turning a lock still held after [`LOCK_RETRY`] into [`Error::Locked`] and a panic
/// inside sled (which sled 0.34 raises on some corrupt files) into [`Error::Corrupt`].
fn open_guarded(path: &Path, config: &sled::Config) -> Result<sled::Db> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let deadline = Instant::now() + LOCK_RETRY;
    loop {
        match open_once(path, config) {
            Err(Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(LOCK_RETRY_INTERVAL);
            }
            outcome => return outcome,
        }
    }
}

fn open_once(path: &Path, config: &sled::Config) -> Result<sled::Db> {
    let outcome = catch_unwind(AssertUnwindSafe(|| config.open()));
    match outcome {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(error))) if is_lock_error(&error) => Err(Error::Locked {
            path: path.to_path_buf(),
        }),
        Ok(Err(sled::Error::Io(source))) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
        Ok(Err(sled::Error::Corruption { .. })) => Err(Error::Corrupt {
            tree: "sled",
            key: String::new(),
            reason: format!("sled reported corruption in {}", path.display()),
        }),
        // On open, sled 0.34 returns `Unsupported` for a `conf` file that is not UTF-8 or that
        // names another sled version, segment size or compression setting.
        Ok(Err(sled::Error::Unsupported(message))) => Err(Error::Corrupt {
            tree: "sled",
            key: String::new(),
            reason: format!("sled cannot open {}: {message}", path.display()),
        }),
        Ok(Err(error)) => Err(Error::Storage(error)),
        Err(panic) => Err(Error::Corrupt {
            tree: "sled",
            key: String::new(),
            reason: format!(
                "sled panicked while opening {}: {}",
                path.display(),
                panic_message(panic.as_ref())
            ),
        }),
    }
}

fn is_lock_error(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock || error.to_string().contains("lock")
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

fn block_key(topic_id: u32, partition: u32, base: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&topic_id.to_be_bytes());
    key[4..8].copy_from_slice(&partition.to_be_bytes());
    key[8..].copy_from_slice(&base.to_be_bytes());
    key
}

/// Partition number that marks dedup keys in the log tree; real partitions are below 1024.
const DEDUP_MARKER: u32 = u32::MAX;

fn dedup_key(topic_id: u32, id: &str) -> Vec<u8> {
    [
        &topic_id.to_be_bytes()[..],
        &DEDUP_MARKER.to_be_bytes(),
        id.as_bytes(),
    ]
    .concat()
}

/// Rejects a block whose offsets would pass `u64::MAX`, which only a damaged key or record
/// can describe.
fn check_block_end(tree: &'static str, key: &[u8], base: u64, count: u32) -> Result<()> {
    // The partition's next offset, one past the block's end, must fit as well.
    if base.checked_add(u64::from(count) + 1).is_some() {
        return Ok(());
    }
    Err(Error::Corrupt {
        tree,
        key: record::hex(key),
        reason: format!(
            "block at offset {base} with {count} messages ends past the largest offset"
        ),
    })
}

/// Rejects a cursor whose offsets pass `u64::MAX` or whose attempt count leaves no room for
/// another delivery. The broker writes neither.
fn check_cursor(key: &[u8], cursor: &CursorRecord) -> Result<()> {
    let reason = cursor.entries.iter().find_map(|&(delta, attempts, _)| {
        if cursor.committed.checked_add(delta).is_none() {
            Some(format!(
                "entry {delta} past committed offset {} is past the largest offset",
                cursor.committed
            ))
        } else if attempts == u32::MAX {
            Some(format!(
                "attempt count {attempts} leaves no room for another delivery"
            ))
        } else {
            None
        }
    });
    match reason {
        Some(reason) => Err(Error::Corrupt {
            tree: GROUPS_TREE,
            key: record::hex(key),
            reason,
        }),
        None => Ok(()),
    }
}

fn block_base(key: &[u8]) -> Result<u64> {
    let tail: [u8; 8] = key
        .get(8..16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::Corrupt {
            tree: LOG_TREE,
            key: record::hex(key),
            reason: "block key is not 16 bytes".into(),
        })?;
    Ok(u64::from_be_bytes(tail))
}

fn cursor_key(topic_id: u32, partition: u32, group: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + group.len());
    key.extend_from_slice(&topic_id.to_be_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key
}

/// `parked/`, topic id, group name length (one byte; names are at most 249 bytes), group name,
/// key bytes.
fn parked_key(topic_id: u32, group: &str, key: &[u8]) -> Vec<u8> {
    let group_len = [group.len() as u8];
    [
        PARKED_PREFIX,
        &topic_id.to_be_bytes(),
        &group_len,
        group.as_bytes(),
        key,
    ]
    .concat()
}

/// Returns the cursor key followed by a zero byte, which no group name contains, and `delays`.
fn delays_key(topic_id: u32, partition: u32, group: &str) -> Vec<u8> {
    let mut key = cursor_key(topic_id, partition, group);
    key.push(0);
    key.extend_from_slice(b"delays");
    key
}

fn group_meta_key(topic_id: u32, group: &str) -> Vec<u8> {
    [GROUP_PREFIX, &topic_id.to_be_bytes(), group.as_bytes()].concat()
}
