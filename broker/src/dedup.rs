//! Deduplication of published messages by id.
//!
//! Each topic keeps an index from message id to the receipt of the first message published with
//! that id. A publish whose id is in the index, and whose original is younger than the topic's
//! dedup window, is not stored; the publisher gets the original receipt. Index entries are
//! written to storage in the same sled batch as the block that holds the message, so after a
//! crash the index and the log agree: a message that was lost is not in the index either, and
//! a retried publish stores it again. On open the index is loaded from storage and expired
//! entries are removed.

use std::collections::{HashMap, VecDeque};

use crate::message::Receipt;
use crate::record::DedupRecord;

/// An id's original receipt and publish time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    pub receipt: Receipt,
    pub timestamp_ms: u64,
}

/// The in-memory dedup index of one topic.
#[derive(Default)]
pub(crate) struct DedupIndex {
    by_id: HashMap<String, Seen>,
    /// Ids in publish order, for expiry.
    order: VecDeque<(u64, String)>,
}

impl DedupIndex {
    /// Builds the index from stored entries; returns it and the ids that already expired.
    pub fn restore(
        mut entries: Vec<(String, DedupRecord)>,
        now_ms: u64,
        window_ms: u64,
    ) -> (Self, Vec<String>) {
        entries.sort_by_key(|(_, record)| record.timestamp_ms);
        let mut index = DedupIndex::default();
        let mut expired = Vec::new();
        for (id, record) in entries {
            if record.timestamp_ms.saturating_add(window_ms) <= now_ms {
                expired.push(id);
                continue;
            }
            let receipt = Receipt {
                partition: record.partition,
                offset: record.offset,
            };
            index.insert(id, receipt, record.timestamp_ms);
        }
        (index, expired)
    }

    /// Returns the original receipt if `id` was published within the window before `now_ms`.
    pub fn get(&self, id: &str, now_ms: u64, window_ms: u64) -> Option<Receipt> {
        let seen = self.by_id.get(id)?;
        (seen.timestamp_ms.saturating_add(window_ms) > now_ms).then_some(seen.receipt)
    }

    pub fn insert(&mut self, id: String, receipt: Receipt, timestamp_ms: u64) {
        self.order.push_back((timestamp_ms, id.clone()));
        self.by_id.insert(
            id,
            Seen {
                receipt,
                timestamp_ms,
            },
        );
    }

    /// Removes entries older than the window and returns their ids.
    pub fn expire(&mut self, now_ms: u64, window_ms: u64) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some((timestamp_ms, _)) = self.order.front() {
            if timestamp_ms.saturating_add(window_ms) > now_ms {
                break;
            }
            let Some((timestamp_ms, id)) = self.order.pop_front() else {
                break;
            };
            // A later publish of the same id after expiry replaced the entry; keep that one.
            if self
                .by_id
                .get(&id)
                .is_some_and(|seen| seen.timestamp_ms == timestamp_ms)
            {
                self.by_id.remove(&id);
                expired.push(id);
            }
        }
        expired
    }
}
