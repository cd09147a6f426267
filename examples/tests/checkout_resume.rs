//! Resuming a checkout checks that there is a run to resume and that it was made from the same
//! data and rules.

mod checkout_support;

use aqueduct_examples::checkout::{self, CheckoutError, Config, Invoice};
use checkout_support::run;

const DATA: &str = "\
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
1001,A,LANTERN,1,01/12/2010 08:00,1.00,1,United Kingdom
1002,A,LANTERN,1,01/12/2010 08:10,1.00,2,United Kingdom
";

fn invoices() -> Vec<Invoice> {
    checkout::read(DATA.as_bytes()).expect("test data parses")
}

#[test]
fn resume_without_database_fails() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path().join("db"));
    config.resume = true;
    let error = checkout::run(&invoices(), &config, &|_| {}).unwrap_err();
    assert!(
        matches!(error, CheckoutError::NothingToResume { .. }),
        "{error}"
    );
}

#[test]
fn resume_with_other_rules_fails() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path().join("db"));
    run(&invoices(), &config);

    config.resume = true;
    config.rules.payment_limit_pence = 1;
    let error = checkout::run(&invoices(), &config, &|_| {}).unwrap_err();
    assert!(
        matches!(error, CheckoutError::ResumeMismatch { .. }),
        "{error}"
    );
}

#[test]
fn resume_of_finished_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path().join("db"));
    let first = run(&invoices(), &config);

    config.resume = true;
    let again = run(&invoices(), &config);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(again.sagas_finished_here, 0);
}
