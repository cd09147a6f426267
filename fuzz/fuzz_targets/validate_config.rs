//! Builds broker, topic and consumer configurations, names and a message from arbitrary values
//! and passes them through the public API on a temporary broker. Each call must succeed exactly
//! when the values are within their documented bounds and otherwise return the typed error that
//! names an out-of-range value.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    aqueduct::fuzzing::validate_config(data);
});
