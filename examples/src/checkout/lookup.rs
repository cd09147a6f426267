//! The order-lookup read model (CQRS): a projection of the `order.events` topic that serves
//! customer-service queries by invoice and by customer.
//!
//! The inventory service and the refund saga read it too, to learn whether an earlier order
//! has finished. The `ProjectionRunner` applies each batch of events together with its
//! checkpoint, so after a crash the model resumes exactly where it ended.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aqueduct_patterns::{ApplyError, ModelWriter, Projection, ReadModel, SourceEvent};
use serde::{Deserialize, Serialize};

use super::messages::OrderEvent;
use super::rules::gbp;

/// Name of the projection; its tables are `projection.order-lookup.*` trees.
pub const PROJECTION: &str = "order-lookup";

const ORDERS: &str = "orders";
const CUSTOMERS: &str = "customers";

/// An invoice as customer service looks it up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The invoice number.
    pub invoice: String,
    /// The customer, if any.
    pub customer: Option<u32>,
    /// The delivery country; empty for a cancellation.
    pub country: String,
    /// The invoice date; empty for a cancellation.
    pub date: String,
    /// The order total, or the amount to refund, in pence.
    pub total_pence: i64,
    /// True for a cancellation.
    pub cancellation: bool,
    /// The order a cancellation refunds, if one matched.
    pub refunds_order: Option<String>,
    /// Stock was reserved.
    pub reserved: bool,
    /// Payment was charged.
    pub charged: bool,
    /// A shipment was booked.
    pub shipped: bool,
    /// The confirmation went out.
    pub confirmed: bool,
    /// The reservation was released.
    pub released: bool,
    /// The charge was paid back.
    pub paid_back: bool,
    /// The shipment was cancelled.
    pub shipment_cancelled: bool,
    /// The reason the order failed, if it did.
    pub failure: Option<String>,
    /// For a cancellation: the amount refunded, once decided.
    pub refunded_pence: Option<i64>,
    /// For a cancellation: why nothing was refunded, once decided.
    pub no_refund: Option<String>,
}

/// The status of an invoice, derived from its view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Steps are still running; `stage` is the last one done.
    InProgress {
        /// `placed`, `stock reserved`, `paid` or `shipped`.
        stage: &'static str,
    },
    /// Every step succeeded.
    Completed,
    /// A step failed and compensations are running.
    Compensating {
        /// The failure.
        reason: String,
    },
    /// A step failed and every effect was undone.
    Cancelled {
        /// The failure.
        reason: String,
    },
    /// A cancellation whose refund is not decided yet.
    RefundPending,
    /// A cancellation that was refunded.
    Refunded {
        /// The amount in pence.
        amount_pence: i64,
    },
    /// A cancellation that needed no refund.
    NotRefunded {
        /// Why.
        reason: String,
    },
}

impl OrderStatus {
    /// Returns true when nothing more will happen to the invoice.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            OrderStatus::InProgress { .. }
                | OrderStatus::Compensating { .. }
                | OrderStatus::RefundPending
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderStatus::InProgress { stage } => write!(f, "in progress ({stage})"),
            OrderStatus::Completed => f.write_str("completed"),
            OrderStatus::Compensating { reason } => write!(f, "being cancelled: {reason}"),
            OrderStatus::Cancelled { reason } => write!(f, "cancelled: {reason}"),
            OrderStatus::RefundPending => f.write_str("refund pending"),
            OrderStatus::Refunded { amount_pence } => write!(f, "refunded {}", gbp(*amount_pence)),
            OrderStatus::NotRefunded { reason } => write!(f, "not refunded: {reason}"),
        }
    }
}

impl OrderView {
    /// Returns where the invoice is.
    pub fn status(&self) -> OrderStatus {
        if self.cancellation {
            return self.refund_status();
        }
        if self.confirmed {
            return OrderStatus::Completed;
        }
        if let Some(reason) = &self.failure {
            let undone = (!self.reserved || self.released)
                && (!self.charged || self.paid_back)
                && (!self.shipped || self.shipment_cancelled);
            let reason = reason.clone();
            return if undone {
                OrderStatus::Cancelled { reason }
            } else {
                OrderStatus::Compensating { reason }
            };
        }
        let stage = match (self.reserved, self.charged, self.shipped) {
            (_, _, true) => "shipped",
            (_, true, _) => "paid",
            (true, _, _) => "stock reserved",
            _ => "placed",
        };
        OrderStatus::InProgress { stage }
    }

    fn refund_status(&self) -> OrderStatus {
        if let Some(amount_pence) = self.refunded_pence {
            return OrderStatus::Refunded { amount_pence };
        }
        if let Some(reason) = &self.no_refund {
            return OrderStatus::NotRefunded {
                reason: reason.clone(),
            };
        }
        if self.refunds_order.is_none() {
            return OrderStatus::NotRefunded {
                reason: "no earlier order of this customer contains the cancelled items"
                    .to_string(),
            };
        }
        OrderStatus::RefundPending
    }
}

/// Builds the read model from `order.events`.
pub struct OrderLookupProjection;

impl Projection for OrderLookupProjection {
    fn tables(&self) -> &[&str] {
        &[ORDERS, CUSTOMERS]
    }

    fn apply(&self, event: &SourceEvent, model: &ModelWriter<'_>) -> Result<(), ApplyError> {
        let event: OrderEvent = event.decode_payload()?;
        let orders = model.table(ORDERS)?;
        let key = event.invoice().as_bytes().to_vec();
        let mut view = match orders.get(&key)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(ApplyError::failed)?,
            None => OrderView {
                invoice: event.invoice().to_string(),
                ..OrderView::default()
            },
        };
        apply_event(&mut view, event);
        if let Some(customer) = view.customer {
            let index = customer_key(customer, &view.invoice);
            model.table(CUSTOMERS)?.insert(index, &[][..])?;
        }
        let bytes = postcard::to_stdvec(&view).map_err(ApplyError::failed)?;
        orders.insert(key, bytes)?;
        Ok(())
    }
}

fn apply_event(view: &mut OrderView, event: OrderEvent) {
    match event {
        OrderEvent::OrderPlaced {
            customer,
            country,
            date,
            total_pence,
            ..
        } => {
            view.customer = customer;
            view.country = country;
            view.date = date;
            view.total_pence = total_pence;
        }
        OrderEvent::CancellationPlaced {
            customer,
            order,
            amount_pence,
            ..
        } => {
            view.cancellation = true;
            view.customer = customer;
            view.refunds_order = order;
            view.total_pence = amount_pence;
        }
        OrderEvent::StockReserved { .. } => view.reserved = true,
        OrderEvent::StockReleased { .. } => view.released = true,
        OrderEvent::PaymentCharged { .. } => view.charged = true,
        OrderEvent::PaymentReturned { .. } => view.paid_back = true,
        OrderEvent::ShippingArranged { .. } => view.shipped = true,
        OrderEvent::ShipmentCancelled { .. } => view.shipment_cancelled = true,
        OrderEvent::ConfirmationSent { .. } => view.confirmed = true,
        OrderEvent::StockRejected { reason, .. }
        | OrderEvent::PaymentDeclined { reason, .. }
        | OrderEvent::ShippingRefused { reason, .. }
        | OrderEvent::ConfirmationFailed { reason, .. } => view.failure = Some(reason),
        OrderEvent::RefundIssued { amount_pence, .. } => view.refunded_pence = Some(amount_pence),
        OrderEvent::RefundNotNeeded { reason, .. } => view.no_refund = Some(reason),
    }
}

fn customer_key(customer: u32, invoice: &str) -> Vec<u8> {
    let mut key = customer.to_be_bytes().to_vec();
    key.extend_from_slice(invoice.as_bytes());
    key
}

/// Errors of order-lookup queries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The read model's tables could not be read.
    #[error("order lookup failed: {0}")]
    Projection(#[from] aqueduct_patterns::ProjectionError),
    /// sled failed while reading.
    #[error("order lookup failed: {0}")]
    Storage(#[from] sled::Error),
    /// A stored view does not decode.
    #[error("order lookup found an undecodable view of invoice {invoice}: {source}")]
    Decode {
        /// The invoice.
        invoice: String,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },
}

/// The query side: customer-service lookups by invoice and by customer, counted.
#[derive(Clone)]
pub struct OrderLookup {
    model: ReadModel,
    answered: Arc<AtomicU64>,
}

impl OrderLookup {
    /// Wraps the read model of a running projection.
    pub fn new(model: ReadModel) -> Self {
        OrderLookup {
            model,
            answered: Arc::default(),
        }
    }

    /// Returns the view of `invoice`, or `None` when the model does not contain it yet.
    ///
    /// # Errors
    ///
    /// [`LookupError`] when the tables cannot be read.
    pub fn invoice(&self, invoice: &str) -> Result<Option<OrderView>, LookupError> {
        let view = self.model.view();
        let found = view.table(ORDERS)?.get(invoice.as_bytes())?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        found.map(|bytes| decode(invoice, &bytes)).transpose()
    }

    /// Returns the views of every invoice of `customer`, in invoice-number order.
    ///
    /// # Errors
    ///
    /// [`LookupError`] when the tables cannot be read.
    pub fn orders_of(&self, customer: u32) -> Result<Vec<OrderView>, LookupError> {
        let view = self.model.view();
        let orders = view.table(ORDERS)?;
        let mut found = Vec::new();
        for entry in view.table(CUSTOMERS)?.scan_prefix(customer.to_be_bytes()) {
            let (key, _) = entry?;
            let invoice = String::from_utf8_lossy(&key[4..]).into_owned();
            if let Some(bytes) = orders.get(invoice.as_bytes())? {
                found.push(decode(&invoice, &bytes)?);
            }
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(found)
    }

    /// Returns how many lookups this handle and its clones served.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

fn decode(invoice: &str, bytes: &[u8]) -> Result<OrderView, LookupError> {
    postcard::from_bytes(bytes).map_err(|source| LookupError::Decode {
        invoice: invoice.to_string(),
        source,
    })
}
