//! The order service, which records invoices through the outbox, and the saga starter, which
//! turns `order.placed` events into sagas.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, Consumer, ConsumerConfig, Message, OrderingMode};
use aqueduct_patterns::{Outbox, OutboxTransaction, SagaOrchestrator, SagaState, Started};
use sled::transaction::{ConflictableTransactionError, ConflictableTransactionResult};

use super::messages::{OrderEvent, Planned};
use super::sagas::{ORDER_SAGA, REFUND_SAGA};
use super::{topics, CheckoutError};

/// The group that starts sagas from `order.placed`.
const STARTER_GROUP: &str = "saga-starter";

/// Writes invoices to the `orders` tree and enqueues their events in the same transaction.
pub(crate) struct OrderService {
    outbox: Outbox,
    orders: sled::Tree,
}

impl OrderService {
    pub fn open(broker: &Broker) -> Result<Self, CheckoutError> {
        Ok(OrderService {
            outbox: Outbox::open(broker, "orders")?,
            orders: broker.tree("orders")?,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Records `planned` unless it is recorded already; returns true when it was new. Stock
    /// adjustments are not orders and are skipped.
    pub fn place(&self, planned: &Planned) -> Result<bool, CheckoutError> {
        if matches!(planned, Planned::Adjustment { .. }) {
            return Ok(false);
        }
        let record = postcard::to_stdvec(planned)?;
        let invoice = planned.invoice();
        self.outbox
            .transaction(std::slice::from_ref(&self.orders), |tx| {
                if tx.tree(0).get(invoice)?.is_some() {
                    return Ok(false);
                }
                tx.tree(0).insert(invoice, record.clone())?;
                enqueue_events(tx, planned)?;
                Ok(true)
            })
    }
}

/// Enqueues the read model's event and, for invoices with a saga, the `order.placed` event.
fn enqueue_events(
    tx: &OutboxTransaction<'_>,
    planned: &Planned,
) -> ConflictableTransactionResult<(), CheckoutError> {
    let invoice = planned.invoice();
    let event = match planned {
        Planned::Order(order) => OrderEvent::OrderPlaced {
            invoice: order.invoice.clone(),
            customer: order.customer,
            country: order.country.clone(),
            date: order.date.clone(),
            total_pence: order.total_pence,
        },
        Planned::Refund(refund) => OrderEvent::CancellationPlaced {
            cancellation: refund.cancellation.clone(),
            customer: Some(refund.customer),
            order: Some(refund.order.clone()),
            amount_pence: refund.amount_pence,
        },
        Planned::Unmatched {
            cancellation,
            customer,
            amount_pence,
        } => OrderEvent::CancellationPlaced {
            cancellation: cancellation.clone(),
            customer: *customer,
            order: None,
            amount_pence: *amount_pence,
        },
        Planned::Adjustment { .. } => return Ok(()),
    };
    tx.enqueue::<_, CheckoutError>(topics::EVENTS, invoice, &event)?;
    if planned.saga_id().is_some() {
        let payload = postcard::to_stdvec(planned)
            .map_err(|error| ConflictableTransactionError::Abort(CheckoutError::Encode(error)))?;
        let message = Message::new(payload).key(invoice);
        tx.enqueue_message::<CheckoutError>(topics::PLACED, message)?;
    }
    Ok(())
}

/// The saga starter: reads `order.placed` and starts sagas within a window.
pub(crate) struct Starter {
    pub orchestrator: SagaOrchestrator,
    /// Maximum number of unfinished sagas at once.
    pub window: usize,
    /// Abort the process after this many sagas were started by this process.
    pub kill_after: Option<u64>,
    /// Sagas started by this process.
    pub started: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
}

/// Subscribes the starter in per-partition order, so sagas start in file order.
pub(crate) fn subscribe_starter(broker: &Broker) -> Result<Consumer, CheckoutError> {
    let config = ConsumerConfig::default()
        .ordering(OrderingMode::PerPartition)
        .prefetch(16);
    Ok(broker.subscribe_with(topics::PLACED, STARTER_GROUP, config)?)
}

impl Starter {
    /// Starts a saga for every `order.placed` event until stopped.
    pub fn run(&self, mut consumer: Consumer) -> Result<(), CheckoutError> {
        while !self.stop.load(Ordering::SeqCst) {
            let Some(delivery) = consumer.recv_timeout(Duration::from_millis(50))? else {
                continue;
            };
            let planned: Planned = delivery.decode()?;
            if !self.wait_for_room()? {
                return Ok(());
            }
            let started = self.start(&planned)?;
            delivery.ack()?;
            if started == Started::Created {
                self.count_start();
            }
        }
        Ok(())
    }

    fn start(&self, planned: &Planned) -> Result<Started, CheckoutError> {
        let Some(id) = planned.saga_id() else {
            return Ok(Started::AlreadyStarted);
        };
        let started = match planned {
            Planned::Order(order) => self.orchestrator.start_encoded(ORDER_SAGA, &id, order)?,
            Planned::Refund(refund) => self.orchestrator.start_encoded(REFUND_SAGA, &id, refund)?,
            _ => Started::AlreadyStarted,
        };
        Ok(started)
    }

    fn count_start(&self) {
        let started = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        if self.kill_after == Some(started) {
            tracing::warn!(started, "--kill-after reached; aborting the process");
            std::process::abort();
        }
    }

    /// Waits until fewer than `window` sagas are unfinished; false when stopped meanwhile.
    fn wait_for_room(&self) -> Result<bool, CheckoutError> {
        while !self.stop.load(Ordering::SeqCst) {
            if unfinished(&self.orchestrator, self.window)? < self.window {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(false)
    }
}

/// Counts unfinished sagas, up to `limit` per state.
pub(crate) fn unfinished(
    orchestrator: &SagaOrchestrator,
    limit: usize,
) -> Result<usize, CheckoutError> {
    let mut count = 0;
    for state in [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::NeedsOperator,
    ] {
        count += orchestrator.list(state, limit)?.len();
    }
    Ok(count)
}
