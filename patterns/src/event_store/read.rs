//! Reads: stream versions, stream and global reads, time search, event types and snapshots.
//!
//! Reads never take a transaction. Global reads are dense: they stop before the first
//! position that is not stored yet.

use super::error::EventStoreError;
use super::record::{self, EventRecord, HeadOfLog, SnapshotRecord, StreamHead, TypeRecord};
use super::types::{EventTypeInfo, RecordedEvent, Snapshot};
use super::validate::validate_stream;
use super::EventStore;

impl EventStore {
    /// Returns the stream's version: the version of its last event, or 0 for no events.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// let store = aqueduct_patterns::EventStore::open(&broker, "empty")?;
    /// assert_eq!(store.stream_version("nobody-1")?, 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn stream_version(&self, stream: &str) -> Result<u64, EventStoreError> {
        let key = record::head_key(stream);
        match self.inner.tree.get(&key)? {
            Some(bytes) => {
                let head: StreamHead = record::decode(&self.inner.tree_name, &key, &bytes)?;
                Ok(head.version)
            }
            None => Ok(0),
        }
    }

    /// Returns the position the next appended event will get, which is also the number of
    /// events in the store.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn next_position(&self) -> Result<u64, EventStoreError> {
        Ok(self.head_of_log()?.next_position)
    }

    pub(super) fn head_of_log(&self) -> Result<HeadOfLog, EventStoreError> {
        match self.inner.tree.get(record::HEAD_OF_LOG_KEY)? {
            Some(bytes) => record::decode(&self.inner.tree_name, record::HEAD_OF_LOG_KEY, &bytes),
            None => Ok(HeadOfLog::default()),
        }
    }

    /// Reads up to `max` events of `stream` with versions from `from_version` on, oldest
    /// first.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "read")?;
    /// let events = (0..3).map(|i| NewEvent::new("Ticked", 1, vec![i])).collect();
    /// store.append("clock-1", ExpectedVersion::Any, events)?.expect("no conflict");
    /// let tail = store.read_stream("clock-1", 2, 10)?;
    /// assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let start = record::stream_key(stream, from_version);
        let end = record::stream_key(stream, u64::MAX);
        let range = self.inner.tree.range(start..=end);
        self.resolve_index(range.take(max))
    }

    /// Reads up to `max` events of `stream` with versions from `from_version` down, newest
    /// first. Pass `u64::MAX` to start at the stream's last event.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "backward")?;
    /// let events = (0..3).map(|i| NewEvent::new("Ticked", 1, vec![i])).collect();
    /// store.append("clock-1", ExpectedVersion::Any, events)?.expect("no conflict");
    /// let last_two = store.read_stream_backward("clock-1", u64::MAX, 2)?;
    /// assert_eq!(last_two.iter().map(|e| e.version).collect::<Vec<_>>(), [3, 2]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_stream_backward(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let start = record::stream_key(stream, 0);
        let end = record::stream_key(stream, from_version);
        let range = self.inner.tree.range(start..=end).rev();
        self.resolve_index(range.take(max))
    }

    fn resolve_index(
        &self,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events = Vec::new();
        for entry in entries {
            let (key, value) = entry?;
            let position = record::decode_position(&self.inner.tree_name, &key, &value)?;
            match self.read_event(position)? {
                Some(event) => events.push(event),
                None => {
                    return Err(EventStoreError::Corrupt {
                        tree: self.inner.tree_name.clone(),
                        key: record::hex(&key),
                        reason: format!("the stream index points to missing position {position}"),
                    })
                }
            }
        }
        Ok(events)
    }

    /// Reads the event at global `position`, or `None` when there is none yet.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_event(&self, position: u64) -> Result<Option<RecordedEvent>, EventStoreError> {
        let key = record::event_key(position);
        match self.inner.tree.get(key)? {
            Some(bytes) => Ok(Some(self.to_recorded(position, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads up to `max` events of all streams from global position `from_position` on, in
    /// position order. The result is dense: it stops before the first missing position.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "all")?;
    /// store.append("a-1", ExpectedVersion::Any, vec![NewEvent::new("X", 1, vec![])])?.expect("ok");
    /// store.append("b-1", ExpectedVersion::Any, vec![NewEvent::new("Y", 1, vec![])])?.expect("ok");
    /// let all = store.read_all(0, 100)?;
    /// assert_eq!(all.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(), ["a-1", "b-1"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let start = record::event_key(from_position);
        let end = record::event_key(u64::MAX);
        let mut events = Vec::new();
        let entries = self.inner.tree.range(start..=end).take(max);
        for (expected, entry) in (from_position..).zip(entries) {
            let (key, value) = entry?;
            if record::event_position(&key) != Some(expected) {
                break;
            }
            events.push(self.to_recorded(expected, &key, &value)?);
        }
        Ok(events)
    }

    /// Returns the last global position whose event was appended at or before `time_ms`
    /// (milliseconds since the Unix epoch), or `None` when the first event is later.
    ///
    /// # Examples
    ///
    /// ```
    /// # use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = aqueduct::Broker::temporary()?;
    /// # let store = EventStore::open(&broker, "time")?;
    /// store.append("a-1", ExpectedVersion::Any, vec![NewEvent::new("X", 1, vec![])])?.expect("ok");
    /// assert_eq!(store.position_at(0)?, None);
    /// assert_eq!(store.position_at(u64::MAX)?, Some(0));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn position_at(&self, time_ms: u64) -> Result<Option<u64>, EventStoreError> {
        // Timestamps never decrease along positions, so binary search finds the boundary.
        let mut low = 0;
        let mut high = self.next_position()?;
        while low < high {
            let middle = low + (high - low) / 2;
            let timestamp = match self.read_event(middle)? {
                Some(event) => event.timestamp_ms,
                None => u64::MAX,
            };
            if timestamp <= time_ms {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low.checked_sub(1))
    }

    /// Lists the event types and schema versions stored in streams of `category` (the part
    /// of a stream name before its first `-`).
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn event_types(&self, category: &str) -> Result<Vec<EventTypeInfo>, EventStoreError> {
        let mut types = Vec::new();
        for entry in self.inner.tree.scan_prefix(record::type_prefix(category)) {
            let (key, value) = entry?;
            let Some((event_type, schema_version)) = record::parse_type_key(category, &key) else {
                return Err(EventStoreError::Corrupt {
                    tree: self.inner.tree_name.clone(),
                    key: record::hex(&key),
                    reason: "malformed event type key".to_string(),
                });
            };
            let stored: TypeRecord = record::decode(&self.inner.tree_name, &key, &value)?;
            types.push(EventTypeInfo {
                event_type,
                schema_version,
                first_position: stored.first_position,
                last_position: stored.last_position,
            });
        }
        Ok(types)
    }

    /// Stores `snapshot` as the latest snapshot of `stream`, replacing the previous one.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::InvalidStream`], [`EventStoreError::Encode`] and
    /// [`EventStoreError::Storage`].
    pub fn save_snapshot(&self, stream: &str, snapshot: &Snapshot) -> Result<(), EventStoreError> {
        validate_stream(stream)?;
        let value = record::encode(&record::SnapshotRecordRef {
            version: snapshot.version,
            position: snapshot.position,
            schema_version: snapshot.schema_version,
            state: &snapshot.state,
        })?;
        self.inner
            .tree
            .insert(record::snapshot_key(stream), value)?;
        Ok(())
    }

    /// Loads the latest snapshot of `stream`, if any.
    ///
    /// # Errors
    ///
    /// [`EventStoreError::Corrupt`] and [`EventStoreError::Storage`].
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, EventStoreError> {
        let key = record::snapshot_key(stream);
        let Some(bytes) = self.inner.tree.get(&key)? else {
            return Ok(None);
        };
        let stored: SnapshotRecord = record::decode(&self.inner.tree_name, &key, &bytes)?;
        Ok(Some(Snapshot {
            version: stored.version,
            position: stored.position,
            schema_version: stored.schema_version,
            state: stored.state,
        }))
    }

    pub(super) fn to_recorded(
        &self,
        position: u64,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<RecordedEvent, EventStoreError> {
        let stored: EventRecord = record::decode(&self.inner.tree_name, key, bytes)?;
        Ok(RecordedEvent {
            position,
            stream: stored.stream,
            version: stored.version,
            event_type: stored.event_type,
            schema_version: stored.schema_version,
            timestamp_ms: stored.timestamp_ms,
            payload: stored.payload,
        })
    }
}
