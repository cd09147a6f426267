//! The orchestrator handle: opening, starting sagas, status queries and operator actions.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, Consumer, Retention, TopicConfig};
use parking_lot::Mutex;
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::signal::Signal;

use super::config::SagaConfig;
use super::definition::Saga;
use super::error::SagaError;
use super::names::{validate_name, MAX_ID_LEN, MAX_NAME_LEN};
use super::record::{encode, Phase, SagaRecord, FORMAT_VERSION};
use super::state::{Activity, HistoryEvent, SagaState, SagaStatus, SagaSummary, StepKind};
use super::store::{Inserted, Store};
use super::transition::{begin_compensation, finish, resume_compensation, step_name};

/// The outcome of [`SagaOrchestrator::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// A new saga was stored; its first step runs at the next poll.
    Created,
    /// A saga with this id, definition and input exists already; nothing changed.
    AlreadyStarted,
}

/// Runs sagas: stores each saga's state machine and history in sled, runs local steps, sends
/// requests and reads replies, retries, times out and compensates.
///
/// `SagaOrchestrator` is a cheap handle; clones share the orchestrator. Progress happens in
/// [`poll`](Self::poll), called in a loop by the application or by a background thread from
/// [`spawn`](Self::spawn). Open one orchestrator per name and database.
///
/// # Examples
///
/// ```
/// use aqueduct::Broker;
/// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step, StepError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// let saga = Saga::new("transfer")
///     .step(Step::new("debit", Action::local(|_| Ok(b"debited".to_vec())))
///         .compensation(Action::local(|_| Ok(Vec::new()))))
///     .step(Step::new("credit", Action::local(|_| Err(StepError::fail("account closed")))));
/// let orchestrator = SagaOrchestrator::open(&broker, "bank", vec![saga])?;
///
/// orchestrator.start("transfer", "transfer-1", b"100".to_vec())?;
/// orchestrator.poll()?;
///
/// let status = orchestrator.status("transfer-1")?;
/// assert_eq!(status.state, SagaState::Compensated);
/// assert_eq!(status.compensated_steps, ["debit"]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SagaOrchestrator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub name: String,
    pub broker: Broker,
    pub store: Store,
    pub sagas: HashMap<String, Saga>,
    pub config: SagaConfig,
    pub reply_topic: String,
    /// Reply consumers; holding the lock makes one thread poll at a time.
    pub consumers: Mutex<Vec<Consumer>>,
    /// Requests published whose stored copies wait for a broker flush before removal.
    pub published: Mutex<Vec<(String, sled::IVec)>>,
    /// Failed request publishes since open, to log only some of them.
    pub publish_failures: AtomicU64,
    /// Bumped when a saga is started or changed by an operator, to wake a runner.
    pub wake: Signal,
}

impl SagaOrchestrator {
    /// Opens the orchestrator `name` with default settings.
    ///
    /// # Examples
    ///
    /// See [`SagaOrchestrator`].
    ///
    /// # Errors
    ///
    /// As for [`open_with`](Self::open_with).
    pub fn open(broker: &Broker, name: &str, sagas: Vec<Saga>) -> Result<Self, SagaError> {
        Self::open_with(broker, name, sagas, SagaConfig::default())
    }

    /// Opens or creates the orchestrator `name` in the broker's database with the saga
    /// definitions it runs, and resumes every unfinished saga. Local attempts that were running
    /// when the process stopped count as interrupted and are retried. Stored requests are
    /// published again, and sagas waiting for replies keep waiting until their deadlines.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaConfig, SagaOrchestrator, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let config = SagaConfig::default().flush_on_commit(false);
    /// let orchestrator = SagaOrchestrator::open_with(&broker, "accounts", vec![saga], config)?;
    /// assert_eq!(orchestrator.name(), "accounts");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::InvalidName`], [`SagaError::InvalidDefinition`] (also for two definitions
    /// with one name), [`SagaError::InvalidConfig`], [`SagaError::TopicNotFound`] for a
    /// request or reply topic that does not exist, [`SagaError::Broker`] and
    /// [`SagaError::Storage`].
    pub fn open_with(
        broker: &Broker,
        name: &str,
        sagas: Vec<Saga>,
        config: SagaConfig,
    ) -> Result<Self, SagaError> {
        validate_name("orchestrator", name, MAX_NAME_LEN)?;
        validate_config(&config)?;
        let sagas = index_sagas(sagas)?;
        let broker_error = |source| SagaError::Broker {
            orchestrator: name.to_string(),
            source: Box::new(source),
        };
        let known: BTreeSet<String> = broker.topics().into_iter().map(|(t, _)| t).collect();
        for saga in sagas.values() {
            for (step, topic) in saga.request_topics() {
                if !known.contains(topic) {
                    return Err(SagaError::TopicNotFound {
                        saga: saga.name.clone(),
                        step: step.name.clone(),
                        topic: topic.to_string(),
                    });
                }
            }
        }

        let reply_topic = config
            .reply_topic
            .clone()
            .unwrap_or_else(|| format!("saga.{name}.replies"));
        let uses_requests = sagas
            .values()
            .any(|saga| saga.request_topics().next().is_some());
        let mut consumers = Vec::new();
        if uses_requests {
            if config.reply_topic.is_none() {
                let topic_config = TopicConfig::default().retention(Retention::UntilAcked);
                broker
                    .create_topic(&reply_topic, topic_config)
                    .map_err(broker_error)?;
            } else if !known.contains(&reply_topic) {
                return Err(SagaError::InvalidConfig {
                    setting: "SagaConfig::reply_topic",
                    value: reply_topic,
                    expected: "an existing topic; create it with Broker::create_topic first",
                });
            }
            let group = format!("saga.{name}");
            consumers.push(
                broker
                    .subscribe(&reply_topic, &group)
                    .map_err(broker_error)?,
            );
        }

        let tree = broker.tree(&format!("saga.{name}")).map_err(broker_error)?;
        let store = Store::new(name, tree, config.flush_on_commit);
        let orchestrator = SagaOrchestrator {
            inner: Arc::new(Inner {
                name: name.to_string(),
                broker: broker.clone(),
                store,
                sagas,
                config,
                reply_topic,
                consumers: Mutex::new(consumers),
                published: Mutex::new(Vec::new()),
                publish_failures: AtomicU64::new(0),
                wake: Signal::default(),
            }),
        };
        orchestrator.inner.recover()?;
        Ok(orchestrator)
    }

    /// Returns the orchestrator's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Returns the topic that services reply to.
    pub fn reply_topic(&self) -> &str {
        &self.inner.reply_topic
    }

    /// Starts saga `saga_id` of definition `saga` with `input`. Starting an id again with the
    /// same definition and input changes nothing, so a caller that crashed can repeat the call.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, Started, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// assert_eq!(orchestrator.start("signup", "user-7", b"ada".to_vec())?, Started::Created);
    /// assert_eq!(orchestrator.start("signup", "user-7", b"ada".to_vec())?, Started::AlreadyStarted);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::InvalidName`] for a saga id that is not 1 to 200 characters from
    /// `[A-Za-z0-9._-]`, [`SagaError::UnknownSaga`], [`SagaError::Conflict`] when the id exists
    /// with another definition or input, [`SagaError::Storage`].
    pub fn start(
        &self,
        saga: &str,
        saga_id: &str,
        input: impl Into<Vec<u8>>,
    ) -> Result<Started, SagaError> {
        let inner = &self.inner;
        validate_name("saga id", saga_id, MAX_ID_LEN)?;
        let definition = inner
            .sagas
            .get(saga)
            .ok_or_else(|| SagaError::UnknownSaga {
                orchestrator: inner.name.clone(),
                saga: saga.to_string(),
            })?;
        let input = input.into();
        let now = inner.config.clock.now_ms();
        let record = new_record(definition, saga_id, &input, now);
        let event = HistoryEvent::Started {
            saga: saga.to_string(),
        };

        match inner.store.insert(&record, event)? {
            Inserted::New => {
                tracing::info!(orchestrator = %inner.name, saga, saga_id, "saga started");
                inner.wake.bump();
                Ok(Started::Created)
            }
            Inserted::Existing(existing) => {
                let differs = if existing.saga != saga {
                    "another definition"
                } else if existing.input[..] != input[..] {
                    "another input"
                } else {
                    return Ok(Started::AlreadyStarted);
                };
                Err(SagaError::Conflict {
                    saga_id: saga_id.to_string(),
                    existing: existing.saga.clone(),
                    differs,
                })
            }
        }
    }

    /// Starts a saga whose input is `input` encoded with postcard; see [`start`](Self::start).
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let greet = Action::local(|ctx| {
    ///     let name: String = ctx.decode_input()?;
    ///     Ok(format!("hello {name}").into_bytes())
    /// });
    /// let saga = Saga::new("greet").step(Step::new("greet", greet));
    /// let orchestrator = SagaOrchestrator::open(&broker, "greeter", vec![saga])?;
    /// orchestrator.start_encoded("greet", "greeting-1", &"ada".to_string())?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::Encode`], and as for [`start`](Self::start).
    pub fn start_encoded<T: Serialize>(
        &self,
        saga: &str,
        saga_id: &str,
        input: &T,
    ) -> Result<Started, SagaError> {
        let bytes = encode(input)?;
        self.start(saga, saga_id, bytes)
    }

    /// Returns where saga `saga_id` is, since when and why, with its whole history.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// let status = orchestrator.status("user-7")?;
    /// assert_eq!(status.state, SagaState::Running);
    /// assert_eq!(status.history.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::NotFound`], [`SagaError::Corrupt`], [`SagaError::Storage`].
    pub fn status(&self, saga_id: &str) -> Result<SagaStatus, SagaError> {
        let store = &self.inner.store;
        let record = store
            .load(saga_id)?
            .ok_or_else(|| store.not_found(saga_id))?;
        let history = store.history(saga_id, record.history_len)?;
        Ok(status_of(&record, history))
    }

    /// Lists up to `limit` sagas in `state`, least recently changed first, so that the ones
    /// stuck longest come first.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// orchestrator.poll()?;
    /// let done = orchestrator.list(SagaState::Completed, 10)?;
    /// assert_eq!(done[0].id, "user-7");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::Corrupt`], [`SagaError::Storage`].
    pub fn list(&self, state: SagaState, limit: usize) -> Result<Vec<SagaSummary>, SagaError> {
        let store = &self.inner.store;
        let mut summaries = Vec::new();
        for id in store.ids_in_state(state, limit)? {
            if let Some(record) = store.load(&id)? {
                summaries.push(summary_of(&record));
            }
        }
        Ok(summaries)
    }

    /// Lists up to `limit` unfinished sagas (running, compensating or waiting for an operator)
    /// that have not changed for at least `older_than`, least recently changed first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// assert_eq!(orchestrator.stuck(Duration::ZERO, 10)?.len(), 1);
    /// assert!(orchestrator.stuck(Duration::from_secs(3600), 10)?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::Corrupt`], [`SagaError::Storage`].
    pub fn stuck(&self, older_than: Duration, limit: usize) -> Result<Vec<SagaSummary>, SagaError> {
        let now = self.inner.config.clock.now_ms();
        let cutoff = now.saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
        let store = &self.inner.store;
        let mut found = Vec::new();
        for state in [
            SagaState::Running,
            SagaState::Compensating,
            SagaState::NeedsOperator,
        ] {
            for id in store.ids_changed_before(state, cutoff, limit)? {
                if let Some(record) = store.load(&id)? {
                    found.push(summary_of(&record));
                }
            }
        }
        found.sort_by(|a, b| a.updated_ms.cmp(&b.updated_ms).then(a.id.cmp(&b.id)));
        found.truncate(limit);
        Ok(found)
    }

    /// Stops saga `saga_id` without compensating anything more: it becomes
    /// [`SagaState::Aborted`] with `reason`. A running local attempt finishes, and its result
    /// and late replies are ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// orchestrator.abort("user-7", "duplicate signup")?;
    /// assert_eq!(orchestrator.status("user-7")?.state, SagaState::Aborted);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::InvalidTransition`] for a saga that has finished, [`SagaError::NotFound`],
    /// [`SagaError::Storage`].
    pub fn abort(&self, saga_id: &str, reason: &str) -> Result<(), SagaError> {
        let inner = &self.inner;
        let now = inner.config.clock.now_ms();
        let updated = inner.store.update(saga_id, now, |record, change| {
            if record.state.is_final() {
                return Err(invalid_transition(record, "abort", "it has finished"));
            }
            finish(
                record,
                change,
                SagaState::Aborted,
                &format!("aborted by an operator: {reason}"),
            );
            Ok(true)
        })?;
        if let Some(updated) = updated {
            inner.log_events(saga_id, &updated.events);
        }
        inner.wake.bump();
        Ok(())
    }

    /// Compensates saga `saga_id` now. A running saga stops its forward steps and compensates
    /// every step that may have taken effect, including the current one when its attempt is
    /// under way. A saga waiting for an operator retries its failed compensation with a fresh
    /// retry budget.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// orchestrator.compensate("user-7", "customer cancelled")?;
    /// orchestrator.poll()?;
    /// assert_eq!(orchestrator.status("user-7")?.state, SagaState::Compensated);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::InvalidTransition`] for a saga that is compensating already or has
    /// finished, [`SagaError::NotFound`], [`SagaError::Storage`].
    pub fn compensate(&self, saga_id: &str, reason: &str) -> Result<(), SagaError> {
        let inner = &self.inner;
        let now = inner.config.clock.now_ms();
        let updated = inner.store.update(saga_id, now, |record, change| {
            let saga = inner.sagas.get(&record.saga);
            match (record.state, saga) {
                (SagaState::Compensating, _) => Err(invalid_transition(
                    record,
                    "compensate",
                    "it is compensating already; wait for it or abort it",
                )),
                (state, _) if state.is_final() => {
                    Err(invalid_transition(record, "compensate", "it has finished"))
                }
                (_, None) => Err(SagaError::UnknownSaga {
                    orchestrator: inner.name.clone(),
                    saga: record.saga.clone(),
                }),
                (SagaState::NeedsOperator, Some(_))
                    if matches!(
                        record.phase,
                        Phase::Scheduled {
                            kind: StepKind::Compensation,
                            ..
                        }
                    ) =>
                {
                    let state_reason = format!("compensation resumed by an operator: {reason}");
                    resume_compensation(record, change, state_reason, now);
                    Ok(true)
                }
                (_, Some(saga)) => {
                    if matches!(
                        record.phase,
                        Phase::InFlight {
                            kind: StepKind::Action,
                            ..
                        }
                    ) {
                        record.uncertain = true;
                    }
                    let state_reason = format!("compensation requested by an operator: {reason}");
                    begin_compensation(record, change, saga, state_reason, now);
                    Ok(true)
                }
            }
        })?;
        if let Some(updated) = updated {
            inner.log_events(saga_id, &updated.events);
        }
        inner.wake.bump();
        Ok(())
    }

    /// Removes up to `limit` finished sagas (completed, compensated or aborted) with their
    /// history, if they have not changed for at least `older_than`. Returns how many it
    /// removed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let saga = Saga::new("signup").step(Step::new("create-user", Action::local(|_| Ok(Vec::new()))));
    /// let orchestrator = SagaOrchestrator::open(&broker, "accounts", vec![saga])?;
    /// orchestrator.start("signup", "user-7", Vec::new())?;
    /// orchestrator.poll()?;
    /// assert_eq!(orchestrator.remove_finished(Duration::ZERO, 100)?, 1);
    /// assert!(orchestrator.status("user-7").is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SagaError::Corrupt`], [`SagaError::Storage`].
    pub fn remove_finished(&self, older_than: Duration, limit: usize) -> Result<usize, SagaError> {
        let store = &self.inner.store;
        let now = self.inner.config.clock.now_ms();
        let cutoff = now.saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
        let mut removed = 0;
        for state in [
            SagaState::Completed,
            SagaState::Compensated,
            SagaState::Aborted,
        ] {
            let remaining = limit.saturating_sub(removed);
            for id in store.ids_changed_before(state, cutoff, remaining)? {
                let Some(record) = store.load(&id)? else {
                    continue;
                };
                if store.remove(&record)? {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::debug!(orchestrator = %self.inner.name, removed, "removed finished sagas");
        }
        Ok(removed)
    }
}

impl std::fmt::Debug for SagaOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaOrchestrator")
            .field("name", &self.inner.name)
            .field("sagas", &self.inner.sagas.keys().collect::<Vec<_>>())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn validate_config(config: &SagaConfig) -> Result<(), SagaError> {
    let wait = config.idle_wait;
    if wait < Duration::from_millis(1) || wait > Duration::from_secs(10) {
        return Err(SagaError::InvalidConfig {
            setting: "SagaConfig::idle_wait",
            value: format!("{wait:?}"),
            expected: "1 ms to 10 s",
        });
    }
    if let Some(topic) = &config.reply_topic {
        if super::names::name_problem(topic, aqueduct::MAX_NAME_LEN).is_some() {
            return Err(SagaError::InvalidConfig {
                setting: "SagaConfig::reply_topic",
                value: topic.clone(),
                expected: "a topic name of 1 to 249 characters from [A-Za-z0-9._-]",
            });
        }
    }
    Ok(())
}

fn index_sagas(sagas: Vec<Saga>) -> Result<HashMap<String, Saga>, SagaError> {
    let mut index = HashMap::new();
    for saga in sagas {
        saga.validate()?;
        if index.contains_key(&saga.name) {
            return Err(SagaError::InvalidDefinition {
                saga: saga.name.clone(),
                reason: "two definitions have this name; give each its own".to_string(),
            });
        }
        index.insert(saga.name.clone(), saga);
    }
    Ok(index)
}

fn new_record(saga: &Saga, saga_id: &str, input: &[u8], now_ms: u64) -> SagaRecord {
    SagaRecord {
        version: FORMAT_VERSION,
        saga: saga.name.clone(),
        id: saga_id.to_string(),
        input: ByteBuf::from(input.to_vec()),
        state: SagaState::Running,
        reason: None,
        created_ms: now_ms,
        state_since_ms: now_ms,
        updated_ms: now_ms,
        phase: Phase::Scheduled {
            step: 0,
            kind: StepKind::Action,
            attempt: 1,
            first_attempt: 1,
        },
        outputs: Default::default(),
        compensated: Vec::new(),
        to_compensate: Vec::new(),
        uncertain: false,
        timer_ms: Some(now_ms),
        history_len: 0,
        step_names: saga.steps.iter().map(|step| step.name.clone()).collect(),
    }
}

fn invalid_transition(record: &SagaRecord, action: &'static str, hint: &'static str) -> SagaError {
    SagaError::InvalidTransition {
        saga_id: record.id.clone(),
        state: record.state,
        action,
        hint,
    }
}

fn summary_of(record: &SagaRecord) -> SagaSummary {
    SagaSummary {
        id: record.id.clone(),
        saga: record.saga.clone(),
        state: record.state,
        updated_ms: record.updated_ms,
        reason: record.reason.clone(),
    }
}

fn status_of(record: &SagaRecord, history: Vec<super::state::HistoryEntry>) -> SagaStatus {
    let activity = match (&record.phase, record.timer_ms) {
        (
            Phase::Scheduled {
                step,
                kind,
                attempt,
                ..
            },
            Some(due_ms),
        ) => Activity::Scheduled {
            step: step_name(record, *step),
            kind: *kind,
            attempt: *attempt,
            due_ms,
        },
        (Phase::Scheduled { step, .. }, None) => Activity::Idle {
            step: Some(step_name(record, *step)),
        },
        (
            Phase::InFlight {
                step,
                kind,
                attempt,
                deadline_ms,
                ..
            },
            _,
        ) => Activity::InFlight {
            step: step_name(record, *step),
            kind: *kind,
            attempt: *attempt,
            deadline_ms: *deadline_ms,
        },
        (Phase::Idle, _) => Activity::Idle { step: None },
    };
    SagaStatus {
        id: record.id.clone(),
        saga: record.saga.clone(),
        state: record.state,
        state_since_ms: record.state_since_ms,
        reason: record.reason.clone(),
        activity,
        completed_steps: record
            .outputs
            .keys()
            .map(|&step| step_name(record, step))
            .collect(),
        compensated_steps: record
            .compensated
            .iter()
            .map(|&step| step_name(record, step))
            .collect(),
        created_ms: record.created_ms,
        updated_ms: record.updated_ms,
        history,
    }
}
