//! Consumer groups: leases, acks, redelivery and dead-lettering.
//!
//! A group keeps, per partition, a window of loaded but unsettled offsets. Each offset in the
//! window is ready, leased to a consumer, or settled (acked or dead-lettered). `committed` is the
//! first unsettled offset; everything below it is settled.
//!
//! Guarantees:
//! - A fetch raises attempt counts in memory and marks the cursor dirty. The caller then
//!   requests a flush round, which writes every dirty cursor before it fsyncs, and waits for
//!   that round before handing deliveries out, so attempts survive a crash of the process.
//! - An ack, nack or extend must carry the epoch of the current lease. A lease that expired and
//!   was handed to another consumer has a newer epoch, so the old holder gets
//!   [`Error::LeaseExpired`].
//! - Dead-lettering writes the dead-letter copy and the settled cursor in one transaction.
//! - A message that reaches the topic's `max_deliveries` is dead-lettered instead of being
//!   delivered again, whether its deliveries ended in nacks, timeouts or crashes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::config::{Durability, OrderingMode};
use crate::error::{Error, Result};
use crate::flusher::Flusher;
use crate::hash::key_hash;
use crate::log::{GroupFloor, Run, TopicLog};
use crate::message::DeadLetterInfo;
use crate::record::{CursorRecord, DelaysRecord, ParkedRecord, StoredMessage};
use crate::storage::{BlockWrite, CursorWrite, Storage};
use crate::window::Window;

/// Minimum number of messages a fetch loads into a partition's window at a time.
const MIN_LOAD: usize = 64;

/// A delivery leased by a fetch, not yet wrapped for the application.
pub(crate) struct Leased {
    pub message: Arc<StoredMessage>,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
    pub epoch: u64,
}

/// The outcome of one fetch.
pub(crate) struct Fetched {
    pub leased: Vec<Leased>,
    /// Earliest clock time at which a message that is not deliverable yet becomes so.
    pub next_due_ms: Option<u64>,
    pub generation: u64,
    /// Whether the batch is one suspect delivery (see `PartitionCursor::suspects`), which the
    /// consumer must hand out before it fetches again.
    pub suspect: bool,
}

/// The way a delivery is settled or returned.
pub(crate) enum Outcome {
    Ack,
    Nack { delay_ms: u64 },
    DeadLetter { reason: String },
}

pub(crate) struct Group {
    pub topic: Arc<TopicLog>,
    pub name: String,
    pub ordering: OrderingMode,
    pub flusher: Arc<Flusher>,
    pub clock: Arc<dyn Clock>,
    dead_letter: Option<Arc<TopicLog>>,
    storage: Arc<Storage>,
    durability: Durability,
    state: Mutex<GroupState>,
    /// Committed offsets shared with the topic for retention and backlog.
    pub floor: Arc<GroupFloor>,
    /// Redeliveries handed out since open.
    pub redeliveries: AtomicU64,
    /// Messages moved to the dead-letter topic since open.
    pub dead_letters: AtomicU64,
}

struct GroupState {
    partitions: Vec<PartitionCursor>,
    members: Vec<u64>,
    generation: u64,
    next_epoch: u64,
    leases: BinaryHeap<Reverse<LeaseEntry>>,
    rotation: usize,
    max_unacked: usize,
    /// Keys held back after a dead letter, by key hash (per-key mode only).
    parked: HashMap<u64, ParkedRecord>,
    /// Set by `Broker::delete_group`; the group then changes nothing, in memory or storage.
    deleted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LeaseEntry {
    deadline: u64,
    partition: u32,
    offset: u64,
    epoch: u64,
}

#[derive(Default)]
struct PartitionCursor {
    committed: u64,
    /// Next offset to load into the window.
    loaded: u64,
    window: Window<Slot>,
    ready: BTreeSet<u64>,
    /// Unsettled offsets per key hash, in offset order; used in per-key mode.
    key_queues: HashMap<u64, VecDeque<u64>>,
    /// Attempt counts and settled flags read from storage for offsets not loaded yet.
    recovered: BTreeMap<u64, (u32, bool)>,
    run: Option<Run>,
    /// One past the highest offset that was delivered or settled. Offsets from here on have no
    /// cursor entry, so `record` stops scanning the window here.
    touched_end: u64,
    dirty: bool,
    /// Whether `key_queues` is maintained (per-key mode only).
    track_keys: bool,
    /// Offsets that were in flight when the process stopped. Any of them may be the message
    /// that stopped it, so each is delivered alone and its consumer fetches nothing more until
    /// it is handed out. Otherwise every message fetched behind a message that crashes the
    /// process would gain an attempt on every crash and reach the delivery limit unseen.
    suspects: BTreeSet<u64>,
    /// `nack_after` redelivery times read from storage for offsets not loaded yet.
    recovered_delays: BTreeMap<u64, u64>,
    /// Whether a `nack_after` delay changed since the delays record was last written.
    delays_dirty: bool,
}

struct Slot {
    message: Arc<StoredMessage>,
    key_hash: Option<u64>,
    attempts: u32,
    epoch: u64,
    lease: Option<Lease>,
    not_before: u64,
    settled: bool,
}

#[derive(Clone, Copy)]
struct Lease {
    consumer: u64,
    deadline: u64,
}

/// Parameters for opening a group.
pub(crate) struct GroupParts {
    pub topic: Arc<TopicLog>,
    pub name: String,
    pub ordering: OrderingMode,
    pub dead_letter: Option<Arc<TopicLog>>,
    pub storage: Arc<Storage>,
    pub flusher: Arc<Flusher>,
    pub clock: Arc<dyn Clock>,
    pub durability: Durability,
    pub max_unacked: usize,
}

impl Group {
    /// Opens a group and restores its cursors. Deliveries that were in flight when the process
    /// stopped become ready again with their attempt counts.
    pub fn open(parts: GroupParts) -> Result<Self> {
        let mut partitions = Vec::new();
        let mut restored = 0usize;
        for partition in 0..parts.topic.partition_count() {
            let record = parts
                .storage
                .load_cursor(parts.topic.id, partition, &parts.name)?;
            let track_keys = parts.ordering == OrderingMode::PerKey;
            let mut cursor = PartitionCursor::restore(record.unwrap_or_default(), track_keys);
            let delays = parts
                .storage
                .load_delays(parts.topic.id, partition, &parts.name)?;
            cursor.recovered_delays = delays.entries.into_iter().collect();
            cursor.forget_beyond(parts.topic.end_offset(partition));
            restored += cursor
                .recovered
                .values()
                .filter(|(_, settled)| !settled)
                .count();
            partitions.push(cursor);
        }
        let parked: HashMap<u64, ParkedRecord> = parts
            .storage
            .load_parked(parts.topic.id, &parts.name)?
            .into_iter()
            .map(|record| (key_hash(&record.key), record))
            .collect();
        let committed: Vec<u64> = partitions.iter().map(|cursor| cursor.committed).collect();
        let floor = parts.topic.floor(&parts.name, || committed.clone());
        for (partition, committed) in committed.into_iter().enumerate() {
            floor.set(partition as u32, committed);
        }
        if restored > 0 {
            tracing::info!(
                topic = %parts.topic.name,
                group = %parts.name,
                in_flight = restored,
                "recovered deliveries that were in flight; they will be redelivered"
            );
        }
        Ok(Group {
            topic: parts.topic,
            name: parts.name,
            ordering: parts.ordering,
            flusher: parts.flusher,
            clock: parts.clock,
            dead_letter: parts.dead_letter,
            storage: parts.storage,
            durability: parts.durability,
            state: Mutex::new(GroupState {
                partitions,
                members: Vec::new(),
                generation: 0,
                next_epoch: 1,
                leases: BinaryHeap::new(),
                rotation: 0,
                max_unacked: parts.max_unacked,
                parked,
                deleted: false,
            }),
            floor,
            redeliveries: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
        })
    }

    /// Publishes a partition's committed offset to the topic, waking publishers that wait for
    /// backlog room when it moved.
    fn share_committed(&self, partition: usize, committed: u64) {
        let before = self.floor.get(partition as u32);
        if committed > before {
            self.floor.set(partition as u32, committed);
            if self.topic.config.backlog.is_some() {
                self.topic.space.bump();
            }
        }
    }

    /// Drops offsets below `low` that retention removed, and returns how many of them this
    /// group had not settled.
    pub fn truncate(&self, partition: u32, low: u64) -> u64 {
        let mut state = self.state.lock();
        let Some(cursor) = state.partitions.get_mut(partition as usize) else {
            return 0;
        };
        let removed = cursor.truncate(low);
        let committed = cursor.committed;
        // Consumers drop buffered deliveries from an older generation, and some of theirs
        // may be among the removed offsets.
        state.generation += 1;
        drop(state);
        self.share_committed(partition as usize, committed);
        removed
    }

    /// Adds a member; in per-partition mode partitions are reassigned.
    pub fn join(&self, consumer: u64, max_unacked: usize) -> u64 {
        let mut state = self.state.lock();
        state.max_unacked = state.max_unacked.max(max_unacked);
        state.members.push(consumer);
        state.members.sort_unstable();
        self.rebalance(&mut state)
    }

    /// Removes a member; in per-partition mode its partitions move to the others.
    pub fn leave(&self, consumer: u64) {
        let mut state = self.state.lock();
        state.members.retain(|member| *member != consumer);
        self.rebalance(&mut state);
        drop(state);
        self.topic.signal.bump();
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    fn rebalance(&self, state: &mut GroupState) -> u64 {
        state.generation += 1;
        if self.ordering != OrderingMode::PerPartition {
            return state.generation;
        }
        let members = state.members.clone();
        for (index, cursor) in state.partitions.iter_mut().enumerate() {
            let owner = owner_of(&members, index);
            for (offset, slot) in cursor.window.iter_mut() {
                let Some(lease) = slot.lease else { continue };
                if Some(lease.consumer) != owner {
                    slot.lease = None;
                    cursor.ready.insert(offset);
                }
            }
        }
        tracing::debug!(
            topic = %self.topic.name,
            group = %self.name,
            members = members.len(),
            generation = state.generation,
            "rebalanced partitions"
        );
        self.topic.signal.bump();
        state.generation
    }

    /// Leases up to `max` deliverable messages to `consumer` and marks the changed cursors
    /// dirty. The caller must request a flush round, which writes them, and wait for it before
    /// handing the deliveries out.
    pub fn fetch(&self, consumer: u64, max: usize) -> Result<Fetched> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        self.check_live(&state)?;
        self.expire_leases(&mut state, now)?;

        let partition_count = state.partitions.len();
        let start = state.rotation % partition_count;
        state.rotation = state.rotation.wrapping_add(1);
        let mut fetched = Fetched {
            leased: Vec::new(),
            next_due_ms: None,
            generation: 0,
            suspect: false,
        };
        fetched.generation = state.generation;

        for step in 0..partition_count {
            let partition = (start + step) % partition_count;
            if fetched.leased.len() >= max || fetched.suspect {
                break;
            }
            if self.ordering == OrderingMode::PerPartition
                && owner_of(&state.members, partition) != Some(consumer)
            {
                continue;
            }
            self.fetch_partition(&mut state, partition, consumer, max, now, &mut fetched)?;
        }

        for partition in 0..partition_count {
            self.share_committed(partition, state.partitions[partition].committed);
        }
        Ok(fetched)
    }

    fn fetch_partition(
        &self,
        state: &mut GroupState,
        partition: usize,
        consumer: u64,
        max: usize,
        now: u64,
        fetched: &mut Fetched,
    ) -> Result<()> {
        let max_unacked = state.max_unacked;
        let low = self.topic.extent(partition as u32).low;
        let skipped = state.partitions[partition].skip_removed(low);
        if skipped > 0 {
            tracing::debug!(
                topic = %self.topic.name,
                group = %self.name,
                partition,
                skipped,
                low,
                "skipped offsets that retention removed before this group loaded them"
            );
        }
        // Load only as many messages as this fetch needs, doubling while the ordering mode
        // keeps loaded ones waiting, so the window (and memory) follows the in-flight count and
        // reaches max_unacked only when consumers fall behind on acks.
        let requested = max.saturating_sub(fetched.leased.len());
        let mut additional = requested.max(MIN_LOAD);
        let candidates = loop {
            let cursor = &mut state.partitions[partition];
            let before = cursor.loaded;
            let target = (cursor.window.len() + additional).min(max_unacked);
            cursor.fill(&self.topic, partition as u32, target)?;
            let exhausted = cursor.loaded == before || cursor.window.len() >= max_unacked;
            let mut probe = Fetched {
                leased: Vec::new(),
                next_due_ms: None,
                generation: 0,
                suspect: false,
            };
            let candidates = self.candidates(
                &state.partitions[partition],
                &state.parked,
                now,
                requested,
                &mut probe,
            );
            if candidates.len() >= requested || exhausted {
                if let Some(due) = probe.next_due_ms {
                    let next = fetched.next_due_ms.map_or(due, |known| known.min(due));
                    fetched.next_due_ms = Some(next);
                }
                break candidates;
            }
            additional = additional.saturating_mul(2);
        };
        let ack_timeout = self.topic.config.ack_timeout_ms;
        for offset in candidates {
            if fetched.leased.len() >= max {
                break;
            }
            let suspect = state.partitions[partition].suspects.contains(&offset);
            if suspect && !fetched.leased.is_empty() {
                break;
            }
            let Some(attempts) = state.partitions[partition]
                .window
                .get(offset)
                .map(|slot| slot.attempts)
            else {
                continue;
            };
            if self.limit_reached(attempts) {
                let reason = format!("delivery limit of {attempts} reached");
                self.dead_letter_slot(state, partition, offset, reason)?;
                continue;
            }
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            let deadline = now.saturating_add(ack_timeout);
            let cursor = &mut state.partitions[partition];
            cursor.ready.remove(&offset);
            cursor.dirty = true;
            cursor.touched_end = cursor.touched_end.max(offset + 1);
            let Some(slot) = cursor.window.get_mut(offset) else {
                continue;
            };
            slot.attempts += 1;
            slot.epoch = epoch;
            slot.lease = Some(Lease { consumer, deadline });
            if slot.attempts > 1 {
                self.redeliveries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    topic = %self.topic.name,
                    group = %self.name,
                    partition,
                    offset,
                    attempt = slot.attempts,
                    "redelivering"
                );
            }
            fetched.leased.push(Leased {
                message: Arc::clone(&slot.message),
                partition: partition as u32,
                offset,
                attempt: slot.attempts,
                epoch,
            });
            let entry = LeaseEntry {
                deadline,
                partition: partition as u32,
                offset,
                epoch,
            };
            state.leases.push(Reverse(entry));
            if suspect {
                state.partitions[partition].suspects.remove(&offset);
                fetched.suspect = true;
                break;
            }
        }
        Ok(())
    }

    /// Lists the ready offsets of a partition that the group's ordering mode allows now, in
    /// offset order, and records when the next held-back one becomes due.
    fn candidates(
        &self,
        cursor: &PartitionCursor,
        parked: &HashMap<u64, ParkedRecord>,
        now: u64,
        requested: usize,
        fetched: &mut Fetched,
    ) -> Vec<u64> {
        let mut candidates = Vec::new();
        for &offset in &cursor.ready {
            if candidates.len() >= requested {
                break;
            }
            let Some(slot) = cursor.window.get(offset) else {
                continue;
            };
            if slot.not_before > now {
                let due = fetched
                    .next_due_ms
                    .map_or(slot.not_before, |d| d.min(slot.not_before));
                fetched.next_due_ms = Some(due);
                if self.ordering == OrderingMode::PerPartition {
                    break;
                }
                continue;
            }
            if self.ordering == OrderingMode::PerKey {
                if let Some(hash) = slot.key_hash {
                    let head = cursor.key_queues.get(&hash).and_then(|queue| queue.front());
                    if head != Some(&offset) || parked.contains_key(&hash) {
                        continue;
                    }
                }
            }
            candidates.push(offset);
        }
        candidates
    }

    fn limit_reached(&self, attempts: u32) -> bool {
        self.topic
            .config
            .max_deliveries
            .is_some_and(|max| attempts >= max)
    }

    /// Makes expired leases ready again, or dead-letters them at the delivery limit.
    fn expire_leases(&self, state: &mut GroupState, now: u64) -> Result<()> {
        while let Some(Reverse(entry)) = state.leases.peek().copied() {
            if entry.deadline > now {
                break;
            }
            state.leases.pop();
            let partition = entry.partition as usize;
            let cursor = &mut state.partitions[partition];
            let Some(slot) = cursor.window.get_mut(entry.offset) else {
                continue;
            };
            let current = slot.epoch == entry.epoch
                && slot
                    .lease
                    .is_some_and(|lease| lease.deadline == entry.deadline);
            if !current {
                continue;
            }
            slot.lease = None;
            let attempts = slot.attempts;
            tracing::debug!(
                topic = %self.topic.name,
                group = %self.name,
                partition,
                offset = entry.offset,
                attempts,
                "ack timeout expired"
            );
            if self.limit_reached(attempts) {
                let reason = format!("ack timeout expired on delivery {attempts}, the limit");
                self.dead_letter_slot(state, partition, entry.offset, reason)?;
            } else {
                cursor.ready.insert(entry.offset);
                // As for a nack: the owner returns its buffer so the redelivery comes first.
                if self.ordering == OrderingMode::PerPartition {
                    state.generation += 1;
                }
            }
        }
        Ok(())
    }

    /// Settles or returns a leased delivery. Fails with `LeaseExpired` when `epoch` is not the
    /// delivery's latest lease or the delivery is already settled. With `Durability::Flushed`
    /// it returns after a flush round has made the change durable.
    pub fn settle(&self, partition: u32, offset: u64, epoch: u64, outcome: Outcome) -> Result<()> {
        self.settle_unsynced(partition, offset, epoch, outcome)?;
        self.sync_settled()
    }

    /// Marks the group deleted, so that it writes nothing more and its outstanding deliveries
    /// fail with `GroupDeleted`. Fails with `GroupInUse` while consumers are subscribed.
    pub fn delete(&self) -> Result<()> {
        let mut state = self.state.lock();
        if !state.members.is_empty() {
            return Err(Error::GroupInUse {
                topic: self.topic.name.clone(),
                group: self.name.clone(),
                consumers: state.members.len(),
            });
        }
        state.deleted = true;
        Ok(())
    }

    fn check_live(&self, state: &GroupState) -> Result<()> {
        if state.deleted {
            return Err(Error::GroupDeleted {
                topic: self.topic.name.clone(),
                group: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Returns whether this group and `other` belong to the same broker, and so share its
    /// flush rounds.
    pub fn shares_flusher(&self, other: &Group) -> bool {
        Arc::ptr_eq(&self.flusher, &other.flusher)
    }

    /// With `Durability::Flushed`, waits for a flush round that covers every settle so far.
    pub fn sync_settled(&self) -> Result<()> {
        if self.durability == Durability::Flushed {
            self.flusher.sync()?;
        }
        Ok(())
    }

    /// As [`settle`](Self::settle), without waiting for a flush round.
    pub fn settle_unsynced(
        &self,
        partition: u32,
        offset: u64,
        epoch: u64,
        outcome: Outcome,
    ) -> Result<()> {
        let mut state = self.state.lock();
        self.check_live(&state)?;
        let index = partition as usize;
        let slot = state
            .partitions
            .get(index)
            .and_then(|cursor| cursor.window.get(offset));
        let attempts = match slot {
            Some(slot) if !slot.settled && slot.epoch == epoch => slot.attempts,
            _ => return Err(self.lease_expired(partition, offset)),
        };
        // An ack makes another message deliverable only by freeing its key or window room.
        let mut wake = self.ordering == OrderingMode::PerKey
            || state.partitions[index].window.len() >= state.max_unacked;
        match outcome {
            Outcome::Ack => {
                state.partitions[index].settle(offset);
            }
            Outcome::Nack { .. } if self.limit_reached(attempts) => {
                let reason = format!("nacked on delivery {attempts}, the limit");
                self.dead_letter_slot(&mut state, index, offset, reason)?;
            }
            Outcome::Nack { delay_ms } => {
                let now = self.clock.now_ms();
                let cursor = &mut state.partitions[index];
                if let Some(slot) = cursor.window.get_mut(offset) {
                    slot.lease = None;
                    slot.not_before = now.saturating_add(delay_ms);
                }
                cursor.ready.insert(offset);
                if delay_ms > 0 {
                    cursor.delays_dirty = true;
                    cursor.dirty = true;
                }
                // The owner's buffer may hold later offsets of this partition. A new generation
                // makes consumers return their buffers, so the redelivery comes first.
                if self.ordering == OrderingMode::PerPartition {
                    state.generation += 1;
                }
                wake = true;
            }
            Outcome::DeadLetter { reason } => {
                self.dead_letter_slot(&mut state, index, offset, reason)?;
            }
        }
        let committed = state.partitions[index].committed;
        drop(state);
        self.share_committed(index, committed);
        if wake {
            self.topic.signal.bump();
        }
        Ok(())
    }

    /// Renews the lease of a delivery for another ack timeout.
    pub fn extend(&self, partition: u32, offset: u64, epoch: u64) -> Result<()> {
        let now = self.clock.now_ms();
        let deadline = now.saturating_add(self.topic.config.ack_timeout_ms);
        let mut state = self.state.lock();
        self.check_live(&state)?;
        let slot = state
            .partitions
            .get_mut(partition as usize)
            .and_then(|cursor| cursor.window.get_mut(offset));
        match slot {
            Some(slot) if !slot.settled && slot.epoch == epoch && slot.lease.is_some() => {
                if let Some(lease) = slot.lease.as_mut() {
                    lease.deadline = deadline;
                }
            }
            _ => return Err(self.lease_expired(partition, offset)),
        }
        state.leases.push(Reverse(LeaseEntry {
            deadline,
            partition,
            offset,
            epoch,
        }));
        Ok(())
    }

    /// Returns deliveries that were fetched but never handed to the application. Their attempt
    /// counts go back down; a lease that changed since is left alone.
    pub fn release_unhanded(&self, deliveries: &[Leased]) {
        if deliveries.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        for leased in deliveries {
            let Some(cursor) = state.partitions.get_mut(leased.partition as usize) else {
                continue;
            };
            let Some(slot) = cursor.window.get_mut(leased.offset) else {
                continue;
            };
            if slot.settled || slot.epoch != leased.epoch || slot.lease.is_none() {
                continue;
            }
            slot.lease = None;
            slot.attempts = slot.attempts.saturating_sub(1);
            cursor.ready.insert(leased.offset);
            cursor.dirty = true;
        }
        drop(state);
        self.topic.signal.bump();
    }

    /// Writes the cursors and delay records that changed since they were last written.
    pub fn persist_dirty(&self) -> Result<()> {
        let mut state = self.state.lock();
        if state.deleted {
            return Ok(());
        }
        for partition in 0..state.partitions.len() {
            let cursor = &state.partitions[partition];
            if cursor.dirty || cursor.delays_dirty {
                self.write_cursor(&mut state, partition)?;
            }
        }
        Ok(())
    }

    /// Writes a partition's cursor record if it changed, and its delay record if that changed.
    /// A dead letter writes the cursor in its own transaction and leaves the delays to this.
    fn write_cursor(&self, state: &mut GroupState, partition: usize) -> Result<()> {
        let cursor = &mut state.partitions[partition];
        if cursor.dirty {
            let record = cursor.record();
            self.storage
                .put_cursor(self.topic.id, partition as u32, &self.name, &record)?;
            cursor.dirty = false;
        }
        if cursor.delays_dirty {
            let delays = cursor.delays(self.clock.now_ms());
            self.storage
                .put_delays(self.topic.id, partition as u32, &self.name, &delays)?;
            cursor.delays_dirty = false;
        }
        Ok(())
    }

    /// Moves a message to the dead-letter topic and settles it, atomically.
    fn dead_letter_slot(
        &self,
        state: &mut GroupState,
        partition: usize,
        offset: u64,
        reason: String,
    ) -> Result<()> {
        let Some(dead_letter) = &self.dead_letter else {
            return Err(Error::NoDeadLetterTopic {
                topic: self.topic.name.clone(),
            });
        };
        let cursor = &mut state.partitions[partition];
        let Some(slot) = cursor.window.get(offset) else {
            return Ok(());
        };
        let attempts = slot.attempts;
        let copy = StoredMessage {
            timestamp_ms: slot.message.timestamp_ms,
            payload: slot.message.payload.clone(),
            key: slot.message.key.clone(),
            headers: slot.message.headers.clone(),
            id: slot.message.id.clone(),
            deliver_at_ms: None,
            dead_letter: Some(DeadLetterInfo {
                source_topic: self.topic.name.clone(),
                source_partition: partition as u32,
                source_offset: offset,
                group: self.name.clone(),
                attempts,
                last_error: reason.clone(),
                dead_lettered_at_ms: self.clock.now_ms(),
            }),
        };
        let target_partition = dead_letter.choose_partition(copy.key.as_deref().map(|k| &k[..]));
        // In per-key mode the key stops here, so that later messages of the key do not
        // overtake the dead-lettered one.
        let parked = match (&copy.key, slot.key_hash) {
            (Some(key), Some(hash)) if self.ordering == OrderingMode::PerKey => Some((
                hash,
                ParkedRecord {
                    partition: partition as u32,
                    offset,
                    key: key.clone(),
                    reason: reason.clone(),
                    parked_at_ms: self.clock.now_ms(),
                },
            )),
            _ => None,
        };

        cursor.settle(offset);
        let record = cursor.record();
        let receipt = dead_letter.append_with(target_partition, copy, |base, bytes, index| {
            let block = BlockWrite {
                topic_id: dead_letter.id,
                partition: target_partition,
                base,
                bytes: bytes.into(),
            };
            let cursor_write = CursorWrite {
                topic_id: self.topic.id,
                partition: partition as u32,
                group: &self.name,
                record: &record,
            };
            let parked_record = parked.as_ref().map(|(_, record)| record);
            self.storage
                .put_dead_letter(block, index, cursor_write, parked_record)
        })?;
        cursor.dirty = false;
        if let Some((hash, record)) = parked {
            tracing::warn!(
                topic = %self.topic.name,
                group = %self.name,
                partition,
                "parked key after dead letter; release it with Broker::release_key"
            );
            state.parked.insert(hash, record);
        }
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
        dead_letter.signal.bump();
        tracing::warn!(
            topic = %self.topic.name,
            group = %self.name,
            partition,
            offset,
            attempts,
            %reason,
            dead_letter_topic = %dead_letter.name,
            dead_letter_partition = receipt.partition,
            dead_letter_offset = receipt.offset,
            "dead-lettered message"
        );
        Ok(())
    }

    /// Lets a parked key flow again; returns whether it was parked.
    pub fn release_key(&self, key: &[u8]) -> Result<bool> {
        let mut state = self.state.lock();
        let released = self.storage.remove_parked(self.topic.id, &self.name, key)?;
        state.parked.remove(&key_hash(key));
        drop(state);
        self.topic.signal.bump();
        Ok(released)
    }

    fn lease_expired(&self, partition: u32, offset: u64) -> Error {
        Error::LeaseExpired {
            topic: self.topic.name.clone(),
            group: self.name.clone(),
            partition,
            offset,
        }
    }

    /// Returns `(committed, in flight)` per partition, for statistics and tests.
    pub fn positions(&self) -> Vec<(u64, usize)> {
        let state = self.state.lock();
        state
            .partitions
            .iter()
            .map(|cursor| {
                let in_flight = cursor
                    .window
                    .iter()
                    .filter(|(_, slot)| slot.lease.is_some())
                    .count();
                (cursor.committed, in_flight)
            })
            .collect()
    }
}

fn owner_of(members: &[u64], partition: usize) -> Option<u64> {
    if members.is_empty() {
        return None;
    }
    Some(members[partition % members.len()])
}

impl PartitionCursor {
    fn restore(record: CursorRecord, track_keys: bool) -> Self {
        let recovered: BTreeMap<u64, (u32, bool)> = record
            .entries
            .iter()
            .map(|&(delta, attempts, settled)| (record.committed + delta, (attempts, settled)))
            .collect();
        let suspects = recovered
            .iter()
            .filter(|(_, (attempts, settled))| *attempts > 0 && !settled)
            .map(|(offset, _)| *offset)
            .collect();
        PartitionCursor {
            committed: record.committed,
            loaded: record.committed,
            recovered,
            track_keys,
            suspects,
            ..PartitionCursor::default()
        }
    }

    /// Loads messages into the window until it contains `target` offsets or the partition ends.
    fn fill(&mut self, topic: &TopicLog, partition: u32, target: usize) -> Result<()> {
        while self.window.len() < target {
            let run = match &self.run {
                Some((base, run))
                    if self.loaded >= *base && self.loaded < base + run.len() as u64 =>
                {
                    (*base, Arc::clone(run))
                }
                _ => match topic.read(partition, self.loaded)? {
                    Some(run) => {
                        self.run = Some(run.clone());
                        run
                    }
                    None => break,
                },
            };
            let (base, messages) = run;
            let start = (self.loaded - base) as usize;
            let room = target - self.window.len();
            for message in messages[start..].iter().take(room) {
                self.load(Arc::clone(message));
            }
        }
        self.advance();
        Ok(())
    }

    fn load(&mut self, message: Arc<StoredMessage>) {
        let offset = self.loaded;
        self.loaded += 1;
        let (attempts, settled) = self.recovered.remove(&offset).unwrap_or((0, false));
        if attempts > 0 || settled {
            self.touched_end = self.touched_end.max(offset + 1);
        }
        let key_hash = if self.track_keys {
            message.key.as_ref().map(|key| key_hash(key))
        } else {
            None
        };
        if !settled {
            self.ready.insert(offset);
            if let Some(hash) = key_hash {
                self.key_queues.entry(hash).or_default().push_back(offset);
            }
        }
        let delayed_until = self.recovered_delays.remove(&offset).unwrap_or(0);
        let not_before = message.deliver_at_ms.unwrap_or(0).max(delayed_until);
        let slot = Slot {
            message,
            key_hash,
            attempts,
            epoch: 0,
            lease: None,
            not_before,
            settled,
        };
        self.window.insert(offset, slot);
    }

    fn settle(&mut self, offset: u64) {
        let Some(slot) = self.window.get_mut(offset) else {
            return;
        };
        slot.settled = true;
        slot.lease = None;
        let key_hash = slot.key_hash;
        self.touched_end = self.touched_end.max(offset + 1);
        self.ready.remove(&offset);
        self.suspects.remove(&offset);
        self.forget_key(offset, key_hash);
        self.dirty = true;
        self.advance();
    }

    /// Drops recovered state for offsets at or past `end`. A fetch writes attempt counts
    /// before the flush round that stores the fetched messages, so a crash in between leaves
    /// counts for offsets that were lost and will be assigned to new messages.
    fn forget_beyond(&mut self, end: u64) {
        self.recovered.split_off(&end);
        self.recovered_delays.split_off(&end);
        self.suspects.split_off(&end);
        if self.committed > end {
            self.committed = end;
            self.loaded = end;
        }
    }

    /// Moves the next offset to load up to `low` when retention removed offsets that were never
    /// loaded; returns how many were skipped.
    fn skip_removed(&mut self, low: u64) -> u64 {
        if self.loaded >= low {
            return 0;
        }
        let skipped = low - self.loaded;
        self.recovered = self.recovered.split_off(&low);
        self.recovered_delays = self.recovered_delays.split_off(&low);
        self.loaded = low;
        self.run = None;
        self.advance();
        skipped
    }

    /// Drops every offset below `low`, loaded or not; returns how many were unsettled.
    fn truncate(&mut self, low: u64) -> u64 {
        self.suspects = self.suspects.split_off(&low);
        let mut unsettled = 0;
        let below: Vec<u64> = self.window.below(low).map(|(offset, _)| offset).collect();
        for offset in below {
            if let Some(slot) = self.window.remove(offset) {
                if !slot.settled {
                    unsettled += 1;
                    self.ready.remove(&offset);
                    self.forget_key(offset, slot.key_hash);
                }
            }
        }
        if self.loaded < low {
            let skipped_recovered = self
                .recovered
                .range(..low)
                .filter(|(_, (_, settled))| *settled)
                .count();
            unsettled += low - self.loaded - skipped_recovered as u64;
            self.recovered = self.recovered.split_off(&low);
            self.loaded = low;
            self.run = None;
        }
        if unsettled > 0 {
            self.dirty = true;
        }
        self.advance();
        unsettled
    }

    fn forget_key(&mut self, offset: u64, key_hash: Option<u64>) {
        let Some(hash) = key_hash else { return };
        if let Some(queue) = self.key_queues.get_mut(&hash) {
            queue.retain(|queued| *queued != offset);
            if queue.is_empty() {
                self.key_queues.remove(&hash);
            }
        }
    }

    /// Drops settled offsets from the front of the window and moves `committed` up.
    fn advance(&mut self) {
        self.window.pop_front_while(|slot| slot.settled);
        let committed = self.window.first_offset().unwrap_or(self.loaded);
        if committed != self.committed {
            self.committed = committed;
            self.dirty = true;
        }
    }

    /// Lists the unsettled offsets whose `nack_after` delay has not passed at `now`.
    fn delays(&self, now: u64) -> DelaysRecord {
        let mut entries: Vec<(u64, u64)> = self
            .window
            .iter()
            .filter(|(_, slot)| !slot.settled && slot.not_before > now)
            .filter(|(_, slot)| slot.not_before > slot.message.deliver_at_ms.unwrap_or(0))
            .map(|(offset, slot)| (offset, slot.not_before))
            .collect();
        let recovered = self
            .recovered_delays
            .iter()
            .filter(|(_, until)| **until > now);
        entries.extend(recovered.map(|(offset, until)| (*offset, *until)));
        DelaysRecord { entries }
    }

    fn record(&self) -> CursorRecord {
        let committed = self.committed;
        let mut entries: Vec<(u64, u32, bool)> = self
            .window
            .below(self.touched_end)
            .filter(|(_, slot)| slot.attempts > 0 || slot.settled)
            .map(|(offset, slot)| (offset - committed, slot.attempts, slot.settled))
            .collect();
        entries.extend(
            self.recovered
                .iter()
                .map(|(offset, (attempts, settled))| (offset - committed, *attempts, *settled)),
        );
        CursorRecord { committed, entries }
    }
}
