//! An order service and an email service joined by a transactional outbox.
//!
//! The order service stores each order and its `order.created` event in one sled transaction.
//! An outbox relay publishes the events to the `order.created` topic over a link that goes down
//! for a second in the middle of the run. A pool of email workers sends one confirmation per
//! order. The inbox records each sent email in the same transaction as its mark, so a
//! redelivered event sends nothing twice. At the end the example checks that every order got
//! exactly one email and shows how the outage turned into latency.
//!
//! Run with `cargo run --release --example order_emails`. The database lives in a temporary
//! directory that is removed at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aqueduct::{Broker, Message, OrderingMode, TopicConfig};
use aqueduct_patterns::{
    Backoff, BrokerTarget, HandlerError, Inbox, InboxError, Outbox, OutboxError, OutboxRelay,
    OutboxTarget, RelayConfig, TargetError, WorkerConfig, WorkerPool,
};
use serde::{Deserialize, Serialize};

const ORDERS: u64 = 3_000;
const ORDER_THREADS: u64 = 4;
/// Pause between two orders of one order thread, so that placing takes about three seconds.
const ORDER_INTERVAL: Duration = Duration::from_millis(4);
const OUTAGE_START: Duration = Duration::from_millis(1_000);
const OUTAGE_END: Duration = Duration::from_millis(2_000);
const EMAIL_WORKERS: usize = 4;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Events the email workers received again after sending, and skipped through the inbox.
static SKIPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
    customer: String,
    total_cents: u64,
    created_at_ms: u64,
}

/// The link from the outbox to the broker, which the example takes down for a while.
struct Link {
    broker: BrokerTarget,
    down: Arc<AtomicBool>,
}

impl OutboxTarget for Link {
    fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TargetError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TargetError::unavailable(
                topic,
                "link to the broker is down",
            ));
        }
        self.broker.publish(topic, messages)
    }

    fn flush(&self) -> Result<(), BoxError> {
        self.broker.flush()
    }
}

/// The outbox's backlog as sampled during the run.
#[derive(Default)]
struct Backlog {
    peak_pending: AtomicU64,
    peak_age_ms: AtomicU64,
}

fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .init();
    let dir = tempfile::tempdir()?;
    let broker = Broker::open(dir.path())?;
    broker.create_topic("order.created.dead", TopicConfig::default())?;
    let topic = TopicConfig::default()
        .partitions(4)
        .max_deliveries(5)
        .dead_letter_topic("order.created.dead");
    broker.create_topic("order.created", topic)?;

    let orders = broker.tree("orders")?;
    let emails = broker.tree("emails")?;
    let outbox = Outbox::open(&broker, "orders")?;
    let down = Arc::new(AtomicBool::new(false));
    let link = Link {
        broker: BrokerTarget::new(broker.clone()),
        down: Arc::clone(&down),
    };
    let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    let relay = OutboxRelay::with_target(&outbox, link)
        .with_config(RelayConfig::default().backoff(backoff))
        .start()?;
    let pool = start_email_workers(&broker, &emails)?;

    let started = Instant::now();
    println!("placing {ORDERS} orders from {ORDER_THREADS} threads");
    let backlog = Arc::new(Backlog::default());
    let placing = place_orders(&outbox, &orders);
    let monitor = watch_backlog(&outbox, &backlog, started);
    run_outage(&down, started);
    for thread in placing {
        thread.join().map_err(|_| "an order thread panicked")??;
    }
    println!("placed {ORDERS} orders in {:.2?}", started.elapsed());

    let drained = wait_for_emails(&emails, Duration::from_secs(60));
    let relay_stats = relay.stats();
    relay.stop();
    let pool_stats = pool.stats();
    pool.shutdown(Duration::from_secs(5));
    monitor.join().map_err(|_| "the monitor thread panicked")?;
    println!("all emails sent after {:.2?}", started.elapsed());

    println!();
    println!(
        "outage: the link was down from {:.1} s to {:.1} s; the relay retried {} times",
        OUTAGE_START.as_secs_f64(),
        OUTAGE_END.as_secs_f64(),
        relay_stats.retries
    );
    println!(
        "backlog: at most {} events waited in the outbox, the oldest for {} ms",
        backlog.peak_pending.load(Ordering::Relaxed),
        backlog.peak_age_ms.load(Ordering::Relaxed)
    );
    print_latencies(&emails)?;
    let check = check_emails(&orders, &emails)?;
    println!(
        "emails: {} orders, {} emails, {} orders without an email, {} with more than one; \
         {} redeliveries skipped by the inbox",
        check.orders, check.emails, check.missing, check.duplicated, check.skipped
    );
    println!(
        "workers: {} emails acked, {} retries, {} dead letters",
        pool_stats.acked, pool_stats.retried, pool_stats.dead_lettered
    );
    if !drained || check.missing > 0 || check.duplicated > 0 {
        return Err("some orders did not get exactly one email".into());
    }
    println!("the outage became latency, not loss: every order got exactly one email");
    Ok(())
}

/// Starts order threads that each store orders and enqueue their events in one transaction.
fn place_orders(
    outbox: &Outbox,
    orders: &sled::Tree,
) -> Vec<std::thread::JoinHandle<Result<(), BoxError>>> {
    (0..ORDER_THREADS)
        .map(|thread| {
            let outbox = outbox.clone();
            let orders = orders.clone();
            std::thread::spawn(move || {
                for n in 0..ORDERS / ORDER_THREADS {
                    let order_id = n * ORDER_THREADS + thread;
                    place_order(&outbox, &orders, order_id)?;
                    std::thread::sleep(ORDER_INTERVAL);
                }
                Ok(())
            })
        })
        .collect()
}

fn place_order(outbox: &Outbox, orders: &sled::Tree, order_id: u64) -> Result<(), BoxError> {
    let event = OrderCreated {
        order_id,
        customer: format!("customer-{}", order_id % 97),
        total_cents: 1_000 + order_id % 5_000,
        created_at_ms: now_ms(),
    };
    let record = postcard::to_stdvec(&event)?;
    outbox.transaction(std::slice::from_ref(orders), |tx| {
        tx.tree(0)
            .insert(&order_id.to_be_bytes()[..], record.clone())?;
        tx.enqueue::<_, OutboxError>("order.created", &event.customer, &event)?;
        Ok(())
    })?;
    Ok(())
}

/// Takes the link down from `OUTAGE_START` to `OUTAGE_END` after `started`.
fn run_outage(down: &AtomicBool, started: Instant) {
    std::thread::sleep(OUTAGE_START.saturating_sub(started.elapsed()));
    down.store(true, Ordering::SeqCst);
    println!(
        "{:>5.2} s  link to the broker down",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(OUTAGE_END.saturating_sub(started.elapsed()));
    down.store(false, Ordering::SeqCst);
    println!(
        "{:>5.2} s  link to the broker up again",
        started.elapsed().as_secs_f64()
    );
}

/// Samples the outbox every 50 ms until it has been empty after the outage.
fn watch_backlog(
    outbox: &Outbox,
    backlog: &Arc<Backlog>,
    started: Instant,
) -> std::thread::JoinHandle<()> {
    let outbox = outbox.clone();
    let backlog = Arc::clone(backlog);
    std::thread::spawn(move || loop {
        let Ok(stats) = outbox.stats() else { return };
        let age_ms = stats
            .oldest_pending_age
            .map_or(0, |age| age.as_millis() as u64);
        backlog
            .peak_pending
            .fetch_max(stats.pending, Ordering::Relaxed);
        backlog.peak_age_ms.fetch_max(age_ms, Ordering::Relaxed);
        let after_outage = started.elapsed() > OUTAGE_END + Duration::from_secs(2);
        if after_outage && stats.pending == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    })
}

/// Starts email workers in a per-key group, so each customer's emails go out in order.
fn start_email_workers(broker: &Broker, emails: &sled::Tree) -> Result<WorkerPool, BoxError> {
    let inbox = Inbox::open(broker, "email-sender")?;
    let emails = emails.clone();
    let config = WorkerConfig::default()
        .workers(EMAIL_WORKERS)
        .ordering(OrderingMode::PerKey);
    let pool = WorkerPool::start(
        broker,
        "order.created",
        "email",
        config,
        move |delivery, _| {
            let order: OrderCreated = delivery.decode().map_err(HandlerError::permanent)?;
            // Sending means writing the email to the mail queue (the `emails` tree) in the same
            // transaction as the inbox mark, so a redelivery cannot send it again.
            let sent = inbox.process::<_, InboxError, _>(
                delivery,
                std::slice::from_ref(&emails),
                |trees| {
                    let key = order.order_id.to_be_bytes();
                    let count = trees[0].get(key)?.map_or(0, |sent| decode_email(&sent).0);
                    trees[0].insert(
                        &key[..],
                        encode_email(count + 1, order.created_at_ms, now_ms()),
                    )?;
                    Ok(())
                },
            )?;
            if sent.is_duplicate() {
                SKIPPED.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        },
    )?;
    Ok(pool)
}

/// Encodes an email record: how many times it was sent, when its order was created and when
/// it was sent, as three big-endian u64 values.
fn encode_email(count: u64, created_at_ms: u64, sent_at_ms: u64) -> Vec<u8> {
    [count, created_at_ms, sent_at_ms]
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect()
}

fn decode_email(bytes: &[u8]) -> (u64, u64, u64) {
    let field = |i: usize| {
        bytes
            .get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    (field(0), field(1), field(2))
}

fn wait_for_emails(emails: &sled::Tree, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if emails.len() as u64 >= ORDERS {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

struct EmailCheck {
    orders: usize,
    emails: usize,
    missing: usize,
    duplicated: usize,
    skipped: u64,
}

/// Compares the orders with the sent emails.
fn check_emails(orders: &sled::Tree, emails: &sled::Tree) -> Result<EmailCheck, sled::Error> {
    let mut check = EmailCheck {
        orders: orders.len(),
        emails: emails.len(),
        missing: 0,
        duplicated: 0,
        skipped: 0,
    };
    for item in orders.iter() {
        let (order_id, _) = item?;
        match emails.get(&order_id)? {
            None => check.missing += 1,
            Some(email) if decode_email(&email).0 > 1 => check.duplicated += 1,
            Some(_) => {}
        }
    }
    check.skipped = SKIPPED.load(Ordering::Relaxed);
    Ok(check)
}

/// Prints email latency percentiles for orders placed before, during and after the outage.
fn print_latencies(emails: &sled::Tree) -> Result<(), sled::Error> {
    let mut phases: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut first_created = u64::MAX;
    let mut records = Vec::new();
    for item in emails.iter() {
        let (_, value) = item?;
        let (_, created, sent) = decode_email(&value);
        first_created = first_created.min(created);
        records.push((created, sent));
    }
    for (created, sent) in records {
        let at = Duration::from_millis(created.saturating_sub(first_created));
        let phase = if at < OUTAGE_START {
            "1 before the outage"
        } else if at < OUTAGE_END {
            "2 during the outage"
        } else {
            "3 after the outage "
        };
        phases
            .entry(phase)
            .or_default()
            .push(sent.saturating_sub(created));
    }
    println!("order-to-email latency by when the order was placed:");
    for (phase, mut latencies) in phases {
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "  {:<20} {:>5} orders   p50 {:>5} ms   p99 {:>5} ms   max {:>5} ms",
            &phase[2..],
            latencies.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    Ok(())
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since_epoch.as_millis() as u64
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
}
