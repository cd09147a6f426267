//! The relay: publishes outbox rows to a target in sequence order.
//!
//! One round reads the committed rows in sequence order, skips rows whose topic and key have a
//! parked row, publishes runs of consecutive rows for the same topic as one batch, flushes the
//! target so they are durable, and only then removes them from the outbox. A batch the target
//! rejects is published again one message at a time, so the rejected row is found and parked
//! while the other rows go out; later rows of its key stay pending. When the target is
//! unavailable, the round stops at that row, keeps it and everything after it, and the relay
//! retries with exponential backoff.
//!
//! A started relay runs on its own thread until [`RelayHandle::stop`] or until the handle is
//! dropped; stopping finishes the current round. At most one relay per outbox runs at a time in
//! a process ([`OutboxError::RelayRunning`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aqueduct::Broker;
use parking_lot::{Condvar, Mutex};

use super::error::TargetError;
use super::record::{seq_from_key, seq_key, RowRecord};
use super::target::{BrokerTarget, OutboxTarget};
use super::{Inner, Outbox, OutboxError};
use crate::backoff::Backoff;

/// Settings of an [`OutboxRelay`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    batch_size: usize,
    idle_poll: Duration,
    backoff: Backoff,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 256,
            idle_poll: Duration::from_millis(200),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
        }
    }
}

impl RelayConfig {
    /// Sets the most rows one round publishes. Each round that publishes ends with one flush
    /// of the target, so larger rounds cost fewer flushes. Default 256; values below 1 count
    /// as 1.
    #[must_use]
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// Sets how long an idle relay sleeps before it looks for rows again. Commits through an
    /// [`Outbox`] handle of the same process wake it at once; the poll finds rows written
    /// through other handles. Default 200 ms.
    #[must_use]
    pub fn idle_poll(mut self, interval: Duration) -> Self {
        self.idle_poll = interval;
        self
    }

    /// Sets the delays between retries while the target is unavailable. Default: 50 ms
    /// doubling up to 5 s.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// The outcome of one relay round.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RoundReport {
    /// Rows published and removed from the outbox.
    pub published: usize,
    /// Rows the target rejected, moved to the parked rows.
    pub parked: usize,
    /// Rows skipped because an earlier row of their topic and key is parked.
    pub waiting: usize,
    /// True when the round stopped at its batch size, so more rows may be ready.
    pub more: bool,
    /// The error that stopped the round when the target was unavailable.
    pub unavailable: Option<TargetError>,
}

/// Counters of a relay since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rows published.
    pub published: u64,
    /// Rows parked.
    pub parked: u64,
    /// Rounds that found the target unavailable and were retried.
    pub retries: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    parked: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RelayStats {
        RelayStats {
            published: self.published.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// Publishes the rows of an [`Outbox`] to an [`OutboxTarget`], in order per topic and key.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Broker, TopicConfig};
/// use aqueduct_patterns::{Outbox, OutboxError, OutboxRelay};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("order.created", TopicConfig::default())?;
/// let outbox = Outbox::open(&broker, "orders")?;
/// outbox.transaction(&[], |tx| {
///     tx.enqueue::<_, OutboxError>("order.created", "customer-7", &42u64)
/// })?;
///
/// let relay = OutboxRelay::new(&outbox, &broker).start()?;
/// let mut consumer = broker.subscribe("order.created", "mailer")?;
/// let delivery = consumer.recv_timeout(Duration::from_secs(5))?.expect("the event");
/// assert_eq!(delivery.decode::<u64>()?, 42);
/// delivery.ack()?;
/// relay.stop();
/// # Ok(())
/// # }
/// ```
pub struct OutboxRelay<T: OutboxTarget = BrokerTarget> {
    outbox: Outbox,
    target: T,
    config: RelayConfig,
    counters: Arc<Counters>,
}

impl OutboxRelay<BrokerTarget> {
    /// Creates a relay from `outbox` to the local `broker`, with default settings.
    pub fn new(outbox: &Outbox, broker: &Broker) -> Self {
        Self::with_target(outbox, BrokerTarget::new(broker.clone()))
    }
}

impl<T: OutboxTarget> OutboxRelay<T> {
    /// Creates a relay from `outbox` to `target`, with default settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{BrokerTarget, Outbox, OutboxRelay, RelayConfig};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let outbox = Outbox::open(&broker, "orders")?;
    /// let relay = OutboxRelay::with_target(&outbox, BrokerTarget::new(broker.clone()))
    ///     .with_config(RelayConfig::default().batch_size(64));
    /// assert_eq!(relay.run_once()?.published, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_target(outbox: &Outbox, target: T) -> Self {
        OutboxRelay {
            outbox: outbox.clone(),
            target,
            config: RelayConfig::default(),
            counters: Arc::default(),
        }
    }

    /// Replaces the relay's settings.
    #[must_use]
    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// The target.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// Returns the relay's counters.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Runs one round in the calling thread: publishes up to the batch size of ready rows.
    /// A target that is unavailable is reported in [`RoundReport::unavailable`], not retried.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::{Broker, TopicConfig};
    /// use aqueduct_patterns::{Outbox, OutboxError, OutboxRelay};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// broker.create_topic("events", TopicConfig::default())?;
    /// let outbox = Outbox::open(&broker, "events")?;
    /// outbox.transaction(&[], |tx| tx.enqueue::<_, OutboxError>("events", "k", &1u8))?;
    /// let report = OutboxRelay::new(&outbox, &broker).run_once()?;
    /// assert_eq!(report.published, 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::RelayRunning`] while another relay of this outbox runs,
    /// [`OutboxError::Storage`] and [`OutboxError::Corrupt`].
    pub fn run_once(&self) -> Result<RoundReport, OutboxError> {
        let _running = RunningGuard::acquire(self.outbox.inner())?;
        self.round()
    }

    /// Runs rounds in the calling thread until no ready row is left, retrying with backoff
    /// while the target is unavailable, for at most `timeout`. Returns the number of rows
    /// published.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Outbox, OutboxRelay};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let outbox = Outbox::open(&broker, "orders")?;
    /// let published = OutboxRelay::new(&outbox, &broker).drain(Duration::from_secs(1))?;
    /// assert_eq!(published, 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`run_once`](Self::run_once).
    pub fn drain(&self, timeout: Duration) -> Result<u64, OutboxError> {
        let _running = RunningGuard::acquire(self.outbox.inner())?;
        let deadline = Instant::now() + timeout;
        let mut published = 0;
        let mut failures = 0;
        while Instant::now() < deadline {
            let report = self.round()?;
            published += report.published as u64;
            if let Some(error) = report.unavailable {
                failures += 1;
                self.log_unavailable(&error, failures);
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(self.config.backoff.delay(failures).min(left));
                continue;
            }
            failures = 0;
            if !report.more {
                break;
            }
        }
        Ok(published)
    }

    /// Starts the relay on its own thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Outbox, OutboxRelay};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let outbox = Outbox::open(&broker, "orders")?;
    /// let relay = OutboxRelay::new(&outbox, &broker).start()?;
    /// println!("published so far: {}", relay.stats().published);
    /// relay.stop();
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::RelayRunning`] while another relay of this outbox runs, and
    /// [`OutboxError::Spawn`] when the thread cannot be created.
    pub fn start(self) -> Result<RelayHandle, OutboxError> {
        let inner = Arc::clone(self.outbox.inner());
        let running = RunningGuard::acquire(&inner)?;
        let stop = Arc::new(Stop::default());
        let counters = Arc::clone(&self.counters);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("outbox-relay-{}", inner.name))
            .spawn(move || {
                let _running = running;
                self.run(&thread_stop);
            })
            .map_err(|source| OutboxError::Spawn {
                outbox: inner.name.clone(),
                source,
            })?;
        Ok(RelayHandle {
            inner,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    fn run(&self, stop: &Stop) {
        let inner = self.outbox.inner();
        tracing::debug!(outbox = %inner.name, "outbox relay started");
        let mut failures = 0;
        let mut outage_start = None;
        while !stop.is_set() {
            let seen = inner.wake.seq();
            match self.round() {
                Ok(report) => {
                    if let Some(error) = report.unavailable {
                        failures += 1;
                        outage_start.get_or_insert_with(Instant::now);
                        self.log_unavailable(&error, failures);
                        stop.sleep(self.config.backoff.delay(failures));
                        continue;
                    }
                    if let Some(start) = outage_start.take() {
                        tracing::info!(
                            outbox = %inner.name,
                            retries = failures,
                            outage_ms = start.elapsed().as_millis() as u64,
                            "outbox target available again"
                        );
                    }
                    failures = 0;
                    if !report.more {
                        inner.wake.wait(seen, self.config.idle_poll);
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::error!(
                        outbox = %inner.name,
                        %error,
                        retry = failures,
                        "outbox relay round failed; retrying"
                    );
                    stop.sleep(self.config.backoff.delay(failures));
                }
            }
        }
        tracing::debug!(outbox = %inner.name, "outbox relay stopped");
    }

    fn log_unavailable(&self, error: &TargetError, failures: u32) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        let delay = self.config.backoff.delay(failures);
        let outbox = &self.outbox.inner().name;
        if failures == 1 || failures % 10 == 0 {
            tracing::warn!(
                outbox = %outbox,
                %error,
                retry = failures,
                delay_ms = delay.as_millis() as u64,
                "outbox target unavailable; retrying with backoff"
            );
        } else {
            tracing::debug!(outbox = %outbox, %error, retry = failures, "outbox target unavailable");
        }
    }

    /// Runs one round: selects ready rows, publishes them run by run, flushes and removes them.
    fn round(&self) -> Result<RoundReport, OutboxError> {
        let inner = self.outbox.inner();
        let mut blocked = inner.parked_keys()?;
        let mut report = RoundReport::default();
        let batch = self.select(inner, &blocked, &mut report)?;

        let mut published = Vec::new();
        for run in batch.chunk_by(|a, b| a.1.topic == b.1.topic) {
            self.publish_run(inner, run, &mut blocked, &mut published, &mut report)?;
            if report.unavailable.is_some() {
                break;
            }
        }
        self.remove_published(inner, &batch, &published, &mut report)?;
        if report.published > 0 && !report.more {
            // Removals become durable now instead of at the next broker flush, so a restart
            // after a long pause does not republish rows whose dedup entries have expired.
            inner.rows.flush().map_err(|e| inner.storage(e))?;
        }
        Ok(report)
    }

    /// Reads up to a batch of committed rows in sequence order, skipping rows held behind a
    /// parked row.
    fn select(
        &self,
        inner: &Inner,
        blocked: &std::collections::HashSet<(String, Vec<u8>)>,
        report: &mut RoundReport,
    ) -> Result<Vec<(u64, RowRecord)>, OutboxError> {
        // Every row below the stored next sequence number has committed, because the counter
        // and the row are written in one transaction. Rows above it may still be committing,
        // and reading one of them could publish it before an earlier row of its key.
        let watermark = inner.next_seq()?;
        // NOTE: rows held behind a parked row are read again every round, so a parked key
        // with a long tail of waiting rows slows each round until an operator acts.
        let mut batch = Vec::new();
        for item in inner.rows.range(..seq_key(watermark)) {
            let (key, value) = item.map_err(|e| inner.storage(e))?;
            let row = inner.decode_row(&key, &value)?;
            if row.order_key().is_some_and(|k| blocked.contains(&k)) {
                report.waiting += 1;
                continue;
            }
            let seq = seq_from_key(&key).unwrap_or_default();
            batch.push((seq, row));
            if batch.len() == self.config.batch_size {
                report.more = true;
                break;
            }
        }
        Ok(batch)
    }

    /// Publishes consecutive rows of one topic as a batch, or one by one after a rejection.
    fn publish_run(
        &self,
        inner: &Inner,
        run: &[(u64, RowRecord)],
        blocked: &mut std::collections::HashSet<(String, Vec<u8>)>,
        published: &mut Vec<u64>,
        report: &mut RoundReport,
    ) -> Result<(), OutboxError> {
        let topic = &run[0].1.topic;
        let messages = run.iter().map(|(_, row)| row.to_message()).collect();
        match self.target.publish(topic, messages) {
            Ok(()) => {
                published.extend(run.iter().map(|(seq, _)| *seq));
                Ok(())
            }
            Err(error) if error.is_rejected() && run.len() > 1 => {
                tracing::debug!(outbox = %inner.name, %error, "batch rejected; publishing rows one by one");
                self.publish_each(inner, run, blocked, published, report)
            }
            Err(error) if error.is_rejected() => self.park(inner, &run[0], &error, blocked, report),
            Err(error) => {
                report.unavailable = Some(error);
                Ok(())
            }
        }
    }

    fn publish_each(
        &self,
        inner: &Inner,
        run: &[(u64, RowRecord)],
        blocked: &mut std::collections::HashSet<(String, Vec<u8>)>,
        published: &mut Vec<u64>,
        report: &mut RoundReport,
    ) -> Result<(), OutboxError> {
        for entry in run {
            let (seq, row) = entry;
            if row.order_key().is_some_and(|k| blocked.contains(&k)) {
                report.waiting += 1;
                continue;
            }
            match self.target.publish(&row.topic, vec![row.to_message()]) {
                Ok(()) => published.push(*seq),
                Err(error) if error.is_rejected() => {
                    self.park(inner, entry, &error, blocked, report)?;
                }
                Err(error) => {
                    report.unavailable = Some(error);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn park(
        &self,
        inner: &Inner,
        (seq, row): &(u64, RowRecord),
        error: &TargetError,
        blocked: &mut std::collections::HashSet<(String, Vec<u8>)>,
        report: &mut RoundReport,
    ) -> Result<(), OutboxError> {
        let reason = error.to_string();
        inner.park(*seq, row, &reason)?;
        blocked.extend(row.order_key());
        report.parked += 1;
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            outbox = %inner.name,
            seq,
            topic = %row.topic,
            key = %row.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
            message_id = %row.id,
            error = %reason,
            "target rejected an outbox row; parked it, later rows of its key wait behind it"
        );
        Ok(())
    }

    /// Flushes the target and removes the published rows. When the flush fails, the rows stay
    /// and are published again (and deduplicated) in a later round.
    fn remove_published(
        &self,
        inner: &Inner,
        batch: &[(u64, RowRecord)],
        published: &[u64],
        report: &mut RoundReport,
    ) -> Result<(), OutboxError> {
        let Some(first) = batch.iter().find(|(seq, _)| published.contains(seq)) else {
            return Ok(());
        };
        if let Err(source) = self.target.flush() {
            report.unavailable = Some(TargetError::unavailable(first.1.topic.clone(), source));
            return Ok(());
        }
        let mut removals = sled::Batch::default();
        for seq in published {
            removals.remove(&seq_key(*seq)[..]);
        }
        inner
            .rows
            .apply_batch(removals)
            .map_err(|e| inner.storage(e))?;
        report.published = published.len();
        self.counters
            .published
            .fetch_add(published.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl<T: OutboxTarget> std::fmt::Debug for OutboxRelay<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("outbox", &self.outbox.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A running relay. Dropping it stops the relay like [`stop`](Self::stop).
pub struct RelayHandle {
    inner: Arc<Inner>,
    stop: Arc<Stop>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// Returns the relay's counters.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Stops the relay after its current round and waits for its thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.set();
        self.inner.wake.bump();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(outbox = %self.inner.name, "outbox relay thread panicked");
            }
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("outbox", &self.inner.name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Marks an outbox as having a running relay until dropped, also during a panic.
struct RunningGuard {
    inner: Arc<Inner>,
}

impl RunningGuard {
    fn acquire(inner: &Arc<Inner>) -> Result<Self, OutboxError> {
        if inner.relay_running.swap(true, Ordering::AcqRel) {
            return Err(OutboxError::RelayRunning {
                outbox: inner.name.clone(),
            });
        }
        Ok(RunningGuard {
            inner: Arc::clone(inner),
        })
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.inner.relay_running.store(false, Ordering::Release);
    }
}

/// A stop flag whose sleeps end early when it is set.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    fn is_set(&self) -> bool {
        *self.stopped.lock()
    }

    fn set(&self) {
        *self.stopped.lock() = true;
        self.changed.notify_all();
    }

    fn sleep(&self, duration: Duration) {
        let mut stopped = self.stopped.lock();
        if !*stopped {
            self.changed.wait_for(&mut stopped, duration);
        }
    }
}
