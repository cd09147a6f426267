//! The thread-based worker pool: one thread and one consumer per worker.
//!
//! A stopped worker leaves its loop after the current message. At the shutdown deadline, a
//! thread still in its handler is left running, because threads cannot be cancelled.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Consumer, Delivery};
use parking_lot::Mutex;

use super::config::{check_workers, PoolStats, ShutdownReport, WorkerConfig, WorkerContext};
use super::error::{HandlerError, WorkerError};
use super::settle::Shared;

/// How often `shutdown` checks whether the workers have ended.
const JOIN_POLL: Duration = Duration::from_millis(5);

type Handler = dyn Fn(&Delivery, &WorkerContext) -> Result<(), HandlerError> + Send + Sync;

/// Competing consumers on threads: N workers, each with its own consumer in one group.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Broker, Message, TopicConfig};
/// use aqueduct_patterns::{WorkerConfig, WorkerPool};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("jobs", TopicConfig::default())?;
/// for n in 0..10 {
///     broker.publish("jobs", Message::new(format!("job {n}")))?;
/// }
///
/// let pool = WorkerPool::start(&broker, "jobs", "workers", WorkerConfig::default(), |delivery, _| {
///     println!("{}", String::from_utf8_lossy(delivery.payload()));
///     Ok(())
/// })?;
/// while pool.stats().acked < 10 {
///     std::thread::sleep(Duration::from_millis(10));
/// }
/// pool.resize(1)?;
/// let report = pool.shutdown(Duration::from_secs(5));
/// assert_eq!(report.still_running, 0);
/// # Ok(())
/// # }
/// ```
pub struct WorkerPool {
    shared: Arc<Shared>,
    handler: Arc<Handler>,
    next_worker: AtomicUsize,
    /// Workers in start order; shrinking stops the newest.
    active: Mutex<Vec<Worker>>,
    /// Workers asked to stop that may still be finishing a message.
    retiring: Mutex<Vec<Worker>>,
}

struct Worker {
    context: WorkerContext,
    thread: JoinHandle<()>,
}

impl WorkerPool {
    /// Starts `config.workers` workers in group `group` on `topic`, each calling `handler`
    /// for one delivery at a time.
    ///
    /// The handler's result settles the delivery: `Ok` acks it, a retryable
    /// [`HandlerError`] (or a panic) returns it for redelivery after the configured backoff
    /// for its attempt, and a permanent one dead-letters it. A failure on the topic's last
    /// allowed delivery (`max_deliveries`) dead-letters the message with the handler's error.
    ///
    /// # Examples
    ///
    /// See [`WorkerPool`].
    ///
    /// # Errors
    ///
    /// [`WorkerError::InvalidConfig`], [`WorkerError::Subscribe`] (topic missing, ordering
    /// differs from the group's) and [`WorkerError::Spawn`].
    pub fn start<F>(
        broker: &Broker,
        topic: &str,
        group: &str,
        config: WorkerConfig,
        handler: F,
    ) -> Result<Self, WorkerError>
    where
        F: Fn(&Delivery, &WorkerContext) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        let workers = config.workers;
        let pool = WorkerPool {
            shared: Arc::new(Shared::new(broker, topic, group, config)?),
            handler: Arc::new(handler),
            next_worker: AtomicUsize::new(0),
            active: Mutex::new(Vec::new()),
            retiring: Mutex::new(Vec::new()),
        };
        pool.resize(workers)?;
        tracing::info!(topic, group, workers, "worker pool started");
        Ok(pool)
    }

    /// Changes the number of workers. New workers join the group at once. Removed workers (the
    /// newest) stop after their current message and return the deliveries they fetched ahead
    /// to the group; `resize` does not wait for them.
    ///
    /// # Examples
    ///
    /// See [`WorkerPool`].
    ///
    /// # Errors
    ///
    /// [`WorkerError::InvalidConfig`] above 1024 workers, [`WorkerError::Subscribe`] and
    /// [`WorkerError::Spawn`] when a new worker cannot start (the workers started before it
    /// keep running).
    pub fn resize(&self, workers: usize) -> Result<(), WorkerError> {
        check_workers(workers)?;
        let mut active = self.active.lock();
        let before = active.len();
        while active.len() < workers {
            active.push(self.spawn()?);
        }
        let mut retiring = self.retiring.lock();
        retiring.retain(|worker| !worker.thread.is_finished());
        while active.len() > workers {
            if let Some(worker) = active.pop() {
                worker.context.request_stop();
                retiring.push(worker);
            }
        }
        if before != workers {
            tracing::info!(
                topic = %self.shared.topic,
                group = %self.shared.group,
                from = before,
                to = workers,
                "worker pool resized"
            );
        }
        Ok(())
    }

    /// Returns the number of workers the pool is sized to.
    pub fn size(&self) -> usize {
        self.active.lock().len()
    }

    /// Returns the pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats(self.size())
    }

    /// Stops every worker and waits up to `deadline` for them to end.
    ///
    /// Workers stop taking messages at once, finish the message in hand, and return the
    /// deliveries they fetched ahead to the group. A handler that checks
    /// [`WorkerContext::stop_requested`] can give its message back early by returning a
    /// retryable error; it is returned to the group without backoff. Workers still in a
    /// handler at the deadline are left running and counted in
    /// [`ShutdownReport::still_running`].
    ///
    /// # Examples
    ///
    /// See [`WorkerPool`].
    pub fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let end = Instant::now() + deadline;
        let mut workers: Vec<Worker> = self.active.lock().drain(..).collect();
        workers.append(&mut self.retiring.lock());
        for worker in &workers {
            worker.context.request_stop();
        }
        while Instant::now() < end && workers.iter().any(|w| !w.thread.is_finished()) {
            std::thread::sleep(JOIN_POLL);
        }

        let mut report = ShutdownReport::default();
        for worker in workers {
            if !worker.thread.is_finished() {
                report.still_running += 1;
                tracing::warn!(
                    topic = %self.shared.topic,
                    group = %self.shared.group,
                    worker = worker.context.worker(),
                    "worker still in its handler at the shutdown deadline; leaving it to finish"
                );
                continue;
            }
            if worker.thread.join().is_err() {
                tracing::error!(worker = worker.context.worker(), "worker thread panicked");
            }
            report.stopped += 1;
        }
        tracing::info!(
            topic = %self.shared.topic,
            group = %self.shared.group,
            stopped = report.stopped,
            still_running = report.still_running,
            "worker pool shut down"
        );
        report
    }

    fn spawn(&self) -> Result<Worker, WorkerError> {
        let consumer = self.shared.subscribe()?;
        let context = WorkerContext::new(self.next_worker.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::clone(&self.shared);
        let handler = Arc::clone(&self.handler);
        let thread_context = context.clone();
        let thread = std::thread::Builder::new()
            .name(format!("worker-{}-{}", self.shared.group, context.worker()))
            .spawn(move || run(&shared, &*handler, consumer, &thread_context))
            .map_err(|source| WorkerError::Spawn {
                topic: self.shared.topic.clone(),
                group: self.shared.group.clone(),
                source,
            })?;
        Ok(Worker { context, thread })
    }
}

impl Drop for WorkerPool {
    /// Asks every worker to stop without waiting; use [`shutdown`](Self::shutdown) to wait.
    fn drop(&mut self) {
        for worker in self.active.lock().iter().chain(self.retiring.lock().iter()) {
            worker.context.request_stop();
        }
    }
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("topic", &self.shared.topic)
            .field("group", &self.shared.group)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Runs one worker: receives, handles and settles deliveries until asked to stop.
fn run(shared: &Shared, handler: &Handler, mut consumer: Consumer, context: &WorkerContext) {
    tracing::debug!(group = %shared.group, worker = context.worker(), "worker started");
    let mut failures = 0;
    while !context.stop_requested() {
        let delivery = match consumer.recv_timeout(shared.config.poll_interval) {
            Ok(Some(delivery)) => delivery,
            Ok(None) => continue,
            Err(aqueduct::Error::Closed) => break,
            Err(error) => {
                failures += 1;
                shared.receive_failed(context, &error, failures);
                std::thread::sleep(shared.config.retry.delay(failures));
                continue;
            }
        };
        failures = 0;
        shared.begin();
        let result = match catch_unwind(AssertUnwindSafe(|| handler(&delivery, context))) {
            Ok(result) => result,
            Err(payload) => Err(shared.panicked(context, &*payload)),
        };
        shared.settle(delivery, result, context);
        shared.end();
    }
    // Dropping the consumer returns the deliveries it fetched ahead.
    drop(consumer);
    tracing::debug!(group = %shared.group, worker = context.worker(), "worker stopped");
}
