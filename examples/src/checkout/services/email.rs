//! The email service: sends one confirmation per order. Sending means writing the email to
//! the outgoing mail tree in the same transaction as the inbox mark, so a redelivered request
//! sends nothing twice. An email cannot be taken back, so the step has no compensation.
//!
//! One sled tree `emails` with an [`Email`] per order under `email/INVOICE`.

use std::sync::Arc;

use aqueduct::{Broker, Delivery};
use aqueduct_patterns::{HandlerError, SagaRequest, WorkerPool};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionResult, TransactionalTree};

use super::{
    decode, decode_in, encode, parse, pool_config, CrashPoint, Decision, ServiceBase, ServiceError,
    ServiceName,
};
use crate::checkout::messages::{OrderEvent, OrderRequest};
use crate::checkout::rules::{gbp, Rules};
use crate::checkout::{topics, CheckoutError};

type TxResult<T> = ConflictableTransactionResult<T, ServiceError>;

/// A confirmation email in the outgoing mail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// The recipient.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// Times it was written; more than 1 would be a duplicate email.
    pub sent: u32,
}

/// Sends confirmations.
#[derive(Clone)]
pub struct EmailService {
    base: ServiceBase,
    rules: Rules,
}

impl EmailService {
    /// Opens the service's tree and inbox.
    ///
    /// # Errors
    ///
    /// [`CheckoutError`] when the broker cannot open them.
    pub fn open(
        broker: &Broker,
        rules: Rules,
        crash: Option<CrashPoint>,
    ) -> Result<Self, CheckoutError> {
        let base = ServiceBase::open(broker, ServiceName::Email, "emails", crash)?;
        Ok(EmailService { base, rules })
    }

    /// Starts the pool with `workers` workers.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Workers`] when the pool cannot start.
    pub fn start(
        self: &Arc<Self>,
        broker: &Broker,
        workers: usize,
    ) -> Result<WorkerPool, CheckoutError> {
        let service = Arc::clone(self);
        let pool = WorkerPool::start(
            broker,
            topics::EMAILS,
            "email",
            pool_config(workers),
            move |delivery, _| service.handle(delivery),
        )?;
        Ok(pool)
    }

    /// Returns every email in the outgoing mail, by invoice.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Storage`] and [`CheckoutError::Decode`].
    pub fn emails(&self) -> Result<Vec<(String, Email)>, CheckoutError> {
        let mut emails = Vec::new();
        for entry in self.base.tree().scan_prefix(b"email/") {
            let (key, bytes) = entry?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let email = decode(&key, &bytes)?;
            emails.push((key["email/".len()..].to_string(), email));
        }
        Ok(emails)
    }

    fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let (request, order): (SagaRequest, OrderRequest) = parse(delivery)?;
        if let Some(decision) = self.base.stored(&request)? {
            return self.base.complete(&request, decision);
        }
        let decision = self
            .base
            .decide_once(&request, |tree| self.send(tree, &order));
        self.base
            .complete(&request, decision.map_err(HandlerError::retry)?)
    }

    fn send(&self, tree: &TransactionalTree, order: &OrderRequest) -> TxResult<Decision> {
        let invoice = order.invoice.clone();
        if let Err(reason) = self.rules.check_email(order.customer) {
            let event = OrderEvent::ConfirmationFailed {
                invoice,
                reason: reason.clone(),
            };
            return Ok(Decision::fail(reason, event));
        }
        let key = email_key(&invoice);
        let mut email: Email = match tree.get(&key)? {
            Some(bytes) => decode_in(&invoice, &bytes)?,
            None => Email::default(),
        };
        email.to = match order.customer {
            Some(id) => format!("customer {id}"),
            None => format!("guest of order {invoice}"),
        };
        email.subject = format!(
            "Your order {invoice} of {} is on its way",
            gbp(order.total_pence)
        );
        email.sent += 1;
        tree.insert(key, encode(&email)?)?;
        Ok(Decision::ok(
            "sent",
            OrderEvent::ConfirmationSent { invoice },
        ))
    }
}

fn email_key(invoice: &str) -> Vec<u8> {
    [b"email/".as_slice(), invoice.as_bytes()].concat()
}
