//! Publish-to-acknowledged-delivery latency at fixed offered loads, against a crossbeam channel.
//!
//! Run with `cargo bench -p aqueduct-benches --bench latency`. Each case runs a producer thread
//! that sends 100-byte messages on an absolute schedule (message `i` is due at `i / rate`
//! seconds after the case starts) and one consumer that receives and acks them. The payload
//! carries each message's scheduled send time in nanoseconds since a shared `Instant`, and the
//! consumer records `ack returned - scheduled time` in an HDR histogram. Latency counts from the
//! scheduled time, not from the actual send, so a producer that falls behind its schedule shows
//! up as latency instead of hiding it (coordinated omission). For the channel the "ack" is the
//! `recv` returning.
//!
//! NOTE: the producer waits with `thread::sleep`, which wakes late by tens of microseconds on
//! Linux. That delay counts as latency for every transport, so the channel's figures are the
//! floor of this harness rather than the channel's own cost.

use std::thread;
use std::time::{Duration, Instant};

use aqueduct::{Durability, Message};
use aqueduct_benches::{payload, BrokerFixture, PAYLOAD_BYTES, TOPIC};
use hdrhistogram::Histogram;

/// Time each case runs at its rate and records.
const MEASURED: Duration = Duration::from_secs(3);

/// Time each case runs before recording starts, so that setup and cold caches are not counted.
const WARM_UP: Duration = Duration::from_millis(500);

/// How long the consumer waits for one message before the case fails.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// Highest latency the histograms record, in nanoseconds (60 s).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Significant decimal digits the histograms keep.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Transport under test.
#[derive(Clone, Copy)]
enum Transport {
    /// An unbounded crossbeam channel.
    Channel,
    /// A broker with one single-partition topic and the given durability.
    Broker(Durability),
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Channel => "crossbeam channel",
            Transport::Broker(Durability::Flushed) => "aqueduct Flushed",
            Transport::Broker(Durability::Buffered { .. }) => "aqueduct Buffered 10 ms",
        }
    }
}

fn main() {
    let cases = [
        (Transport::Channel, 1_000),
        (Transport::Channel, 10_000),
        (Transport::Channel, 50_000),
        (Transport::Broker(Durability::default()), 1_000),
        (Transport::Broker(Durability::default()), 10_000),
        (Transport::Broker(Durability::default()), 50_000),
        (Transport::Broker(Durability::Flushed), 200),
    ];
    println!(
        "latency: {PAYLOAD_BYTES}-byte messages, {} ms warm-up, {} s measured per case; \
         microseconds from scheduled send to ack",
        WARM_UP.as_millis(),
        MEASURED.as_secs()
    );
    for (transport, rate) in cases {
        let histogram = run_case(transport, rate);
        report(transport, rate, &histogram);
    }
}

/// Prints one line: transport, offered rate, count, p50, p99, p99.9 and max in microseconds.
fn report(transport: Transport, rate: u64, histogram: &Histogram<u64>) {
    let micros = |ns: u64| ns as f64 / 1_000.0;
    println!(
        "latency/{:<24} {:>6} msg/s  count {:>7}  p50 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  \
         max {:>9.1}",
        transport.name(),
        rate,
        histogram.len(),
        micros(histogram.value_at_quantile(0.50)),
        micros(histogram.value_at_quantile(0.99)),
        micros(histogram.value_at_quantile(0.999)),
        micros(histogram.max()),
    );
}

/// Runs one case at `rate` messages per second and returns the histogram of the measured part.
fn run_case(transport: Transport, rate: u64) -> Histogram<u64> {
    let interval_ns = 1_000_000_000 / rate;
    let warm_up_count = rate * WARM_UP.as_millis() as u64 / 1_000;
    let count = warm_up_count + rate * MEASURED.as_secs();
    let epoch = Instant::now();
    // Message 0 is due a little after the epoch, so that the consumer is ready for it.
    let first_due_ns = 10_000_000;
    let schedule = move |index: u64| first_due_ns + index * interval_ns;

    let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds");
    let mut record = |index: u64, scheduled_ns: u64| {
        if index < warm_up_count {
            return;
        }
        let done_ns = epoch.elapsed().as_nanos() as u64;
        histogram.saturating_record(done_ns.saturating_sub(scheduled_ns).max(1));
    };

    match transport {
        Transport::Channel => {
            let (sender, receiver) = crossbeam_channel::unbounded::<Vec<u8>>();
            let producer = thread::spawn(move || {
                for index in 0..count {
                    let payload = paced_payload(epoch, schedule(index));
                    sender
                        .send(payload)
                        .expect("send on the channel (receiver dropped)");
                }
            });
            for index in 0..count {
                let payload = receiver
                    .recv_timeout(RECV_TIMEOUT)
                    .expect("a message on the channel before the timeout");
                record(index, scheduled_ns(&payload));
            }
            producer.join().expect("producer thread");
        }
        Transport::Broker(durability) => {
            let fixture = BrokerFixture::open(durability);
            let mut consumer = fixture
                .broker
                .subscribe(TOPIC, "latency")
                .expect("subscribe");
            let broker = fixture.broker.clone();
            let producer = thread::spawn(move || {
                for index in 0..count {
                    let payload = paced_payload(epoch, schedule(index));
                    broker
                        .publish(TOPIC, Message::new(payload))
                        .expect("publish");
                }
            });
            for index in 0..count {
                let delivery = consumer
                    .recv_timeout(RECV_TIMEOUT)
                    .expect("recv")
                    .expect("a delivery before the timeout");
                let scheduled = scheduled_ns(delivery.payload());
                delivery.ack().expect("ack");
                record(index, scheduled);
            }
            producer.join().expect("producer thread");
        }
    }
    histogram
}

/// Sleeps until `scheduled_ns` after `epoch`, unless that time has passed, and returns a
/// payload whose first 8 bytes are `scheduled_ns` (little-endian).
fn paced_payload(epoch: Instant, scheduled_ns: u64) -> Vec<u8> {
    let due = epoch + Duration::from_nanos(scheduled_ns);
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
    let mut payload = payload();
    payload[..8].copy_from_slice(&scheduled_ns.to_le_bytes());
    payload
}

/// Reads the scheduled send time that [`paced_payload`] wrote.
fn scheduled_ns(payload: &[u8]) -> u64 {
    let bytes: [u8; 8] = payload[..8]
        .try_into()
        .expect("payload of at least 8 bytes");
    u64::from_le_bytes(bytes)
}
