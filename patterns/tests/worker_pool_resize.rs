//! Resizing a pool while it works: every message is handled exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Message, TopicConfig};
use aqueduct_patterns::{WorkerConfig, WorkerError, WorkerPool};
use parking_lot::Mutex;

const MESSAGES: u64 = 1_500;

#[test]
fn resize_during_work_handles_each_message_once() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("uploads", TopicConfig::default().partitions(4))
        .expect("topic");
    let messages = (0..MESSAGES).map(|n| Message::new(n.to_be_bytes().to_vec()));
    broker.publish_batch("uploads", messages).expect("publish");

    let handled: Arc<Mutex<HashMap<Vec<u8>, u32>>> = Arc::default();
    let seen = Arc::clone(&handled);
    let config = WorkerConfig::default().workers(2).prefetch(2);
    let pool = WorkerPool::start(&broker, "uploads", "resizers", config, move |d, _| {
        std::thread::sleep(Duration::from_micros(500));
        *seen.lock().entry(d.payload().to_vec()).or_default() += 1;
        Ok(())
    })
    .expect("start");

    for size in [12, 1, 8, 3] {
        std::thread::sleep(Duration::from_millis(60));
        pool.resize(size).expect("resize");
        assert_eq!(pool.size(), size, "pool size after resize");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().acked < MESSAGES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = pool.shutdown(Duration::from_secs(5));
    assert_eq!(report.still_running, 0, "workers left running");

    let handled = handled.lock();
    assert_eq!(handled.len() as u64, MESSAGES, "distinct messages handled");
    let twice: Vec<_> = handled.iter().filter(|(_, &count)| count > 1).collect();
    assert!(twice.is_empty(), "messages handled twice: {twice:?}");
}

#[test]
fn resize_above_limit_rejected() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("uploads", TopicConfig::default())
        .expect("topic");
    let config = WorkerConfig::default().workers(1);
    let pool =
        WorkerPool::start(&broker, "uploads", "resizers", config, |_, _| Ok(())).expect("start");

    let result = pool.resize(5_000);
    assert!(
        matches!(result, Err(WorkerError::InvalidConfig { .. })),
        "{result:?}"
    );
    assert_eq!(pool.size(), 1, "size after a rejected resize");
}

#[test]
fn start_on_missing_topic_fails() {
    let broker = Broker::temporary().expect("broker");
    let result = WorkerPool::start(&broker, "nope", "g", WorkerConfig::default(), |_, _| Ok(()));
    assert!(
        matches!(result, Err(WorkerError::Subscribe { .. })),
        "{result:?}"
    );
}
