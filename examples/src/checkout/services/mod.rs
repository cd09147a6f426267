//! The services that serve the saga steps: inventory, payment, shipping and email. Each runs
//! as a competing-consumer `WorkerPool` on its request topic.
//!
//! Every service handles a request the same way:
//!
//! 1. If a decision for the request's idempotency key is stored, it is reused: the request is
//!    a redelivery or a retry, and has no second effect.
//! 2. Otherwise the service decides and applies its effect in one sled transaction with the
//!    `Inbox` mark and the stored decision.
//! 3. It publishes the decision's event to `order.events` with a message id derived from the
//!    idempotency key, then replies to the orchestrator. The pool acks the request last.
//!
//! A crash between any two of these steps redelivers the request, which takes the first path.

mod email;
mod inventory;
mod payment;
mod shipping;

use aqueduct::{Broker, Message};
use aqueduct_patterns::{
    HandlerError, Inbox, InboxError, Processed, SagaRequest, StepError, StepKind,
};
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionalTree,
};

use super::messages::OrderEvent;
use super::topics;

pub use self::email::{Email, EmailService};
pub use self::inventory::{InventoryService, StockLedger};
pub use self::payment::{Payment, PaymentService};
pub use self::shipping::ShippingService;

/// The services, for naming crash points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceName {
    /// Reserves and releases stock.
    Inventory,
    /// Charges, pays back and refunds.
    Payment,
    /// Books and cancels shipments.
    Shipping,
    /// Sends confirmations.
    Email,
}

/// The place in a service's handling at which a crash test aborts the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashStage {
    /// After the effect and its inbox mark committed and were flushed, before the event and
    /// the reply.
    AfterEffect,
    /// After the reply was published and flushed, before the request is acked.
    AfterReply,
}

/// A point at which the process aborts, as a crash would stop it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashPoint {
    /// The service.
    pub service: ServiceName,
    /// The invoice whose request triggers the crash.
    pub invoice: String,
    /// The action or its compensation.
    pub kind: StepKind,
    /// The place in the handling.
    pub stage: CrashStage,
}

/// Errors inside a service transaction.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error("stored record {key} does not decode: {source}")]
    Decode {
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("could not encode a record: {0}")]
    Encode(#[source] postcard::Error),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The inventory cannot decide yet, because it depends on earlier orders still running.
    #[error("{0}")]
    Undecided(String),
}

/// A service's decision on one request: the reply and the event that announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Decision {
    pub reply: Result<Vec<u8>, String>,
    pub event: OrderEvent,
}

impl Decision {
    pub fn ok(reply: impl Into<Vec<u8>>, event: OrderEvent) -> Self {
        Decision {
            reply: Ok(reply.into()),
            event,
        }
    }

    pub fn fail(reason: String, event: OrderEvent) -> Self {
        Decision {
            reply: Err(reason),
            event,
        }
    }
}

/// The parts every service has: its broker, inbox, tree and crash point.
#[derive(Clone)]
pub(crate) struct ServiceBase {
    name: ServiceName,
    broker: Broker,
    inbox: Inbox,
    tree: sled::Tree,
    crash: Option<CrashPoint>,
}

impl ServiceBase {
    pub fn open(
        broker: &Broker,
        name: ServiceName,
        tree: &str,
        crash: Option<CrashPoint>,
    ) -> Result<Self, super::CheckoutError> {
        Ok(ServiceBase {
            name,
            broker: broker.clone(),
            inbox: Inbox::open(broker, tree)?,
            tree: broker.tree(tree)?,
            crash: crash.filter(|point| point.service == name),
        })
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Returns the stored decision for `request`, if it was decided before.
    pub fn stored(&self, request: &SagaRequest) -> Result<Option<Decision>, HandlerError> {
        let key = decision_key(request.idempotency_key());
        match self.tree.get(&key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&key, &bytes).map_err(HandlerError::permanent)?)),
        }
    }

    /// Runs `effect` once per idempotency key, in one transaction with the inbox mark and the
    /// stored decision; a duplicate returns the stored decision.
    pub fn decide_once<F>(&self, request: &SagaRequest, effect: F) -> Result<Decision, ServiceError>
    where
        F: Fn(&TransactionalTree) -> ConflictableTransactionResult<Decision, ServiceError>,
    {
        let key = request.idempotency_key();
        let stored_key = decision_key(key);
        let trees = std::slice::from_ref(&self.tree);
        let outcome = self.inbox.process_key(key, trees, |views| {
            let decision = effect(&views[0])?;
            views[0].insert(stored_key.as_bytes(), encode(&decision)?)?;
            Ok(decision)
        })?;
        match outcome {
            Processed::Applied(decision) => Ok(decision),
            Processed::Duplicate => {
                let bytes = self.tree.get(&stored_key)?;
                let bytes = bytes.ok_or_else(|| {
                    ServiceError::Undecided(format!(
                        "request {key} is marked as processed but has no stored decision"
                    ))
                })?;
                decode(&stored_key, &bytes)
            }
        }
    }

    /// Publishes the decision's event and replies, stopping at the crash point if one is set.
    pub fn complete(&self, request: &SagaRequest, decision: Decision) -> Result<(), HandlerError> {
        let invoice = decision.event.invoice().to_string();
        self.crash_at(request, &invoice, CrashStage::AfterEffect);
        let event = Message::encode(&decision.event)?
            .key(invoice.clone())
            .id(format!("{}/event", request.idempotency_key()));
        self.broker.publish(topics::EVENTS, event)?;
        let reply = decision.reply.map_err(StepError::fail);
        request.reply(&self.broker, reply)?;
        self.crash_at(request, &invoice, CrashStage::AfterReply);
        Ok(())
    }

    fn crash_at(&self, request: &SagaRequest, invoice: &str, stage: CrashStage) {
        let Some(point) = &self.crash else { return };
        if point.invoice != invoice || point.kind != request.kind() || point.stage != stage {
            return;
        }
        if let Err(error) = self.broker.flush() {
            tracing::error!(%error, "flush before the crash point failed");
        }
        tracing::warn!(service = ?self.name, invoice, ?stage, "crash point reached; aborting");
        std::process::abort();
    }
}

fn decision_key(idempotency_key: &str) -> String {
    format!("decision/{idempotency_key}")
}

pub(crate) fn encode<T: Serialize>(
    value: &T,
) -> Result<Vec<u8>, ConflictableTransactionError<ServiceError>> {
    postcard::to_stdvec(value)
        .map_err(|source| ConflictableTransactionError::Abort(ServiceError::Encode(source)))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    key: &str,
    bytes: &[u8],
) -> Result<T, ServiceError> {
    postcard::from_bytes(bytes).map_err(|source| ServiceError::Decode {
        key: key.to_string(),
        source,
    })
}

/// Decodes a stored record inside a transaction.
pub(crate) fn decode_in<T: for<'de> Deserialize<'de>>(
    key: &str,
    bytes: &[u8],
) -> Result<T, ConflictableTransactionError<ServiceError>> {
    decode(key, bytes).map_err(ConflictableTransactionError::Abort)
}

/// Parses a request and decodes its payload; both failures dead-letter the message.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    delivery: &aqueduct::Delivery,
) -> Result<(SagaRequest, T), HandlerError> {
    let request = SagaRequest::parse(delivery).map_err(HandlerError::permanent)?;
    let payload = postcard::from_bytes(request.payload()).map_err(HandlerError::permanent)?;
    Ok((request, payload))
}

/// Settings of a service pool with `workers` workers: unordered, with short retry delays.
pub(crate) fn pool_config(workers: usize) -> aqueduct_patterns::WorkerConfig {
    aqueduct_patterns::WorkerConfig::default()
        .workers(workers)
        .retry(aqueduct_patterns::Backoff::new(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_secs(1),
        ))
}
