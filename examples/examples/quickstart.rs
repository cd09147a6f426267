//! A first program: open a broker, create topics, publish, consume with a group, ack, and watch a
//! poison message reach the dead-letter topic.
//!
//! Run with `cargo run --release --example quickstart [DATABASE_DIR]`. The database defaults to
//! `target/quickstart-db`; running again reuses it, and the offsets continue where they stopped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aqueduct::{Broker, ConsumerConfig, Message, OrderingMode, TopicConfig};

const ORDERS: u32 = 10_000;
const CUSTOMERS: u32 = 50;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .init();
    let path = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/quickstart-db"), PathBuf::from);
    let broker = Broker::open(&path)?;
    println!("opened broker database at {}", path.display());

    broker.create_topic("orders.dead", TopicConfig::default())?;
    let orders = TopicConfig::default()
        .partitions(4)
        .ack_timeout(Duration::from_secs(5))
        .max_deliveries(3)
        .dead_letter_topic("orders.dead");
    broker.create_topic("orders", orders)?;

    let started = Instant::now();
    let mut messages = Vec::new();
    for number in 0..ORDERS {
        let customer = format!("customer-{}", number % CUSTOMERS);
        // Order 777 stands for a message that no handler can process.
        let payload = if number == 777 {
            "poison".to_string()
        } else {
            format!("order {number}")
        };
        messages.push(
            Message::new(payload)
                .key(customer)
                .id(format!("order-{number}")),
        );
    }
    let receipts = broker.publish_batch("orders", messages)?;
    let publish_time = started.elapsed();
    println!("published {} orders in {publish_time:.2?}", receipts.len());

    let handled = consume(&broker)?;
    println!(
        "handled {handled} orders in {:.2?} (two workers, per-key order)",
        started.elapsed()
    );

    let mut dead = broker.subscribe("orders.dead", "operators")?;
    while let Some(letter) = dead.recv_timeout(Duration::from_millis(200))? {
        if let Some(info) = letter.dead_letter_info() {
            println!(
                "dead letter: {:?} from {} partition {} offset {} after {} attempts: {}",
                String::from_utf8_lossy(letter.payload()),
                info.source_topic,
                info.source_partition,
                info.source_offset,
                info.attempts,
                info.last_error
            );
        }
        letter.ack()?;
    }

    // The dead letter parked its customer's key, so that customer's later orders wait rather
    // than overtake it. Releasing the key lets them through.
    for parked in broker.parked_keys("orders", "fulfilment")? {
        println!(
            "key {} parked at partition {} offset {}: {}",
            String::from_utf8_lossy(&parked.key),
            parked.partition,
            parked.offset,
            parked.reason
        );
        broker.release_key("orders", "fulfilment", &parked.key)?;
    }
    let released = consume(&broker)?;
    println!("handled {released} more orders after releasing the parked keys");
    broker.flush()?;
    println!("fsyncs so far: {}", broker.fsync_count());
    Ok(())
}

/// Runs two workers in one per-key group until no delivery arrives for half a second; returns
/// how many orders were acked.
fn consume(broker: &Broker) -> Result<u64, Box<dyn std::error::Error>> {
    let config = ConsumerConfig::default().ordering(OrderingMode::PerKey);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut consumer = broker.subscribe_with("orders", "fulfilment", config.clone())?;
            Ok(std::thread::spawn(
                move || -> Result<u64, aqueduct::Error> {
                    let mut acked = 0;
                    while let Some(delivery) = consumer.recv_timeout(Duration::from_millis(500))? {
                        if delivery.payload() == b"poison" {
                            delivery.nack()?;
                        } else {
                            delivery.ack()?;
                            acked += 1;
                        }
                    }
                    Ok(acked)
                },
            ))
        })
        .collect::<Result<_, aqueduct::Error>>()?;
    let mut total = 0;
    for worker in workers {
        total += worker.join().map_err(|_| "a worker thread panicked")??;
    }
    Ok(total)
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
}
