//! Runnable applications built on `aqueduct`; each lives in `examples/examples/` and runs with
//! `cargo run --release --example NAME`. The [`checkout`] module contains the checkout
//! application, which its example and its tests share.

pub mod checkout;
