//! Requests to services and their replies, matched by correlation headers.
//!
//! A request carries these headers (values are UTF-8):
//!
//! | header | value |
//! |---|---|
//! | `correlation-id` | the saga id |
//! | `idempotency-key` | `ORCHESTRATOR/SAGA_ID/STEP/action` or `.../compensation`, the same for every attempt |
//! | `reply-to` | the topic the orchestrator reads replies from |
//! | `saga-orchestrator`, `saga-name` | the orchestrator and the saga definition |
//! | `saga-step`, `saga-step-name` | the step's index and name |
//! | `saga-kind` | `action` or `compensation` |
//! | `saga-attempt` | the attempt, from 1 |
//! | `saga-request-id` | the request's message id, `IDEMPOTENCY_KEY/ATTEMPT` |
//!
//! A reply copies the correlation headers and adds `saga-outcome`: `ok` with the output as
//! payload, or `retry` or `fail` with the reason as payload. Its message id is the request id
//! followed by `/reply`, so a service that replies twice to one request stores one reply
//! within the reply topic's dedup window.

use aqueduct::{Broker, Delivery, Message, Receipt};
use serde_bytes::ByteBuf;

use super::context::idempotency_key;
use super::error::{SagaError, StepError};
use super::record::{PendingRequest, FORMAT_VERSION};
use super::state::StepKind;

/// Header that carries the correlation id: the saga id for saga requests and replies, the
/// flow's id for [`Choreography`](crate::Choreography) events.
pub const CORRELATION_ID_HEADER: &str = "correlation-id";

/// Header that carries a request's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

const REPLY_TO: &str = "reply-to";
const ORCHESTRATOR: &str = "saga-orchestrator";
const SAGA: &str = "saga-name";
const STEP: &str = "saga-step";
const STEP_NAME: &str = "saga-step-name";
const KIND: &str = "saga-kind";
const ATTEMPT: &str = "saga-attempt";
const REQUEST_ID: &str = "saga-request-id";
const OUTCOME: &str = "saga-outcome";

/// Everything needed to address one attempt of one side of one step.
pub(crate) struct RequestTarget<'a> {
    pub orchestrator: &'a str,
    pub saga: &'a str,
    pub saga_id: &'a str,
    pub step: u32,
    pub step_name: &'a str,
    pub kind: StepKind,
    pub attempt: u32,
    pub topic: &'a str,
    pub reply_to: &'a str,
}

impl RequestTarget<'_> {
    pub(crate) fn message_id(&self) -> String {
        let key = idempotency_key(self.orchestrator, self.saga_id, self.step_name, self.kind);
        format!("{key}/{}", self.attempt)
    }

    /// Builds the request to store and publish.
    pub(crate) fn request(&self, payload: Vec<u8>) -> PendingRequest {
        let message_id = self.message_id();
        let key = idempotency_key(self.orchestrator, self.saga_id, self.step_name, self.kind);
        let headers = [
            (CORRELATION_ID_HEADER, self.saga_id.to_string()),
            (IDEMPOTENCY_KEY_HEADER, key),
            (REPLY_TO, self.reply_to.to_string()),
            (ORCHESTRATOR, self.orchestrator.to_string()),
            (SAGA, self.saga.to_string()),
            (STEP, self.step.to_string()),
            (STEP_NAME, self.step_name.to_string()),
            (KIND, self.kind.as_str().to_string()),
            (ATTEMPT, self.attempt.to_string()),
            (REQUEST_ID, message_id.clone()),
        ];
        PendingRequest {
            version: FORMAT_VERSION,
            topic: self.topic.to_string(),
            message_id,
            key: ByteBuf::from(self.saga_id.as_bytes().to_vec()),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.to_string(), ByteBuf::from(value.into_bytes())))
                .collect(),
            payload: ByteBuf::from(payload),
        }
    }
}

impl PendingRequest {
    pub(crate) fn to_message(&self) -> Message {
        let mut message = Message::new(self.payload.to_vec())
            .key(self.key.to_vec())
            .id(self.message_id.clone());
        for (name, value) in &self.headers {
            message = message.header(name.clone(), value.to_vec());
        }
        message
    }
}

/// A request from a saga orchestrator, as a service receives it.
///
/// # Examples
///
/// A service that books hotel rooms once per saga step, even when a retry after a timeout
/// delivers the request again:
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Broker, TopicConfig};
/// use aqueduct_patterns::{Action, Inbox, InboxError, Processed, Saga, SagaOrchestrator, SagaRequest, SagaState, Step};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("hotels", TopicConfig::default())?;
/// let saga = Saga::new("trip").step(Step::new(
///     "book-hotel",
///     Action::request("hotels", |ctx| Ok(ctx.input().to_vec())),
/// ));
/// let orchestrator = SagaOrchestrator::open(&broker, "trips", vec![saga])?;
/// orchestrator.start("trip", "trip-1", b"Lisbon".to_vec())?;
/// orchestrator.poll()?; // publishes the request
///
/// let bookings = broker.tree("bookings")?;
/// let inbox = Inbox::open(&broker, "hotel-service")?;
/// let mut consumer = broker.subscribe("hotels", "hotel-service")?;
/// let delivery = consumer.recv_timeout(Duration::from_secs(1))?.expect("a request");
/// let request = SagaRequest::parse(&delivery)?;
/// let key = request.idempotency_key().to_string();
/// let outcome = inbox.process_key::<_, InboxError, _>(&key, &[bookings.clone()], |trees| {
///     trees[0].insert(key.as_bytes(), request.payload())?;
///     Ok(())
/// })?;
/// // A duplicate was booked earlier; the reply is the same either way.
/// let _ = matches!(outcome, Processed::Duplicate);
/// request.reply(&broker, Ok(b"room 101".to_vec()))?;
/// delivery.ack()?;
///
/// orchestrator.poll()?; // reads the reply
/// assert_eq!(orchestrator.status("trip-1")?.state, SagaState::Completed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaRequest {
    orchestrator: String,
    saga: String,
    saga_id: String,
    step: u32,
    step_name: String,
    kind: StepKind,
    attempt: u32,
    idempotency_key: String,
    reply_to: String,
    request_id: String,
    payload: Vec<u8>,
}

impl SagaRequest {
    /// Reads a saga request from a delivery's headers and payload.
    ///
    /// # Errors
    ///
    /// [`SagaError::InvalidRequest`] naming the missing or invalid header.
    pub fn parse(delivery: &Delivery) -> Result<Self, SagaError> {
        let invalid = |reason: String| SagaError::InvalidRequest {
            topic: delivery.topic().to_string(),
            partition: delivery.partition(),
            offset: delivery.offset(),
            reason,
        };
        let text = |name: &str| -> Result<String, SagaError> {
            let value = delivery
                .header(name)
                .ok_or_else(|| invalid(format!("header {name:?} is missing")))?;
            String::from_utf8(value.to_vec())
                .map_err(|_| invalid(format!("header {name:?} is not UTF-8")))
        };
        let number = |name: &str| -> Result<u32, SagaError> {
            text(name)?
                .parse()
                .map_err(|_| invalid(format!("header {name:?} is not a number")))
        };
        let kind = text(KIND)?;
        let kind = StepKind::parse(&kind)
            .ok_or_else(|| invalid(format!("header {KIND:?} is {kind:?}")))?;
        Ok(SagaRequest {
            orchestrator: text(ORCHESTRATOR)?,
            saga: text(SAGA)?,
            saga_id: text(CORRELATION_ID_HEADER)?,
            step: number(STEP)?,
            step_name: text(STEP_NAME)?,
            kind,
            attempt: number(ATTEMPT)?,
            idempotency_key: text(IDEMPOTENCY_KEY_HEADER)?,
            reply_to: text(REPLY_TO)?,
            request_id: text(REQUEST_ID)?,
            payload: delivery.payload().to_vec(),
        })
    }

    /// Publishes the reply: `Ok` with the step's output, or the step's error. Publishing the
    /// same reply twice stores it once within the reply topic's dedup window.
    ///
    /// The call returns after a broker flush made the reply durable, so ack the request after
    /// it. In `Durability::Buffered` mode an ack could otherwise reach the disk in a flush
    /// round that the reply misses. A crash would then lose the reply while the request counts
    /// as done, and the saga would wait for the step's timeout.
    ///
    /// A compensation request can arrive before a late attempt of the action it undoes (the
    /// action timed out and its request still waits in a queue). A service that records the
    /// action's [`idempotency_key`](Self::idempotency_key) in its inbox when it compensates
    /// turns that late action into a duplicate.
    ///
    /// # Examples
    ///
    /// See [`SagaRequest`].
    ///
    /// # Errors
    ///
    /// [`SagaError::Broker`] when the publish or the flush fails. Retry the call, or leave the
    /// request unacked so that it is delivered again.
    pub fn reply(
        &self,
        broker: &Broker,
        result: Result<Vec<u8>, StepError>,
    ) -> Result<Receipt, SagaError> {
        let (outcome, payload) = match result {
            Ok(output) => ("ok", output),
            Err(error) if error.is_retryable() => ("retry", error.reason().as_bytes().to_vec()),
            Err(error) => ("fail", error.reason().as_bytes().to_vec()),
        };
        let message = Message::new(payload)
            .key(self.saga_id.clone())
            .id(format!("{}/reply", self.request_id))
            .header(CORRELATION_ID_HEADER, self.saga_id.clone())
            .header(ORCHESTRATOR, self.orchestrator.clone())
            .header(STEP, self.step.to_string())
            .header(KIND, self.kind.as_str())
            .header(ATTEMPT, self.attempt.to_string())
            .header(REQUEST_ID, self.request_id.clone())
            .header(OUTCOME, outcome);
        let broker_error = |source| SagaError::Broker {
            orchestrator: self.orchestrator.clone(),
            source: Box::new(source),
        };
        let receipt = broker
            .publish(&self.reply_to, message)
            .map_err(broker_error)?;
        broker.flush().map_err(broker_error)?;
        Ok(receipt)
    }

    /// Returns the orchestrator that sent the request.
    pub fn orchestrator(&self) -> &str {
        &self.orchestrator
    }

    /// Returns the saga definition's name.
    pub fn saga(&self) -> &str {
        &self.saga
    }

    /// Returns the saga id, which is also the request's correlation id.
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    /// Returns the step's name.
    pub fn step_name(&self) -> &str {
        &self.step_name
    }

    /// Returns the step's index in the saga definition, from 0.
    pub fn step_index(&self) -> u32 {
        self.step
    }

    /// Returns whether the action or the compensation is requested.
    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// Returns the attempt, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Returns the key that is the same for every attempt of this side of this step; see
    /// [`StepContext::idempotency_key`](crate::StepContext::idempotency_key).
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// Returns the idempotency key of the step's action, for a compensation that marks the action as
    /// handled.
    pub fn action_key(&self) -> String {
        idempotency_key(
            &self.orchestrator,
            &self.saga_id,
            &self.step_name,
            StepKind::Action,
        )
    }

    /// Returns the topic the reply goes to.
    pub fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// Returns the request's message id, which differs for every attempt.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Returns the payload built by the step's request builder.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// A reply as the orchestrator reads it.
#[derive(Debug)]
pub(crate) struct ParsedReply {
    pub orchestrator: String,
    pub saga_id: String,
    pub step: u32,
    pub kind: StepKind,
    pub attempt: u32,
    pub result: Result<Vec<u8>, StepError>,
}

impl ParsedReply {
    /// Reads a reply; `None` when a header is missing or invalid.
    pub(crate) fn parse(delivery: &Delivery) -> Option<Self> {
        let text = |name: &str| -> Option<String> {
            String::from_utf8(delivery.header(name)?.to_vec()).ok()
        };
        let payload = delivery.payload().to_vec();
        let result = match text(OUTCOME)?.as_str() {
            "ok" => Ok(payload),
            "retry" => Err(StepError::retry(String::from_utf8_lossy(&payload))),
            "fail" => Err(StepError::fail(String::from_utf8_lossy(&payload))),
            _ => return None,
        };
        Some(ParsedReply {
            orchestrator: text(ORCHESTRATOR)?,
            saga_id: text(CORRELATION_ID_HEADER)?,
            step: text(STEP)?.parse().ok()?,
            kind: StepKind::parse(&text(KIND)?)?,
            attempt: text(ATTEMPT)?.parse().ok()?,
            result,
        })
    }
}
