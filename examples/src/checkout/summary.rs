//! The summary of a run: the outcome, which depends only on the data and the rules, and the
//! measurements of this process. The summary also checks the outcome for consistency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aqueduct_patterns::{SagaState, SagaStatus};

use super::lookup::OrderStatus;
use super::messages::Planned;
use super::run::Stopped;
use super::services::{
    EmailService, InventoryService, PaymentService, ShippingService, StockLedger,
};
use super::CheckoutError;

/// The services of a run.
pub(crate) struct Services {
    pub inventory: Arc<InventoryService>,
    pub payment: Arc<PaymentService>,
    pub shipping: Arc<ShippingService>,
    pub email: Arc<EmailService>,
}

/// The outcome of one invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceOutcome {
    /// The final state of its saga, or `None` when it has none.
    pub saga_state: Option<SagaState>,
    /// The reason the saga was compensated, if it was.
    pub reason: Option<String>,
    /// The steps compensated, in the order they ran.
    pub compensated: Vec<String>,
    /// The status the order-lookup read model gives.
    pub status: String,
}

/// Everything that depends only on the data and the rules: a run that was killed and resumed
/// has the same outcome as one that was not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Every invoice that is an order or a cancellation, by invoice number.
    pub invoices: BTreeMap<String, InvoiceOutcome>,
    /// Orders in the data.
    pub orders: u64,
    /// Orders whose every step succeeded.
    pub completed: u64,
    /// Orders that failed and were compensated, by reason.
    pub failed: BTreeMap<String, u64>,
    /// Cancellations in the data.
    pub cancellations: u64,
    /// Cancellations refunded, and the amount in pence.
    pub refunds: (u64, i64),
    /// Cancellations whose order was never charged or already paid back.
    pub refunds_not_needed: u64,
    /// Cancellations without a matching earlier order in the data.
    pub unmatched: u64,
    /// Stock adjustments, which the checkout skips.
    pub adjustments: u64,
    /// Confirmation emails in the outgoing mail.
    pub emails: u64,
    /// Amount charged, paid back and refunded, in pence.
    pub money: (i64, i64, i64),
    /// The stock ledger at the end.
    pub stock: StockLedger,
}

/// Saga latency in milliseconds, from start to final state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Sagas measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
}

/// The summary of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The outcome.
    pub outcome: Outcome,
    /// Inconsistencies found; empty when every check passed.
    pub problems: Vec<String>,
    /// Order lookups that the read model served in this process: customer service during
    /// the run, and the final check of every invoice.
    pub lookups: u64,
    /// Time this process spent from start to the last saga.
    pub elapsed: Duration,
    /// Sagas that finished in this process.
    pub sagas_finished_here: u64,
    /// Saga latency over all sagas.
    pub latency: Latency,
    /// Events the outbox relay published in this process.
    pub relay_published: u64,
}

/// Builds the summary after the run stopped.
pub(crate) fn summarize(
    planned: &[Planned],
    stopped: &Stopped,
    elapsed: Duration,
    sagas_finished_here: u64,
) -> Result<Summary, CheckoutError> {
    let mut outcome = Outcome::default();
    let mut problems = Vec::new();
    let mut latencies =
        hdrhistogram::Histogram::<u64>::new(3).map_err(|error| CheckoutError::Corrupt {
            reason: format!("could not create a histogram: {error}"),
        })?;
    for item in planned {
        let Some(invoice) = outcome_of(item, stopped, &mut latencies, &mut problems)? else {
            outcome.adjustments += 1;
            continue;
        };
        count(&mut outcome, item, &invoice);
        outcome.invoices.insert(item.invoice().to_string(), invoice);
    }
    add_services(&mut outcome, &stopped.services, &mut problems)?;
    check_emails(&mut outcome, &stopped.services.email, &mut problems)?;
    check_stock(&outcome, &mut problems);
    let latency = Latency {
        count: latencies.len(),
        p50: latencies.value_at_quantile(0.5),
        p90: latencies.value_at_quantile(0.9),
        p99: latencies.value_at_quantile(0.99),
        max: latencies.max(),
    };
    stopped.projection.status()?;
    Ok(Summary {
        outcome,
        problems,
        lookups: stopped.lookup.answered(),
        elapsed,
        sagas_finished_here,
        latency,
        relay_published: stopped.relay_published,
    })
}

/// Returns the outcome of one invoice, or `None` for a stock adjustment.
fn outcome_of(
    item: &Planned,
    stopped: &Stopped,
    latencies: &mut hdrhistogram::Histogram<u64>,
    problems: &mut Vec<String>,
) -> Result<Option<InvoiceOutcome>, CheckoutError> {
    if matches!(item, Planned::Adjustment { .. }) {
        return Ok(None);
    }
    let view = stopped.lookup.invoice(item.invoice())?;
    let status = view.map(|view| view.status());
    let mut outcome = InvoiceOutcome {
        saga_state: None,
        reason: None,
        compensated: Vec::new(),
        status: status.as_ref().map_or_else(
            || "missing from the read model".to_string(),
            ToString::to_string,
        ),
    };
    if let Some(id) = item.saga_id() {
        let saga = stopped.orchestrator.status(&id)?;
        let _ = latencies.record(saga.state_since_ms.saturating_sub(saga.created_ms));
        check_saga(&saga, status.as_ref(), problems);
        outcome.saga_state = Some(saga.state);
        outcome.reason = saga.reason.filter(|_| saga.state != SagaState::Completed);
        outcome.compensated = saga.compensated_steps;
    }
    Ok(Some(outcome))
}

/// Checks that a saga finished and that the read model agrees with it.
fn check_saga(saga: &SagaStatus, status: Option<&OrderStatus>, problems: &mut Vec<String>) {
    if !saga.state.is_final() {
        problems.push(format!("saga {} is {}", saga.id, saga.state));
    }
    let Some(status) = status else {
        problems.push(format!("the read model has no entry for saga {}", saga.id));
        return;
    };
    if !status.is_final() {
        problems.push(format!("the read model says {} is {status}", saga.id));
    }
    let completed_order = saga.saga == super::ORDER_SAGA && saga.state == SagaState::Completed;
    if completed_order != (*status == OrderStatus::Completed) && saga.saga == super::ORDER_SAGA {
        problems.push(format!(
            "saga {} is {} but the read model says {status}",
            saga.id, saga.state
        ));
    }
}

/// Adds one invoice to the counts.
fn count(outcome: &mut Outcome, item: &Planned, invoice: &InvoiceOutcome) {
    match item {
        Planned::Order(_) => {
            outcome.orders += 1;
            match (&invoice.saga_state, &invoice.reason) {
                (Some(SagaState::Completed), _) => outcome.completed += 1,
                (_, Some(reason)) => {
                    *outcome.failed.entry(reason_category(reason)).or_default() += 1
                }
                _ => {}
            }
        }
        Planned::Refund(_) | Planned::Unmatched { .. } => {
            outcome.cancellations += 1;
            if matches!(item, Planned::Unmatched { .. }) {
                outcome.unmatched += 1;
            } else if invoice.status.starts_with("refunded") {
                outcome.refunds.0 += 1;
            } else {
                outcome.refunds_not_needed += 1;
            }
        }
        Planned::Adjustment { .. } => outcome.adjustments += 1,
    }
}

/// Returns the kind of failure in a saga's reason: the service's reason up to its first
/// colon, for example `out of stock` or `no shipping to Japan`.
pub fn reason_category(reason: &str) -> String {
    let failure = reason
        .split_once("failed permanently: ")
        .map_or(reason, |(_, failure)| failure);
    failure
        .split(':')
        .next()
        .unwrap_or(failure)
        .trim()
        .to_string()
}

/// Adds money and stock totals and checks them.
fn add_services(
    outcome: &mut Outcome,
    services: &Services,
    problems: &mut Vec<String>,
) -> Result<(), CheckoutError> {
    for (invoice, payment) in services.payment.payments()? {
        outcome.money.0 += payment.charged_pence;
        outcome.money.1 += payment.paid_back_pence;
        outcome.money.2 += payment.refunded_pence;
        outcome.refunds.1 += payment.refunded_pence;
        if payment.charges > 1 {
            problems.push(format!(
                "order {invoice} was charged {} times",
                payment.charges
            ));
        }
        let completed = is_completed(outcome, &invoice);
        if !completed && payment.charged_pence != payment.paid_back_pence {
            problems.push(format!(
                "order {invoice} failed but its charge was not paid back"
            ));
        }
    }
    outcome.stock = services.inventory.ledger()?;
    Ok(())
}

/// Checks that every completed order got exactly one email and no other invoice got one.
fn check_emails(
    outcome: &mut Outcome,
    email: &EmailService,
    problems: &mut Vec<String>,
) -> Result<(), CheckoutError> {
    let emails: BTreeMap<String, u32> = email
        .emails()?
        .into_iter()
        .map(|(invoice, email)| (invoice, email.sent))
        .collect();
    outcome.emails = emails.values().map(|&sent| u64::from(sent)).sum();
    for (invoice, result) in &outcome.invoices {
        let completed_order =
            result.saga_state == Some(SagaState::Completed) && !invoice.starts_with('C');
        let sent = emails.get(invoice).copied().unwrap_or(0);
        if completed_order && sent != 1 {
            problems.push(format!(
                "completed order {invoice} has {sent} confirmation emails"
            ));
        }
        if !completed_order && sent != 0 {
            problems.push(format!(
                "invoice {invoice} did not complete but has {sent} emails"
            ));
        }
    }
    if emails.len() as u64 != outcome.completed {
        problems.push(format!(
            "{} emails for {} completed orders",
            emails.len(),
            outcome.completed
        ));
    }
    Ok(())
}

/// Checks that the units held are exactly those reserved by completed orders.
fn check_stock(outcome: &Outcome, problems: &mut Vec<String>) {
    let kept: i64 = outcome.stock.kept.values().sum();
    if kept != outcome.stock.held_units {
        problems.push(format!(
            "the stock ledger holds {} units, but reservations add up to {kept}",
            outcome.stock.held_units
        ));
    }
    for invoice in outcome.stock.kept.keys() {
        if !is_completed(outcome, invoice) {
            problems.push(format!("order {invoice} failed but still holds stock"));
        }
    }
}

fn is_completed(outcome: &Outcome, invoice: &str) -> bool {
    outcome
        .invoices
        .get(invoice)
        .is_some_and(|result| result.saga_state == Some(SagaState::Completed))
}
