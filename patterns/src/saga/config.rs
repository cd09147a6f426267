//! Settings of a saga orchestrator.

use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Clock, SystemClock};

/// Settings of a [`SagaOrchestrator`](crate::SagaOrchestrator).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Broker, BrokerConfig, ManualClock};
/// use aqueduct_patterns::SagaConfig;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let clock = ManualClock::new(1_000_000);
/// let broker = Broker::temporary_with(BrokerConfig::default().clock(clock.clone()))?;
/// let config = SagaConfig::default().clock(clock).idle_wait(Duration::from_millis(5));
/// # let _ = (broker, config);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SagaConfig {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) flush_on_commit: bool,
    pub(crate) reply_topic: Option<String>,
    pub(crate) idle_wait: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            clock: Arc::new(SystemClock),
            flush_on_commit: true,
            reply_topic: None,
            idle_wait: Duration::from_millis(20),
        }
    }
}

impl std::fmt::Debug for SagaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaConfig")
            .field("flush_on_commit", &self.flush_on_commit)
            .field("reply_topic", &self.reply_topic)
            .field("idle_wait", &self.idle_wait)
            .finish_non_exhaustive()
    }
}

impl SagaConfig {
    /// Replaces the clock that times steps, retries and history. Pass the same clock as
    /// [`BrokerConfig::clock`](aqueduct::BrokerConfig::clock), so that timeouts and the
    /// broker's leases and delays agree; tests pass a [`ManualClock`](aqueduct::ManualClock)
    /// to both. Default: the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets whether every state change flushes sled before it returns. Default `true`: a
    /// started saga and every recorded step survive a crash of the process. With `false`, a
    /// crash can lose the changes of its last moments. Sagas then resume from an earlier state
    /// and repeat attempts, and the idempotency keys make the repeats harmless.
    #[must_use]
    pub fn flush_on_commit(mut self, flush: bool) -> Self {
        self.flush_on_commit = flush;
        self
    }

    /// Sets the topic that services reply to. Default `saga.NAME.replies`, created on open
    /// with retention until acknowledged. A topic given here must exist.
    #[must_use]
    pub fn reply_topic(mut self, topic: impl Into<String>) -> Self {
        self.reply_topic = Some(topic.into());
        self
    }

    /// Sets the longest wait of a background runner between two polls when nothing is due.
    /// Replies wake it at once; a saga started from another thread waits up to this long for
    /// its first step. Default 20 ms; bounds 1 ms to 10 s.
    #[must_use]
    pub fn idle_wait(mut self, wait: Duration) -> Self {
        self.idle_wait = wait;
        self
    }
}
