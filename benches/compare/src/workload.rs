//! The workload that every system runs: scenarios, message counts, payloads and measurements.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::Context;

/// Payload size of every message, in bytes.
pub const PAYLOAD_BYTES: usize = 100;

/// Messages per `publish_batch` call, per Redis pipeline and per group of JetStream publishes
/// whose acks are awaited together. Redis and JetStream consumers fetch batches of this size.
pub const BATCH: usize = 100;

/// Highest latency the histograms record, in nanoseconds (60 s).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Significant decimal digits the histograms keep.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Part of a paced scenario whose messages are not recorded, so that connection setup and
/// cold caches do not count.
pub const WARM_UP: Duration = Duration::from_millis(500);

/// Durability setting, mapped to each system's closest equivalent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Aqueduct `Durability::Buffered` (10 ms), Redis `appendfsync everysec`, JetStream file
    /// storage with its default syncing.
    Buffered,
    /// Aqueduct `Durability::Flushed`, Redis `appendfsync always`. JetStream 2.9.10 has no
    /// per-message fsync, so its rows use the same server as `Buffered`.
    Flushed,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Buffered => "buffered",
            Mode::Flushed => "flushed",
        })
    }
}

/// System under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// The `aqueduct` broker in this process.
    Aqueduct,
    /// Redis Streams over loopback.
    Redis,
    /// NATS JetStream over loopback.
    Nats,
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Aqueduct => "aqueduct",
            System::Redis => "redis",
            System::Nats => "jetstream",
        })
    }
}

/// One measured scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// One producer; each publish waits for its acknowledgement before the next is sent.
    ProduceOne,
    /// One producer; batches of [`BATCH`] messages, each batch acknowledged before the next.
    ProduceBatch,
    /// A backlog is stored first (not timed); then one consumer in a group receives and acks
    /// every message.
    ConsumeAck,
    /// One producer as in `ProduceOne` and one consumer that acks each message, running at the
    /// same time, each on a thread of its own. Latency runs from the start of the publish call
    /// to the return of the ack, so it includes any backlog that builds up when the producer is
    /// faster than the consumer.
    EndToEnd,
    /// As `EndToEnd`, but message `i` is due `i / rate` seconds after the start, and the
    /// producer sleeps until then. Latency runs from the scheduled time, so a producer that
    /// falls behind its schedule shows up as latency (no coordinated omission). Messages of the
    /// first [`WARM_UP`] are not recorded.
    EndToEndPaced(u64),
    /// The given number of producers at once, each as in `ProduceOne`.
    ProduceConcurrent(usize),
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scenario::ProduceOne => f.write_str("produce, 1 per call"),
            Scenario::ProduceBatch => write!(f, "produce, batches of {BATCH}"),
            Scenario::ConsumeAck => f.write_str("consume + ack backlog"),
            Scenario::EndToEnd => f.write_str("end to end"),
            Scenario::EndToEndPaced(rate) => write!(f, "end to end at {rate} msg/s"),
            Scenario::ProduceConcurrent(producers) => write!(f, "produce, {producers} producers"),
        }
    }
}

/// A kind of scenario, for selecting scenarios on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioKind {
    /// One producer, one message per call, each call waits for its acknowledgement.
    ProduceOne,
    /// One producer, batches of 100 messages.
    ProduceBatch,
    /// One consumer receives and acks a stored backlog.
    ConsumeAck,
    /// One producer and one consumer at the same time, unpaced.
    EndToEnd,
    /// One producer at a fixed rate and one consumer at the same time.
    EndToEndPaced,
    /// Several producers at once, one run per --producers value.
    ProduceConcurrent,
}

impl Scenario {
    /// Returns the kind of this scenario.
    pub fn kind(self) -> ScenarioKind {
        match self {
            Scenario::ProduceOne => ScenarioKind::ProduceOne,
            Scenario::ProduceBatch => ScenarioKind::ProduceBatch,
            Scenario::ConsumeAck => ScenarioKind::ConsumeAck,
            Scenario::EndToEnd => ScenarioKind::EndToEnd,
            Scenario::EndToEndPaced(_) => ScenarioKind::EndToEndPaced,
            Scenario::ProduceConcurrent(_) => ScenarioKind::ProduceConcurrent,
        }
    }
}

/// Message counts of one run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Messages per scenario where no message waits for an fsync of its own.
    pub messages: u64,
    /// Messages per scenario in flushed mode where one producer or consumer waits for an fsync
    /// per message (one per call, consume, end to end), because these take milliseconds each.
    pub flushed_messages: u64,
    /// Messages per concurrent-producer scenario, split evenly among the producers.
    pub concurrent_messages: u64,
    /// Numbers of concurrent producers to run.
    pub producers: Vec<usize>,
    /// Offered load of the paced end-to-end scenario in buffered mode, in messages per second.
    pub buffered_rate: u64,
    /// Offered load of the paced end-to-end scenario in flushed mode, in messages per second.
    pub flushed_rate: u64,
    /// Duration of the paced end-to-end scenario, warm-up included.
    pub paced_duration: Duration,
}

impl Workload {
    /// Returns the scenarios of `mode` in the order they run.
    pub fn scenarios(&self, mode: Mode) -> Vec<Scenario> {
        let rate = match mode {
            Mode::Buffered => self.buffered_rate,
            Mode::Flushed => self.flushed_rate,
        };
        let mut scenarios = vec![
            Scenario::ProduceOne,
            Scenario::ProduceBatch,
            Scenario::ConsumeAck,
            Scenario::EndToEnd,
            Scenario::EndToEndPaced(rate),
        ];
        scenarios.extend(
            self.producers
                .iter()
                .map(|&p| Scenario::ProduceConcurrent(p)),
        );
        scenarios
    }

    /// Returns how many messages `scenario` moves in `mode`. Concurrent scenarios round down to
    /// a multiple of the producer count; batched ones to a multiple of [`BATCH`].
    pub fn count(&self, scenario: Scenario, mode: Mode) -> u64 {
        let batch = BATCH as u64;
        match (scenario, mode) {
            (Scenario::ProduceBatch, _) => (self.messages / batch).max(1) * batch,
            (Scenario::EndToEndPaced(rate), _) => {
                (rate as f64 * self.paced_duration.as_secs_f64()).max(1.0) as u64
            }
            (Scenario::ProduceConcurrent(producers), _) => {
                let producers = producers as u64;
                (self.concurrent_messages / producers).max(1) * producers
            }
            (_, Mode::Buffered) => self.messages,
            (_, Mode::Flushed) => self.flushed_messages,
        }
    }
}

/// The result of one scenario on one system.
pub struct Measurement {
    /// Messages moved.
    pub messages: u64,
    /// Time from the start of the first operation to the end of the last.
    pub elapsed: Duration,
    /// Latencies in nanoseconds, for scenarios that record them.
    pub latency: Option<Histogram<u64>>,
    /// Remarks printed with the row, such as messages per fsync.
    pub note: String,
}

impl Measurement {
    /// Creates a measurement without a note.
    pub fn new(messages: u64, elapsed: Duration, latency: Option<Histogram<u64>>) -> Measurement {
        Measurement {
            messages,
            elapsed,
            latency,
            note: String::new(),
        }
    }

    /// Returns messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Returns an empty latency histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGNIFICANT_DIGITS)
        .expect("1 ns to 60 s with 3 digits are valid histogram bounds")
}

/// Waits for producer threads and merges the latency histograms they return.
pub fn join_threads(
    handles: Vec<std::thread::JoinHandle<crate::Result<Histogram<u64>>>>,
) -> crate::Result<Histogram<u64>> {
    let mut merged = histogram();
    for handle in handles {
        let latency = handle.join().map_err(|_| "a producer thread panicked")??;
        merged.add(&latency).context("merging latency histograms")?;
    }
    Ok(merged)
}

/// Waits for producer tasks and merges the latency histograms they return.
pub async fn join_tasks(
    tasks: Vec<tokio::task::JoinHandle<crate::Result<Histogram<u64>>>>,
) -> crate::Result<Histogram<u64>> {
    let mut merged = histogram();
    for task in tasks {
        let latency = task.await.context("joining a producer task")??;
        merged.add(&latency).context("merging latency histograms")?;
    }
    Ok(merged)
}

/// Records the time since `start` in `histogram`.
pub fn record_since(histogram: &mut Histogram<u64>, start: Instant) {
    record_nanos(histogram, start.elapsed().as_nanos() as u64);
}

/// Records `nanos` in `histogram`, clamped to its bounds.
pub fn record_nanos(histogram: &mut Histogram<u64>, nanos: u64) {
    histogram.saturating_record(nanos.max(1));
}

/// Returns the process-wide instant that payload timestamps count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Returns nanoseconds from the process-wide epoch to `instant`, or 0 for an earlier instant.
pub fn nanos_at(instant: Instant) -> u64 {
    instant.saturating_duration_since(epoch()).as_nanos() as u64
}

/// Returns nanoseconds since the process-wide epoch.
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// Builds a [`PAYLOAD_BYTES`]-byte payload: `timestamp_ns` and `index` as little-endian
/// `u64`s, then a fixed pattern.
pub fn payload(timestamp_ns: u64, index: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    bytes[..8].copy_from_slice(&timestamp_ns.to_le_bytes());
    bytes[8..16].copy_from_slice(&index.to_le_bytes());
    bytes
}

/// The timestamp and index that [`payload`] wrote into a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the process-wide epoch.
    pub sent_ns: u64,
    /// Position of the message in its scenario, from 0.
    pub index: u64,
}

/// Reads the [`Stamp`] of a received payload.
pub fn stamp(payload: &[u8]) -> crate::Result<Stamp> {
    let field = |range: std::ops::Range<usize>| -> Option<u64> {
        let bytes: [u8; 8] = payload.get(range)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    };
    match (field(0..8), field(8..16)) {
        (Some(sent_ns), Some(index)) => Ok(Stamp { sent_ns, index }),
        _ => Err(format!(
            "received a {}-byte payload, expected {PAYLOAD_BYTES}",
            payload.len()
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_stamp() {
        let bytes = payload(0x0102_0304_0506_0708, 42);
        assert_eq!(bytes.len(), PAYLOAD_BYTES);
        let read = stamp(&bytes).expect("a full payload has a stamp");
        assert_eq!(read.sent_ns, 0x0102_0304_0506_0708);
        assert_eq!(read.index, 42);
    }

    #[test]
    fn short_payload_has_no_stamp() {
        assert!(stamp(&[1, 2, 3]).is_err());
    }

    #[test]
    fn counts_round_to_batches_and_producers() {
        let workload = Workload {
            messages: 1_050,
            flushed_messages: 70,
            concurrent_messages: 1_000,
            producers: vec![64],
            buffered_rate: 1_000,
            flushed_rate: 100,
            paced_duration: Duration::from_secs(3),
        };
        assert_eq!(
            workload.count(Scenario::EndToEndPaced(100), Mode::Flushed),
            300
        );
        assert_eq!(workload.count(Scenario::ProduceBatch, Mode::Flushed), 1_000);
        assert_eq!(
            workload.count(Scenario::ProduceConcurrent(64), Mode::Buffered),
            960
        );
        assert_eq!(workload.count(Scenario::ProduceOne, Mode::Buffered), 1_050);
        assert_eq!(workload.count(Scenario::ConsumeAck, Mode::Flushed), 70);
    }
}
