//! The shipping service: books shipments, except to countries the carrier does not serve,
//! and cancels them in compensations.
//!
//! One sled tree `shipments` with a [`Shipment`] per order under `shipment/INVOICE`.

use std::sync::Arc;

use aqueduct::{Broker, Delivery};
use aqueduct_patterns::{HandlerError, SagaRequest, StepKind, WorkerPool};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionResult, TransactionalTree};

use super::{
    decode_in, encode, parse, pool_config, CrashPoint, Decision, ServiceBase, ServiceError,
    ServiceName,
};
use crate::checkout::messages::{OrderEvent, OrderRequest};
use crate::checkout::rules::Rules;
use crate::checkout::{topics, CheckoutError};

type TxResult<T> = ConflictableTransactionResult<T, ServiceError>;

/// A booked shipment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Shipment {
    reference: String,
    bookings: u32,
    cancelled: bool,
}

/// Books and cancels shipments.
#[derive(Clone)]
pub struct ShippingService {
    base: ServiceBase,
    rules: Rules,
}

impl ShippingService {
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
        let base = ServiceBase::open(broker, ServiceName::Shipping, "shipments", crash)?;
        Ok(ShippingService { base, rules })
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
            topics::SHIPPING,
            "shipping",
            pool_config(workers),
            move |delivery, _| service.handle(delivery),
        )?;
        Ok(pool)
    }

    fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let (request, order): (SagaRequest, OrderRequest) = parse(delivery)?;
        if let Some(decision) = self.base.stored(&request)? {
            return self.base.complete(&request, decision);
        }
        let decision = match request.kind() {
            StepKind::Action => self
                .base
                .decide_once(&request, |tree| self.book(tree, &order)),
            StepKind::Compensation => self.base.decide_once(&request, |tree| cancel(tree, &order)),
        };
        self.base
            .complete(&request, decision.map_err(HandlerError::retry)?)
    }

    fn book(&self, tree: &TransactionalTree, order: &OrderRequest) -> TxResult<Decision> {
        let invoice = order.invoice.clone();
        if let Err(reason) = self.rules.check_shipping(&order.country) {
            let event = OrderEvent::ShippingRefused {
                invoice,
                reason: reason.clone(),
            };
            return Ok(Decision::fail(reason, event));
        }
        let mut shipment = read(tree, &invoice)?;
        shipment.reference = format!("SHP-{invoice}");
        shipment.bookings += 1;
        tree.insert(shipment_key(&invoice), encode(&shipment)?)?;
        let event = OrderEvent::ShippingArranged {
            invoice,
            shipment: shipment.reference.clone(),
        };
        Ok(Decision::ok(shipment.reference, event))
    }
}

fn cancel(tree: &TransactionalTree, order: &OrderRequest) -> TxResult<Decision> {
    let invoice = order.invoice.clone();
    let mut shipment = read(tree, &invoice)?;
    shipment.cancelled = true;
    tree.insert(shipment_key(&invoice), encode(&shipment)?)?;
    Ok(Decision::ok(
        "cancelled",
        OrderEvent::ShipmentCancelled { invoice },
    ))
}

fn read(tree: &TransactionalTree, invoice: &str) -> TxResult<Shipment> {
    match tree.get(shipment_key(invoice))? {
        Some(bytes) => decode_in(invoice, &bytes),
        None => Ok(Shipment::default()),
    }
}

fn shipment_key(invoice: &str) -> Vec<u8> {
    [b"shipment/".as_slice(), invoice.as_bytes()].concat()
}
