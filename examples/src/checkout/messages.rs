//! The plan that the order service makes from the data, the saga inputs, and the events on
//! the `order.events` topic that feed the order-lookup read model.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::data::{Invoice, InvoiceKind};

/// One line of an order, as the services see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The stock code.
    pub code: String,
    /// Units ordered.
    pub quantity: i64,
    /// Price of one unit in pence.
    pub unit_price_pence: i64,
}

/// An order: the input of its checkout saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The invoice number.
    pub invoice: String,
    /// The order's place among the orders of the data, from 0. The inventory service reserves
    /// stock in this order.
    pub seq: u64,
    /// The customer, `None` for a guest checkout.
    pub customer: Option<u32>,
    /// The delivery country.
    pub country: String,
    /// The invoice date, `DD/MM/YYYY HH:MM`.
    pub date: String,
    /// The lines.
    pub lines: Vec<OrderLine>,
    /// The order total in pence.
    pub total_pence: i64,
}

/// A cancellation matched to an earlier order: the input of its refund saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The cancellation invoice, for example `C536383`.
    pub cancellation: String,
    /// The order it refunds.
    pub order: String,
    /// The customer.
    pub customer: u32,
    /// The amount to refund in pence: the value of the cancelled lines, capped so that the
    /// refunds of one order never exceed its total.
    pub amount_pence: i64,
}

/// The order service's plan for one invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Planned {
    /// A customer order; a checkout saga runs for it.
    Order(OrderRequest),
    /// A cancellation of an earlier order; a refund saga runs for it.
    Refund(RefundRequest),
    /// A cancellation without an earlier order of its customer that contains every cancelled
    /// stock code; the order predates the data, so nothing is refunded here.
    Unmatched {
        /// The cancellation invoice.
        cancellation: String,
        /// The customer, if any.
        customer: Option<u32>,
        /// The value of the cancelled lines in pence.
        amount_pence: i64,
    },
    /// A stock adjustment; the checkout skips it.
    Adjustment {
        /// The invoice number.
        invoice: String,
    },
}

impl Planned {
    /// Returns the invoice number.
    pub fn invoice(&self) -> &str {
        match self {
            Planned::Order(order) => &order.invoice,
            Planned::Refund(refund) => &refund.cancellation,
            Planned::Unmatched { cancellation, .. } => cancellation,
            Planned::Adjustment { invoice } => invoice,
        }
    }

    /// Returns the id of the saga that runs for this invoice, if one does.
    pub fn saga_id(&self) -> Option<String> {
        match self {
            Planned::Order(order) => Some(order_saga_id(&order.invoice)),
            Planned::Refund(refund) => Some(refund_saga_id(&refund.cancellation)),
            _ => None,
        }
    }
}

/// Returns the saga id of an order.
pub fn order_saga_id(invoice: &str) -> String {
    format!("order-{invoice}")
}

/// Returns the saga id of a refund.
pub fn refund_saga_id(cancellation: &str) -> String {
    format!("refund-{cancellation}")
}

/// An earlier order of a customer, for matching cancellations.
struct PastOrder {
    invoice: String,
    codes: BTreeSet<String>,
    total_pence: i64,
}

/// Plans every invoice in file order. A cancellation matches the latest earlier order of the
/// same customer that contains every cancelled stock code. Its refund is the value of the
/// cancelled lines, capped at what earlier cancellations left of that order's total.
pub fn plan(invoices: &[Invoice]) -> Vec<Planned> {
    let mut past: HashMap<u32, Vec<PastOrder>> = HashMap::new();
    let mut refunded: HashMap<String, i64> = HashMap::new();
    let mut seq = 0;
    let mut planned = Vec::with_capacity(invoices.len());
    for invoice in invoices {
        let item = match invoice.kind() {
            InvoiceKind::StockAdjustment => Planned::Adjustment {
                invoice: invoice.number.clone(),
            },
            InvoiceKind::Order => {
                let order = order_request(invoice, seq);
                seq += 1;
                if let Some(customer) = invoice.customer {
                    past.entry(customer).or_default().push(PastOrder {
                        invoice: invoice.number.clone(),
                        codes: invoice.lines.iter().map(|l| l.stock_code.clone()).collect(),
                        total_pence: order.total_pence,
                    });
                }
                Planned::Order(order)
            }
            InvoiceKind::Cancellation => match_cancellation(invoice, &past, &mut refunded),
        };
        planned.push(item);
    }
    planned
}

fn order_request(invoice: &Invoice, seq: u64) -> OrderRequest {
    OrderRequest {
        invoice: invoice.number.clone(),
        seq,
        customer: invoice.customer,
        country: invoice.country.clone(),
        date: invoice.date.clone(),
        lines: invoice
            .lines
            .iter()
            .map(|line| OrderLine {
                code: line.stock_code.clone(),
                quantity: line.quantity,
                unit_price_pence: line.unit_price_pence,
            })
            .collect(),
        total_pence: invoice.total_pence(),
    }
}

fn match_cancellation(
    invoice: &Invoice,
    past: &HashMap<u32, Vec<PastOrder>>,
    refunded: &mut HashMap<String, i64>,
) -> Planned {
    let amount_pence = -invoice.total_pence();
    let codes: BTreeSet<&str> = invoice
        .lines
        .iter()
        .map(|l| l.stock_code.as_str())
        .collect();
    let matched = invoice.customer.and_then(|customer| {
        let orders = past.get(&customer)?;
        let order = orders
            .iter()
            .rev()
            .find(|order| codes.iter().all(|code| order.codes.contains(*code)))?;
        Some((customer, order))
    });
    let Some((customer, order)) = matched else {
        return Planned::Unmatched {
            cancellation: invoice.number.clone(),
            customer: invoice.customer,
            amount_pence,
        };
    };
    let already = refunded.entry(order.invoice.clone()).or_default();
    let capped = amount_pence.min(order.total_pence - *already).max(0);
    *already += capped;
    Planned::Refund(RefundRequest {
        cancellation: invoice.number.clone(),
        order: order.invoice.clone(),
        customer,
        amount_pence: capped,
    })
}

/// An event about one invoice, published to `order.events` by the order service (through the
/// outbox) and by the services after each decision. Services publish with a message id
/// derived from the request's idempotency key, so a repeated publish is stored once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// The order service accepted an order.
    OrderPlaced {
        /// The invoice.
        invoice: String,
        /// The customer, if any.
        customer: Option<u32>,
        /// The delivery country.
        country: String,
        /// The invoice date.
        date: String,
        /// The order total in pence.
        total_pence: i64,
    },
    /// The order service recorded a cancellation.
    CancellationPlaced {
        /// The cancellation invoice.
        cancellation: String,
        /// The customer, if any.
        customer: Option<u32>,
        /// The order it refunds, if one matched.
        order: Option<String>,
        /// The amount to refund in pence.
        amount_pence: i64,
    },
    /// Stock was reserved.
    StockReserved {
        /// The invoice.
        invoice: String,
        /// Units reserved.
        units: i64,
    },
    /// Stock could not be reserved.
    StockRejected {
        /// The invoice.
        invoice: String,
        /// Why.
        reason: String,
    },
    /// A reservation was released by a compensation.
    StockReleased {
        /// The invoice.
        invoice: String,
        /// Units released.
        units: i64,
    },
    /// The payment service charged the order.
    PaymentCharged {
        /// The invoice.
        invoice: String,
        /// The amount in pence.
        amount_pence: i64,
    },
    /// The payment service declined the order.
    PaymentDeclined {
        /// The invoice.
        invoice: String,
        /// Why.
        reason: String,
    },
    /// A compensation paid a charge back.
    PaymentReturned {
        /// The invoice.
        invoice: String,
        /// The amount in pence.
        amount_pence: i64,
    },
    /// A shipment was booked.
    ShippingArranged {
        /// The invoice.
        invoice: String,
        /// The shipment reference.
        shipment: String,
    },
    /// The carrier cannot deliver the order.
    ShippingRefused {
        /// The invoice.
        invoice: String,
        /// Why.
        reason: String,
    },
    /// A compensation cancelled the shipment.
    ShipmentCancelled {
        /// The invoice.
        invoice: String,
    },
    /// The confirmation email went out.
    ConfirmationSent {
        /// The invoice.
        invoice: String,
    },
    /// The confirmation email could not be sent.
    ConfirmationFailed {
        /// The invoice.
        invoice: String,
        /// Why.
        reason: String,
    },
    /// A cancellation was refunded.
    RefundIssued {
        /// The cancellation invoice.
        cancellation: String,
        /// The refunded order.
        order: String,
        /// The amount in pence.
        amount_pence: i64,
    },
    /// A cancellation needed no refund, because its order was never charged.
    RefundNotNeeded {
        /// The cancellation invoice.
        cancellation: String,
        /// The order.
        order: String,
        /// Why.
        reason: String,
    },
}

impl OrderEvent {
    /// Returns the invoice the event is about: the cancellation for refund events.
    pub fn invoice(&self) -> &str {
        match self {
            OrderEvent::OrderPlaced { invoice, .. }
            | OrderEvent::StockReserved { invoice, .. }
            | OrderEvent::StockRejected { invoice, .. }
            | OrderEvent::StockReleased { invoice, .. }
            | OrderEvent::PaymentCharged { invoice, .. }
            | OrderEvent::PaymentDeclined { invoice, .. }
            | OrderEvent::PaymentReturned { invoice, .. }
            | OrderEvent::ShippingArranged { invoice, .. }
            | OrderEvent::ShippingRefused { invoice, .. }
            | OrderEvent::ShipmentCancelled { invoice }
            | OrderEvent::ConfirmationSent { invoice }
            | OrderEvent::ConfirmationFailed { invoice, .. } => invoice,
            OrderEvent::CancellationPlaced { cancellation, .. }
            | OrderEvent::RefundIssued { cancellation, .. }
            | OrderEvent::RefundNotNeeded { cancellation, .. } => cancellation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkout::data::read;

    const HEADER: &str =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n";

    #[test]
    fn cancellation_matches_latest_order_with_codes() {
        let csv = format!(
            "{HEADER}\
             1,A,a,2,01/12/2010 08:00,1.00,7,United Kingdom\n\
             2,A,a,1,01/12/2010 09:00,1.00,7,United Kingdom\n\
             2,B,b,1,01/12/2010 09:00,1.00,7,United Kingdom\n\
             3,C,c,1,01/12/2010 10:00,1.00,7,United Kingdom\n\
             C4,A,a,-5,01/12/2010 11:00,1.00,7,United Kingdom\n\
             C5,Z,z,-1,01/12/2010 11:00,1.00,7,United Kingdom\n"
        );
        let planned = plan(&read(csv.as_bytes()).unwrap());
        let Planned::Refund(refund) = &planned[3] else {
            panic!("C4 is not matched: {:?}", planned[3]);
        };
        assert_eq!(refund.order, "2");
        assert_eq!(refund.amount_pence, 200, "capped at the order total");
        assert!(matches!(planned[4], Planned::Unmatched { .. }));
    }

    #[test]
    fn orders_are_numbered_in_file_order() {
        let csv = format!(
            "{HEADER}\
             1,A,a,2,01/12/2010 08:00,1.00,7,United Kingdom\n\
             2,A,,5,01/12/2010 08:30,0,,United Kingdom\n\
             3,A,a,1,01/12/2010 09:00,1.00,,United Kingdom\n"
        );
        let planned = plan(&read(csv.as_bytes()).unwrap());
        assert!(matches!(&planned[0], Planned::Order(order) if order.seq == 0));
        assert!(matches!(&planned[1], Planned::Adjustment { .. }));
        assert!(matches!(&planned[2], Planned::Order(order) if order.seq == 1));
    }
}
