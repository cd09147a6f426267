//! A background thread that polls an orchestrator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::SagaError;
use super::orchestrator::SagaOrchestrator;

/// Poll errors are logged the first time and then once per this many in a row.
const ERROR_LOG_EVERY: u64 = 100;

/// A background thread that polls a [`SagaOrchestrator`]; dropping the handle stops it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::Broker;
/// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
/// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
/// let runner = orchestrator.spawn()?;
/// orchestrator.start("signup", "user-7", Vec::new())?;
/// let status = orchestrator.wait_until_finished("user-7", Duration::from_secs(5))?;
/// assert_eq!(status.map(|s| s.state), Some(SagaState::Completed));
/// runner.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct OrchestratorHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    orchestrator: SagaOrchestrator,
}

impl SagaOrchestrator {
    /// Starts a thread that polls this orchestrator until the returned handle is stopped or
    /// dropped. Between polls with nothing to do it waits for a reply, a start or an operator
    /// action, at most [`SagaConfig::idle_wait`](crate::SagaConfig::idle_wait) or until the
    /// next timer.
    ///
    /// # Examples
    ///
    /// See [`OrchestratorHandle`].
    ///
    /// # Errors
    ///
    /// [`SagaError::Spawn`] when the operating system cannot start the thread.
    pub fn spawn(&self) -> Result<OrchestratorHandle, SagaError> {
        let stop = Arc::new(AtomicBool::new(false));
        let orchestrator = self.clone();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("saga-{}", self.inner.name))
            .spawn(move || run(&orchestrator, &thread_stop))
            .map_err(|source| SagaError::Spawn {
                orchestrator: self.inner.name.clone(),
                source,
            })?;
        tracing::debug!(orchestrator = %self.inner.name, "saga runner started");
        Ok(OrchestratorHandle {
            stop,
            thread: Some(thread),
            orchestrator: self.clone(),
        })
    }

    /// Waits up to `timeout` (real time) for saga `saga_id` to reach a final state or
    /// [`SagaState::NeedsOperator`](crate::SagaState::NeedsOperator), and returns its status
    /// then, or `None` on timeout. Another thread must poll meanwhile, such as a runner from
    /// [`spawn`](Self::spawn).
    ///
    /// # Examples
    ///
    /// See [`OrchestratorHandle`].
    ///
    /// # Errors
    ///
    /// As for [`status`](Self::status).
    pub fn wait_until_finished(
        &self,
        saga_id: &str,
        timeout: Duration,
    ) -> Result<Option<super::state::SagaStatus>, SagaError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.status(saga_id)?;
            if status.state.is_final() || status.state == super::state::SagaState::NeedsOperator {
                return Ok(Some(status));
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let seen = self.inner.wake.seq();
            self.inner
                .wake
                .wait(seen, (deadline - now).min(Duration::from_millis(5)));
        }
    }
}

impl OrchestratorHandle {
    /// Stops the thread after its current poll and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.orchestrator.inner.wake.bump();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(
                    orchestrator = %self.orchestrator.inner.name,
                    "saga runner thread panicked"
                );
            }
            tracing::debug!(orchestrator = %self.orchestrator.inner.name, "saga runner stopped");
        }
    }
}

impl Drop for OrchestratorHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(orchestrator: &SagaOrchestrator, stop: &AtomicBool) {
    let inner = &orchestrator.inner;
    let mut failures: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let seen = inner.wake.seq();
        let mut consumers = inner.consumers.lock();
        match inner.poll_with(&mut consumers) {
            Ok(report) if !report.is_idle() => {
                failures = 0;
                continue;
            }
            Ok(_) => failures = 0,
            Err(error) => {
                if failures % ERROR_LOG_EVERY == 0 {
                    tracing::error!(
                        orchestrator = %inner.name,
                        %error,
                        failures = failures + 1,
                        "saga poll failed; retrying"
                    );
                }
                failures += 1;
            }
        }
        let wait = idle_wait(orchestrator);
        // Waiting on the reply consumer wakes the runner as soon as a reply arrives.
        if let Some(consumer) = consumers.first_mut() {
            match consumer.recv_timeout(wait) {
                Ok(Some(delivery)) => {
                    if let Err(error) = inner.handle_reply(delivery) {
                        tracing::error!(orchestrator = %inner.name, %error, "saga reply failed");
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(orchestrator = %inner.name, %error, "reading saga replies failed");
                }
            }
        } else {
            drop(consumers);
            inner.wake.wait(seen, wait);
        }
    }
}

/// Returns how long the runner may wait: the idle wait, or less when a timer is due sooner.
fn idle_wait(orchestrator: &SagaOrchestrator) -> Duration {
    let inner = &orchestrator.inner;
    let mut wait = inner.config.idle_wait;
    if let Ok(Some(due)) = inner.store.next_timer() {
        let until = due.saturating_sub(inner.config.clock.now_ms());
        wait = wait.min(Duration::from_millis(until));
    }
    wait
}
