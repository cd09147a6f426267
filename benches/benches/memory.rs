//! Peak memory with a slow consumer group: a fast producer, a fast group and a slow group on one
//! topic, against an unbounded crossbeam channel that holds the same backlog.
//!
//! Run with `cargo bench -p aqueduct-benches --bench memory`. Each scenario runs in its own
//! child process, so the peak resident set (`VmHWM` in `/proc/self/status`, Linux only) belongs
//! to that scenario alone. The broker keeps unconsumed messages in sled, so its peak should stay
//! near sled's page cache (`BrokerConfig::cache_bytes`) plus the groups' windows, however far
//! the slow group falls behind; the channel keeps every unconsumed message in memory.

use std::process::Command;
use std::time::{Duration, Instant};

use aqueduct::{Broker, BrokerConfig, ConsumerConfig, Message, TopicConfig};

/// Messages the producer publishes, unless `AQUEDUCT_MEMORY_MESSAGES` sets another count.
const DEFAULT_MESSAGES: usize = 200_000;

fn messages() -> usize {
    std::env::var("AQUEDUCT_MEMORY_MESSAGES")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES)
}

/// Payload size in bytes; with the default count the backlog reaches about 200 MB.
const PAYLOAD_BYTES: usize = 1024;

/// sled's page cache for the broker scenario.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Pause of the slow group per message, so that it falls far behind the producer.
const SLOW_PAUSE: Duration = Duration::from_micros(200);

/// Messages the slow group handles, enough to prove it makes progress.
const SLOW_MESSAGES: usize = 2_000;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--scenario=broker") => report("broker", run_broker()),
        Some("--scenario=channel") => report("channel", run_channel()),
        // `cargo bench` passes `--bench`; any other first argument runs both scenarios.
        _ => {
            for scenario in ["broker", "channel"] {
                let exe = std::env::current_exe().expect("benchmark executable path");
                let status = Command::new(exe)
                    .arg(format!("--scenario={scenario}"))
                    .status()
                    .expect("start scenario process");
                assert!(status.success(), "scenario {scenario} failed: {status}");
            }
        }
    }
}

/// Prints one result line: scenario, backlog at its peak, peak resident set, time.
fn report(scenario: &str, (backlog, elapsed): (u64, Duration)) {
    let peak_kib = peak_rss_kib();
    println!(
        "memory/{scenario}: {} messages of {PAYLOAD_BYTES} B, peak backlog {backlog} \
         messages ({:.0} MiB of payload), peak RSS {:.1} MiB, {:.1} s",
        messages(),
        (backlog as f64 * PAYLOAD_BYTES as f64) / (1024.0 * 1024.0),
        peak_kib as f64 / 1024.0,
        elapsed.as_secs_f64()
    );
}

fn run_broker() -> (u64, Duration) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = BrokerConfig::default().cache_bytes(CACHE_BYTES);
    let broker = Broker::open_with(dir.path(), config).expect("open broker");
    broker
        .create_topic("jobs", TopicConfig::default().partitions(4))
        .expect("create topic");
    let mut fast = broker.subscribe("jobs", "fast").expect("fast group");
    let slow_config = ConsumerConfig::default().prefetch(16);
    let mut slow = broker
        .subscribe_with("jobs", "slow", slow_config)
        .expect("slow group");
    let started = Instant::now();

    let producer = {
        let broker = broker.clone();
        std::thread::spawn(move || {
            let payload = vec![7u8; PAYLOAD_BYTES];
            for _ in 0..messages() {
                broker
                    .publish("jobs", Message::new(payload.clone()))
                    .expect("publish");
            }
        })
    };
    let fast_consumer = std::thread::spawn(move || {
        for _ in 0..messages() {
            let delivery = fast.recv_timeout(Duration::from_secs(60)).expect("recv");
            delivery.expect("fast delivery").ack().expect("ack");
        }
    });
    let mut peak_backlog = 0;
    for _ in 0..SLOW_MESSAGES {
        let delivery = slow.recv_timeout(Duration::from_secs(60)).expect("recv");
        std::thread::sleep(SLOW_PAUSE);
        delivery.expect("slow delivery").ack().expect("ack");
    }
    producer.join().expect("producer thread");
    fast_consumer.join().expect("fast consumer thread");
    let stats = broker.stats().expect("stats");
    if let Some(topic) = stats.topic("jobs") {
        peak_backlog = peak_backlog.max(topic.backlog_messages);
    }
    (peak_backlog, started.elapsed())
}

fn run_channel() -> (u64, Duration) {
    let (sender, receiver) = crossbeam_channel::unbounded::<Vec<u8>>();
    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        let payload = vec![7u8; PAYLOAD_BYTES];
        for _ in 0..messages() {
            sender.send(payload.clone()).expect("send");
        }
    });
    for _ in 0..SLOW_MESSAGES {
        receiver.recv().expect("recv");
        std::thread::sleep(SLOW_PAUSE);
    }
    producer.join().expect("producer thread");
    let backlog = receiver.len() as u64;
    (backlog, started.elapsed())
}

/// Returns the process's peak resident set in KiB, or 0 where `/proc` is missing.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
