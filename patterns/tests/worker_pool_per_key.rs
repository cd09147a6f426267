//! A per-key pool handles each key in order, also when messages fail and are retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Message, OrderingMode, TopicConfig};
use aqueduct_patterns::{Backoff, HandlerError, WorkerConfig, WorkerPool};
use parking_lot::Mutex;

const KEYS: u64 = 8;
const PER_KEY: u64 = 40;

#[test]
fn per_key_order_kept_through_retries() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("accounts", TopicConfig::default().partitions(2))
        .expect("topic");
    let messages = (0..PER_KEY).flat_map(|n| {
        (0..KEYS).map(move |k| Message::new(n.to_be_bytes().to_vec()).key(format!("key-{k}")))
    });
    broker.publish_batch("accounts", messages).expect("publish");

    let handled: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u64>>>> = Arc::default();
    let seen = Arc::clone(&handled);
    let config = WorkerConfig::default()
        .workers(4)
        .ordering(OrderingMode::PerKey)
        .retry(Backoff::new(
            Duration::from_millis(2),
            Duration::from_millis(10),
        ));
    let pool = WorkerPool::start(&broker, "accounts", "ledger", config, move |d, _| {
        let n = u64::from_be_bytes(d.payload().try_into().expect("8 bytes"));
        if n % 7 == 3 && d.attempt() == 1 {
            return Err(HandlerError::retry("first attempt fails"));
        }
        let key = d.key().expect("key").to_vec();
        seen.lock().entry(key).or_default().push(n);
        Ok(())
    })
    .expect("start");

    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().acked < KEYS * PER_KEY && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pool.stats().retried > 0, "some messages were retried");
    pool.shutdown(Duration::from_secs(5));

    let handled = handled.lock();
    let expected: Vec<u64> = (0..PER_KEY).collect();
    assert_eq!(handled.len() as u64, KEYS, "keys handled");
    for (key, order) in handled.iter() {
        assert_eq!(
            order,
            &expected,
            "order of {}",
            String::from_utf8_lossy(key)
        );
    }
}
