//! The broker's throughput matrix, with its baselines measured in the same run.
//!
//! - `publish_matrix`: one thread publishes with batch sizes 1, 10 and 100 (`publish` for 1,
//!   `publish_batch` for 10 and 100), payloads of 100 B and 1 KiB, and both durability modes.
//!   Baselines: raw sled with one key per message (an `apply_batch` per batch) and the same
//!   flushes, and a crossbeam channel send of each message or batch.
//! - `end_to_end_matrix`: a producer thread publishes keyed messages to a four-partition topic
//!   while 1 or 4 consumers of one group receive and ack them, for each ordering mode.
//!   Baselines: a raw-sled queue with 1 or 4 consumer threads, and a crossbeam channel with 1
//!   or 4 receivers.
//!
//! Run with `cargo bench -p aqueduct-benches --bench matrix`.

// `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aqueduct::{Broker, ConsumerConfig, Durability, Message, OrderingMode};
use aqueduct_benches::{
    configure_matrix, matrix_criterion, message_keys, payload, payload_of, time_channel_sends,
    BrokerFixture, RawSled, RECEIVE_TIMEOUT, TOPIC,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

/// Messages per iteration with `Durability::Buffered`, followed by one flush.
const BUFFERED_MESSAGES: u64 = 10_000;

/// Publish calls per iteration with `Durability::Flushed`. Each call waits for its own fsync,
/// so an iteration moves 20 times the batch size.
const FLUSHED_CALLS: u64 = 20;

/// Batch sizes of `publish_matrix`: 1 publishes with `publish`, larger ones with
/// `publish_batch`.
const BATCH_SIZES: [u64; 3] = [1, 10, 100];

/// Payload sizes of `publish_matrix`, in bytes.
const PAYLOAD_SIZES: [usize; 2] = [100, 1024];

/// Messages per iteration of `end_to_end_matrix`.
const END_TO_END_MESSAGES: u64 = 10_000;

/// Partitions of the `end_to_end_matrix` topic, so that four consumers can each own one in
/// `PerPartition` mode.
const END_TO_END_PARTITIONS: u32 = 4;

/// Distinct keys of the `end_to_end_matrix` messages; the keys spread over all partitions.
const KEYS: usize = 256;

/// How long a consumer waits for a delivery before it checks whether the group is done.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// Measurement time of each benchmark.
const MEASUREMENT: Duration = Duration::from_secs(2);

/// The durability mode of one `publish_matrix` case.
#[derive(Clone, Copy)]
enum Mode {
    Buffered,
    Flushed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Buffered => "buffered",
            Mode::Flushed => "flushed",
        }
    }

    fn durability(self) -> Durability {
        match self {
            Mode::Buffered => Durability::default(),
            Mode::Flushed => Durability::Flushed,
        }
    }

    /// Returns the publish calls of one iteration with batches of `batch` messages.
    fn calls(self, batch: u64) -> u64 {
        match self {
            Mode::Buffered => BUFFERED_MESSAGES / batch,
            Mode::Flushed => FLUSHED_CALLS,
        }
    }
}

fn publish_matrix(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_matrix");
    configure_matrix(&mut group, MEASUREMENT);
    for mode in [Mode::Buffered, Mode::Flushed] {
        for batch in BATCH_SIZES {
            for payload_bytes in PAYLOAD_SIZES {
                let calls = mode.calls(batch);
                group.throughput(Throughput::Elements(calls * batch));
                let parameter = format!("{}/batch_{batch}/{payload_bytes}B", mode.name());
                let payload = payload_of(payload_bytes);

                let fixture = BrokerFixture::open(mode.durability());
                let id = BenchmarkId::new("aqueduct", &parameter);
                group.bench_function(id, |b| {
                    b.iter(|| publish_calls(&fixture.broker, calls, batch, &payload, mode));
                });
                drop(fixture);

                let sled = RawSled::open();
                let mut seq = 0;
                group.bench_function(BenchmarkId::new("raw_sled", &parameter), |b| {
                    b.iter(|| {
                        for _ in 0..calls {
                            if batch == 1 {
                                sled.insert(seq, &payload);
                            } else {
                                sled.insert_batch(seq, batch, &payload);
                            }
                            seq += batch;
                            if let Mode::Flushed = mode {
                                sled.flush();
                            }
                        }
                        if let Mode::Buffered = mode {
                            sled.flush();
                        }
                    });
                });
                drop(sled);
            }
        }
    }

    // The channel has no durability mode, so it runs once per batch size and payload size,
    // with as many messages per iteration as the buffered cases. Each send carries one call's
    // messages as a `Vec`.
    for batch in BATCH_SIZES {
        for payload_bytes in PAYLOAD_SIZES {
            let calls = BUFFERED_MESSAGES / batch;
            group.throughput(Throughput::Elements(calls * batch));
            let parameter = format!("batch_{batch}/{payload_bytes}B");
            let payload = payload_of(payload_bytes);
            let id = BenchmarkId::new("crossbeam_channel", parameter);
            group.bench_function(id, |b| {
                b.iter_custom(|iterations| {
                    time_channel_sends(iterations, calls, |_| {
                        (0..batch).map(|_| payload.clone()).collect::<Vec<_>>()
                    })
                });
            });
        }
    }
    group.finish();
}

/// Publishes `calls` times: one message with `publish` when `batch` is 1, otherwise `batch`
/// messages with `publish_batch`. A buffered broker flushes once at the end.
fn publish_calls(broker: &Broker, calls: u64, batch: u64, payload: &[u8], mode: Mode) {
    for _ in 0..calls {
        if batch == 1 {
            let message = Message::new(payload.to_vec());
            broker.publish(TOPIC, message).expect("publish");
        } else {
            let messages = (0..batch).map(|_| Message::new(payload.to_vec()));
            broker
                .publish_batch(TOPIC, messages)
                .expect("publish_batch");
        }
    }
    if let Mode::Buffered = mode {
        broker.flush().expect("flush");
    }
}

fn ordering_name(ordering: OrderingMode) -> &'static str {
    match ordering {
        OrderingMode::Unordered => "unordered",
        OrderingMode::PerKey => "per_key",
        OrderingMode::PerPartition => "per_partition",
    }
}

fn end_to_end_matrix(c: &mut Criterion) {
    let mut group = c.benchmark_group("end_to_end_matrix");
    configure_matrix(&mut group, MEASUREMENT);
    group.throughput(Throughput::Elements(END_TO_END_MESSAGES));
    let payload = payload();
    let keys = message_keys(KEYS);

    for consumers in [1, 4] {
        for ordering in [
            OrderingMode::Unordered,
            OrderingMode::PerKey,
            OrderingMode::PerPartition,
        ] {
            let parameter = format!("{}/{consumers}_consumers", ordering_name(ordering));
            let fixture =
                BrokerFixture::with_partitions(Durability::default(), END_TO_END_PARTITIONS);
            let broker = &fixture.broker;
            let config = ConsumerConfig::default().ordering(ordering);
            let mut members = (0..consumers)
                .map(|_| {
                    broker
                        .subscribe_with(TOPIC, "bench", config.clone())
                        .expect("subscribe")
                })
                .collect::<Vec<_>>();
            let acked = AtomicU64::new(0);
            group.bench_function(BenchmarkId::new("aqueduct", parameter), |b| {
                b.iter(|| {
                    acked.store(0, Ordering::SeqCst);
                    let deadline = Instant::now() + RECEIVE_TIMEOUT;
                    std::thread::scope(|scope| {
                        scope.spawn(|| {
                            for i in 0..END_TO_END_MESSAGES as usize {
                                let key = keys[i % KEYS].clone();
                                let message = Message::new(payload.clone()).key(key);
                                broker.publish(TOPIC, message).expect("publish");
                            }
                        });
                        for consumer in &mut members {
                            let acked = &acked;
                            scope.spawn(move || {
                                while acked.load(Ordering::SeqCst) < END_TO_END_MESSAGES {
                                    assert!(
                                        Instant::now() < deadline,
                                        "messages still unacknowledged after {RECEIVE_TIMEOUT:?}"
                                    );
                                    let delivery =
                                        consumer.recv_timeout(IDLE_POLL).expect("receive");
                                    if let Some(delivery) = delivery {
                                        black_box(delivery.payload());
                                        delivery.ack().expect("ack");
                                        acked.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            });
                        }
                    });
                    broker.flush().expect("flush");
                });
            });
            drop(members);
            drop(fixture);
        }

        raw_sled_queue(&mut group, consumers, &payload);
        channel_queue(&mut group, consumers, &payload);
    }
    group.finish();
}

/// Benchmarks the raw-sled queue: a producer thread inserts one key per message while `consumers` threads
/// each read and remove every `consumers`-th key in order, then one flush and fsync.
fn raw_sled_queue(group: &mut BenchmarkGroup<'_, WallTime>, consumers: u64, payload: &[u8]) {
    let sled = RawSled::open();
    let mut first = 0;
    let id = BenchmarkId::new("raw_sled", format!("{consumers}_consumers"));
    group.bench_function(id, |b| {
        b.iter(|| {
            let range = first..first + END_TO_END_MESSAGES;
            std::thread::scope(|scope| {
                scope.spawn(|| range.clone().for_each(|seq| sled.insert(seq, payload)));
                for consumer in 0..consumers {
                    let sled = &sled;
                    let seqs = range
                        .clone()
                        .skip(consumer as usize)
                        .step_by(consumers as usize);
                    scope.spawn(move || {
                        for seq in seqs {
                            wait_for_key(sled, seq);
                            sled.remove(seq);
                        }
                    });
                }
            });
            sled.flush();
            first = range.end;
        });
    });
}

/// Waits until the raw-sled producer has stored `seq`, then reads it.
fn wait_for_key(sled: &RawSled, seq: u64) {
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    loop {
        if let Some(value) = sled.get(seq) {
            black_box(value);
            return;
        }
        assert!(Instant::now() < deadline, "key {seq} was never inserted");
        std::thread::yield_now();
    }
}

/// Benchmarks the channel queue: a producer thread sends every message while `consumers` threads receive
/// from the same channel until it is empty and closed.
fn channel_queue(group: &mut BenchmarkGroup<'_, WallTime>, consumers: u64, payload: &[u8]) {
    let id = BenchmarkId::new("crossbeam_channel", format!("{consumers}_consumers"));
    group.bench_function(id, |b| {
        b.iter(|| {
            let (sender, receiver) = crossbeam_channel::unbounded();
            std::thread::scope(|scope| {
                scope.spawn(move || {
                    for _ in 0..END_TO_END_MESSAGES {
                        sender.send(payload.to_vec()).expect("send");
                    }
                });
                for _ in 0..consumers {
                    let receiver = receiver.clone();
                    scope.spawn(move || {
                        receiver.iter().for_each(|message| drop(black_box(message)))
                    });
                }
            });
        });
    });
}

criterion_group! {
    name = benches;
    config = matrix_criterion();
    targets = publish_matrix, end_to_end_matrix
}
criterion_main!(benches);
