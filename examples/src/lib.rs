//! Runnable applications built on `aqueduct`; each lives in `examples/examples/` and runs with
//! `cargo run --release --example NAME`. This library target has no items.
