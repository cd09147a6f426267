//! Printing the rules at the start and the summary at the end.

use std::collections::BTreeMap;

use aqueduct_examples::checkout::{gbp, thousands, Config, Invoice, InvoiceKind, Summary};

use super::Args;

/// Prints the data, the database and the rules.
pub fn print_start(args: &Args, invoices: &[Invoice], config: &Config) {
    let count = |kind| invoices.iter().filter(|i| i.kind() == kind).count() as u64;
    println!(
        "checkout of {} invoices from {}",
        thousands(invoices.len() as u64),
        args.data.display()
    );
    println!(
        "  {} orders, {} cancellations, {} stock adjustments (skipped)",
        thousands(count(InvoiceKind::Order)),
        thousands(count(InvoiceKind::Cancellation)),
        thousands(count(InvoiceKind::StockAdjustment))
    );
    let mode = if config.resume { "resuming" } else { "fresh" };
    println!("database {} ({mode})", config.db.display());
    println!("rules:");
    for rule in config.rules.describe() {
        println!("  - {rule}");
    }
    println!();
}

/// Prints the summary and its checks.
pub fn print_summary(summary: &Summary) {
    let outcome = &summary.outcome;
    let failed: u64 = outcome.failed.values().sum();
    println!("summary");
    println!(
        "  orders          {} completed, {} compensated",
        thousands(outcome.completed),
        thousands(failed)
    );
    for (reason, count) in &outcome.failed {
        println!("    {reason:<26} {:>6}", thousands(*count));
    }
    print_compensations(summary);
    print_totals(summary);
    print_timing(summary);
    print_checks(summary);
}

/// Prints cancellations, emails, money, stock and lookups.
fn print_totals(summary: &Summary) {
    let outcome = &summary.outcome;
    println!(
        "  cancellations   {} refunded ({}), {} needed no refund (order not charged or paid back), {} \
         without a matching order in the data",
        thousands(outcome.refunds.0),
        gbp(outcome.refunds.1),
        thousands(outcome.refunds_not_needed),
        thousands(outcome.unmatched)
    );
    println!(
        "  emails          {} sent for {} completed orders",
        thousands(outcome.emails),
        thousands(outcome.completed)
    );
    let (charged, paid_back, refunded) = outcome.money;
    println!(
        "  money           charged {}, paid back {}, refunded {}",
        gbp(charged),
        gbp(paid_back),
        gbp(refunded)
    );
    let units = |units: i64| thousands(units.unsigned_abs());
    println!(
        "  stock           {} units at start, {} held by completed orders, {} released by \
         compensations",
        units(outcome.stock.initial_units),
        units(outcome.stock.held_units),
        units(outcome.stock.released_units)
    );
    println!(
        "  lookups         {} served by the order-lookup read model in this process",
        thousands(summary.lookups)
    );
}

/// Prints how often each step was compensated.
fn print_compensations(summary: &Summary) {
    let mut steps: BTreeMap<&str, u64> = BTreeMap::new();
    for invoice in summary.outcome.invoices.values() {
        for step in &invoice.compensated {
            *steps.entry(step.as_str()).or_default() += 1;
        }
    }
    let list: Vec<String> = steps
        .iter()
        .map(|(step, count)| format!("{step} {count}"))
        .collect();
    if !list.is_empty() {
        println!("  compensations   {}", list.join(", "));
    }
}

fn print_timing(summary: &Summary) {
    let seconds = summary.elapsed.as_secs_f64();
    let rate = summary.sagas_finished_here as f64 / seconds.max(0.001);
    println!(
        "  this process    {} sagas finished in {seconds:.1} s, {rate:.0} sagas/s",
        thousands(summary.sagas_finished_here)
    );
    let latency = &summary.latency;
    println!(
        "  saga latency    p50 {} ms, p90 {} ms, p99 {} ms, max {} ms over {} sagas",
        thousands(latency.p50),
        thousands(latency.p90),
        thousands(latency.p99),
        thousands(latency.max),
        thousands(latency.count)
    );
}

fn print_checks(summary: &Summary) {
    if summary.problems.is_empty() {
        println!(
            "  checks          passed: one email per completed order, no double charge, \
             stock and read model agree with the sagas"
        );
        return;
    }
    println!("  checks          FAILED:");
    for problem in &summary.problems {
        println!("    - {problem}");
    }
}
