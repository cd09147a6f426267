//! The tokio-based worker pool: one task and one consumer per worker.
//!
//! At the shutdown deadline, a task still in its handler is cancelled, which drops its
//! delivery and so returns the message to the group at once.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, Consumer, Delivery};
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::config::{check_workers, PoolStats, ShutdownReport, WorkerConfig, WorkerContext};
use super::error::{HandlerError, WorkerError};
use super::settle::Shared;

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
type Handler = dyn Fn(Arc<Delivery>, WorkerContext) -> HandlerFuture + Send + Sync;

/// Competing consumers on tokio tasks: N tasks, each with its own consumer in one group.
///
/// The handler gets the delivery in an [`Arc`], and the pool settles it when the handler's
/// future completes. The handler must not keep a clone: a delivery still shared at that point
/// is not settled, and it is returned for immediate redelivery when its last clone drops.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Broker, Message, TopicConfig};
/// use aqueduct_patterns::{AsyncWorkerPool, WorkerConfig};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("jobs", TopicConfig::default())?;
/// broker.publish("jobs", Message::new("job 1"))?;
///
/// let config = WorkerConfig::default().workers(2);
/// let pool = AsyncWorkerPool::start(&broker, "jobs", "workers", config, |delivery, _| async move {
///     println!("{}", String::from_utf8_lossy(delivery.payload()));
///     Ok(())
/// })?;
/// while pool.stats().acked < 1 {
///     tokio::time::sleep(Duration::from_millis(10)).await;
/// }
/// let report = pool.shutdown(Duration::from_secs(5)).await;
/// assert_eq!(report.stopped, 2);
/// # Ok(())
/// # }
/// ```
pub struct AsyncWorkerPool {
    shared: Arc<Shared>,
    handler: Arc<Handler>,
    runtime: Handle,
    next_worker: AtomicUsize,
    active: Mutex<Vec<Task>>,
    retiring: Mutex<Vec<Task>>,
}

struct Task {
    context: WorkerContext,
    handle: JoinHandle<()>,
}

impl AsyncWorkerPool {
    /// Starts `config.workers` tasks on the current tokio runtime in group `group` on `topic`.
    /// Results settle deliveries as in [`WorkerPool::start`](crate::WorkerPool::start).
    ///
    /// # Examples
    ///
    /// See [`AsyncWorkerPool`].
    ///
    /// # Errors
    ///
    /// [`WorkerError::NoRuntime`] outside a tokio runtime, [`WorkerError::InvalidConfig`] and
    /// [`WorkerError::Subscribe`].
    pub fn start<F, Fut>(
        broker: &Broker,
        topic: &str,
        group: &str,
        config: WorkerConfig,
        handler: F,
    ) -> Result<Self, WorkerError>
    where
        F: Fn(Arc<Delivery>, WorkerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let runtime = Handle::try_current().map_err(|_| WorkerError::NoRuntime)?;
        let workers = config.workers;
        let handler: Arc<Handler> = Arc::new(move |delivery, context| {
            let future: HandlerFuture = Box::pin(handler(delivery, context));
            future
        });
        let pool = AsyncWorkerPool {
            shared: Arc::new(Shared::new(broker, topic, group, config)?),
            handler,
            runtime,
            next_worker: AtomicUsize::new(0),
            active: Mutex::new(Vec::new()),
            retiring: Mutex::new(Vec::new()),
        };
        pool.resize(workers)?;
        tracing::info!(topic, group, workers, "async worker pool started");
        Ok(pool)
    }

    /// Changes the number of tasks, as [`WorkerPool::resize`](crate::WorkerPool::resize) does.
    /// Joining the group touches the database briefly, so this blocks the calling thread for
    /// about one sled write per new task.
    ///
    /// # Examples
    ///
    /// See [`AsyncWorkerPool`].
    ///
    /// # Errors
    ///
    /// [`WorkerError::InvalidConfig`] above 1024 workers and [`WorkerError::Subscribe`].
    pub fn resize(&self, workers: usize) -> Result<(), WorkerError> {
        check_workers(workers)?;
        let mut active = self.active.lock();
        let before = active.len();
        while active.len() < workers {
            active.push(self.spawn()?);
        }
        let mut retiring = self.retiring.lock();
        retiring.retain(|task| !task.handle.is_finished());
        while active.len() > workers {
            if let Some(task) = active.pop() {
                task.context.request_stop();
                retiring.push(task);
            }
        }
        if before != workers {
            tracing::info!(
                topic = %self.shared.topic,
                group = %self.shared.group,
                from = before,
                to = workers,
                "async worker pool resized"
            );
        }
        Ok(())
    }

    /// Returns the number of tasks the pool is sized to.
    pub fn size(&self) -> usize {
        self.active.lock().len()
    }

    /// Returns the pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats(self.size())
    }

    /// Stops every task and waits up to `deadline` for them to end.
    ///
    /// Tasks stop taking messages at once and finish the message in hand. Tasks still in a
    /// handler at the deadline are cancelled: the handler's future is dropped, and with it the
    /// delivery, which goes back to the group for immediate redelivery.
    ///
    /// # Examples
    ///
    /// See [`AsyncWorkerPool`].
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let end = tokio::time::Instant::now() + deadline;
        let mut tasks: Vec<Task> = self.active.lock().drain(..).collect();
        tasks.append(&mut self.retiring.lock());
        for task in &tasks {
            task.context.request_stop();
        }

        let mut report = ShutdownReport::default();
        for mut task in tasks {
            match tokio::time::timeout_at(end, &mut task.handle).await {
                Ok(_) => report.stopped += 1,
                Err(_) => {
                    task.handle.abort();
                    match (&mut task.handle).await {
                        Err(error) if error.is_cancelled() => report.cancelled += 1,
                        _ => report.stopped += 1,
                    }
                    tracing::warn!(
                        topic = %self.shared.topic,
                        group = %self.shared.group,
                        worker = task.context.worker(),
                        "task still in its handler at the shutdown deadline; cancelled it and \
                         returned its message"
                    );
                }
            }
        }
        tracing::info!(
            topic = %self.shared.topic,
            group = %self.shared.group,
            stopped = report.stopped,
            cancelled = report.cancelled,
            "async worker pool shut down"
        );
        report
    }

    fn spawn(&self) -> Result<Task, WorkerError> {
        let consumer = self.shared.subscribe()?;
        let context = WorkerContext::new(self.next_worker.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::clone(&self.shared);
        let handler = Arc::clone(&self.handler);
        let task_context = context.clone();
        let handle = self
            .runtime
            .spawn(run(shared, handler, consumer, task_context));
        Ok(Task { context, handle })
    }
}

impl Drop for AsyncWorkerPool {
    /// Asks every task to stop without waiting; use [`shutdown`](Self::shutdown) to wait.
    fn drop(&mut self) {
        for task in self.active.lock().iter().chain(self.retiring.lock().iter()) {
            task.context.request_stop();
        }
    }
}

impl std::fmt::Debug for AsyncWorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncWorkerPool")
            .field("topic", &self.shared.topic)
            .field("group", &self.shared.group)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Runs one task: receives, handles and settles deliveries until asked to stop.
async fn run(
    shared: Arc<Shared>,
    handler: Arc<Handler>,
    mut consumer: Consumer,
    context: WorkerContext,
) {
    tracing::debug!(group = %shared.group, worker = context.worker(), "async worker started");
    let mut failures = 0;
    while !context.stop_requested() {
        // `recv_async` is cancel safe: a timeout keeps fetched deliveries in the consumer.
        let received = tokio::time::timeout(shared.config.poll_interval, consumer.recv_async());
        let delivery = match received.await {
            Err(_) => continue,
            Ok(Ok(delivery)) => Arc::new(delivery),
            Ok(Err(aqueduct::Error::Closed)) => break,
            Ok(Err(error)) => {
                failures += 1;
                shared.receive_failed(&context, &error, failures);
                tokio::time::sleep(shared.config.retry.delay(failures)).await;
                continue;
            }
        };
        failures = 0;
        shared.begin();
        let future = AssertUnwindSafe(handler(Arc::clone(&delivery), context.clone()));
        let result = match future.catch_unwind().await {
            Ok(result) => result,
            Err(payload) => Err(shared.panicked(&context, &*payload)),
        };
        match Arc::try_unwrap(delivery) {
            Ok(delivery) => shared.settle(delivery, result, &context),
            Err(_) => tracing::warn!(
                group = %shared.group,
                worker = context.worker(),
                "handler kept a clone of its delivery; it is redelivered when the clone drops"
            ),
        }
        shared.end();
    }
    drop(consumer);
    tracing::debug!(group = %shared.group, worker = context.worker(), "async worker stopped");
}
