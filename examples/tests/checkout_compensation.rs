//! Compensation in the checkout: a small data set with one order failing at each step of the
//! order saga, run through the whole checkout. Each failure compensates exactly the steps that
//! took effect, latest first, and undoes their effects: stock, money and email.
//!
//! Product A starts with 2 units (50 % of the 4 ordered). Orders 1003 to 1005 can each reserve
//! the last unit only because the order before them released it, so the test also shows that
//! released stock serves later orders, decided in file order.

mod checkout_support;

use std::sync::OnceLock;

use aqueduct_examples::checkout::{self, Config, InvoiceOutcome, Rules, Summary};
use aqueduct_patterns::SagaState;
use checkout_support::run;

const DATA: &str = "\
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
1001,A,LANTERN,1,01/12/2010 08:00,1.00,1,United Kingdom
1002,M,Manual,1,01/12/2010 08:10,1.00,2,United Kingdom
1003,A,LANTERN,1,01/12/2010 08:20,9000.00,3,United Kingdom
1004,A,LANTERN,1,01/12/2010 08:30,1.00,4,Japan
1005,A,LANTERN,1,01/12/2010 08:40,1.00,99,United Kingdom
1006,C,CANDLE,2,01/12/2010 08:50,2.50,6,United Kingdom
1007,C,CANDLE,2,01/12/2010 09:00,2.50,7,United Kingdom
C1008,A,LANTERN,-1,01/12/2010 09:10,1.00,1,United Kingdom
C1009,A,LANTERN,-1,01/12/2010 09:20,1.00,4,Japan
";

fn rules() -> Rules {
    Rules {
        stock_percent: 50,
        payment_limit_pence: 500_000,
        no_shipping: vec!["Japan".to_string()],
        bounced_customers: vec![99],
    }
}

fn summary() -> &'static Summary {
    static SUMMARY: OnceLock<Summary> = OnceLock::new();
    SUMMARY.get_or_init(|| {
        let invoices = checkout::read(DATA.as_bytes()).expect("test data parses");
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::new(dir.path().join("db"));
        config.rules = rules();
        run(&invoices, &config)
    })
}

fn outcome(invoice: &str) -> &'static InvoiceOutcome {
    &summary().outcome.invoices[invoice]
}

fn reason(invoice: &str) -> &'static str {
    outcome(invoice).reason.as_deref().unwrap_or("")
}

#[test]
fn success_compensates_nothing() {
    assert_eq!(outcome("1001").saga_state, Some(SagaState::Completed));
    assert!(outcome("1001").compensated.is_empty());
}

#[test]
fn reserve_failure_compensates_nothing() {
    for (invoice, why) in [("1002", "not a product"), ("1007", "out of stock: C")] {
        assert_eq!(
            outcome(invoice).saga_state,
            Some(SagaState::Compensated),
            "{invoice}"
        );
        assert!(
            reason(invoice).contains(why),
            "{invoice}: {}",
            reason(invoice)
        );
        assert!(outcome(invoice).compensated.is_empty(), "{invoice}");
    }
}

#[test]
fn payment_failure_releases_stock() {
    assert!(
        reason("1003").contains("payment declined"),
        "{}",
        reason("1003")
    );
    assert_eq!(outcome("1003").compensated, ["reserve-stock"]);
}

#[test]
fn shipping_failure_pays_back_then_releases() {
    assert!(
        reason("1004").contains("no shipping to Japan"),
        "{}",
        reason("1004")
    );
    assert_eq!(
        outcome("1004").compensated,
        ["charge-payment", "reserve-stock"]
    );
}

#[test]
fn confirmation_failure_undoes_every_step() {
    assert!(
        reason("1005").contains("confirmation bounced"),
        "{}",
        reason("1005")
    );
    assert_eq!(
        outcome("1005").compensated,
        ["arrange-shipping", "charge-payment", "reserve-stock"]
    );
}

#[test]
fn read_model_shows_cancelled_orders() {
    assert_eq!(outcome("1001").status, "completed");
    assert!(outcome("1005")
        .status
        .starts_with("cancelled: confirmation bounced"));
}

#[test]
fn only_completed_orders_hold_stock() {
    let kept: Vec<&str> = summary()
        .outcome
        .stock
        .kept
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(kept, ["1001", "1006"]);
    assert_eq!(summary().outcome.stock.held_units, 3);
    assert_eq!(summary().outcome.stock.released_units, 3);
}

#[test]
fn failed_orders_are_paid_back() {
    let (charged, paid_back, _) = summary().outcome.money;
    assert_eq!(charged, 100 + 100 + 100 + 500, "1001, 1004, 1005 and 1006");
    assert_eq!(paid_back, 200, "1004 and 1005");
}

#[test]
fn only_completed_orders_get_email() {
    assert_eq!(summary().outcome.emails, 2);
    assert_eq!(summary().problems, Vec::<String>::new());
}

#[test]
fn cancellation_of_completed_order_is_refunded() {
    assert_eq!(outcome("C1008").status, "refunded 1.00 GBP");
    assert_eq!(summary().outcome.refunds, (1, 100));
}

#[test]
fn cancellation_of_failed_order_is_not_refunded() {
    let status = &outcome("C1009").status;
    assert_eq!(
        status,
        "not refunded: order 1004 was cancelled and its charge paid back"
    );
}
