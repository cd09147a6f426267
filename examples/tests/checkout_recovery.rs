//! Recovery of the checkout: child processes run the checkout on the first 150 invoices of the
//! shipped data and die midway, by SIGKILL, by `--kill-after` or at a crash point inside a
//! service. The parent resumes the run on the same database and compares its outcome with
//! that of an uninterrupted run: every invoice's saga state, reason and compensations, the
//! read model's status, emails, money and the stock ledger must be equal.
//!
//! The rules are stricter than the defaults, so that the slice has failures at every step.

mod checkout_support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::OnceLock;

use aqueduct_examples::checkout::{
    Config, CrashPoint, CrashStage, Invoice, Rules, ServiceName, Summary,
};
use aqueduct_patterns::{SagaState, StepKind};
use checkout_support::{child_role, report, run, slice, spawn};

const INVOICES: usize = 150;
const CHILD_TEST: &str = "child_process";
const SIGABRT: i32 = 6;

fn invoices() -> &'static [Invoice] {
    static INVOICES_CELL: OnceLock<Vec<Invoice>> = OnceLock::new();
    INVOICES_CELL.get_or_init(|| slice(INVOICES))
}

/// Rules that fail orders at every step of this slice: a low payment limit, no shipping to
/// EIRE, and a bouncing address for the customer of the first invoice.
fn rules() -> Rules {
    Rules {
        stock_percent: 95,
        payment_limit_pence: 150_000,
        no_shipping: vec!["EIRE".to_string()],
        bounced_customers: vec![17850],
    }
}

fn config(db: &Path, resume: bool) -> Config {
    let mut config = Config::new(db);
    config.rules = rules();
    config.resume = resume;
    config.window = 16;
    config
}

/// Returns the summary of an uninterrupted run, computed once per test binary.
fn reference() -> &'static Summary {
    static REFERENCE: OnceLock<Summary> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        run(invoices(), &config(&dir.path().join("db"), false))
    })
}

/// Returns the first invoice whose saga ended in `state` with a reason containing `reason`.
fn invoice_where(state: SagaState, reason: &str) -> String {
    reference()
        .outcome
        .invoices
        .iter()
        .find(|(number, outcome)| {
            !number.starts_with('C')
                && outcome.saga_state == Some(state)
                && outcome.reason.as_deref().unwrap_or("").contains(reason)
        })
        .map(|(number, _)| number.clone())
        .expect("an invoice with that outcome in the reference run")
}

/// Plays the child: runs the checkout in the given role until the process dies.
#[test]
fn child_process() {
    let Some((role, db)) = child_role() else {
        return;
    };
    let mut config = config(&db, false);
    let parts: Vec<&str> = role.split(':').collect();
    match parts.as_slice() {
        ["run"] => {}
        ["kill-after", count] => config.kill_after = Some(count.parse().unwrap()),
        ["crash", service, kind, stage, invoice] => {
            config.crash = Some(crash_point(service, kind, stage, invoice))
        }
        _ => panic!("unknown child role {role:?}"),
    }
    let progress = |progress: &aqueduct_examples::checkout::Progress| {
        report(&format!("started {}", progress.started));
    };
    aqueduct_examples::checkout::run(invoices(), &config, &progress).unwrap();
    report("finished");
    panic!("child role {role:?} finished without being killed");
}

fn crash_point(service: &str, kind: &str, stage: &str, invoice: &str) -> CrashPoint {
    let service = match service {
        "inventory" => ServiceName::Inventory,
        "payment" => ServiceName::Payment,
        "shipping" => ServiceName::Shipping,
        _ => ServiceName::Email,
    };
    let kind = if kind == "action" {
        StepKind::Action
    } else {
        StepKind::Compensation
    };
    let stage = if stage == "effect" {
        CrashStage::AfterEffect
    } else {
        CrashStage::AfterReply
    };
    CrashPoint {
        service,
        invoice: invoice.to_string(),
        kind,
        stage,
    }
}

/// Resumes the run in `db` in this process.
fn resume(db: &Path) -> Summary {
    run(invoices(), &config(db, true))
}

#[test]
fn reference_fails_at_every_step() {
    let failed = &reference().outcome.failed;
    for reason in [
        "out of stock",
        "payment declined",
        "no shipping to EIRE",
        "confirmation bounced",
    ] {
        assert!(
            failed.contains_key(reason),
            "no order failed with {reason:?}: {failed:?}"
        );
    }
}

#[test]
fn reference_passes_checks() {
    assert_eq!(reference().problems, Vec::<String>::new());
}

#[test]
fn sigkill_midway_then_resume() {
    let expected = reference();
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("db");

    let mut child = spawn(CHILD_TEST, "run", &db);
    child.wait_for(|line| {
        line.strip_prefix("started ")
            .and_then(|count| count.parse::<u64>().ok())
            .is_some_and(|count| count >= 60)
    });
    child.kill();
    let resumed = resume(&db);

    assert_eq!(resumed.problems, Vec::<String>::new());
    assert_eq!(resumed.outcome, expected.outcome);
}

#[test]
fn kill_after_then_resume() {
    let expected = reference();
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("db");

    let status = spawn(CHILD_TEST, "kill-after:40", &db).wait();
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the child aborted: {status}"
    );
    let resumed = resume(&db);

    assert_eq!(resumed.problems, Vec::<String>::new());
    assert_eq!(resumed.outcome, expected.outcome);
    assert!(resumed.sagas_finished_here < expected.sagas_finished_here);
}

/// Kills a child at a crash point, resumes, and compares with the reference.
fn crash_and_resume(role: &str) {
    let expected = reference();
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("db");

    let status = spawn(CHILD_TEST, role, &db).wait();
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the child aborted at {role}: {status}"
    );
    let resumed = resume(&db);

    assert_eq!(resumed.problems, Vec::<String>::new(), "after {role}");
    assert_eq!(resumed.outcome, expected.outcome, "after {role}");
}

#[test]
fn crash_after_charge_before_reply() {
    let invoice = invoice_where(SagaState::Completed, "");
    crash_and_resume(&format!("crash:payment:action:effect:{invoice}"));
}

#[test]
fn crash_after_release_before_reply() {
    let invoice = invoice_where(SagaState::Compensated, "payment declined");
    crash_and_resume(&format!("crash:inventory:compensation:effect:{invoice}"));
}

#[test]
fn crash_after_email_reply_before_ack() {
    let invoice = invoice_where(SagaState::Completed, "");
    crash_and_resume(&format!("crash:email:action:reply:{invoice}"));
}
