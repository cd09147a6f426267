//! Broker throughput with its baselines measured in the same run.
//!
//! - `publish_buffered`: one thread publishes 100-byte messages with `Durability::Buffered`
//!   (the default) and flushes at the end of each iteration. Baselines: raw sled with one key
//!   per message and the same flush, and a crossbeam channel send (the in-memory ceiling).
//! - `end_to_end`: a producer thread publishes while the benchmark thread receives and acks
//!   every message with one consumer, then flushes. Prints messages per fsync. Baselines: a raw-sled queue (the producer
//!   inserts one key per message, the consumer gets and removes each key in order) and a
//!   crossbeam channel producer/consumer pair.
//! - `publish_flushed_concurrent`: 64 threads publish with `Durability::Flushed`, so every
//!   publish waits for an fsync that concurrent publishers share. Baseline: 64 threads that
//!   each insert into raw sled and then flush and fsync. Prints messages per fsync.
//!
//! Run with `cargo bench -p aqueduct-benches`.

// `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct::{Durability, Message};
use aqueduct_benches::{payload, BrokerFixture, RawSled, ThreadGang, TOPIC};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

/// Messages per iteration in `publish_buffered` and `end_to_end`.
const MESSAGES: u64 = 10_000;

/// Concurrent publishers in `publish_flushed_concurrent`.
const PUBLISHERS: usize = 64;

/// Messages each publisher sends per iteration in `publish_flushed_concurrent`.
const PER_PUBLISHER: u64 = 20;

/// Maximum wait for one delivery before the benchmark panics.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(criterion::SamplingMode::Flat);
}

fn publish_buffered(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_buffered");
    configure(&mut group);
    group.throughput(Throughput::Elements(MESSAGES));
    let payload = payload();

    let fixture = BrokerFixture::open(Durability::default());
    group.bench_function("aqueduct", |b| {
        b.iter(|| {
            for _ in 0..MESSAGES {
                let message = Message::new(payload.clone());
                fixture.broker.publish(TOPIC, message).expect("publish");
            }
            fixture.broker.flush().expect("flush");
        });
    });
    drop(fixture);

    let sled = RawSled::open();
    let mut seq = 0;
    group.bench_function("raw_sled", |b| {
        b.iter(|| {
            for _ in 0..MESSAGES {
                sled.insert(seq, &payload);
                seq += 1;
            }
            sled.flush();
        });
    });
    drop(sled);

    // Only the sends are timed, because draining the channel afterwards is not publishing.
    let (sender, receiver) = crossbeam_channel::unbounded();
    group.bench_function("crossbeam_channel", |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let start = Instant::now();
                for _ in 0..MESSAGES {
                    sender.send(payload.clone()).expect("send");
                }
                elapsed += start.elapsed();
                receiver.try_iter().for_each(drop);
            }
            elapsed
        });
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let mut group = c.benchmark_group("end_to_end");
    configure(&mut group);
    group.throughput(Throughput::Elements(MESSAGES));
    let payload = payload();

    let fixture = BrokerFixture::open(Durability::default());
    let broker = &fixture.broker;
    let mut consumer = broker.subscribe(TOPIC, "bench").expect("subscribe");
    let fsyncs_before = broker.fsync_count();
    let mut delivered = 0;
    group.bench_function("aqueduct", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for _ in 0..MESSAGES {
                        let message = Message::new(payload.clone());
                        broker.publish(TOPIC, message).expect("publish");
                    }
                });
                for _ in 0..MESSAGES {
                    let delivery = consumer
                        .recv_timeout(RECEIVE_TIMEOUT)
                        .expect("receive")
                        .expect("a delivery before the timeout");
                    black_box(delivery.payload());
                    delivery.ack().expect("ack");
                }
            });
            broker.flush().expect("flush");
            delivered += MESSAGES;
        });
    });
    report_fsyncs(
        "end_to_end/aqueduct",
        delivered,
        broker.fsync_count() - fsyncs_before,
    );
    drop(consumer);
    drop(fixture);

    let sled = RawSled::open();
    let mut first = 0;
    group.bench_function("raw_sled", |b| {
        b.iter(|| {
            let range = first..first + MESSAGES;
            std::thread::scope(|scope| {
                scope.spawn(|| range.clone().for_each(|seq| sled.insert(seq, &payload)));
                for seq in range.clone() {
                    receive_raw(&sled, seq);
                    sled.remove(seq);
                }
            });
            sled.flush();
            first = range.end;
        });
    });
    drop(sled);

    group.bench_function("crossbeam_channel", |b| {
        b.iter(|| {
            let (sender, receiver) = crossbeam_channel::unbounded();
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for _ in 0..MESSAGES {
                        sender.send(payload.clone()).expect("send");
                    }
                });
                for _ in 0..MESSAGES {
                    black_box(receiver.recv().expect("receive"));
                }
            });
        });
    });
    group.finish();
}

/// Waits until the raw-sled producer has stored `seq`, then reads it.
fn receive_raw(sled: &RawSled, seq: u64) {
    loop {
        if let Some(value) = sled.get(seq) {
            black_box(value);
            return;
        }
        std::thread::yield_now();
    }
}

fn publish_flushed_concurrent(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_flushed_concurrent");
    configure(&mut group);
    let per_iteration = PUBLISHERS as u64 * PER_PUBLISHER;
    group.throughput(Throughput::Elements(per_iteration));
    let payload = payload();

    let fixture = BrokerFixture::open(Durability::Flushed);
    let broker = fixture.broker.clone();
    let message_payload = payload.clone();
    let gang = ThreadGang::new(PUBLISHERS, move |_| {
        for _ in 0..PER_PUBLISHER {
            let message = Message::new(message_payload.clone());
            broker.publish(TOPIC, message).expect("publish");
        }
    });
    let fsyncs_before = fixture.broker.fsync_count();
    let mut published = 0;
    group.bench_function("aqueduct", |b| {
        b.iter(|| {
            gang.run();
            published += per_iteration;
        });
    });
    let fsyncs = fixture.broker.fsync_count() - fsyncs_before;
    report_fsyncs("publish_flushed_concurrent/aqueduct", published, fsyncs);
    drop(gang);
    drop(fixture);

    let sled = Arc::new(RawSled::open());
    let next_seq = Arc::new(AtomicU64::new(0));
    let gang_sled = Arc::clone(&sled);
    let gang = ThreadGang::new(PUBLISHERS, move |_| {
        for _ in 0..PER_PUBLISHER {
            let seq = next_seq.fetch_add(1, Ordering::Relaxed);
            gang_sled.insert(seq, &payload);
            gang_sled.flush();
        }
    });
    group.bench_function("raw_sled", |b| b.iter(|| gang.run()));
    drop(gang);
    group.finish();
}

/// Prints messages per fsync, unless the benchmark was filtered out and moved no messages.
fn report_fsyncs(benchmark: &str, messages: u64, fsyncs: u64) {
    if messages == 0 {
        return;
    }
    let per_fsync = messages as f64 / fsyncs.max(1) as f64;
    println!(
        "{benchmark}: {messages} messages, {fsyncs} fsyncs, \
         {per_fsync:.1} messages per fsync"
    );
}

criterion_group!(
    benches,
    publish_buffered,
    end_to_end,
    publish_flushed_concurrent
);
criterion_main!(benches);
