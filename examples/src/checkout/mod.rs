//! The checkout: real orders from the UCI "Online Retail" data set go through four patterns
//! at once.
//!
//! 1. **Transactional outbox.** The order service writes each invoice to its `orders` tree and
//!    enqueues an `order.placed` event and an `order.events` event in the same sled
//!    transaction. The `OutboxRelay` publishes them.
//! 2. **Saga orchestration.** A starter thread reads `order.placed` in file order and starts
//!    one saga per order in the orchestrator `checkout`: reserve stock, charge payment, arrange
//!    shipping, send a confirmation. A failure compensates the completed steps in reverse
//!    order (release stock, pay back, cancel the shipment). A cancellation invoice that
//!    matches an earlier order starts a refund saga.
//! 3. **Competing consumers with an inbox.** Each step is a request on its service's topic,
//!    served by a `WorkerPool`. Services record their effect, the `Inbox` mark and their
//!    decision in one sled transaction, so a redelivered request has no second effect.
//! 4. **CQRS.** A `ProjectionRunner` builds the order-lookup read model from `order.events`.
//!    Customer service looks up orders by invoice and by customer. The inventory service and
//!    the refund saga read it to learn whether earlier orders have finished.
//!
//! # Determinism
//!
//! Orders fail because of stated [`Rules`] applied to the data: stock runs out, the payment
//! limit, countries without shipping, stock codes that are not products. The payment, shipping
//! and email rules look at one order only. Stock decisions follow the order of the file (see
//! the inventory service), so a run's outcome depends only on the data and the rules. A run
//! that is killed and resumed with [`Config::resume`] ends with the same outcome as one that
//! was not interrupted.

mod data;
mod error;
mod lookup;
mod messages;
mod orders;
mod rules;
mod run;
mod sagas;
mod services;
mod summary;

pub use self::data::{load, read, DataError, Invoice, InvoiceKind, Line, HEADER};
pub use self::error::CheckoutError;
pub use self::lookup::{LookupError, OrderLookup, OrderStatus, OrderView, PROJECTION};
pub use self::messages::{
    order_saga_id, plan, refund_saga_id, OrderEvent, OrderLine, OrderRequest, Planned,
    RefundRequest,
};
pub use self::rules::{
    code_kind, gbp, thousands, CodeKind, Rules, NON_PRODUCT_CODES, SERVICE_CODES,
};
pub use self::run::{run, Config, Progress};
pub use self::sagas::{ORCHESTRATOR, ORDER_SAGA, ORDER_STEPS, REFUND_SAGA};
pub use self::services::{CrashPoint, CrashStage, Email, Payment, ServiceName, StockLedger};
pub use self::summary::{InvoiceOutcome, Latency, Outcome, Summary};

/// The topics of the checkout.
pub mod topics {
    /// Orders and cancellations to start sagas for, published by the outbox relay.
    pub const PLACED: &str = "order.placed";
    /// Every event about an invoice; the source of the order-lookup read model.
    pub const EVENTS: &str = "order.events";
    /// Stock reservations, in order of the orders in the data.
    pub const RESERVE: &str = "inventory.reserve";
    /// Releases of reservations (compensations).
    pub const RELEASE: &str = "inventory.release";
    /// Charges, pay-backs and refunds.
    pub const PAYMENTS: &str = "payments";
    /// Shipment bookings and cancellations.
    pub const SHIPPING: &str = "shipping";
    /// Confirmation emails.
    pub const EMAILS: &str = "emails";
    /// Requests that no service could parse.
    pub const DEAD_LETTERS: &str = "checkout.dead-letters";
}
