//! The checkout: real orders from the UCI "Online Retail" data set (in
//! `examples/data/online-retail/`) go through a transactional outbox, one orchestrated saga
//! per order with a worker pool per service, and an order-lookup read model. See the
//! `aqueduct_examples::checkout` module for the design and the rules.
//!
//! Run with `cargo run --release --example checkout`. The database lives in
//! `target/checkout-db` and is recreated unless `--resume` is given. `--kill-after N` aborts
//! the process after it started N sagas; running again with `--resume` finishes the run with
//! the same outcome. Set `RUST_LOG=info` to see the components' logs.

mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aqueduct_examples::checkout::{self, Config, Progress, Rules};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Checks out real orders through an outbox, sagas, worker pools and a read model.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The order data, a CSV file with the columns of the UCI Online Retail data set.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/online-retail/online_retail.csv"))]
    data: PathBuf,

    /// The database directory. It is removed at the start unless --resume is given.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/checkout-db"))]
    db: PathBuf,

    /// Continue the run stored in --db, for example after --kill-after.
    #[arg(long)]
    resume: bool,

    /// Abort the process after it started this many sagas, as a crash would.
    #[arg(long, value_name = "N")]
    kill_after: Option<u64>,

    /// Use only the first N invoices of the data.
    #[arg(long, value_name = "N")]
    invoices: Option<usize>,

    /// Maximum number of unfinished sagas at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    window: usize,

    /// Workers per service pool (the reservation pool always has one).
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    args.data = tidy(&args.data);
    args.db = tidy(&args.db);
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the checkout and returns false when the summary's checks found problems.
fn run(args: &Args) -> Result<bool, checkout::CheckoutError> {
    let mut invoices = checkout::load(&args.data)?;
    if let Some(count) = args.invoices {
        invoices.truncate(count);
    }
    let mut config = Config::new(&args.db);
    config.resume = args.resume;
    config.kill_after = args.kill_after;
    config.window = args.window;
    config.workers = args.workers;
    config.rules = Rules::default();
    report::print_start(args, &invoices, &config);

    let bar = progress_bar();
    let summary = checkout::run(&invoices, &config, &|progress| show(&bar, progress))?;
    bar.finish_and_clear();
    report::print_summary(&summary);
    Ok(summary.problems.is_empty())
}

/// Resolves the `..` in the default paths when their parent directory exists, and shortens
/// them to paths relative to the current directory, for printing.
fn tidy(path: &Path) -> PathBuf {
    let parent = path.parent().and_then(|parent| parent.canonicalize().ok());
    let full = match (parent, path.file_name()) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => return path.to_path_buf(),
    };
    let current = std::env::current_dir().ok();
    match current
        .as_deref()
        .and_then(|dir| full.strip_prefix(dir).ok())
    {
        Some(relative) => relative.to_path_buf(),
        None => full,
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} sagas finished  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, progress: &Progress) {
    bar.set_length(progress.sagas);
    bar.set_position(progress.finished);
    bar.set_message(format!(
        "{}/{} invoices placed, {} sagas started",
        progress.placed, progress.invoices, progress.started
    ));
}

/// Returns the log filter from `RUST_LOG`, or warnings by default. The orchestrator logs every
/// compensation at warn, and here compensations are expected outcomes of the rules, so the
/// default shows the saga module's errors only.
fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,aqueduct_patterns::saga=error")
    })
}
