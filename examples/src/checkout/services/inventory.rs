//! The inventory service: reserves stock for orders and releases it in compensations.
//!
//! # Reservations follow the data, not the threads
//!
//! Reservations run on a pool with a single worker, in the order of the orders in the data
//! (each order carries its number, `seq`). A request that arrives before the one numbered
//! `next-seq` is returned to the topic and retried shortly. So whether an order gets its stock
//! depends only on the orders before it in the file.
//!
//! Stock that a compensation releases makes the outcome depend on timing, unless the service
//! can tell for each earlier reservation whether it will be kept. It queries the order-lookup
//! read model: a reservation of a completed order is kept, one of a failed order will be released,
//! and one of an order still running is pending. A product fits when the request fits even if
//! every pending reservation is kept. It is out of stock when the request does not fit even if
//! every pending reservation is released. In between, the service waits for the earlier orders
//! to finish. The result equals that of running the orders one after another in file order.
//!
//! # Storage
//!
//! One sled tree `inventory` with keys `stock/CODE` (initial and held units), `hold/SEQ`
//! (a reservation, 8-byte big-endian `seq`), `open/SEQ` (reservations whose order is still
//! running, valued with its invoice) and `next-seq`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Delivery, OrderingMode};
use aqueduct_patterns::{Backoff, HandlerError, SagaRequest, WorkerConfig, WorkerPool};
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionalTree,
};

use super::{
    decode, decode_in, encode, parse, CrashPoint, Decision, ServiceBase, ServiceError, ServiceName,
};
use crate::checkout::lookup::{OrderLookup, OrderStatus};
use crate::checkout::messages::{OrderEvent, OrderRequest};
use crate::checkout::rules::{code_kind, CodeKind};
use crate::checkout::{topics, CheckoutError};

const NEXT_SEQ: &[u8] = b"next-seq";
const STOCK_LOADED: &[u8] = b"stock-loaded";

/// How long a reservation waits inside the handler for earlier orders to finish before it
/// returns the request to the topic.
const MAX_WAIT: Duration = Duration::from_secs(2);
const WAIT_STEP: Duration = Duration::from_millis(5);

type TxResult<T> = ConflictableTransactionResult<T, ServiceError>;

#[derive(Debug, Serialize, Deserialize)]
struct StockRecord {
    initial: i64,
    held: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    invoice: String,
    lines: Vec<(String, i64)>,
    released: bool,
}

/// The state of the order behind an open reservation, as the read model reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// The order completed; the reservation stays.
    Kept,
    /// The order failed; a compensation releases the reservation.
    Going,
    /// The order is still running.
    Pending,
}

/// Totals of the stock ledger after a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StockLedger {
    /// Units of all products at the start.
    pub initial_units: i64,
    /// Units held by reservations that were not released.
    pub held_units: i64,
    /// Units released by compensations.
    pub released_units: i64,
    /// Units per invoice of the reservations that were not released.
    pub kept: BTreeMap<String, i64>,
}

/// Reserves and releases stock.
#[derive(Clone)]
pub struct InventoryService {
    base: ServiceBase,
    lookup: OrderLookup,
}

impl InventoryService {
    /// Opens the service's tree and inbox.
    ///
    /// # Errors
    ///
    /// [`CheckoutError`] when the broker cannot open them.
    pub fn open(
        broker: &Broker,
        lookup: OrderLookup,
        crash: Option<CrashPoint>,
    ) -> Result<Self, CheckoutError> {
        let base = ServiceBase::open(broker, ServiceName::Inventory, "inventory", crash)?;
        Ok(InventoryService { base, lookup })
    }

    /// Stores the initial stock, unless a run before this one stored it.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Storage`] and [`CheckoutError::Encode`].
    pub fn load_stock(&self, stock: &BTreeMap<String, i64>) -> Result<(), CheckoutError> {
        let tree = self.base.tree();
        if tree.contains_key(STOCK_LOADED)? {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (code, &initial) in stock {
            let record = StockRecord { initial, held: 0 };
            batch.insert(stock_key(code), postcard::to_stdvec(&record)?);
        }
        batch.insert(STOCK_LOADED, &[][..]);
        tree.apply_batch(batch)?;
        Ok(())
    }

    /// Starts the reservation pool: one worker, so reservations apply one at a time.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Workers`] when the pool cannot start.
    pub fn start_reserving(self: &Arc<Self>, broker: &Broker) -> Result<WorkerPool, CheckoutError> {
        let config = WorkerConfig::default()
            .workers(1)
            .prefetch(1)
            .ordering(OrderingMode::Unordered)
            .retry(Backoff::new(
                Duration::from_millis(2),
                Duration::from_millis(50),
            ));
        let service = Arc::clone(self);
        let pool = WorkerPool::start(
            broker,
            topics::RESERVE,
            "inventory",
            config,
            move |delivery, _| service.reserve(delivery),
        )?;
        Ok(pool)
    }

    /// Starts the release pool with `workers` workers.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Workers`] when the pool cannot start.
    pub fn start_releasing(
        self: &Arc<Self>,
        broker: &Broker,
        workers: usize,
    ) -> Result<WorkerPool, CheckoutError> {
        let config = super::pool_config(workers);
        let service = Arc::clone(self);
        let pool = WorkerPool::start(
            broker,
            topics::RELEASE,
            "inventory",
            config,
            move |delivery, _| service.release(delivery),
        )?;
        Ok(pool)
    }

    /// Handles a reservation request.
    fn reserve(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let (request, order): (SagaRequest, OrderRequest) = parse(delivery)?;
        if let Some(decision) = self.base.stored(&request)? {
            return self.base.complete(&request, decision);
        }
        let next = self.next_seq()?;
        if order.seq > next {
            return Err(HandlerError::retry(format!(
                "order {} (number {}) waits for the order numbered {next}",
                order.invoice, order.seq
            )));
        }
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            let fates = self.open_fates()?;
            match self
                .base
                .decide_once(&request, |tree| decide(tree, &order, &fates))
            {
                Ok(decision) => return self.base.complete(&request, decision),
                Err(ServiceError::Undecided(reason)) if Instant::now() < deadline => {
                    tracing::trace!(invoice = %order.invoice, %reason, "reservation waits");
                    std::thread::sleep(WAIT_STEP);
                }
                Err(error) => return Err(HandlerError::retry(error)),
            }
        }
    }

    /// Handles a release request (the compensation of a reservation).
    fn release(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let (request, order): (SagaRequest, OrderRequest) = parse(delivery)?;
        let decision = match self.base.stored(&request)? {
            Some(decision) => decision,
            None => self
                .base
                .decide_once(&request, |tree| release(tree, &order))
                .map_err(HandlerError::retry)?,
        };
        self.base.complete(&request, decision)
    }

    fn next_seq(&self) -> Result<u64, HandlerError> {
        let bytes = self.base.tree().get(NEXT_SEQ)?;
        Ok(bytes.map_or(0, |bytes| read_u64(&bytes)))
    }

    /// Returns the open reservations with the state of their orders in the read model.
    fn open_fates(&self) -> Result<Vec<(u64, Fate)>, HandlerError> {
        let mut fates = Vec::new();
        for entry in self.base.tree().scan_prefix(b"open/") {
            let (key, invoice) = entry?;
            let seq = read_u64(&key[b"open/".len()..]);
            let invoice = String::from_utf8_lossy(&invoice).into_owned();
            let fate = match self.lookup.invoice(&invoice)?.map(|view| view.status()) {
                Some(OrderStatus::Completed) => Fate::Kept,
                Some(OrderStatus::Compensating { .. } | OrderStatus::Cancelled { .. }) => {
                    Fate::Going
                }
                _ => Fate::Pending,
            };
            fates.push((seq, fate));
        }
        Ok(fates)
    }

    /// Returns the ledger totals, for the summary.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Storage`] and [`CheckoutError::Decode`].
    pub fn ledger(&self) -> Result<StockLedger, CheckoutError> {
        let mut ledger = StockLedger::default();
        for entry in self.base.tree().scan_prefix(b"stock/") {
            let (key, bytes) = entry?;
            let record: StockRecord = decode(&String::from_utf8_lossy(&key), &bytes)?;
            ledger.initial_units += record.initial;
            ledger.held_units += record.held;
        }
        for entry in self.base.tree().scan_prefix(b"hold/") {
            let (key, bytes) = entry?;
            let hold: Hold = decode(&String::from_utf8_lossy(&key), &bytes)?;
            let units: i64 = hold.lines.iter().map(|(_, units)| units).sum();
            if hold.released {
                ledger.released_units += units;
            } else {
                ledger.kept.insert(hold.invoice, units);
            }
        }
        Ok(ledger)
    }
}

/// Decides a reservation inside the transaction; aborts with `Undecided` while the outcome
/// depends on earlier orders that are still running.
fn decide(
    tree: &TransactionalTree,
    order: &OrderRequest,
    fates: &[(u64, Fate)],
) -> TxResult<Decision> {
    let next = read_next(tree)?;
    if order.seq != next {
        return Err(undecided(format!(
            "order {} is number {}, but the inventory is at number {next}",
            order.invoice, order.seq
        )));
    }
    tree.insert(NEXT_SEQ, &(next + 1).to_be_bytes()[..])?;

    if tree.get(hold_key(order.seq))?.is_some() {
        return Ok(reject(
            order,
            "cancelled before stock was reserved".to_string(),
        ));
    }
    if let Some(line) = order
        .lines
        .iter()
        .find(|l| code_kind(&l.code) == CodeKind::NonProduct)
    {
        let reason = format!(
            "not a product: stock code {} cannot be picked from a shelf",
            line.code
        );
        return Ok(reject(order, reason));
    }

    let need = products(order);
    let (going, pending) = tally_open(tree, fates)?;
    let mut short = Vec::new();
    for (code, &units) in &need {
        let stock = read_stock(tree, code)?;
        let pending_units = pending.get(code).copied().unwrap_or(0);
        let kept = stock.held - going.get(code).copied().unwrap_or(0) - pending_units;
        let at_most = stock.initial - kept;
        if units > at_most {
            short.push(code.as_str());
        } else if units > at_most - pending_units {
            return Err(undecided(format!(
                "stock of {code} depends on earlier orders that are still running"
            )));
        }
    }

    if !short.is_empty() {
        return Ok(reject(order, format!("out of stock: {}", short.join(", "))));
    }
    hold(tree, order, &need)
}

/// Sums the open reservations' units per product: those that will be released and those
/// still pending. Reservations of completed orders are closed on the way.
fn tally_open(
    tree: &TransactionalTree,
    fates: &[(u64, Fate)],
) -> TxResult<(BTreeMap<String, i64>, BTreeMap<String, i64>)> {
    let mut going = BTreeMap::new();
    let mut pending = BTreeMap::new();
    for &(seq, fate) in fates {
        if tree.get(open_key(seq))?.is_none() {
            continue;
        }
        let Some(bytes) = tree.get(hold_key(seq))? else {
            continue;
        };
        let hold: Hold = decode_in("hold", &bytes)?;
        let sums = match fate {
            Fate::Kept => {
                tree.remove(open_key(seq))?;
                continue;
            }
            Fate::Going => &mut going,
            Fate::Pending => &mut pending,
        };
        for (code, units) in hold.lines {
            *sums.entry(code).or_insert(0) += units;
        }
    }
    Ok((going, pending))
}

/// Reserves `need` for `order`.
fn hold(
    tree: &TransactionalTree,
    order: &OrderRequest,
    need: &BTreeMap<String, i64>,
) -> TxResult<Decision> {
    for (code, &units) in need {
        let mut stock = read_stock(tree, code)?;
        stock.held += units;
        tree.insert(stock_key(code), encode(&stock)?)?;
    }
    let record = Hold {
        invoice: order.invoice.clone(),
        lines: need
            .iter()
            .map(|(code, &units)| (code.clone(), units))
            .collect(),
        released: false,
    };
    tree.insert(hold_key(order.seq), encode(&record)?)?;
    tree.insert(open_key(order.seq), order.invoice.as_bytes())?;
    let units: i64 = need.values().sum();
    let event = OrderEvent::StockReserved {
        invoice: order.invoice.clone(),
        units,
    };
    Ok(Decision::ok(format!("reserved {units} units"), event))
}

/// Releases the reservation of `order`. Without one, it leaves a released marker, so that a
/// late reservation request reserves nothing.
fn release(tree: &TransactionalTree, order: &OrderRequest) -> TxResult<Decision> {
    let key = hold_key(order.seq);
    let mut units = 0;
    match tree.get(&key)? {
        Some(bytes) => {
            let mut record: Hold = decode_in("hold", &bytes)?;
            if !record.released {
                for (code, held) in &record.lines {
                    let mut stock = read_stock(tree, code)?;
                    stock.held -= held;
                    tree.insert(stock_key(code), encode(&stock)?)?;
                    units += held;
                }
                record.released = true;
                tree.insert(key, encode(&record)?)?;
                tree.remove(open_key(order.seq))?;
            }
        }
        None => {
            let marker = Hold {
                invoice: order.invoice.clone(),
                lines: Vec::new(),
                released: true,
            };
            tree.insert(key, encode(&marker)?)?;
        }
    }
    let event = OrderEvent::StockReleased {
        invoice: order.invoice.clone(),
        units,
    };
    Ok(Decision::ok(format!("released {units} units"), event))
}

fn reject(order: &OrderRequest, reason: String) -> Decision {
    let event = OrderEvent::StockRejected {
        invoice: order.invoice.clone(),
        reason: reason.clone(),
    };
    Decision::fail(reason, event)
}

/// Returns the units per product of an order; postage lines need no stock.
fn products(order: &OrderRequest) -> BTreeMap<String, i64> {
    let mut need = BTreeMap::new();
    for line in &order.lines {
        if code_kind(&line.code) == CodeKind::Product {
            *need.entry(line.code.clone()).or_insert(0) += line.quantity;
        }
    }
    need
}

fn read_next(tree: &TransactionalTree) -> TxResult<u64> {
    Ok(tree.get(NEXT_SEQ)?.map_or(0, |bytes| read_u64(&bytes)))
}

/// Reads a product's stock record; a product missing from the ledger has no stock.
fn read_stock(tree: &TransactionalTree, code: &str) -> TxResult<StockRecord> {
    match tree.get(stock_key(code))? {
        Some(bytes) => decode_in(code, &bytes),
        None => Ok(StockRecord {
            initial: 0,
            held: 0,
        }),
    }
}

fn undecided(reason: String) -> ConflictableTransactionError<ServiceError> {
    ConflictableTransactionError::Abort(ServiceError::Undecided(reason))
}

fn stock_key(code: &str) -> Vec<u8> {
    [b"stock/".as_slice(), code.as_bytes()].concat()
}

fn hold_key(seq: u64) -> Vec<u8> {
    [b"hold/".as_slice(), &seq.to_be_bytes()].concat()
}

fn open_key(seq: u64) -> Vec<u8> {
    [b"open/".as_slice(), &seq.to_be_bytes()].concat()
}

fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_be_bytes)
}
