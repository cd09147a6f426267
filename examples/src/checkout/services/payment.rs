//! The payment service: charges orders up to the payment limit, pays charges back in
//! compensations, and refunds cancellations of completed orders.
//!
//! One sled tree `payments` with a [`Payment`] per order under `payment/INVOICE`.

use std::sync::Arc;

use aqueduct::{Broker, Delivery};
use aqueduct_patterns::{HandlerError, SagaRequest, StepKind, WorkerPool};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionResult, TransactionalTree};

use super::{
    decode, decode_in, encode, parse, pool_config, CrashPoint, Decision, ServiceBase, ServiceError,
    ServiceName,
};
use crate::checkout::messages::{OrderEvent, OrderRequest, RefundRequest};
use crate::checkout::rules::Rules;
use crate::checkout::sagas::REFUND_SAGA;
use crate::checkout::{topics, CheckoutError};

type TxResult<T> = ConflictableTransactionResult<T, ServiceError>;

/// The money side of one order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Amount charged, in pence.
    pub charged_pence: i64,
    /// Amount paid back by a compensation, in pence.
    pub paid_back_pence: i64,
    /// Amount refunded for cancellations, in pence.
    pub refunded_pence: i64,
    /// Times the order was charged; more than 1 would be a double charge.
    pub charges: u32,
    /// Refunds issued for cancellations of this order.
    pub refunds: u32,
}

/// Charges, pays back and refunds.
#[derive(Clone)]
pub struct PaymentService {
    base: ServiceBase,
    rules: Rules,
}

impl PaymentService {
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
        let base = ServiceBase::open(broker, ServiceName::Payment, "payments", crash)?;
        Ok(PaymentService { base, rules })
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
            topics::PAYMENTS,
            "payments",
            pool_config(workers),
            move |delivery, _| service.handle(delivery),
        )?;
        Ok(pool)
    }

    /// Returns every order's payment record, by invoice.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Storage`] and [`CheckoutError::Decode`].
    pub fn payments(&self) -> Result<Vec<(String, Payment)>, CheckoutError> {
        let mut payments = Vec::new();
        for entry in self.base.tree().scan_prefix(b"payment/") {
            let (key, bytes) = entry?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let payment = decode(&key, &bytes)?;
            payments.push((key["payment/".len()..].to_string(), payment));
        }
        Ok(payments)
    }

    fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let request = SagaRequest::parse(delivery).map_err(HandlerError::permanent)?;
        if let Some(decision) = self.base.stored(&request)? {
            return self.base.complete(&request, decision);
        }
        let decision = if request.saga() == REFUND_SAGA {
            let (_, refund): (_, RefundRequest) = parse(delivery)?;
            self.base
                .decide_once(&request, |tree| refund_cancellation(tree, &refund))
        } else {
            let (_, order): (_, OrderRequest) = parse(delivery)?;
            match request.kind() {
                StepKind::Action => self
                    .base
                    .decide_once(&request, |tree| self.charge(tree, &order)),
                StepKind::Compensation => self
                    .base
                    .decide_once(&request, |tree| pay_back(tree, &order)),
            }
        };
        let decision = decision.map_err(HandlerError::retry)?;
        self.base.complete(&request, decision)
    }

    fn charge(&self, tree: &TransactionalTree, order: &OrderRequest) -> TxResult<Decision> {
        let invoice = order.invoice.clone();
        if let Err(reason) = self.rules.check_payment(order.total_pence) {
            let event = OrderEvent::PaymentDeclined {
                invoice,
                reason: reason.clone(),
            };
            return Ok(Decision::fail(reason, event));
        }
        let mut payment = read(tree, &invoice)?;
        payment.charged_pence += order.total_pence;
        payment.charges += 1;
        write(tree, &invoice, &payment)?;
        let event = OrderEvent::PaymentCharged {
            invoice: invoice.clone(),
            amount_pence: order.total_pence,
        };
        Ok(Decision::ok(format!("PAY-{invoice}"), event))
    }
}

/// Pays the charge of `order` back, as the compensation of the charge.
fn pay_back(tree: &TransactionalTree, order: &OrderRequest) -> TxResult<Decision> {
    let invoice = order.invoice.clone();
    let mut payment = read(tree, &invoice)?;
    let amount_pence = payment.charged_pence - payment.paid_back_pence;
    payment.paid_back_pence += amount_pence;
    write(tree, &invoice, &payment)?;
    let event = OrderEvent::PaymentReturned {
        invoice,
        amount_pence,
    };
    Ok(Decision::ok(
        format!("paid back {amount_pence} pence"),
        event,
    ))
}

/// Refunds a cancellation when its order was charged and kept the charge. The refund saga
/// sends the request only after the order has finished, so this decision does not depend on
/// timing.
fn refund_cancellation(tree: &TransactionalTree, refund: &RefundRequest) -> TxResult<Decision> {
    let mut payment = read(tree, &refund.order)?;
    let reason = if payment.charged_pence == 0 {
        Some(format!("order {} was never charged", refund.order))
    } else if payment.paid_back_pence > 0 {
        Some(format!(
            "order {} was cancelled and its charge paid back",
            refund.order
        ))
    } else if refund.amount_pence == 0 {
        Some(format!(
            "earlier cancellations refunded all of order {}",
            refund.order
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        let event = OrderEvent::RefundNotNeeded {
            cancellation: refund.cancellation.clone(),
            order: refund.order.clone(),
            reason: reason.clone(),
        };
        return Ok(Decision::ok(reason, event));
    }
    payment.refunded_pence += refund.amount_pence;
    payment.refunds += 1;
    write(tree, &refund.order, &payment)?;
    let event = OrderEvent::RefundIssued {
        cancellation: refund.cancellation.clone(),
        order: refund.order.clone(),
        amount_pence: refund.amount_pence,
    };
    Ok(Decision::ok(
        format!("refunded {} pence", refund.amount_pence),
        event,
    ))
}

fn read(tree: &TransactionalTree, invoice: &str) -> TxResult<Payment> {
    match tree.get(payment_key(invoice))? {
        Some(bytes) => decode_in(invoice, &bytes),
        None => Ok(Payment::default()),
    }
}

fn write(tree: &TransactionalTree, invoice: &str, payment: &Payment) -> TxResult<()> {
    tree.insert(payment_key(invoice), encode(payment)?)?;
    Ok(())
}

fn payment_key(invoice: &str) -> Vec<u8> {
    [b"payment/".as_slice(), invoice.as_bytes()].concat()
}
