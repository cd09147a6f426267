//! The tokio worker pool: handling, resizing, and shutdown that cancels a stuck handler.

use std::time::Duration;

use aqueduct::{Broker, Message, TopicConfig};
use aqueduct_patterns::{AsyncWorkerPool, WorkerConfig, WorkerError};

fn broker_with_jobs(count: u64) -> Broker {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("jobs", TopicConfig::default().partitions(2))
        .expect("topic");
    let messages = (0..count).map(|n| Message::new(format!("job {n}")));
    broker.publish_batch("jobs", messages).expect("publish");
    broker
}

async fn wait_for_acks(pool: &AsyncWorkerPool, acked: u64) {
    let waiting = async {
        while pool.stats().acked < acked {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("acks arrive in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pool_handles_and_resizes() {
    let broker = broker_with_jobs(300);
    let config = WorkerConfig::default().workers(2);
    let pool = AsyncWorkerPool::start(&broker, "jobs", "workers", config, |_, _| async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    })
    .expect("start");

    pool.resize(6).expect("grow");
    assert_eq!(pool.size(), 6, "size after growing");
    wait_for_acks(&pool, 150).await;
    pool.resize(1).expect("shrink");
    assert_eq!(pool.size(), 1, "size after shrinking");
    wait_for_acks(&pool, 300).await;

    let report = pool.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.stopped, 6, "tasks stopped, retired ones included");
    assert_eq!(report.cancelled, 0, "tasks cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_stuck_handler_and_returns_message() {
    let broker = broker_with_jobs(1);
    let config = WorkerConfig::default().workers(1);
    let pool = AsyncWorkerPool::start(&broker, "jobs", "workers", config, |_, _| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    })
    .expect("start");
    while pool.stats().in_flight == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let report = pool.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.cancelled, 1, "tasks cancelled");

    let mut consumer = broker.subscribe("jobs", "workers").expect("subscribe");
    let again = tokio::time::timeout(Duration::from_secs(2), consumer.recv_async())
        .await
        .expect("the message comes back at once")
        .expect("receive");
    assert_eq!(again.attempt(), 2, "attempt of the returned message");
}

#[test]
fn start_outside_runtime_fails() {
    let broker = broker_with_jobs(0);
    let result = AsyncWorkerPool::start(
        &broker,
        "jobs",
        "workers",
        WorkerConfig::default(),
        |_, _| async { Ok(()) },
    );
    assert!(
        matches!(result, Err(WorkerError::NoRuntime)),
        "{:?}",
        result.err()
    );
}
