//! Saga definitions: ordered steps, each with an action, a compensation, a timeout and a retry
//! policy.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;

use super::context::StepContext;
use super::error::{SagaError, StepError};
use super::names::{validate_name, MAX_NAME_LEN};

/// Longest accepted step timeout: 7 days.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A closure that runs a local step or builds the payload of a request.
pub(crate) type StepFn = dyn Fn(&StepContext<'_>) -> Result<Vec<u8>, StepError> + Send + Sync;

/// How a step's action or compensation runs: a local closure, or a request to a service
/// through a topic.
///
/// # Examples
///
/// ```
/// use aqueduct_patterns::Action;
///
/// // Runs on the orchestrator's thread; its return value becomes the step's output.
/// let reserve = Action::local(|ctx| Ok(format!("reservation for {}", ctx.saga_id()).into_bytes()));
///
/// // Publishes a request to topic "payments". The service replies with SagaRequest::reply.
/// let charge = Action::request("payments", |ctx| Ok(ctx.input().to_vec()));
/// # let _ = (reserve, charge);
/// ```
#[derive(Clone)]
pub struct Action {
    pub(crate) kind: ActionKind,
}

#[derive(Clone)]
pub(crate) enum ActionKind {
    Local(Arc<StepFn>),
    Request { topic: String, build: Arc<StepFn> },
}

impl Action {
    /// Creates an action that runs `run` on the thread that polls the orchestrator. `Ok` carries
    /// the step's output, which later steps and this step's compensation can read.
    ///
    /// The closure may run more than once for one step: after a retryable error, and again
    /// after a crash that interrupted it. Make its effect idempotent with
    /// [`StepContext::run_once`] or with [`StepContext::idempotency_key`].
    pub fn local<F>(run: F) -> Self
    where
        F: Fn(&StepContext<'_>) -> Result<Vec<u8>, StepError> + Send + Sync + 'static,
    {
        Action {
            kind: ActionKind::Local(Arc::new(run)),
        }
    }

    /// Creates an action that publishes a request to `topic`, with the payload that `build`
    /// returns, and waits for the service's reply (see [`SagaRequest`](crate::SagaRequest)).
    /// An error from `build` counts as the attempt's result, without a request.
    pub fn request<F>(topic: impl Into<String>, build: F) -> Self
    where
        F: Fn(&StepContext<'_>) -> Result<Vec<u8>, StepError> + Send + Sync + 'static,
    {
        Action {
            kind: ActionKind::Request {
                topic: topic.into(),
                build: Arc::new(build),
            },
        }
    }

    /// Returns the request topic, or `None` for a local action.
    pub fn topic(&self) -> Option<&str> {
        match &self.kind {
            ActionKind::Local(_) => None,
            ActionKind::Request { topic, .. } => Some(topic),
        }
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ActionKind::Local(_) => f.write_str("Action::Local"),
            ActionKind::Request { topic, .. } => write!(f, "Action::Request({topic:?})"),
        }
    }
}

/// How often an action or compensation is tried, and how long to wait between tries.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct_patterns::{Backoff, RetryPolicy};
///
/// let policy = RetryPolicy::new(4, Backoff::new(Duration::from_millis(50), Duration::from_secs(1)));
/// assert_eq!(policy.max_attempts(), 4);
/// assert_eq!(policy.delay(2), Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
}

impl RetryPolicy {
    /// Creates a policy of at most `max_attempts` tries (counting the first, at least 1) with
    /// `backoff` between them.
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        RetryPolicy {
            max_attempts,
            backoff,
        }
    }

    /// Returns a policy with a single attempt.
    pub fn once() -> Self {
        RetryPolicy::new(1, Backoff::default())
    }

    /// Returns the maximum number of attempts, counting the first.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Returns the wait after failed attempt `attempt` (from 1) before the next one.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt)
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, waiting 100 ms, then 200 ms.
    fn default() -> Self {
        RetryPolicy::new(
            3,
            Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        )
    }
}

/// One step of a saga.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct_patterns::{Action, RetryPolicy, Step};
///
/// let step = Step::new("book-hotel", Action::request("hotels", |ctx| Ok(ctx.input().to_vec())))
///     .compensation(Action::request("hotels.cancel", |ctx| Ok(ctx.input().to_vec())))
///     .timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::default());
/// assert_eq!(step.name(), "book-hotel");
/// ```
#[derive(Clone, Debug)]
pub struct Step {
    pub(crate) name: String,
    pub(crate) action: Action,
    pub(crate) compensation: Option<Action>,
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
}

impl Step {
    /// Creates a step named `name` (1 to 100 characters from `[A-Za-z0-9._-]`) without a
    /// compensation, with a 30 s timeout, the default retry policy for its action and 8
    /// attempts for its compensation.
    pub fn new(name: impl Into<String>, action: Action) -> Self {
        Step {
            name: name.into(),
            action,
            compensation: None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            compensation_retry: RetryPolicy::new(
                8,
                Backoff::new(Duration::from_millis(200), Duration::from_secs(60)),
            ),
        }
    }

    /// Sets the compensation that undoes the action. A step without one (a query, or a final
    /// notification) is skipped during compensation.
    #[must_use]
    pub fn compensation(mut self, compensation: Action) -> Self {
        self.compensation = Some(compensation);
        self
    }

    /// Sets how long one attempt of the action or the compensation may take: for a request,
    /// until its reply arrives. Default 30 s; bounds 1 ms to 7 days. A local closure is not
    /// interrupted: it reads [`StepContext::deadline_ms`] to honour the timeout itself.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the retry policy of the action. Default: [`RetryPolicy::default`].
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the retry policy of the compensation. Default: 8 attempts, 200 ms doubling up to
    /// 60 s. When it runs out, the saga waits for an operator.
    #[must_use]
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// Returns the step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn side(&self, kind: super::state::StepKind) -> Option<&Action> {
        match kind {
            super::state::StepKind::Action => Some(&self.action),
            super::state::StepKind::Compensation => self.compensation.as_ref(),
        }
    }

    pub(crate) fn policy(&self, kind: super::state::StepKind) -> RetryPolicy {
        match kind {
            super::state::StepKind::Action => self.retry,
            super::state::StepKind::Compensation => self.compensation_retry,
        }
    }

    pub(crate) fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A saga definition: a name and ordered steps.
///
/// # Examples
///
/// ```
/// use aqueduct_patterns::{Action, Saga, Step};
///
/// let saga = Saga::new("transfer")
///     .step(Step::new("debit", Action::local(|_| Ok(Vec::new())))
///         .compensation(Action::local(|_| Ok(Vec::new()))))
///     .step(Step::new("credit", Action::local(|_| Ok(Vec::new()))));
/// assert_eq!(saga.steps().len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Saga {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step>,
}

impl Saga {
    /// Creates a saga definition without steps. The name is 1 to 100 characters from
    /// `[A-Za-z0-9._-]`.
    pub fn new(name: impl Into<String>) -> Self {
        Saga {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    /// Appends a step.
    #[must_use]
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Returns the definition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the steps in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Returns each remote action's and compensation's step and request topic.
    pub(crate) fn request_topics(&self) -> impl Iterator<Item = (&Step, &str)> {
        self.steps.iter().flat_map(|step| {
            let action = step.action.topic().map(|topic| (step, topic));
            let compensation = step
                .compensation
                .as_ref()
                .and_then(Action::topic)
                .map(|topic| (step, topic));
            action.into_iter().chain(compensation)
        })
    }

    pub(crate) fn validate(&self) -> Result<(), SagaError> {
        validate_name("saga", &self.name, MAX_NAME_LEN)?;
        if self.steps.is_empty() {
            return Err(self.invalid("it has no steps; add one with Saga::step".to_string()));
        }
        let mut names = HashSet::new();
        for step in &self.steps {
            validate_name("step", &step.name, MAX_NAME_LEN)?;
            if !names.insert(step.name.as_str()) {
                return Err(self.invalid(format!(
                    "step name {:?} is used twice; give every step its own name",
                    step.name
                )));
            }
            if step.timeout.is_zero() || step.timeout > MAX_TIMEOUT {
                return Err(self.invalid(format!(
                    "step {:?} has timeout {:?}; use 1 ms to 7 days",
                    step.name, step.timeout
                )));
            }
            if step.retry.max_attempts == 0 || step.compensation_retry.max_attempts == 0 {
                return Err(self.invalid(format!(
                    "step {:?} allows 0 attempts; a retry policy needs at least 1",
                    step.name
                )));
            }
        }
        Ok(())
    }

    fn invalid(&self, reason: String) -> SagaError {
        SagaError::InvalidDefinition {
            saga: self.name.clone(),
            reason,
        }
    }
}
