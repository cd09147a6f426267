//! The orchestrator's sled tree: saga records, history, state and timer indexes, pending
//! requests. Every state change is one sled transaction that also moves the index entries,
//! appends the history and writes or removes the pending request.

use serde::{Deserialize, Serialize};
use sled::transaction::{abort, TransactionError, TransactionalTree};

use super::error::SagaError;
use super::record::{
    decode, encode, history_key, history_prefix, id_from_state_key, memo_key, parse_timer_key,
    pending_key, record_key, state_key, state_prefix, PendingRequest, SagaRecord, FORMAT_VERSION,
};
use super::state::{HistoryEntry, HistoryEvent, SagaState, StepKind};

/// A history entry as stored, with the format version first.
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    version: u8,
    entry: HistoryEntry,
}

/// The writes of a transition besides the record.
#[derive(Default)]
pub(crate) struct Change {
    pub history: Vec<HistoryEvent>,
    pub pending: Option<PendingChange>,
    /// Leaves `updated_ms` and the state index as they are, for history that records no
    /// progress (an ignored late reply).
    pub history_only: bool,
}

pub(crate) enum PendingChange {
    Put(PendingRequest),
    Remove,
}

/// A committed transition: the new record and the history it added.
pub(crate) struct Updated {
    pub record: SagaRecord,
    pub events: Vec<HistoryEvent>,
}

/// Result of [`Store::insert`].
pub(crate) enum Inserted {
    New,
    Existing(Box<SagaRecord>),
}

pub(crate) struct Store {
    pub orchestrator: String,
    pub tree_name: String,
    pub tree: sled::Tree,
    flush_on_commit: bool,
}

impl Store {
    pub(crate) fn new(orchestrator: &str, tree: sled::Tree, flush_on_commit: bool) -> Self {
        Store {
            orchestrator: orchestrator.to_string(),
            tree_name: format!("saga.{orchestrator}"),
            tree,
            flush_on_commit,
        }
    }

    pub(crate) fn storage(&self, source: sled::Error) -> SagaError {
        SagaError::Storage {
            orchestrator: self.orchestrator.clone(),
            source,
        }
    }

    /// Stores a new saga with its first history entry, unless the id exists.
    pub(crate) fn insert(
        &self,
        record: &SagaRecord,
        event: HistoryEvent,
    ) -> Result<Inserted, SagaError> {
        let key = record_key(&record.id);
        let result = self.tree.transaction(|tx| {
            if let Some(bytes) = tx.get(&key)? {
                let existing = decode(&self.tree_name, &key, &bytes).or_else(abort)?;
                return Ok(Inserted::Existing(Box::new(existing)));
            }
            let mut record = record.clone();
            let history_len = record.history_len;
            record.history_len += 1;
            let entry = HistoryEntry {
                at_ms: record.updated_ms,
                event: event.clone(),
            };
            self.put_history(tx, &record.id, history_len, entry)?;
            tx.insert(
                state_key(record.state, record.updated_ms, &record.id),
                &[][..],
            )?;
            if let Some(due) = record.timer_ms {
                tx.insert(super::record::timer_key(due, &record.id), &[][..])?;
            }
            tx.insert(key.clone(), encode(&record).or_else(abort)?)?;
            Ok(Inserted::New)
        });
        let inserted = self.finish(result)?;
        self.flush_if_configured()?;
        Ok(inserted)
    }

    /// Applies `transition` to the stored saga in one transaction. `transition` returns
    /// `false` to leave everything unchanged.
    pub(crate) fn update<F>(
        &self,
        id: &str,
        now_ms: u64,
        transition: F,
    ) -> Result<Option<Updated>, SagaError>
    where
        F: Fn(&mut SagaRecord, &mut Change) -> Result<bool, SagaError>,
    {
        let key = record_key(id);
        let result = self.tree.transaction(|tx| {
            let Some(bytes) = tx.get(&key)? else {
                return abort(self.not_found(id));
            };
            let mut record: SagaRecord = decode(&self.tree_name, &key, &bytes).or_else(abort)?;
            let before = record.clone();
            let mut change = Change::default();
            if !transition(&mut record, &mut change).or_else(abort)? {
                return Ok(None);
            }
            let events = change.history.clone();
            self.write_change(tx, &before, &mut record, change, now_ms)?;
            tx.insert(key.clone(), encode(&record).or_else(abort)?)?;
            Ok(Some(Updated { record, events }))
        });
        let updated = self.finish(result)?;
        if updated.is_some() {
            self.flush_if_configured()?;
        }
        Ok(updated)
    }

    fn write_change(
        &self,
        tx: &TransactionalTree,
        before: &SagaRecord,
        record: &mut SagaRecord,
        change: Change,
        now_ms: u64,
    ) -> sled::transaction::ConflictableTransactionResult<(), SagaError> {
        if record.state != before.state {
            record.state_since_ms = now_ms;
        }
        if !change.history_only {
            record.updated_ms = now_ms;
        }
        tx.remove(state_key(before.state, before.updated_ms, &before.id))?;
        tx.insert(
            state_key(record.state, record.updated_ms, &record.id),
            &[][..],
        )?;

        if record.timer_ms != before.timer_ms {
            if let Some(due) = before.timer_ms {
                tx.remove(super::record::timer_key(due, &record.id))?;
            }
            if let Some(due) = record.timer_ms {
                tx.insert(super::record::timer_key(due, &record.id), &[][..])?;
            }
        }

        for event in change.history {
            let seq = record.history_len;
            record.history_len += 1;
            let entry = HistoryEntry {
                at_ms: now_ms,
                event,
            };
            self.put_history(tx, &record.id, seq, entry)?;
        }

        match change.pending {
            None => {}
            Some(PendingChange::Put(request)) => {
                tx.insert(pending_key(&record.id), encode(&request).or_else(abort)?)?;
            }
            Some(PendingChange::Remove) => {
                tx.remove(pending_key(&record.id))?;
            }
        }

        if record.state.is_final() {
            // No closure of this saga runs again, so the outputs of run_once are not needed.
            for step in 0..record.step_names.len() {
                let step = u32::try_from(step).unwrap_or(u32::MAX);
                tx.remove(memo_key(&record.id, step, StepKind::Action))?;
                tx.remove(memo_key(&record.id, step, StepKind::Compensation))?;
            }
        }
        Ok(())
    }

    fn put_history(
        &self,
        tx: &TransactionalTree,
        id: &str,
        seq: u32,
        entry: HistoryEntry,
    ) -> sled::transaction::ConflictableTransactionResult<(), SagaError> {
        let stored = StoredEntry {
            version: FORMAT_VERSION,
            entry,
        };
        tx.insert(history_key(id, seq), encode(&stored).or_else(abort)?)?;
        Ok(())
    }

    fn finish<T>(&self, result: Result<T, TransactionError<SagaError>>) -> Result<T, SagaError> {
        match result {
            Ok(value) => Ok(value),
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(self.storage(error)),
        }
    }

    fn flush_if_configured(&self) -> Result<(), SagaError> {
        if self.flush_on_commit {
            self.tree.flush().map_err(|e| self.storage(e))?;
        }
        Ok(())
    }

    pub(crate) fn not_found(&self, id: &str) -> SagaError {
        SagaError::NotFound {
            orchestrator: self.orchestrator.clone(),
            saga_id: id.to_string(),
        }
    }

    pub(crate) fn load(&self, id: &str) -> Result<Option<SagaRecord>, SagaError> {
        let key = record_key(id);
        match self.tree.get(&key).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(bytes) => decode(&self.tree_name, &key, &bytes).map(Some),
        }
    }

    /// Returns the first `len` history entries of a saga.
    pub(crate) fn history(&self, id: &str, len: u32) -> Result<Vec<HistoryEntry>, SagaError> {
        let mut entries = Vec::new();
        for item in self.tree.range(history_key(id, 0)..history_key(id, len)) {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let stored: StoredEntry = decode(&self.tree_name, &key, &value)?;
            entries.push(stored.entry);
        }
        Ok(entries)
    }

    /// Returns up to `limit` timers due at `now_ms`, earliest first.
    pub(crate) fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, SagaError> {
        let mut end = vec![b't'];
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        let mut due = Vec::new();
        for item in self.tree.range(&b"t"[..]..&end[..]).take(limit) {
            let (key, _) = item.map_err(|e| self.storage(e))?;
            if let Some((at, id)) = parse_timer_key(&key) {
                due.push((at, id.to_string()));
            }
        }
        Ok(due)
    }

    /// Returns when the earliest timer fires.
    pub(crate) fn next_timer(&self) -> Result<Option<u64>, SagaError> {
        let first = self
            .tree
            .scan_prefix(b"t")
            .next()
            .transpose()
            .map_err(|e| self.storage(e))?;
        Ok(first.and_then(|(key, _)| parse_timer_key(&key).map(|(due, _)| due)))
    }

    /// Returns every stored request with its saga id and stored bytes.
    pub(crate) fn pending(&self) -> Result<Vec<(String, PendingRequest, sled::IVec)>, SagaError> {
        let mut requests = Vec::new();
        for item in self.tree.scan_prefix(b"p") {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let id = String::from_utf8_lossy(&key[1..]).into_owned();
            let request = decode(&self.tree_name, &key, &value)?;
            requests.push((id, request, value));
        }
        Ok(requests)
    }

    /// Removes a stored request if it is still the one that was published.
    pub(crate) fn remove_pending(&self, id: &str, published: &sled::IVec) -> Result<(), SagaError> {
        let swapped = self
            .tree
            .compare_and_swap(pending_key(id), Some(published), None as Option<&[u8]>)
            .map_err(|e| self.storage(e))?;
        if swapped.is_err() {
            tracing::trace!(saga_id = id, "pending request replaced before its removal");
        }
        Ok(())
    }

    /// Returns the ids of sagas in `state`, oldest change first.
    pub(crate) fn ids_in_state(
        &self,
        state: SagaState,
        limit: usize,
    ) -> Result<Vec<String>, SagaError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix(state_prefix(state)).take(limit) {
            let (key, _) = item.map_err(|e| self.storage(e))?;
            if let Some(id) = id_from_state_key(&key) {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// Returns the ids of up to `limit` sagas in `state` last changed at or before
    /// `cutoff_ms`, oldest change first.
    pub(crate) fn ids_changed_before(
        &self,
        state: SagaState,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, SagaError> {
        let start = state_prefix(state);
        let mut end = state_prefix(state);
        end.extend_from_slice(&cutoff_ms.saturating_add(1).to_be_bytes());
        let mut ids = Vec::new();
        for item in self.tree.range(start..end).take(limit) {
            let (key, _) = item.map_err(|e| self.storage(e))?;
            if let Some(id) = id_from_state_key(&key) {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// Removes a saga and everything stored for it, unless it changed since `record` was
    /// loaded; returns whether it was removed.
    pub(crate) fn remove(&self, record: &SagaRecord) -> Result<bool, SagaError> {
        let key = record_key(&record.id);
        let expected = encode(record)?;
        let result = self.tree.transaction(|tx| {
            if tx.get(&key)?.as_deref() != Some(&expected[..]) {
                return Ok(false);
            }
            tx.remove(key.clone())?;
            tx.remove(pending_key(&record.id))?;
            tx.remove(state_key(record.state, record.updated_ms, &record.id))?;
            if let Some(due) = record.timer_ms {
                tx.remove(super::record::timer_key(due, &record.id))?;
            }
            for step in 0..record.step_names.len() {
                let step = u32::try_from(step).unwrap_or(u32::MAX);
                tx.remove(memo_key(&record.id, step, StepKind::Action))?;
                tx.remove(memo_key(&record.id, step, StepKind::Compensation))?;
            }
            Ok(true)
        });
        if !self.finish(result)? {
            return Ok(false);
        }
        // History without its record is unreachable, so a crash before this loop leaves only
        // unused entries behind. A saga started later under the same id reads only its own.
        let mut batch = sled::Batch::default();
        for item in self.tree.scan_prefix(history_prefix(&record.id)) {
            let (key, _) = item.map_err(|e| self.storage(e))?;
            batch.remove(key);
        }
        self.tree.apply_batch(batch).map_err(|e| self.storage(e))?;
        self.flush_if_configured()?;
        Ok(true)
    }
}
