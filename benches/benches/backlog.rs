//! Draining a backlog of 100-byte messages with one consumer, with its baselines measured in
//! the same run.
//!
//! Each iteration fills a fresh store before the timer starts, then times one consumer that
//! receives and acks every message, and the final flush:
//!
//! - `aqueduct`: one million messages, published with `publish_batch` 1,000 at a time and
//!   flushed (not timed), then one consumer (default `ConsumerConfig`) receives and acks each
//!   message (timed).
//! - `raw_sled`: 100,000 messages, inserted with `apply_batch` 1,000 keys at a time and
//!   flushed (not timed), then `get` and `remove` of each key in order and one flush and fsync
//!   (timed).
//! - `crossbeam_channel`: one million messages sent on an unbounded channel (not timed), then
//!   every message received (timed).
//!
//! The raw-sled backlog is a tenth of the others because sled with one key per message is
//! slow at one million keys. On the 2-core machine of `docs/BENCHMARKS.md`, at 1-minute load
//! averages of 3 to 9, filling one million keys took 9 to 19 s per iteration and draining them
//! about 13 s. Criterion runs each benchmark 11 times (one warm-up iteration and its minimum of
//! 10 samples), so the group would take more than five minutes.
//!
//! Run with `cargo bench -p aqueduct-benches --bench backlog`.

// `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use aqueduct::{Durability, Message};
use aqueduct_benches::{
    configure_matrix, filled_channel, matrix_criterion, payload, receive_and_ack, BrokerFixture,
    RawSled, TOPIC,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// Messages in the backlog of the broker and the channel.
const BACKLOG: u64 = 1_000_000;

/// Messages in the backlog of the raw-sled baseline.
const RAW_SLED_BACKLOG: u64 = 100_000;

/// Messages per publish call or sled batch while the backlog is filled.
const FILL_BATCH: u64 = 1_000;

/// Measurement time of each benchmark. One iteration per sample takes longer than this, so
/// criterion takes its minimum of 10 samples of one iteration each.
const MEASUREMENT: Duration = Duration::from_secs(1);

fn backlog_drain(c: &mut Criterion) {
    let mut group = c.benchmark_group("backlog_drain");
    configure_matrix(&mut group, MEASUREMENT);
    group.throughput(Throughput::Elements(BACKLOG));
    let payload = payload();

    group.bench_function("aqueduct", |b| {
        b.iter_batched(
            || {
                let fixture = BrokerFixture::open(Durability::default());
                let broker = &fixture.broker;
                for _ in 0..BACKLOG / FILL_BATCH {
                    let messages = (0..FILL_BATCH).map(|_| Message::new(payload.clone()));
                    broker
                        .publish_batch(TOPIC, messages)
                        .expect("publish_batch");
                }
                broker.flush().expect("flush");
                let consumer = broker.subscribe(TOPIC, "bench").expect("subscribe");
                (fixture, consumer)
            },
            |(fixture, mut consumer)| {
                receive_and_ack(&mut consumer, BACKLOG);
                fixture.broker.flush().expect("flush");
                // Returned so that closing the broker and removing its files is not timed.
                (fixture, consumer)
            },
            BatchSize::PerIteration,
        );
    });

    group.throughput(Throughput::Elements(RAW_SLED_BACKLOG));
    group.bench_function("raw_sled", |b| {
        b.iter_batched(
            || {
                let sled = RawSled::open();
                for first in (0..RAW_SLED_BACKLOG).step_by(FILL_BATCH as usize) {
                    sled.insert_batch(first, FILL_BATCH, &payload);
                }
                sled.flush();
                sled
            },
            |sled| {
                for seq in 0..RAW_SLED_BACKLOG {
                    black_box(sled.get(seq).expect("a stored message"));
                    sled.remove(seq);
                }
                sled.flush();
                sled
            },
            BatchSize::PerIteration,
        );
    });

    group.throughput(Throughput::Elements(BACKLOG));
    group.bench_function("crossbeam_channel", |b| {
        b.iter_batched(
            || filled_channel(BACKLOG, &payload),
            |receiver| {
                for _ in 0..BACKLOG {
                    black_box(receiver.recv().expect("receive"));
                }
                receiver
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = matrix_criterion();
    targets = backlog_drain
}
criterion_main!(benches);
