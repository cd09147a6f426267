//! The scenarios on an `aqueduct` broker in this process.
//!
//! Each scenario opens a fresh broker on its own temporary directory (under `TMPDIR`, which
//! `run.sh` points at its scratch directory) with one single-partition topic and default
//! settings apart from the durability mode.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use aqueduct::{Broker, BrokerConfig, Durability, Message, TopicConfig};

use crate::end_to_end;
use crate::workload::{
    histogram, join_threads, now_nanos, payload, record_since, stamp, Measurement, Mode, Scenario,
    BATCH,
};
use crate::{Context, Result};

const TOPIC: &str = "bench";
const GROUP: &str = "bench";

/// How long a consumer waits for one delivery before the scenario fails.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker on a temporary directory that is removed on drop.
struct Fixture {
    broker: Broker,
    /// Kept until the broker is dropped; declared after it so that it is removed last.
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn open(mode: Mode) -> Result<Fixture> {
        let dir = tempfile::tempdir().context("creating the broker's temporary directory")?;
        let durability = match mode {
            Mode::Buffered => Durability::default(),
            Mode::Flushed => Durability::Flushed,
        };
        let config = BrokerConfig::default().durability(durability);
        let broker = Broker::open_with(dir.path(), config).context("opening the broker")?;
        broker
            .create_topic(TOPIC, TopicConfig::default())
            .context("creating the topic")?;
        Ok(Fixture { broker, _dir: dir })
    }
}

/// Runs `scenario` with `count` messages and returns what it measured.
pub fn run(scenario: Scenario, mode: Mode, count: u64) -> Result<Measurement> {
    let fixture = Fixture::open(mode)?;
    let broker = &fixture.broker;
    let fsyncs_before = broker.fsync_count();
    let mut measurement = match scenario {
        Scenario::ProduceOne => produce_one(broker, count)?,
        Scenario::ProduceBatch => produce_batch(broker, count)?,
        Scenario::ConsumeAck => consume_ack(broker, count)?,
        Scenario::EndToEnd | Scenario::EndToEndPaced(_) => end_to_end(broker, count, scenario)?,
        Scenario::ProduceConcurrent(producers) => produce_concurrent(broker, count, producers)?,
    };
    if mode == Mode::Flushed {
        let fsyncs = broker.fsync_count() - fsyncs_before;
        measurement.note = format!(
            "{fsyncs} fsyncs, {:.1} messages per fsync",
            measurement.messages as f64 / fsyncs.max(1) as f64
        );
    }
    Ok(measurement)
}

fn produce_one(broker: &Broker, count: u64) -> Result<Measurement> {
    let mut latency = histogram();
    let start = Instant::now();
    for _ in 0..count {
        let call = Instant::now();
        broker
            .publish(TOPIC, Message::new(payload(now_nanos(), 0)))
            .context("publishing")?;
        record_since(&mut latency, call);
    }
    Ok(Measurement::new(count, start.elapsed(), Some(latency)))
}

fn produce_batch(broker: &Broker, count: u64) -> Result<Measurement> {
    let start = Instant::now();
    for _ in 0..count / BATCH as u64 {
        let batch = (0..BATCH).map(|_| Message::new(payload(now_nanos(), 0)));
        broker
            .publish_batch(TOPIC, batch)
            .context("publishing a batch")?;
    }
    Ok(Measurement::new(count, start.elapsed(), None))
}

fn consume_ack(broker: &Broker, count: u64) -> Result<Measurement> {
    let mut published = 0;
    while published < count {
        let size = (count - published).min(BATCH as u64);
        let batch = (0..size).map(|_| Message::new(payload(now_nanos(), 0)));
        broker
            .publish_batch(TOPIC, batch)
            .context("publishing the backlog")?;
        published += size;
    }
    broker.flush().context("flushing the backlog")?;

    let start = Instant::now();
    let mut consumer = broker
        .subscribe(TOPIC, GROUP)
        .context("subscribing to the topic")?;
    for received in 0..count {
        let delivery = consumer
            .recv_timeout(RECV_TIMEOUT)
            .context("receiving")?
            .ok_or_else(|| format!("no delivery within {RECV_TIMEOUT:?} after {received}"))?;
        delivery.ack().context("acking")?;
    }
    Ok(Measurement::new(count, start.elapsed(), None))
}

fn end_to_end(broker: &Broker, count: u64, scenario: Scenario) -> Result<Measurement> {
    let mut consumer = broker
        .subscribe(TOPIC, GROUP)
        .context("subscribing to the topic")?;
    let producer_broker = broker.clone();
    let setup_producer = move || {
        Ok(move |payload: Vec<u8>| {
            producer_broker
                .publish(TOPIC, Message::new(payload))
                .context("publishing")?;
            Ok(())
        })
    };
    end_to_end::run(scenario, count, setup_producer, |latency| {
        for received in 0..count {
            let delivery = consumer
                .recv_timeout(RECV_TIMEOUT)
                .context("receiving")?
                .ok_or_else(|| format!("no delivery within {RECV_TIMEOUT:?} after {received}"))?;
            let stamp = stamp(delivery.payload())?;
            delivery.ack().context("acking")?;
            latency.record(stamp);
        }
        Ok(())
    })
}

fn produce_concurrent(broker: &Broker, count: u64, producers: usize) -> Result<Measurement> {
    let per_producer = count / producers as u64;
    // The producers and this thread wait here, so that all producers start together.
    let barrier = Arc::new(Barrier::new(producers + 1));
    let handles: Vec<_> = (0..producers)
        .map(|_| {
            let broker = broker.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || -> Result<hdrhistogram::Histogram<u64>> {
                let mut latency = histogram();
                barrier.wait();
                for _ in 0..per_producer {
                    let call = Instant::now();
                    broker
                        .publish(TOPIC, Message::new(payload(now_nanos(), 0)))
                        .context("publishing")?;
                    record_since(&mut latency, call);
                }
                Ok(latency)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let latency = join_threads(handles)?;
    Ok(Measurement::new(
        per_producer * producers as u64,
        start.elapsed(),
        Some(latency),
    ))
}
