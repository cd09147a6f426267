//! A ledger of bank accounts kept as event-sourced aggregates.
//!
//! Eight accounts are opened, then four threads make random transfers between them. Each
//! transfer runs two commands, a debit of one account and a credit of another, whose events
//! are appended to both streams in one transaction, with conflicts retried on fresh state.
//! Halfway through, the program notes the time. At the end it checks that no money was
//! created or lost, and audits one account: its balance at the noted moment and the events
//! that made that balance.
//!
//! Run with `cargo run --release --example ledger`. The database lives in
//! `target/ledger-db` and is recreated on every run.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aqueduct::Broker;
use aqueduct_patterns::{Aggregate, AsOf, DomainEvent, EventStore, Repository, RepositoryError};
use serde::{Deserialize, Serialize};

const ACCOUNTS: u64 = 8;
/// In cents, like every amount here.
const OPENING_DEPOSIT: u64 = 100_000;
const THREADS: u64 = 4;
const TRANSFERS_PER_PHASE: u64 = 250;
const AUDITED: &str = "3";

/// An account's state, rebuilt from its events.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum AccountEvent {
    Opened {
        owner: String,
        deposit: u64,
    },
    Debited {
        amount: u64,
        transfer: u64,
        to: String,
    },
    Credited {
        amount: u64,
        transfer: u64,
        from: String,
    },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "AccountOpened",
            AccountEvent::Debited { .. } => "AccountDebited",
            AccountEvent::Credited { .. } => "AccountCredited",
        }
    }
}

#[derive(Clone, Debug)]
enum AccountCommand {
    Open {
        owner: String,
        deposit: u64,
    },
    Debit {
        amount: u64,
        transfer: u64,
        to: String,
    },
    Credit {
        amount: u64,
        transfer: u64,
        from: String,
    },
}

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match (command, &self.owner) {
            (AccountCommand::Open { .. }, Some(_)) => Err(AccountError::AlreadyOpen),
            (AccountCommand::Open { owner, deposit }, None) => {
                Ok(vec![AccountEvent::Opened { owner, deposit }])
            }
            (_, None) => Err(AccountError::NotOpen),
            (AccountCommand::Debit { amount, .. }, _) if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                })
            }
            (
                AccountCommand::Debit {
                    amount,
                    transfer,
                    to,
                },
                _,
            ) => Ok(vec![AccountEvent::Debited {
                amount,
                transfer,
                to,
            }]),
            (
                AccountCommand::Credit {
                    amount,
                    transfer,
                    from,
                },
                _,
            ) => Ok(vec![AccountEvent::Credited {
                amount,
                transfer,
                from,
            }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner, deposit } => {
                self.owner = Some(owner.clone());
                self.balance = *deposit;
            }
            AccountEvent::Debited { amount, .. } => self.balance -= amount,
            AccountEvent::Credited { amount, .. } => self.balance += amount,
        }
    }
}

/// Outcomes of the transfers of one phase.
#[derive(Debug, Default)]
struct Tally {
    done: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    gave_up: AtomicU64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let path = Path::new("target/ledger-db");
    if path.exists() {
        std::fs::remove_dir_all(path)?;
    }
    let broker = Broker::open(path)?;
    let store = EventStore::open(&broker, "ledger")?;
    let accounts = Repository::<Account>::new(store)?
        .snapshot_every(50)
        .retry_on_conflict(50);
    println!("opened ledger database at {}", path.display());

    for number in 0..ACCOUNTS {
        let open = AccountCommand::Open {
            owner: format!("customer {number}"),
            deposit: OPENING_DEPOSIT,
        };
        accounts.execute(&number.to_string(), open)?;
    }
    println!(
        "opened {ACCOUNTS} accounts with {} each",
        money(OPENING_DEPOSIT)
    );

    let next_transfer = Arc::new(AtomicU64::new(1));
    run_phase(&accounts, &next_transfer, 1)?;
    let audit_moment_ms = now_ms();
    thread::sleep(Duration::from_millis(5));
    run_phase(&accounts, &next_transfer, 2)?;

    check_conservation(&accounts)?;
    audit(&accounts, audit_moment_ms)?;
    let types = accounts.check_event_types()?;
    println!(
        "startup check: {} stored event types of category {:?} decode",
        types.len(),
        Account::CATEGORY
    );
    Ok(())
}

/// Runs `TRANSFERS_PER_PHASE` random transfers on each of `THREADS` threads.
fn run_phase(
    accounts: &Repository<Account>,
    next_transfer: &Arc<AtomicU64>,
    phase: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|worker| {
            let accounts = accounts.clone();
            let tally = Arc::clone(&tally);
            let next_transfer = Arc::clone(next_transfer);
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (phase * 131 + worker + 1));
            thread::spawn(move || -> Result<(), String> {
                for _ in 0..TRANSFERS_PER_PHASE {
                    let from = random.below(ACCOUNTS);
                    let to = (from + 1 + random.below(ACCOUNTS - 1)) % ACCOUNTS;
                    let amount = 100 + random.below(25_000);
                    let transfer = next_transfer.fetch_add(1, Ordering::Relaxed);
                    transfer_money(&accounts, from, to, amount, transfer, &tally)?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| "a transfer thread panicked")?
            .map_err(|error| format!("a transfer thread failed: {error}"))?;
    }
    let elapsed = started.elapsed();
    let done = tally.done.load(Ordering::Relaxed);
    println!(
        "phase {phase}: {done} transfers in {elapsed:.2?} ({:.0}/s) on {THREADS} threads, {} \
         conflicts retried on fresh state, {} rejected for insufficient funds, {} gave up after \
         repeated conflicts",
        done as f64 / elapsed.as_secs_f64(),
        tally.retried.load(Ordering::Relaxed),
        tally.rejected.load(Ordering::Relaxed),
        tally.gave_up.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Debits `from` and credits `to` in one atomic append to both streams.
fn transfer_money(
    accounts: &Repository<Account>,
    from: u64,
    to: u64,
    amount: u64,
    transfer: u64,
    tally: &Tally,
) -> Result<(), String> {
    let commands = vec![
        (
            from.to_string(),
            AccountCommand::Debit {
                amount,
                transfer,
                to: to.to_string(),
            },
        ),
        (
            to.to_string(),
            AccountCommand::Credit {
                amount,
                transfer,
                from: from.to_string(),
            },
        ),
    ];
    match accounts.execute_all(commands) {
        Ok(executed) => {
            let retries = executed.first().map_or(0, |outcome| outcome.attempts - 1);
            tally
                .retried
                .fetch_add(u64::from(retries), Ordering::Relaxed);
            tally.done.fetch_add(1, Ordering::Relaxed)
        }
        Err(RepositoryError::Rejected(AccountError::InsufficientFunds { .. })) => {
            tally.rejected.fetch_add(1, Ordering::Relaxed)
        }
        Err(RepositoryError::Conflict { .. }) => tally.gave_up.fetch_add(1, Ordering::Relaxed),
        Err(error) => return Err(error.to_string()),
    };
    Ok(())
}

fn check_conservation(accounts: &Repository<Account>) -> Result<(), Box<dyn std::error::Error>> {
    let mut total = 0;
    let mut balances = Vec::new();
    for number in 0..ACCOUNTS {
        let loaded = accounts.load(&number.to_string())?;
        total += loaded.state.balance;
        balances.push(money(loaded.state.balance));
    }
    println!("balances now: {}", balances.join(", "));
    let expected = OPENING_DEPOSIT * ACCOUNTS;
    if total != expected {
        return Err(format!(
            "money changed: {} instead of {}",
            money(total),
            money(expected)
        )
        .into());
    }
    println!(
        "total {} equals the opening deposits: no money created or lost",
        money(total)
    );
    Ok(())
}

/// Prints the audited account's balance at `moment_ms` and the events that made it.
fn audit(accounts: &Repository<Account>, moment_ms: u64) -> Result<(), Box<dyn std::error::Error>> {
    let past = accounts.load_at(AUDITED, AsOf::Time(moment_ms))?;
    let events = accounts.history(AUDITED, AsOf::Time(moment_ms))?;
    let now = accounts.load(AUDITED)?;
    println!();
    println!(
        "audit of account {AUDITED} as of the end of phase 1 ({moment_ms} ms since the Unix \
         epoch): balance {} at stream version {} (now {} at version {})",
        money(past.state.balance),
        past.version,
        money(now.state.balance),
        now.version
    );

    let mut running = 0i64;
    let mut lines = Vec::new();
    for (recorded, event) in &events {
        let (change, detail) = match event {
            AccountEvent::Opened { owner, deposit } => {
                (*deposit as i64, format!("opened by {owner}"))
            }
            AccountEvent::Debited {
                amount,
                transfer,
                to,
            } => (
                -(*amount as i64),
                format!("transfer {transfer} to account {to}"),
            ),
            AccountEvent::Credited {
                amount,
                transfer,
                from,
            } => (
                *amount as i64,
                format!("transfer {transfer} from account {from}"),
            ),
        };
        running += change;
        let sign = if change < 0 { '-' } else { '+' };
        let change = format!("{sign}{}", money(change.unsigned_abs()));
        lines.push(format!(
            "  v{:<4} pos {:<6} {change:>9} -> {:>8}  {:<16} {detail}",
            recorded.version,
            recorded.position,
            money(running.unsigned_abs()),
            recorded.event_type,
        ));
    }
    let shown = 12.min(lines.len());
    println!(
        "the {} events that made it (last {shown} shown):",
        lines.len()
    );
    for line in &lines[lines.len() - shown..] {
        println!("{line}");
    }
    let replayed = u64::try_from(running).unwrap_or(0);
    let verdict = if replayed == past.state.balance {
        "matches"
    } else {
        "DOES NOT match"
    };
    println!(
        "replaying the listed events gives {}, which {verdict} the audited balance",
        money(replayed)
    );
    Ok(())
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn now_ms() -> u64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// xorshift64, so the example needs no random number crate.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}
