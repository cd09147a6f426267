//! A projection for the CQRS tests that makes double and missing applies visible, and helpers
//! to read its tables.

#![allow(dead_code)]

use std::time::Duration;

use aqueduct::Broker;
use aqueduct_patterns::{
    ApplyError, EventStore, ExpectedVersion, ModelView, ModelWriter, NewEvent, Projection,
    SourceEvent,
};

/// Table of how often each source position was applied, keyed by partition and offset.
pub const APPLIED: &str = "applied";
/// Table of counters: `count` for all events, and one per stream or topic key.
pub const TOTALS: &str = "totals";

/// Counts every applied event per position, per stream and in total. With `fail_at`, it
/// fails on that store position after writing its counts, to show the batch rolls back.
#[derive(Debug, Default)]
pub struct Counting {
    pub fail_at: Option<u64>,
    pub delay: Duration,
}

impl Projection for Counting {
    fn tables(&self) -> &[&str] {
        &[APPLIED, TOTALS]
    }

    fn apply(&self, event: &SourceEvent, model: &ModelWriter<'_>) -> Result<(), ApplyError> {
        let position = event.position();
        let applied = model.table(APPLIED)?;
        let key = position_key(position.partition, position.offset);
        let times = read_u64(applied.get(key)?.as_deref());
        applied.insert(key.to_vec(), &(times + 1).to_be_bytes())?;

        let totals = model.table(TOTALS)?;
        let group = match event {
            SourceEvent::Stored(recorded) => recorded.stream.clone().into_bytes(),
            SourceEvent::Message(_, message) => message.key.clone().unwrap_or_default(),
        };
        for counter in [b"count".to_vec(), group] {
            let value = read_u64(totals.get(&counter)?.as_deref());
            totals.insert(counter, &(value + 1).to_be_bytes())?;
        }

        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.fail_at == Some(position.offset) {
            return Err(ApplyError::failed(format!(
                "refusing offset {}",
                position.offset
            )));
        }
        Ok(())
    }
}

pub fn position_key(partition: u32, offset: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&partition.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

pub fn read_u64(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Returns `(partition, offset, times applied)` for every entry of the `applied` table.
pub fn applied(tree: &sled::Tree) -> Vec<(u32, u64, u64)> {
    tree.iter()
        .map(|entry| {
            let (key, value) = entry.expect("read applied");
            let partition = u32::from_be_bytes(key[..4].try_into().expect("partition"));
            let offset = u64::from_be_bytes(key[4..12].try_into().expect("offset"));
            (partition, offset, read_u64(Some(&value)))
        })
        .collect()
}

/// Returns the `count` total of a view.
pub fn total(view: &ModelView) -> u64 {
    let totals = view.table(TOTALS).expect("totals table");
    read_u64(totals.get(b"count").expect("read count").as_deref())
}

/// Returns every entry of every table of a view, for comparing read models.
pub fn dump(view: &ModelView) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    for table in [APPLIED, TOTALS] {
        for entry in view.table(table).expect("table").iter() {
            let (key, value) = entry.expect("read entry");
            entries.push((table.to_string(), key.to_vec(), value.to_vec()));
        }
    }
    entries
}

/// Appends `appends` batches of `per_append` events spread over `streams` streams, and
/// returns the last global position.
pub fn seed(store: &EventStore, appends: u64, per_append: u64, streams: u64) -> u64 {
    let mut last = 0;
    for index in 0..appends {
        let stream = format!("item-{}", index % streams);
        let events = (0..per_append)
            .map(|n| NewEvent::new("Counted", 1, n.to_be_bytes().to_vec()))
            .collect();
        last = store
            .append(&stream, ExpectedVersion::Any, events)
            .expect("append")
            .expect("Any never conflicts")
            .position;
    }
    last
}

/// Opens a temporary broker and an event store on it.
pub fn temporary_store() -> (Broker, EventStore) {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "events").expect("store");
    (broker, store)
}
