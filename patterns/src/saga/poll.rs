//! Making progress: publishing stored requests, reading replies, firing timers, running local
//! steps, and resuming after a restart.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use aqueduct::{Consumer, Delivery};

use super::context::StepContext;
use super::definition::{ActionKind, Saga, StepFn};
use super::error::{SagaError, StepError};
use super::messages::{ParsedReply, RequestTarget};
use super::orchestrator::{Inner, SagaOrchestrator};
use super::record::{encode, PendingRequest, Phase, SagaRecord};
use super::state::{HistoryEvent, SagaState, StepKind};
use super::store::PendingChange;
use super::transition::{end_attempt, to_operator, AttemptEnd};

/// Timers fired per round. A poll runs rounds until none is due or [`MAX_ROUNDS`] ran.
const TIMERS_PER_ROUND: usize = 256;

/// Rounds of timers per poll, so that one poll ends even when steps keep scheduling more.
const MAX_ROUNDS: usize = 16;

/// Replies read per poll.
const MAX_REPLIES: usize = 1024;

/// Publish failures are logged the first time and then once per this many.
const PUBLISH_FAILURE_LOG_EVERY: u64 = 100;

/// Counts of the work done by one [`SagaOrchestrator::poll`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PollReport {
    /// Replies read from the reply topic.
    pub replies: usize,
    /// Attempts started: local closures run and requests stored.
    pub attempts: usize,
    /// Requests whose reply did not arrive in time.
    pub timeouts: usize,
    /// Requests published.
    pub published: usize,
    /// Requests whose publish failed; they stay stored and are published by a later poll.
    pub publish_failures: usize,
}

impl PollReport {
    /// Returns true when the poll found nothing to do.
    pub fn is_idle(&self) -> bool {
        self.replies == 0 && self.attempts == 0 && self.timeouts == 0 && self.published == 0
    }
}

impl SagaOrchestrator {
    /// Does the work that is due now: publishes stored requests, applies replies, starts due
    /// attempts (running local closures on this thread), and times out requests whose deadline
    /// passed. One thread polls at a time; a second caller waits.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup")
    ///     .step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))))
    ///     .step(Step::new("send-welcome", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// let report = orchestrator.poll()?;
    /// assert_eq!(report.attempts, 2);
    /// assert_eq!(orchestrator.status("user-7")?.state, SagaState::Completed);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::Storage`], [`SagaError::Corrupt`], and [`SagaError::Broker`] when a reply
    /// cannot be read or acknowledged. Failed publishes are not errors: they are counted in
    /// [`PollReport::publish_failures`] and retried.
    pub fn poll(&self) -> Result<PollReport, SagaError> {
        let mut consumers = self.inner.consumers.lock();
        self.inner.poll_with(&mut consumers)
    }

    /// Returns when the earliest scheduled attempt or deadline is due, in milliseconds since
    /// the Unix epoch, or `None` when nothing is scheduled.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// assert_eq!(orchestrator.next_due_ms()?, None);
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// assert!(orchestrator.next_due_ms()?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::Storage`].
    pub fn next_due_ms(&self) -> Result<Option<u64>, SagaError> {
        self.inner.store.next_timer()
    }
}

impl Inner {
    pub(crate) fn poll_with(&self, consumers: &mut [Consumer]) -> Result<PollReport, SagaError> {
        let mut report = PollReport::default();
        self.publish_stored(&mut report)?;
        for consumer in consumers.iter_mut() {
            while report.replies < MAX_REPLIES {
                let delivery = consumer.try_recv().map_err(|e| self.broker_error(e))?;
                let Some(delivery) = delivery else {
                    break;
                };
                report.replies += 1;
                self.handle_reply(delivery)?;
            }
        }
        self.fire_timers(&mut report)?;
        self.confirm_published()?;
        Ok(report)
    }

    /// Removes the stored copies of the requests published since the last call, after one
    /// broker flush made them durable. A copy removed before its message is durable could lose
    /// the request in a crash. A copy kept longer is only published again, and the topic's
    /// dedup drops the second message.
    fn confirm_published(&self) -> Result<(), SagaError> {
        let published = std::mem::take(&mut *self.published.lock());
        if published.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.broker.flush() {
            self.published.lock().extend(published);
            return Err(self.broker_error(error));
        }
        for (id, stored) in published {
            self.store.remove_pending(&id, &stored)?;
        }
        Ok(())
    }

    /// Applies one reply and acknowledges it.
    pub(crate) fn handle_reply(&self, delivery: Delivery) -> Result<(), SagaError> {
        let Some(reply) = ParsedReply::parse(&delivery) else {
            tracing::warn!(
                orchestrator = %self.name,
                topic = delivery.topic(),
                partition = delivery.partition(),
                offset = delivery.offset(),
                "message on the reply topic is not a saga reply; acknowledged without effect"
            );
            return self.ack(delivery);
        };
        if reply.orchestrator != self.name {
            return self.ack(delivery);
        }
        if self.store.load(&reply.saga_id)?.is_none() {
            tracing::debug!(saga_id = %reply.saga_id, "reply for an unknown saga ignored");
            return self.ack(delivery);
        }
        let end = match reply.result {
            Ok(output) => AttemptEnd::Succeeded(output),
            Err(error) => AttemptEnd::Failed {
                reason: error.reason().to_string(),
                retryable: error.is_retryable(),
            },
        };
        self.end(&reply.saga_id, (reply.step, reply.kind, reply.attempt), end)?;
        self.ack(delivery)
    }

    fn ack(&self, delivery: Delivery) -> Result<(), SagaError> {
        match delivery.ack() {
            Ok(()) => Ok(()),
            // Another member has the reply now, and applying it again is ignored as late.
            Err(aqueduct::Error::LeaseExpired { .. }) => Ok(()),
            Err(error) => Err(self.broker_error(error)),
        }
    }

    fn fire_timers(&self, report: &mut PollReport) -> Result<(), SagaError> {
        for _ in 0..MAX_ROUNDS {
            let now = self.config.clock.now_ms();
            let due = self.store.due_timers(now, TIMERS_PER_ROUND)?;
            if due.is_empty() {
                break;
            }
            for (due_ms, id) in due {
                self.fire(&id, due_ms, report)?;
            }
        }
        Ok(())
    }

    fn fire(&self, id: &str, due_ms: u64, report: &mut PollReport) -> Result<(), SagaError> {
        let Some(record) = self.store.load(id)? else {
            return Ok(());
        };
        if record.timer_ms != Some(due_ms) {
            return Ok(());
        }
        let saga = match self.definition_for(&record) {
            Ok(saga) => saga,
            Err(reason) => return self.send_to_operator(id, due_ms, reason),
        };
        match record.phase {
            Phase::Scheduled { .. } => self.start_attempt(&record, saga, report),
            Phase::InFlight {
                step,
                kind,
                attempt,
                local,
                ..
            } => {
                let end = if local {
                    AttemptEnd::Interrupted
                } else {
                    report.timeouts += 1;
                    let timeout_ms = saga.steps[step as usize].timeout_ms();
                    AttemptEnd::TimedOut { timeout_ms }
                };
                self.end(id, (step, kind, attempt), end)
            }
            Phase::Idle => Ok(()),
        }
    }

    /// Starts the scheduled attempt of `record`: runs a local closure, or stores and publishes
    /// a request.
    fn start_attempt(
        &self,
        record: &SagaRecord,
        saga: &Saga,
        report: &mut PollReport,
    ) -> Result<(), SagaError> {
        let Some((step, kind, attempt, first_attempt)) = record.phase.attempt() else {
            return Ok(());
        };
        let definition = &saga.steps[step as usize];
        let Some(action) = definition.side(kind) else {
            return self.end(
                &record.id,
                (step, kind, attempt),
                AttemptEnd::Succeeded(Vec::new()),
            );
        };
        let now = self.config.clock.now_ms();
        let deadline_ms = now.saturating_add(definition.timeout_ms());
        let scheduled = record.phase.clone();
        let timer = record.timer_ms;
        let in_flight = |local| Phase::InFlight {
            step,
            kind,
            attempt,
            first_attempt,
            deadline_ms,
            local,
        };
        report.attempts += 1;

        match &action.kind {
            ActionKind::Local(run) => {
                let updated = self.store.update(&record.id, now, |record, change| {
                    if record.phase != scheduled || record.timer_ms != timer {
                        return Ok(false);
                    }
                    record.phase = in_flight(true);
                    record.timer_ms = None;
                    change.history.push(HistoryEvent::AttemptStarted {
                        step: definition.name.clone(),
                        kind,
                        attempt,
                    });
                    Ok(true)
                })?;
                let Some(updated) = updated else {
                    return Ok(());
                };
                self.log_events(&record.id, &updated.events);
                let ctx = self.context(
                    &updated.record,
                    saga,
                    (step, kind, attempt),
                    deadline_ms,
                    now,
                );
                let end = attempt_end(call(run.as_ref(), &ctx));
                self.end(&record.id, (step, kind, attempt), end)
            }
            ActionKind::Request { topic, build } => {
                let ctx = self.context(record, saga, (step, kind, attempt), deadline_ms, now);
                let payload = match call(build.as_ref(), &ctx) {
                    Ok(payload) => payload,
                    Err(error) => {
                        return self.end(&record.id, (step, kind, attempt), attempt_end(Err(error)))
                    }
                };
                let target = RequestTarget {
                    orchestrator: &self.name,
                    saga: &saga.name,
                    saga_id: &record.id,
                    step,
                    step_name: &definition.name,
                    kind,
                    attempt,
                    topic,
                    reply_to: &self.reply_topic,
                };
                let request = target.request(payload);
                let updated = self.store.update(&record.id, now, |record, change| {
                    if record.phase != scheduled || record.timer_ms != timer {
                        return Ok(false);
                    }
                    record.phase = in_flight(false);
                    record.timer_ms = Some(deadline_ms);
                    change.history.push(HistoryEvent::RequestSent {
                        step: definition.name.clone(),
                        kind,
                        attempt,
                        topic: topic.clone(),
                        message_id: request.message_id.clone(),
                    });
                    change.pending = Some(PendingChange::Put(request.clone()));
                    Ok(true)
                })?;
                let Some(updated) = updated else {
                    return Ok(());
                };
                self.log_events(&record.id, &updated.events);
                let stored = sled::IVec::from(encode(&request)?);
                self.publish(&record.id, &request, &stored, report)
            }
        }
    }

    fn context<'a>(
        &'a self,
        record: &'a SagaRecord,
        saga: &'a Saga,
        (step, kind, attempt): (u32, StepKind, u32),
        deadline_ms: u64,
        now_ms: u64,
    ) -> StepContext<'a> {
        StepContext {
            orchestrator: &self.name,
            record,
            steps: &saga.steps,
            step,
            kind,
            attempt,
            deadline_ms,
            now_ms,
            tree: &self.store.tree,
        }
    }

    /// Records the end of an attempt.
    pub(crate) fn end(
        &self,
        id: &str,
        attempt: (u32, StepKind, u32),
        end: AttemptEnd,
    ) -> Result<(), SagaError> {
        let now = self.config.clock.now_ms();
        let updated = self.store.update(id, now, |record, change| {
            match self.definition_for(record) {
                Ok(saga) => end_attempt(record, change, saga, attempt, &end, now),
                Err(_) if record.state.is_final() || record.state == SagaState::NeedsOperator => {
                    return Ok(false)
                }
                Err(reason) => to_operator(record, change, reason),
            }
            Ok(true)
        })?;
        if let Some(updated) = updated {
            self.log_events(id, &updated.events);
        }
        Ok(())
    }

    fn send_to_operator(&self, id: &str, due_ms: u64, reason: String) -> Result<(), SagaError> {
        let now = self.config.clock.now_ms();
        let updated = self.store.update(id, now, |record, change| {
            if record.timer_ms != Some(due_ms) {
                return Ok(false);
            }
            to_operator(record, change, reason.clone());
            Ok(true)
        })?;
        if let Some(updated) = updated {
            self.log_events(id, &updated.events);
        }
        Ok(())
    }

    /// Returns the registered definition of a saga, or why it cannot run.
    fn definition_for(&self, record: &SagaRecord) -> Result<&Saga, String> {
        let Some(saga) = self.sagas.get(&record.saga) else {
            return Err(format!(
                "saga definition {:?} is not registered; open the orchestrator with it, then \
                 call SagaOrchestrator::compensate or abort",
                record.saga
            ));
        };
        let names: Vec<&str> = saga.steps.iter().map(|s| s.name.as_str()).collect();
        if names != record.step_names {
            return Err(format!(
                "saga definition {:?} changed from steps {:?} to {names:?} while saga {} ran; \
                 restore the old definition or abort the saga",
                record.saga, record.step_names, record.id
            ));
        }
        Ok(saga)
    }

    /// Publishes every stored request, as after a crash between storing and publishing.
    fn publish_stored(&self, report: &mut PollReport) -> Result<(), SagaError> {
        for (id, request, stored) in self.store.pending()? {
            self.publish(&id, &request, &stored, report)?;
        }
        Ok(())
    }

    /// Publishes a stored request with its stable message id. The next
    /// [`confirm_published`](Self::confirm_published) removes its stored copy. A repeated publish returns the
    /// original receipt through the topic's dedup.
    fn publish(
        &self,
        id: &str,
        request: &PendingRequest,
        stored: &sled::IVec,
        report: &mut PollReport,
    ) -> Result<(), SagaError> {
        match self.broker.publish(&request.topic, request.to_message()) {
            Ok(_) => {
                report.published += 1;
                self.published.lock().push((id.to_string(), stored.clone()));
                Ok(())
            }
            Err(error) => {
                report.publish_failures += 1;
                let failures = self.publish_failures.fetch_add(1, Ordering::Relaxed);
                if failures % PUBLISH_FAILURE_LOG_EVERY == 0 {
                    tracing::warn!(
                        orchestrator = %self.name,
                        saga_id = id,
                        topic = %request.topic,
                        %error,
                        failures = failures + 1,
                        "publishing a saga request failed; retrying at the next poll"
                    );
                }
                Ok(())
            }
        }
    }

    /// Resumes after a restart: local attempts that were running count as interrupted, and
    /// stored requests are published.
    pub(crate) fn recover(&self) -> Result<(), SagaError> {
        let mut unfinished = 0;
        let mut interrupted = 0;
        for state in [SagaState::Running, SagaState::Compensating] {
            for id in self.store.ids_in_state(state, usize::MAX)? {
                let Some(record) = self.store.load(&id)? else {
                    continue;
                };
                unfinished += 1;
                if let Phase::InFlight {
                    step,
                    kind,
                    attempt,
                    local: true,
                    ..
                } = record.phase
                {
                    interrupted += 1;
                    self.end(&id, (step, kind, attempt), AttemptEnd::Interrupted)?;
                }
            }
        }
        let waiting = self
            .store
            .ids_in_state(SagaState::NeedsOperator, usize::MAX)?
            .len();
        let mut report = PollReport::default();
        self.publish_stored(&mut report)?;
        self.confirm_published()?;
        if unfinished > 0 || waiting > 0 {
            tracing::info!(
                orchestrator = %self.name,
                unfinished,
                interrupted,
                republished = report.published,
                needs_operator = waiting,
                "resumed unfinished sagas"
            );
        } else {
            tracing::debug!(orchestrator = %self.name, "saga orchestrator opened");
        }
        Ok(())
    }

    pub(crate) fn broker_error(&self, source: aqueduct::Error) -> SagaError {
        SagaError::Broker {
            orchestrator: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// Logs committed history events: progress at debug, retries and finished sagas at info,
    /// compensation and aborts at warn, sagas that need an operator at error.
    pub(crate) fn log_events(&self, saga_id: &str, events: &[HistoryEvent]) {
        let orchestrator = self.name.as_str();
        for event in events {
            match event {
                HistoryEvent::Failed {
                    retry_at_ms: Some(retry_at_ms),
                    ..
                } => {
                    tracing::info!(orchestrator, saga_id, %event, retry_at_ms, "saga step retry");
                }
                HistoryEvent::Failed { .. } | HistoryEvent::Interrupted { .. } => {
                    tracing::info!(orchestrator, saga_id, %event, "saga step failed");
                }
                HistoryEvent::StateChanged { state, .. } => match state {
                    SagaState::NeedsOperator => {
                        tracing::error!(orchestrator, saga_id, %event, "saga needs an operator");
                    }
                    SagaState::Compensating | SagaState::Aborted => {
                        tracing::warn!(orchestrator, saga_id, %event, "saga state changed");
                    }
                    _ => tracing::info!(orchestrator, saga_id, %event, "saga state changed"),
                },
                HistoryEvent::Succeeded { .. } => {
                    tracing::debug!(orchestrator, saga_id, %event, "saga step done");
                }
                _ => tracing::trace!(orchestrator, saga_id, %event, "saga progress"),
            }
        }
    }
}

/// Runs a step closure; a panic counts as a retryable failure.
fn call(run: &StepFn, ctx: &StepContext<'_>) -> Result<Vec<u8>, StepError> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| run(ctx))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_string());
            Err(StepError::retry(format!(
                "the step closure panicked: {message}"
            )))
        }
    }
}

fn attempt_end(result: Result<Vec<u8>, StepError>) -> AttemptEnd {
    match result {
        Ok(output) => AttemptEnd::Succeeded(output),
        Err(error) => AttemptEnd::Failed {
            reason: error.reason().to_string(),
            retryable: error.is_retryable(),
        },
    }
}
