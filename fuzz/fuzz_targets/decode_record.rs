//! Decodes arbitrary bytes as every on-disk record kind: decoding returns a value or
//! `Error::Corrupt`, never panics, and a decoded value survives encoding and decoding again.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    aqueduct::fuzzing::decode_record(data);
});
