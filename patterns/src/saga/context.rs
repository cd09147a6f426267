//! The context a step's closure runs in: the saga, the step, the attempt and earlier outputs.

use serde::de::DeserializeOwned;
use sled::transaction::{
    ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree,
};

use super::definition::Step;
use super::error::{SagaError, StepError};
use super::record::{memo_key, SagaRecord, FORMAT_VERSION};
use super::state::StepKind;

/// The saga and attempt that a step's closure runs for.
///
/// Handed to local actions and compensations and to the payload builders of requests.
pub struct StepContext<'a> {
    pub(crate) orchestrator: &'a str,
    pub(crate) record: &'a SagaRecord,
    pub(crate) steps: &'a [Step],
    pub(crate) step: u32,
    pub(crate) kind: StepKind,
    pub(crate) attempt: u32,
    pub(crate) deadline_ms: u64,
    pub(crate) now_ms: u64,
    pub(crate) tree: &'a sled::Tree,
}

impl StepContext<'_> {
    /// Returns the saga id.
    pub fn saga_id(&self) -> &str {
        &self.record.id
    }

    /// Returns the saga definition's name.
    pub fn saga(&self) -> &str {
        &self.record.saga
    }

    /// Returns the step's name.
    pub fn step_name(&self) -> &str {
        self.steps
            .get(self.step as usize)
            .map_or("", |step| step.name.as_str())
    }

    /// Returns the step's index in the definition, from 0.
    pub fn step_index(&self) -> u32 {
        self.step
    }

    /// Returns whether the action or the compensation runs.
    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// Returns the attempt, from 1. Attempts keep counting after an operator restarts a compensation.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Returns when this attempt times out, in milliseconds since the Unix epoch (orchestrator clock).
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Returns the orchestrator clock's time when the attempt started.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Returns the key that identifies this side of this step of this saga:
    /// `ORCHESTRATOR/SAGA_ID/STEP/action` or `.../compensation`.
    ///
    /// The key is the same for every attempt, so a service that records it with the
    /// [`Inbox`](crate::Inbox) in the same transaction as its effect acts once, even when a
    /// timed-out attempt and its retry both reach it. Requests carry it in the
    /// `idempotency-key` header.
    pub fn idempotency_key(&self) -> String {
        idempotency_key(
            self.orchestrator,
            self.saga_id(),
            self.step_name(),
            self.kind,
        )
    }

    /// Returns the saga's input bytes, as passed to `start`.
    pub fn input(&self) -> &[u8] {
        &self.record.input
    }

    /// Decodes the input with postcard.
    ///
    /// # Errors
    ///
    /// [`SagaError::Decode`] naming the saga and the type; it converts into a permanent
    /// [`StepError`].
    pub fn decode_input<T: DeserializeOwned>(&self) -> Result<T, SagaError> {
        self.decode("input".to_string(), self.input())
    }

    /// Returns the output of a step whose action succeeded, by step name. In a compensation this
    /// includes the compensated step itself, unless its action's result is unknown.
    pub fn output(&self, step: &str) -> Option<&[u8]> {
        let index = self.steps.iter().position(|s| s.name == step)?;
        let index = u32::try_from(index).ok()?;
        self.record.outputs.get(&index).map(|bytes| &bytes[..])
    }

    /// Decodes a step's output with postcard; `Ok(None)` when the step has no output.
    ///
    /// # Errors
    ///
    /// [`SagaError::Decode`] naming the saga, the step and the type.
    pub fn decode_output<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, SagaError> {
        match self.output(step) {
            None => Ok(None),
            Some(bytes) => self
                .decode(format!("output of step {step:?}"), bytes)
                .map(Some),
        }
    }

    /// Runs `effect` once per saga, step and side: in one sled transaction with a record of its
    /// output in the saga's tree. When the record exists, `effect` does not run and the stored
    /// output is returned, so a retry or a run after a crash has no second effect.
    ///
    /// `effect` gets transactional views of `trees`, in the given order, and must touch sled
    /// only through them: the transaction holds sled's process-wide lock. sled may run the
    /// closure more than once before it commits. An `Err` aborts the transaction, so nothing is
    /// recorded and the next attempt runs `effect` again.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::Broker;
    /// use aqueduct_patterns::{Action, Saga, SagaOrchestrator, SagaState, Step};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let seats = broker.tree("seats")?;
    /// let reserve = Action::local(move |ctx| {
    ///     ctx.run_once(&[seats.clone()], |trees| {
    ///         trees[0].insert(ctx.saga_id().as_bytes(), &b"seat 12A"[..])?;
    ///         Ok(b"seat 12A".to_vec())
    ///     })
    /// });
    /// let saga = Saga::new("reserve-seat").step(Step::new("reserve", reserve));
    /// let orchestrator = SagaOrchestrator::open(&broker, "cinema", vec![saga])?;
    /// orchestrator.start("reserve-seat", "order-1", Vec::new())?;
    /// orchestrator.poll()?;
    /// assert_eq!(orchestrator.status("order-1")?.state, SagaState::Completed);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The error `effect` returned, or a retryable [`StepError`] when sled fails.
    pub fn run_once<F>(&self, trees: &[sled::Tree], effect: F) -> Result<Vec<u8>, StepError>
    where
        F: Fn(&[TransactionalTree]) -> ConflictableTransactionResult<Vec<u8>, StepError>,
    {
        let mut all = Vec::with_capacity(trees.len() + 1);
        all.push(self.tree.clone());
        all.extend_from_slice(trees);
        let key = memo_key(self.saga_id(), self.step, self.kind);

        let result = all.as_slice().transaction(|views| {
            if let Some(stored) = views[0].get(&key)? {
                return Ok((stored.get(1..).unwrap_or_default().to_vec(), false));
            }
            let output = effect(&views[1..])?;
            let mut value = Vec::with_capacity(output.len() + 1);
            value.push(FORMAT_VERSION);
            value.extend_from_slice(&output);
            views[0].insert(key.clone(), value)?;
            Ok((output, true))
        });
        match result {
            Ok((output, ran)) => {
                if !ran {
                    tracing::debug!(
                        saga_id = self.saga_id(),
                        step = self.step_name(),
                        kind = %self.kind,
                        "effect already recorded; returning its output"
                    );
                }
                Ok(output)
            }
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(StepError::retry(format!(
                "storage error while running the effect of {} of step {:?}: {error}",
                self.kind,
                self.step_name()
            ))),
        }
    }

    fn decode<T: DeserializeOwned>(&self, what: String, bytes: &[u8]) -> Result<T, SagaError> {
        postcard::from_bytes(bytes).map_err(|source| SagaError::Decode {
            saga_id: self.saga_id().to_string(),
            what,
            type_name: std::any::type_name::<T>(),
            source,
        })
    }
}

impl std::fmt::Debug for StepContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("saga_id", &self.saga_id())
            .field("step", &self.step_name())
            .field("kind", &self.kind)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Returns the idempotency key of one side of one step of one saga.
pub(crate) fn idempotency_key(
    orchestrator: &str,
    saga_id: &str,
    step: &str,
    kind: StepKind,
) -> String {
    format!("{orchestrator}/{saga_id}/{step}/{}", kind.as_str())
}
