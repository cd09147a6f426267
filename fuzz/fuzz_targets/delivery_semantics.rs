//! Turns arbitrary bytes into a broker setup and a sequence of publish, receive, ack, nack,
//! delayed nack, dead-letter, lease, clock and reopen operations, and runs it against a real
//! broker and the reference model that the broker's property tests use.

#![no_main]

use libfuzzer_sys::fuzz_target;

// The model and the case decoding live beside the broker's tests, which run the same files.
#[allow(dead_code)]
#[path = "../../broker/tests/delivery_model/mod.rs"]
mod delivery_model;

// `encode` serves only the test that writes the seed corpus.
#[allow(dead_code)]
#[path = "../../broker/tests/delivery_case/mod.rs"]
mod delivery_case;

fuzz_target!(|data: &[u8]| {
    delivery_case::run(data);
});
