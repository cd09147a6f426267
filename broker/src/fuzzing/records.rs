//! Decoding arbitrary bytes as every on-disk record kind.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::generation::GenerationRecord;
use crate::record::{
    self, Block, CursorRecord, DedupRecord, DelaysRecord, GroupMetaRecord, IndexRecord, Kind,
    ParkedRecord, TopicRecord, FORMAT_VERSION,
};

/// Names of the record kinds in the order of their kind bytes, 1 to 10, as `docs/FORMAT.md`
/// lists them.
pub const RECORD_KINDS: [&str; 10] = [
    "Format",
    "Topic",
    "Block",
    "GroupMeta",
    "Cursor",
    "Dedup",
    "Index",
    "Parked",
    "Generation",
    "Delays",
];

/// Tree and key that decoding errors must name.
const TREE: &str = "__aqueduct.fuzz";
const KEY: &[u8] = b"fuzz-key";

/// The format record's body, `Format { version: u32 }`, with the same layout as the private
/// type that the storage module writes.
#[derive(Debug, Serialize, Deserialize)]
struct FormatBody {
    version: u32,
}

/// Decodes `bytes` as each record kind and returns the name of the kind that accepted them,
/// if any. At most one kind can, because the second byte names the kind.
///
/// # Panics
///
/// When decoding panics, fails with an error other than `Error::Corrupt` naming the tree and
/// key, accepts bytes whose header does not match the kind, or returns a value that changes
/// when it is encoded and decoded again.
pub fn decode_record(bytes: &[u8]) -> Option<&'static str> {
    let accepted = [
        check_kind::<FormatBody>(Kind::Format, bytes),
        check_kind::<TopicRecord>(Kind::Topic, bytes),
        check_kind::<Block>(Kind::Block, bytes),
        check_kind::<GroupMetaRecord>(Kind::GroupMeta, bytes),
        check_kind::<CursorRecord>(Kind::GroupCursor, bytes),
        check_kind::<DedupRecord>(Kind::Dedup, bytes),
        check_kind::<IndexRecord>(Kind::Index, bytes),
        check_kind::<ParkedRecord>(Kind::Parked, bytes),
        check_kind::<GenerationRecord>(Kind::Generation, bytes),
        check_kind::<DelaysRecord>(Kind::Delays, bytes),
    ];
    let mut names = RECORD_KINDS
        .iter()
        .zip(accepted)
        .filter_map(|(name, accepted)| accepted.then_some(*name));
    let first = names.next();
    assert_eq!(
        names.next(),
        None,
        "the bytes decoded as {first:?} and as another kind"
    );
    first
}

/// Decodes `bytes` as `kind`, checks the outcome and returns whether decoding succeeded.
fn check_kind<T>(kind: Kind, bytes: &[u8]) -> bool
where
    T: Serialize + DeserializeOwned + Debug,
{
    match record::decode::<T>(TREE, KEY, kind, bytes) {
        Ok(value) => {
            check_round_trip(kind, bytes, &value);
            true
        }
        Err(error) => {
            check_rejection(kind, &error);
            false
        }
    }
}

fn check_round_trip<T>(kind: Kind, bytes: &[u8], value: &T)
where
    T: Serialize + DeserializeOwned + Debug,
{
    assert_eq!(
        bytes.get(..2),
        Some(&[FORMAT_VERSION, kind as u8][..]),
        "{kind:?} decoded from bytes without its version and kind bytes"
    );
    let encoded = record::encode(kind, value)
        .unwrap_or_else(|error| panic!("encoding a decoded {kind:?} failed: {error}"));
    // postcard ignores trailing bytes and the encoder writes the shortest varints, so an
    // encoding is never longer than the bytes it was decoded from.
    assert!(
        encoded.len() <= bytes.len(),
        "{kind:?} re-encoded to {} bytes from {} bytes",
        encoded.len(),
        bytes.len()
    );
    let again: T = record::decode(TREE, KEY, kind, &encoded)
        .unwrap_or_else(|error| panic!("decoding a re-encoded {kind:?} failed: {error}"));
    assert_eq!(
        format!("{again:?}"),
        format!("{value:?}"),
        "{kind:?} changed when it was encoded and decoded again"
    );
}

fn check_rejection(kind: Kind, error: &Error) {
    let Error::Corrupt { tree, key, reason } = error else {
        panic!("decoding {kind:?} failed with {error:?} instead of Error::Corrupt");
    };
    assert_eq!(*tree, TREE, "Error::Corrupt names the tree");
    assert_eq!(
        *key,
        record::hex(KEY),
        "Error::Corrupt names the key in hex"
    );
    assert!(!reason.is_empty(), "Error::Corrupt gives a reason");
}
