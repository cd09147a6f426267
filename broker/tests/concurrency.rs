//! Many producer and consumer threads on one topic: nothing lost or acked twice, per-key order
//! after nacks, per-partition ownership and handover, and async receiving with tokio.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Consumer, ConsumerConfig, Message, OrderingMode, Receipt, TopicConfig};
use futures_util::StreamExt;

/// Maximum single wait of a consumer before it checks whether to stop.
const POLL: Duration = Duration::from_millis(50);

/// Maximum time a test lets its consumers run before it fails for lack of progress.
const DEADLINE: Duration = Duration::from_secs(60);

/// Returns a well-mixed 64-bit value for `seed` (the splitmix64 finalizer), so that nack
/// decisions spread over messages and repeat from run to run.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn open(dir: &tempfile::TempDir, topic: &str, partitions: u32) -> Broker {
    let broker = Broker::open(dir.path()).expect("open broker");
    broker
        .create_topic(topic, TopicConfig::default().partitions(partitions))
        .expect("create topic");
    broker
}

/// Publishes one message per `(key, payload)` pair, alternating single publishes and batches of
/// four, and returns the receipt of each payload.
fn publish_all(
    broker: &Broker,
    topic: &str,
    payloads: Vec<(Option<Vec<u8>>, Vec<u8>)>,
) -> Vec<(Receipt, Vec<u8>)> {
    let mut published = Vec::new();
    for (index, chunk) in payloads.chunks(4).enumerate() {
        let messages: Vec<Message> = chunk
            .iter()
            .map(|(key, payload)| match key {
                Some(key) => Message::new(payload.clone()).key(key.clone()),
                None => Message::new(payload.clone()),
            })
            .collect();
        let receipts = if index % 2 == 0 {
            messages
                .into_iter()
                .map(|message| broker.publish(topic, message).expect("publish"))
                .collect()
        } else {
            broker
                .publish_batch(topic, messages)
                .expect("publish batch")
        };
        for (receipt, (_, payload)) in receipts.into_iter().zip(chunk) {
            published.push((receipt, payload.clone()));
        }
    }
    published
}

/// What one message went through in one group.
#[derive(Default)]
struct Seen {
    payload: Vec<u8>,
    attempts: Vec<u32>,
    nacks: u32,
    acks: u32,
}

#[test]
fn unordered_threads_lose_nothing() {
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 1_500;
    const CONSUMERS: usize = 4;
    const TOTAL: usize = PRODUCERS * PER_PRODUCER;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(&dir, "jobs", 4);
    let published = Mutex::new(Vec::new());
    let seen: Mutex<BTreeMap<Receipt, Seen>> = Mutex::new(BTreeMap::new());
    let acked = AtomicUsize::new(0);
    let started = Instant::now();

    thread::scope(|scope| {
        for producer in 0..PRODUCERS {
            let (broker, published) = (&broker, &published);
            scope.spawn(move || {
                let payloads = (0..PER_PRODUCER)
                    .map(|index| {
                        let payload = format!("producer {producer} message {index}").into_bytes();
                        let key =
                            (index % 3 == 0).then(|| format!("key-{}", index % 7).into_bytes());
                        (key, payload)
                    })
                    .collect();
                let receipts = publish_all(broker, "jobs", payloads);
                published.lock().expect("lock").extend(receipts);
            });
        }
        for _ in 0..CONSUMERS {
            let (broker, seen, acked) = (&broker, &seen, &acked);
            scope.spawn(move || {
                let mut consumer = broker.subscribe("jobs", "workers").expect("subscribe");
                while acked.load(Ordering::SeqCst) < TOTAL && started.elapsed() < DEADLINE {
                    let Some(delivery) = consumer.recv_timeout(POLL).expect("recv") else {
                        continue;
                    };
                    let receipt = Receipt {
                        partition: delivery.partition(),
                        offset: delivery.offset(),
                    };
                    let seed = mix(u64::from(receipt.partition) << 32 ^ receipt.offset);
                    let nack = delivery.attempt() < 3
                        && mix(seed ^ u64::from(delivery.attempt())) % 8 == 0;
                    {
                        let mut seen = seen.lock().expect("lock");
                        let entry = seen.entry(receipt).or_default();
                        entry.payload = delivery.payload().to_vec();
                        entry.attempts.push(delivery.attempt());
                        if nack {
                            entry.nacks += 1;
                        } else {
                            entry.acks += 1;
                        }
                    }
                    if nack {
                        delivery.nack().expect("nack of a held delivery");
                    } else {
                        delivery.ack().expect("ack of a held delivery");
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });

    let published: BTreeMap<Receipt, Vec<u8>> =
        published.into_inner().expect("lock").into_iter().collect();
    let seen = seen.into_inner().expect("lock");
    assert_eq!(published.len(), TOTAL, "every publish gets its own receipt");
    assert_eq!(
        acked.load(Ordering::SeqCst),
        TOTAL,
        "consumers acked every message before the deadline"
    );
    let received: BTreeSet<&Receipt> = seen.keys().collect();
    let expected: BTreeSet<&Receipt> = published.keys().collect();
    assert_eq!(
        received, expected,
        "the received messages are exactly the published ones"
    );
    for (receipt, record) in &seen {
        assert_eq!(record.payload, published[receipt], "payload of {receipt:?}");
        assert_eq!(record.acks, 1, "{receipt:?} is acked exactly once");
        assert_eq!(
            record.attempts.len() as u32,
            record.nacks + 1,
            "{receipt:?}: every redelivery follows a nack"
        );
        let expected_attempts: Vec<u32> = (1..=record.attempts.len() as u32).collect();
        assert_eq!(
            record.attempts, expected_attempts,
            "{receipt:?}: attempts count up by one"
        );
    }
}

#[test]
fn per_key_order_survives_nacks() {
    const PRODUCERS: usize = 4;
    const KEYS: usize = 16;
    const PER_KEY: u16 = 150;
    const CONSUMERS: usize = 4;
    const TOTAL: usize = KEYS * PER_KEY as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(&dir, "accounts", 4);
    let next: Mutex<Vec<u16>> = Mutex::new(vec![0; KEYS]);
    let violations = Mutex::new(Vec::new());
    let acked = AtomicUsize::new(0);
    let started = Instant::now();

    thread::scope(|scope| {
        for producer in 0..PRODUCERS {
            let broker = &broker;
            scope.spawn(move || {
                // Each producer owns the keys with `key % PRODUCERS == producer`, so publish order
                // per key is sequence order.
                let payloads = (0..PER_KEY)
                    .flat_map(|sequence| {
                        (producer..KEYS).step_by(PRODUCERS).map(move |key| {
                            let mut payload = vec![key as u8];
                            payload.extend_from_slice(&sequence.to_be_bytes());
                            (Some(format!("account-{key}").into_bytes()), payload)
                        })
                    })
                    .collect();
                publish_all(broker, "accounts", payloads);
            });
        }
        for _ in 0..CONSUMERS {
            let (broker, next, violations, acked) = (&broker, &next, &violations, &acked);
            scope.spawn(move || {
                let config = ConsumerConfig::default().ordering(OrderingMode::PerKey);
                let mut consumer = broker
                    .subscribe_with("accounts", "ledger", config)
                    .expect("subscribe");
                while acked.load(Ordering::SeqCst) < TOTAL && started.elapsed() < DEADLINE {
                    let Some(delivery) = consumer.recv_timeout(POLL).expect("recv") else {
                        continue;
                    };
                    let payload = delivery.payload();
                    let key = payload[0] as usize;
                    let sequence = u16::from_be_bytes([payload[1], payload[2]]);
                    let roll = mix(u64::from(sequence) << 8
                        ^ key as u64
                        ^ u64::from(delivery.attempt()) << 32);
                    let redeliver = delivery.attempt() < 4 && roll % 5 == 0;
                    {
                        let mut next = next.lock().expect("lock");
                        if sequence != next[key] {
                            violations.lock().expect("lock").push(format!(
                                "account-{key}: received sequence {sequence} while {} was next",
                                next[key]
                            ));
                        }
                        // The next message of this key cannot be handed out before the ack
                        // below returns, so recording it first is safe.
                        if !redeliver {
                            next[key] = sequence + 1;
                        }
                    }
                    if !redeliver {
                        delivery.ack().expect("ack of a held delivery");
                        acked.fetch_add(1, Ordering::SeqCst);
                    } else if roll % 2 == 0 {
                        delivery.nack().expect("nack of a held delivery");
                    } else {
                        // Dropping a delivery unsettled returns it for redelivery as well.
                        drop(delivery);
                    }
                }
            });
        }
    });

    let violations = violations.into_inner().expect("lock");
    assert!(
        violations.is_empty(),
        "per-key order broken: {violations:?}"
    );
    assert_eq!(
        acked.load(Ordering::SeqCst),
        TOTAL,
        "consumers acked every message before the deadline"
    );
    let next = next.into_inner().expect("lock");
    assert_eq!(
        next,
        vec![PER_KEY; KEYS],
        "every key was processed to its last sequence number"
    );
}

/// Per partition: the consumer that has unsettled deliveries from it, and how many.
type Holders = Mutex<HashMap<u32, (usize, usize)>>;

/// Receives and settles in a per-partition group until `stop` is set, recording who held each
/// partition and the order of acks. Some deliveries are nacked once.
fn run_owner(
    index: usize,
    mut consumer: Consumer,
    stop: &AtomicBool,
    holders: &Holders,
    acks: &Mutex<Vec<(usize, Receipt)>>,
    violations: &Mutex<Vec<String>>,
) {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < DEADLINE {
        let Some(delivery) = consumer.recv_timeout(POLL).expect("recv") else {
            continue;
        };
        let receipt = Receipt {
            partition: delivery.partition(),
            offset: delivery.offset(),
        };
        {
            let mut holders = holders.lock().expect("lock");
            let holder = holders.entry(receipt.partition).or_insert((index, 0));
            if holder.0 != index && holder.1 > 0 {
                violations.lock().expect("lock").push(format!(
                    "consumer {index} received {receipt:?} while consumer {} held {} deliveries of \
                     that partition",
                    holder.0, holder.1
                ));
            }
            *holder = (index, if holder.0 == index { holder.1 + 1 } else { 1 });
        }
        let nack = delivery.attempt() == 1
            && mix(receipt.offset ^ u64::from(receipt.partition) << 40) % 8 == 0;
        if nack {
            delivery.nack().expect("nack of a held delivery");
        } else {
            delivery.ack().expect("ack of a held delivery");
            acks.lock().expect("lock").push((index, receipt));
        }
        holders
            .lock()
            .expect("lock")
            .entry(receipt.partition)
            .or_insert((index, 1))
            .1 -= 1;
    }
}

#[test]
fn per_partition_owner_moves_on_drop() {
    const PARTITIONS: u32 = 4;
    const CONSUMERS: usize = 3;
    const PER_PHASE: usize = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(&dir, "ledger", PARTITIONS);
    let config = ConsumerConfig::default().ordering(OrderingMode::PerPartition);
    // Every member joins before the first publish, so ownership is settled when messages
    // arrive.
    let consumers: Vec<Consumer> = (0..CONSUMERS)
        .map(|_| {
            broker
                .subscribe_with("ledger", "owners", config.clone())
                .expect("subscribe")
        })
        .collect();
    let stops: Vec<AtomicBool> = (0..CONSUMERS).map(|_| AtomicBool::new(false)).collect();
    let holders = Holders::default();
    let acks = Mutex::new(Vec::new());
    let violations = Mutex::new(Vec::new());

    let wait_for_acks = |count: usize| {
        let started = Instant::now();
        while acks.lock().expect("lock").len() < count && started.elapsed() < DEADLINE {
            thread::sleep(POLL);
        }
    };
    let payloads = |phase: usize| {
        (0..PER_PHASE)
            .map(|index| (None, format!("phase {phase} entry {index}").into_bytes()))
            .collect()
    };

    let phase_one_ends: Vec<u64> = thread::scope(|scope| {
        let mut handles = Vec::new();
        for (index, consumer) in consumers.into_iter().enumerate() {
            let (stop, holders, acks, violations) = (&stops[index], &holders, &acks, &violations);
            handles.push(
                scope.spawn(move || run_owner(index, consumer, stop, holders, acks, violations)),
            );
        }
        publish_all(&broker, "ledger", payloads(1));
        wait_for_acks(PER_PHASE);
        let phase_one_ends = (0..PARTITIONS)
            .map(|partition| broker.end_offset("ledger", partition).expect("end offset"))
            .collect();

        stops[0].store(true, Ordering::SeqCst);
        handles.remove(0).join().expect("consumer 0 thread");
        publish_all(&broker, "ledger", payloads(2));
        wait_for_acks(2 * PER_PHASE);
        for stop in &stops {
            stop.store(true, Ordering::SeqCst);
        }
        phase_one_ends
    });

    let violations = violations.into_inner().expect("lock");
    assert!(
        violations.is_empty(),
        "a partition had two holders at once: {violations:?}"
    );
    let acks = acks.into_inner().expect("lock");
    assert_eq!(
        acks.len(),
        2 * PER_PHASE,
        "every message is acked once before the deadline"
    );
    let distinct: BTreeSet<Receipt> = acks.iter().map(|(_, receipt)| *receipt).collect();
    assert_eq!(distinct.len(), acks.len(), "no message is acked twice");

    let mut owners: BTreeMap<(usize, u32), BTreeSet<usize>> = BTreeMap::new();
    let mut sequences: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (consumer, receipt) in &acks {
        let end = phase_one_ends[receipt.partition as usize];
        let phase = if receipt.offset < end { 1 } else { 2 };
        owners
            .entry((phase, receipt.partition))
            .or_default()
            .insert(*consumer);
        sequences
            .entry(receipt.partition)
            .or_default()
            .push(receipt.offset);
    }
    for (partition, offsets) in &sequences {
        let ordered = offsets.windows(2).all(|pair| pair[0] < pair[1]);
        assert!(
            ordered,
            "partition {partition} acked offsets out of order: {offsets:?}"
        );
    }
    for partition in 0..PARTITIONS {
        let first = &owners[&(1, partition)];
        let second = &owners[&(2, partition)];
        assert_eq!(
            first.len(),
            1,
            "partition {partition} had one owner before the drop: {first:?}"
        );
        assert_eq!(
            second.len(),
            1,
            "partition {partition} had one owner after the drop: {second:?}"
        );
        assert!(
            !second.contains(&0),
            "partition {partition} left the dropped consumer 0"
        );
    }
    let moved = (0..PARTITIONS)
        .filter(|partition| owners[&(1, *partition)].contains(&0))
        .count();
    assert!(
        moved > 0,
        "consumer 0 owned a partition before it was dropped"
    );
}

#[test]
fn per_partition_nack_redelivers_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(&dir, "ledger", 1);
    for index in 0..10u8 {
        broker
            .publish("ledger", Message::new(vec![index]))
            .expect("publish");
    }
    let config = ConsumerConfig::default()
        .ordering(OrderingMode::PerPartition)
        .prefetch(4);
    let mut consumer = broker
        .subscribe_with("ledger", "owners", config)
        .expect("subscribe");
    let first = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("offset 0");
    assert_eq!(first.offset(), 0, "the owner starts at offset 0");
    first.nack().expect("nack");

    let mut order = Vec::new();
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_millis(200))
        .expect("recv")
    {
        order.push((delivery.offset(), delivery.attempt()));
        delivery.ack().expect("ack");
    }
    let expected: Vec<(u64, u32)> = std::iter::once((0, 2))
        .chain((1..10).map(|offset| (offset, 1)))
        .collect();
    assert_eq!(
        order, expected,
        "the nacked offset comes back before the later ones it had buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_consumers_receive_everything() {
    const TOTAL: usize = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(&dir, "events", 3);
    let producer = broker.clone();
    let publishing = tokio::task::spawn_blocking(move || {
        let payloads = (0..TOTAL)
            .map(|index| (None, format!("event {index}").into_bytes()))
            .collect();
        publish_all(&producer, "events", payloads)
    });

    let awaited = std::sync::Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut consumer = broker.subscribe("events", "awaited").expect("subscribe");
        let awaited = awaited.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            while awaited.lock().expect("lock").len() < TOTAL && started.elapsed() < DEADLINE {
                let Ok(received) = tokio::time::timeout(POLL, consumer.recv_async()).await else {
                    continue;
                };
                let delivery = received.expect("recv_async");
                let receipt = Receipt {
                    partition: delivery.partition(),
                    offset: delivery.offset(),
                };
                delivery.ack().expect("ack");
                awaited.lock().expect("lock").push(receipt);
            }
        }));
    }
    let streamed = tokio::spawn({
        let consumer = broker.subscribe("events", "streamed").expect("subscribe");
        async move {
            let mut stream = Box::pin(consumer.into_stream());
            let mut receipts = Vec::new();
            let started = Instant::now();
            while receipts.len() < TOTAL && started.elapsed() < DEADLINE {
                let Ok(next) = tokio::time::timeout(POLL, stream.next()).await else {
                    continue;
                };
                let delivery = next.expect("the stream does not end").expect("stream item");
                receipts.push(Receipt {
                    partition: delivery.partition(),
                    offset: delivery.offset(),
                });
                delivery.ack().expect("ack");
            }
            receipts
        }
    });

    let published: BTreeSet<Receipt> = publishing
        .await
        .expect("publisher task")
        .into_iter()
        .map(|(receipt, _)| receipt)
        .collect();
    for task in tasks {
        task.await.expect("recv_async task");
    }
    let streamed = streamed.await.expect("stream task");
    let awaited = awaited.lock().expect("lock").clone();
    assert_eq!(published.len(), TOTAL, "every publish gets its own receipt");
    for (name, receipts) in [("recv_async", awaited), ("into_stream", streamed)] {
        let distinct: BTreeSet<Receipt> = receipts.iter().copied().collect();
        assert_eq!(
            receipts.len(),
            TOTAL,
            "{name} consumers acked every message before the deadline"
        );
        assert_eq!(
            distinct, published,
            "{name} consumers received exactly the published messages"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_async_cancel_keeps_fetched() {
    const TOTAL: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = open(&dir, "events", 2);
    let mut consumer = broker.subscribe("events", "cancelled").expect("subscribe");
    let idle = tokio::time::timeout(POLL, consumer.recv_async()).await;
    assert!(
        idle.is_err(),
        "recv_async on an empty topic waits until cancelled"
    );

    let payloads = (0..TOTAL).map(|index| (None, vec![index as u8])).collect();
    publish_all(&broker, "events", payloads);
    let mut received = Vec::new();
    // A zero timeout drops the future after its first poll, typically while the fetched batch
    // waits for its flush round.
    if let Ok(first) = tokio::time::timeout(Duration::ZERO, consumer.recv_async()).await {
        received.push(first.expect("recv_async"));
    }
    while received.len() < TOTAL {
        let next = tokio::time::timeout(Duration::from_secs(5), consumer.recv_async()).await;
        received.push(
            next.expect("a delivery within 5 s after a cancelled recv_async")
                .expect("recv_async"),
        );
    }
    let attempts: Vec<u32> = received.iter().map(|delivery| delivery.attempt()).collect();
    assert_eq!(
        attempts,
        vec![1; TOTAL],
        "a cancelled recv_async returns no lease to the group"
    );
    let distinct: BTreeSet<(u32, u64)> = received
        .iter()
        .map(|d| (d.partition(), d.offset()))
        .collect();
    assert_eq!(distinct.len(), TOTAL, "each message arrives once");
    for delivery in received {
        delivery.ack().expect("ack");
    }
}
