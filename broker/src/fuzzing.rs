//! Entry points for the fuzz targets in `fuzz/` and for the tests that replay their corpora.
//!
//! Test-only: this module exists only with the `fuzzing` feature, is not part of the public
//! API and may change in any release without a semver bump.
//!
//! Each entry point takes the raw bytes of one fuzz input and panics when the broker breaks a
//! rule for it, so that libFuzzer records the input as a crash:
//!
//! - [`decode_record`] decodes the bytes as every on-disk record kind. Decoding must return a
//!   value or [`Error::Corrupt`](crate::Error::Corrupt), never panic, and a decoded value must
//!   survive encoding and decoding again unchanged.
//! - [`validate_config`] builds a broker, topic, consumer and message configuration from the
//!   bytes and passes them through the public API on a temporary broker. Every call must
//!   succeed exactly when the values are within their documented bounds, and otherwise fail
//!   with the typed error that names an out-of-range value.

mod records;
mod validation;

pub use records::{decode_record, RECORD_KINDS};
pub use validation::{
    validate_config, BrokerInput, ConfigCase, ConsumerInput, DurationInput, HeaderInput,
    MessageInput, NameInput, NumberInput, PayloadInput, RetentionInput, TopicInput,
};
