//! One checkout run: opens the database, starts the services, places the invoices, waits for
//! every saga to finish, stops everything and summarizes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Retention, TopicConfig};
use aqueduct_patterns::{
    OrchestratorHandle, OutboxRelay, Position, ProjectionConfig, ProjectionRunner, RelayHandle,
    SagaOrchestrator, SagaState, WorkerPool,
};

use super::data::Invoice;
use super::lookup::{OrderLookup, OrderLookupProjection, PROJECTION};
use super::messages::{plan, Planned};
use super::orders::{subscribe_starter, OrderService, Starter};
use super::rules::Rules;
use super::sagas::{order_saga, refund_saga, ORCHESTRATOR};
use super::services::{
    CrashPoint, EmailService, InventoryService, PaymentService, ShippingService,
};
use super::summary::{summarize, Services, Summary};
use super::{topics, CheckoutError};

/// How often the run checks for finished sagas and reports progress.
const TICK: Duration = Duration::from_millis(100);

/// Settings of a checkout run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The database directory.
    pub db: PathBuf,
    /// Continue the run stored in `db`; otherwise `db` is removed first.
    pub resume: bool,
    /// The business rules.
    pub rules: Rules,
    /// Maximum number of unfinished sagas at once. Default 64.
    pub window: usize,
    /// Workers of each service pool except the reservation pool, which has one. Default 2.
    pub workers: usize,
    /// Abort the process with `std::process::abort` after this process started this many
    /// sagas, to test recovery.
    pub kill_after: Option<u64>,
    /// Abort the process at this point of a service, to test recovery.
    pub crash: Option<CrashPoint>,
    /// Fail the run when no saga finishes for this long. Default 60 s.
    pub stall_timeout: Duration,
}

impl Config {
    /// Returns the default settings for database directory `db`.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Config {
            db: db.into(),
            resume: false,
            rules: Rules::default(),
            window: 64,
            workers: 2,
            kill_after: None,
            crash: None,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts reported while a run goes on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Invoices in the data.
    pub invoices: u64,
    /// Invoices the order service has handled in this process.
    pub placed: u64,
    /// Sagas the run needs, one per order and per matched cancellation.
    pub sagas: u64,
    /// Sagas started by this process.
    pub started: u64,
    /// Sagas finished, including those of an earlier process.
    pub finished: u64,
}

/// Runs the checkout on `invoices` and returns its summary. `progress` is called from this
/// thread while the run goes on.
///
/// # Errors
///
/// [`CheckoutError`] when the database or a component fails, when `--resume` finds another
/// run's data, or when sagas stop finishing.
pub fn run(
    invoices: &[Invoice],
    config: &Config,
    progress: &dyn Fn(&Progress),
) -> Result<Summary, CheckoutError> {
    let planned = plan(invoices);
    let broker = open_database(config)?;
    create_topics(&broker)?;
    check_fingerprint(&broker, invoices, &config.rules, config)?;
    let app = App::start(&broker, invoices, config)?;
    let started_at = Instant::now();
    let finished_before = count_finished(&app.orchestrator)?;

    let mut report = Progress {
        invoices: invoices.len() as u64,
        sagas: planned.iter().filter(|p| p.saga_id().is_some()).count() as u64,
        ..Progress::default()
    };
    place_all(&app, &planned, &mut report, progress)?;
    wait_until_done(&app, config.stall_timeout, &mut report, progress)?;
    let stopped = app.stop()?;
    if report.finished < report.sagas {
        return Err(CheckoutError::Panicked {
            thread: "saga starter",
        });
    }
    let elapsed = started_at.elapsed();
    let finished_here = report.finished.saturating_sub(finished_before);
    summarize(&planned, &stopped, elapsed, finished_here)
}

fn open_database(config: &Config) -> Result<Broker, CheckoutError> {
    let exists = config.db.join("conf").exists();
    if config.resume && !exists {
        return Err(CheckoutError::NothingToResume {
            path: config.db.clone(),
        });
    }
    if !config.resume && config.db.exists() {
        std::fs::remove_dir_all(&config.db).map_err(|source| CheckoutError::RemoveDatabase {
            path: config.db.clone(),
            source,
        })?;
    }
    Ok(Broker::open(&config.db)?)
}

fn create_topics(broker: &Broker) -> Result<(), CheckoutError> {
    broker.create_topic(topics::DEAD_LETTERS, TopicConfig::default())?;
    broker.create_topic(topics::PLACED, TopicConfig::default())?;
    broker.create_topic(topics::EVENTS, TopicConfig::default())?;
    let requests = [
        topics::RESERVE,
        topics::RELEASE,
        topics::PAYMENTS,
        topics::SHIPPING,
        topics::EMAILS,
    ];
    for topic in requests {
        let config = TopicConfig::default()
            .dead_letter_topic(topics::DEAD_LETTERS)
            .retention(Retention::UntilAcked);
        broker.create_topic(topic, config)?;
    }
    Ok(())
}

/// Stores a description of the data and the rules on a fresh run, and compares it on resume.
fn check_fingerprint(
    broker: &Broker,
    invoices: &[Invoice],
    rules: &Rules,
    config: &Config,
) -> Result<(), CheckoutError> {
    let lines: usize = invoices.iter().map(|i| i.lines.len()).sum();
    let first = invoices.first().map_or("", |i| i.number.as_str());
    let last = invoices.last().map_or("", |i| i.number.as_str());
    let current = format!(
        "{} invoices ({first} to {last}, {lines} lines) under rules {rules:?}",
        invoices.len()
    );
    let meta = broker.tree("checkout.run")?;
    match meta.get("fingerprint")? {
        Some(stored) if stored.as_ref() != current.as_bytes() => {
            Err(CheckoutError::ResumeMismatch {
                path: config.db.clone(),
                stored: String::from_utf8_lossy(&stored).into_owned(),
                current,
            })
        }
        Some(_) => Ok(()),
        None => {
            meta.insert("fingerprint", current.as_bytes())?;
            Ok(())
        }
    }
}

/// The running components of a checkout.
struct App {
    broker: Broker,
    orders: OrderService,
    projection: ProjectionRunner,
    customer_service: OrderLookup,
    services: Services,
    pools: Vec<WorkerPool>,
    orchestrator: SagaOrchestrator,
    runner: OrchestratorHandle,
    relay: RelayHandle,
    starter: JoinHandle<Result<(), CheckoutError>>,
    started: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    lookups: JoinHandle<()>,
}

impl App {
    fn start(
        broker: &Broker,
        invoices: &[Invoice],
        config: &Config,
    ) -> Result<Self, CheckoutError> {
        let projection_config =
            ProjectionConfig::default().flush_interval(Duration::from_millis(200));
        let projection = ProjectionRunner::from_topic(
            broker,
            topics::EVENTS,
            PROJECTION,
            OrderLookupProjection,
            projection_config,
        )?;
        let model = projection.read_model();
        let services = open_services(broker, OrderLookup::new(model.clone()), config)?;
        services
            .inventory
            .load_stock(&config.rules.initial_stock(invoices))?;
        let pools = start_pools(broker, &services, config.workers)?;

        let sagas = vec![order_saga(), refund_saga(OrderLookup::new(model.clone()))];
        let orchestrator = SagaOrchestrator::open(broker, ORCHESTRATOR, sagas)?;
        let runner = orchestrator.spawn()?;
        let orders = OrderService::open(broker)?;
        let relay = OutboxRelay::new(orders.outbox(), broker).start()?;

        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicU64::new(0));
        let starter = Starter {
            orchestrator: orchestrator.clone(),
            window: config.window.max(1),
            kill_after: config.kill_after,
            started: Arc::clone(&started),
            stop: Arc::clone(&stop),
        };
        let consumer = subscribe_starter(broker)?;
        let starter = std::thread::Builder::new()
            .name("saga-starter".to_string())
            .spawn(move || starter.run(consumer))
            .map_err(|_| CheckoutError::Panicked {
                thread: "saga starter",
            })?;
        let customer_service = OrderLookup::new(model);
        let lookups = spawn_customer_service(&customer_service, invoices, &stop);
        Ok(App {
            broker: broker.clone(),
            orders,
            projection,
            customer_service,
            services,
            pools,
            orchestrator,
            runner,
            relay,
            starter,
            started,
            stop,
            lookups,
        })
    }

    /// Stops every component, waits for the read model to catch up, and returns what the
    /// summary reads.
    fn stop(self) -> Result<Stopped, CheckoutError> {
        self.stop.store(true, Ordering::SeqCst);
        join(self.starter, "saga starter")??;
        self.runner.stop();
        for pool in self.pools {
            pool.shutdown(Duration::from_secs(5));
        }
        let relay_published = self.relay.stats().published;
        self.relay.stop();
        if self.lookups.join().is_err() {
            return Err(CheckoutError::Panicked {
                thread: "customer service",
            });
        }
        catch_up(&self.broker, &self.projection)?;
        Ok(Stopped {
            orchestrator: self.orchestrator,
            projection: self.projection,
            lookup: self.customer_service,
            services: self.services,
            relay_published,
        })
    }
}

/// The components left after the run stopped, which the summary reads.
pub(crate) struct Stopped {
    pub orchestrator: SagaOrchestrator,
    pub projection: ProjectionRunner,
    pub lookup: OrderLookup,
    pub services: Services,
    pub relay_published: u64,
}

fn open_services(
    broker: &Broker,
    lookup: OrderLookup,
    config: &Config,
) -> Result<Services, CheckoutError> {
    let crash = &config.crash;
    Ok(Services {
        inventory: Arc::new(InventoryService::open(broker, lookup, crash.clone())?),
        payment: Arc::new(PaymentService::open(
            broker,
            config.rules.clone(),
            crash.clone(),
        )?),
        shipping: Arc::new(ShippingService::open(
            broker,
            config.rules.clone(),
            crash.clone(),
        )?),
        email: Arc::new(EmailService::open(
            broker,
            config.rules.clone(),
            crash.clone(),
        )?),
    })
}

fn start_pools(
    broker: &Broker,
    services: &Services,
    workers: usize,
) -> Result<Vec<WorkerPool>, CheckoutError> {
    Ok(vec![
        services.inventory.start_reserving(broker)?,
        services.inventory.start_releasing(broker, workers)?,
        services.payment.start(broker, workers)?,
        services.shipping.start(broker, workers)?,
        services.email.start(broker, workers)?,
    ])
}

/// Places every planned invoice in file order; invoices placed by an earlier process are
/// skipped.
fn place_all(
    app: &App,
    planned: &[Planned],
    report: &mut Progress,
    progress: &dyn Fn(&Progress),
) -> Result<(), CheckoutError> {
    let mut last = Instant::now();
    for item in planned {
        app.orders.place(item)?;
        report.placed += 1;
        if last.elapsed() >= TICK {
            report.started = app.started.load(Ordering::Relaxed);
            progress(report);
            last = Instant::now();
        }
    }
    Ok(())
}

/// Waits until every saga has finished or the starter has ended. Fails when no saga finishes
/// for `stall_timeout`.
fn wait_until_done(
    app: &App,
    stall_timeout: Duration,
    report: &mut Progress,
    progress: &dyn Fn(&Progress),
) -> Result<(), CheckoutError> {
    let mut last_change = Instant::now();
    loop {
        let finished = count_finished(&app.orchestrator)?;
        if finished != report.finished {
            last_change = Instant::now();
        }
        report.finished = finished;
        report.started = app.started.load(Ordering::Relaxed);
        progress(report);
        if finished >= report.sagas {
            return Ok(());
        }
        if app.starter.is_finished() {
            // The starter ended early; `App::stop` joins it and returns its error.
            return Ok(());
        }
        if last_change.elapsed() > stall_timeout {
            return Err(stalled(app, stall_timeout, finished, report.sagas));
        }
        std::thread::sleep(TICK);
    }
}

fn stalled(app: &App, waited: Duration, finished: u64, expected: u64) -> CheckoutError {
    let stuck = app
        .orchestrator
        .stuck(Duration::ZERO, 5)
        .unwrap_or_default()
        .into_iter()
        .map(|saga| {
            format!(
                "{} ({})",
                saga.id,
                saga.reason.unwrap_or_else(|| saga.state.to_string())
            )
        })
        .collect();
    CheckoutError::Stalled {
        waited,
        finished,
        expected,
        stuck,
    }
}

/// Counts finished sagas of every state.
pub(crate) fn count_finished(orchestrator: &SagaOrchestrator) -> Result<u64, CheckoutError> {
    let mut count = 0;
    for state in [
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Aborted,
    ] {
        count += orchestrator.list(state, usize::MAX)?.len() as u64;
    }
    Ok(count)
}

/// Waits until the read model has applied every event published so far.
fn catch_up(broker: &Broker, projection: &ProjectionRunner) -> Result<(), CheckoutError> {
    broker.flush()?;
    let end = broker.end_offset(topics::EVENTS, 0)?;
    if end == 0 {
        return Ok(());
    }
    let last = Position {
        partition: 0,
        offset: end - 1,
    };
    projection.wait_for(last, Duration::from_secs(60))?;
    Ok(())
}

/// Looks orders up by invoice and by customer while the run goes on, as customer service
/// would, one lookup every millisecond.
fn spawn_customer_service(
    lookup: &OrderLookup,
    invoices: &[Invoice],
    stop: &Arc<AtomicBool>,
) -> JoinHandle<()> {
    let lookup = lookup.clone();
    let stop = Arc::clone(stop);
    let queries: Vec<(String, Option<u32>)> = invoices
        .iter()
        .map(|invoice| (invoice.number.clone(), invoice.customer))
        .collect();
    std::thread::spawn(move || {
        for (invoice, customer) in queries.iter().cycle() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let answer = match customer {
                Some(customer) => lookup.orders_of(*customer).map(|_| ()),
                None => lookup.invoice(invoice).map(|_| ()),
            };
            if let Err(error) = answer {
                tracing::warn!(%error, invoice, "customer-service lookup failed");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn join<T>(handle: JoinHandle<T>, thread: &'static str) -> Result<T, CheckoutError> {
    handle
        .join()
        .map_err(|_| CheckoutError::Panicked { thread })
}
