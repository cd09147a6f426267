//! The saga definitions: one checkout saga per order and one refund saga per matched
//! cancellation, both run by the orchestrator `checkout`.

use std::time::Duration;

use aqueduct_patterns::{Action, Backoff, RetryPolicy, Saga, Step, StepContext, StepError};

use super::lookup::OrderLookup;
use super::messages::RefundRequest;
use super::topics;

/// Name of the orchestrator; its state lives in the sled tree `saga.checkout`.
pub const ORCHESTRATOR: &str = "checkout";
/// The saga that checks out an order.
pub const ORDER_SAGA: &str = "order";
/// The saga that refunds a cancellation.
pub const REFUND_SAGA: &str = "refund";

/// Step names of the order saga, in order.
pub const ORDER_STEPS: [&str; 4] = [
    "reserve-stock",
    "charge-payment",
    "arrange-shipping",
    "send-confirmation",
];

/// How long a service may take to reply. Services reply within milliseconds, and a crash
/// only delays replies, so a step times out only when a service is stuck.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Builds the order saga: reserve stock, charge payment, arrange shipping, send the
/// confirmation. Each step is a request to its service's topic with the order as payload; the
/// first three have compensations (release, pay back, cancel the shipment).
pub fn order_saga() -> Saga {
    let topics = [
        (topics::RESERVE, Some(topics::RELEASE)),
        (topics::PAYMENTS, Some(topics::PAYMENTS)),
        (topics::SHIPPING, Some(topics::SHIPPING)),
        (topics::EMAILS, None),
    ];
    let mut saga = Saga::new(ORDER_SAGA);
    for (name, (action, compensation)) in ORDER_STEPS.into_iter().zip(topics) {
        let mut step = Step::new(name, forward(action))
            .timeout(STEP_TIMEOUT)
            .retry(RetryPolicy::new(5, backoff()))
            .compensation_retry(RetryPolicy::new(20, backoff()));
        if let Some(topic) = compensation {
            step = step.compensation(forward(topic));
        }
        saga = saga.step(step);
    }
    saga
}

/// Builds the refund saga: wait until the cancelled order has finished (a local step that
/// queries the order-lookup read model), then request the refund from the payment service.
pub fn refund_saga(lookup: OrderLookup) -> Saga {
    let wait = Action::local(move |ctx| await_order(ctx, &lookup));
    // Orders finish within seconds; the budget of attempts covers several minutes of waiting.
    let waiting = RetryPolicy::new(
        2_000,
        Backoff::new(Duration::from_millis(20), Duration::from_millis(250)),
    );
    Saga::new(REFUND_SAGA)
        .step(Step::new("await-order", wait).retry(waiting))
        .step(
            Step::new("refund-payment", forward(topics::PAYMENTS))
                .timeout(STEP_TIMEOUT)
                .retry(RetryPolicy::new(5, backoff())),
        )
}

/// Creates a request action whose payload is the saga's input.
fn forward(topic: &str) -> Action {
    Action::request(topic, |ctx| Ok(ctx.input().to_vec()))
}

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// Succeeds once the order a cancellation refunds has finished.
fn await_order(ctx: &StepContext<'_>, lookup: &OrderLookup) -> Result<Vec<u8>, StepError> {
    let refund: RefundRequest = ctx.decode_input()?;
    let view = lookup
        .invoice(&refund.order)
        .map_err(|error| StepError::retry(error.to_string()))?;
    match view.map(|view| view.status()) {
        Some(status) if status.is_final() => Ok(status.to_string().into_bytes()),
        Some(status) => Err(StepError::retry(format!(
            "order {} is {status}; waiting for it to finish",
            refund.order
        ))),
        None => Err(StepError::retry(format!(
            "order {} is not in the read model yet",
            refund.order
        ))),
    }
}
