//! Projection checkpoints and the projection's meta tree.
//!
//! The meta tree `projection.NAME` holds, under these keys:
//!
//! | key | value |
//! |---|---|
//! | `active` | the active generation, 8 bytes big-endian |
//! | `checkpoint/` generation (8 bytes) | format byte, then postcard list of (partition, next offset) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::ProjectionError;
use super::Position;

/// Format byte of checkpoint records.
const CHECKPOINT_FORMAT: u8 = 1;

pub(crate) const ACTIVE_KEY: &[u8] = b"active";
const CHECKPOINT_PREFIX: &[u8] = b"checkpoint/";

/// How far a projection has read: per partition, the next offset to apply.
///
/// # Examples
///
/// ```
/// use aqueduct_patterns::{Checkpoint, Position};
///
/// let checkpoint = Checkpoint::default();
/// assert_eq!(checkpoint.next_offset(0), 0);
/// assert!(!checkpoint.includes(Position::from(0)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    next: BTreeMap<u32, u64>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointRecord {
    partitions: Vec<(u32, u64)>,
}

impl Checkpoint {
    /// Returns the next offset to apply in `partition`; 0 when nothing was applied there.
    pub fn next_offset(&self, partition: u32) -> u64 {
        self.next.get(&partition).copied().unwrap_or(0)
    }

    /// Returns whether the read model includes the event at `position`.
    pub fn includes(&self, position: Position) -> bool {
        self.next_offset(position.partition) > position.offset
    }

    /// Records that the event at `position` was applied.
    pub(crate) fn advance(&mut self, position: Position) {
        self.next.insert(position.partition, position.offset + 1);
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let record = CheckpointRecord {
            partitions: self.next.iter().map(|(&p, &o)| (p, o)).collect(),
        };
        let mut bytes = vec![CHECKPOINT_FORMAT];
        // A list of integer pairs always encodes.
        bytes.extend(postcard::to_stdvec(&record).unwrap_or_default());
        bytes
    }

    pub(crate) fn decode(tree: &str, key: &[u8], bytes: &[u8]) -> Result<Self, ProjectionError> {
        let corrupt = |reason: String| ProjectionError::Corrupt {
            tree: tree.to_string(),
            key: hex(key),
            reason,
        };
        match bytes.split_first() {
            Some((&CHECKPOINT_FORMAT, body)) => {
                let record: CheckpointRecord = postcard::from_bytes(body)
                    .map_err(|error| corrupt(format!("not a valid checkpoint: {error}")))?;
                Ok(Checkpoint {
                    next: record.partitions.into_iter().collect(),
                })
            }
            Some((&other, _)) => Err(corrupt(format!(
                "checkpoint format {other} is not the supported format {CHECKPOINT_FORMAT}"
            ))),
            None => Err(corrupt("the checkpoint is empty".to_string())),
        }
    }
}

pub(crate) fn checkpoint_key(generation: u64) -> Vec<u8> {
    let mut key = CHECKPOINT_PREFIX.to_vec();
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

/// Returns the generations that have a checkpoint.
pub(crate) fn stored_generations(meta: &sled::Tree) -> Result<Vec<u64>, ProjectionError> {
    let mut generations = Vec::new();
    for entry in meta.scan_prefix(CHECKPOINT_PREFIX) {
        let (key, _) = entry?;
        if let Some(bytes) = key.get(CHECKPOINT_PREFIX.len()..) {
            if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
                generations.push(u64::from_be_bytes(raw));
            }
        }
    }
    Ok(generations)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
