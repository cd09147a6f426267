//! The key-to-partition hash.
//!
//! A key maps to `xxh3_64(key) % partitions`, using XXH3 64-bit with seed 0 as specified at
//! <https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md>. The function is fixed by
//! that specification, so it gives the same partition on every platform and release; changing
//! it would move keys between partitions and is treated as a format change.

/// Returns the XXH3-64 hash (seed 0) of a message key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Returns the partition for `key` in a topic with `partitions` partitions.
///
/// # Examples
///
/// ```
/// assert_eq!(aqueduct::partition_for_key(b"order-42", 1), 0);
/// let p = aqueduct::partition_for_key(b"order-42", 8);
/// assert_eq!(p, aqueduct::partition_for_key(b"order-42", 8));
/// ```
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let partitions = u64::from(partitions.max(1));
    // The remainder is below `partitions`, which fits in u32.
    (key_hash(key) % partitions) as u32
}
