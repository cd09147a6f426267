//! Group commit: one background thread makes data durable for everyone.
//!
//! A caller that needs durability takes a ticket with [`Flusher::request`] and waits until the
//! flusher has completed a round that started after the ticket was taken. Each round writes
//! the changed cursors and then the open blocks to sled, flushes sled and fsyncs the database
//! file. Then it releases every waiter whose ticket it covers. Callers that arrive during a
//! round share the next one, so many publishers pay for one fsync. Without requests the thread
//! still runs a round every `interval`, which bounds the loss window of `Durability::Buffered`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The work one round does: write pending state, then make it durable.
/// It returns whether it fsynced anything.
pub(crate) type RoundFn = Box<dyn Fn() -> Result<bool> + Send>;

#[derive(Default)]
struct State {
    requested: u64,
    completed: u64,
    failure: Option<String>,
    shutdown: bool,
}

pub(crate) struct Flusher {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    /// `(completed ticket, stopped)`, for async waiters.
    completed_tx: watch::Sender<(u64, bool)>,
    rounds: AtomicU64,
}

impl Flusher {
    pub fn start(interval: Duration, round: RoundFn) -> Result<(Arc<Self>, JoinHandle<()>)> {
        let (completed_tx, _) = watch::channel((0, false));
        let flusher = Arc::new(Flusher {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            completed_tx,
            rounds: AtomicU64::new(0),
        });
        let worker = Arc::clone(&flusher);
        let handle = std::thread::Builder::new()
            .name("aqueduct-flusher".into())
            .spawn(move || worker.run(interval, round))
            .map_err(|source| Error::Io {
                path: "aqueduct-flusher thread".into(),
                source,
            })?;
        Ok((flusher, handle))
    }

    /// Returns a ticket that a later round will cover.
    pub fn request(&self) -> u64 {
        let mut state = self.state.lock();
        state.requested += 1;
        let ticket = state.requested;
        self.work.notify_one();
        ticket
    }

    /// Blocks until a round covers `ticket`.
    pub fn wait(&self, ticket: u64) -> Result<()> {
        let mut state = self.state.lock();
        loop {
            if let Some(cause) = &state.failure {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if state.completed >= ticket {
                return Ok(());
            }
            if state.shutdown {
                return Err(Error::Closed);
            }
            self.done.wait(&mut state);
        }
    }

    /// Returns whether a completed round covers `ticket`.
    pub fn is_done(&self, ticket: u64) -> bool {
        self.state.lock().completed >= ticket
    }

    /// Requests a round and blocks until it completes.
    pub fn sync(&self) -> Result<()> {
        let ticket = self.request();
        self.wait(ticket)
    }

    /// Waits for a round that covers `ticket` without blocking the async runtime.
    pub async fn wait_async(&self, ticket: u64) -> Result<()> {
        let mut completed = self.completed_tx.subscribe();
        let covered = match completed
            .wait_for(|(done, stopped)| *done >= ticket || *stopped)
            .await
        {
            Ok(value) => value.0 >= ticket,
            Err(_) => false,
        };
        drop(completed);
        match (&self.state.lock().failure, covered) {
            (Some(cause), _) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            (None, true) => Ok(()),
            (None, false) => Err(Error::Closed),
        }
    }

    /// Number of completed rounds, each one fsync of the database file.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Runs a last round and stops the thread.
    pub fn shutdown(&self) {
        let mut state = self.state.lock();
        state.shutdown = true;
        self.work.notify_one();
    }

    fn run(&self, interval: Duration, round: RoundFn) {
        tracing::debug!(?interval, "flusher started");
        loop {
            let (target, stopping) = {
                let mut state = self.state.lock();
                if state.requested == state.completed && !state.shutdown {
                    self.work.wait_for(&mut state, interval);
                }
                (state.requested, state.shutdown)
            };

            let outcome = round();

            let mut state = self.state.lock();
            match outcome {
                Ok(synced) => {
                    if synced {
                        self.rounds.fetch_add(1, Ordering::Relaxed);
                    }
                    state.completed = state.completed.max(target);
                }
                Err(error) => {
                    tracing::error!(%error, "flush round failed; rejecting further writes");
                    // A round that failed because storage was already poisoned keeps that
                    // cause, so the message does not wrap one poisoning in another.
                    let cause = match error {
                        Error::Poisoned { cause } => cause,
                        other => other.to_string(),
                    };
                    state.failure.get_or_insert(cause);
                }
            }
            self.done.notify_all();
            let stop = stopping || state.failure.is_some();
            self.completed_tx.send_replace((state.completed, stop));
            if stop {
                state.shutdown = true;
                self.done.notify_all();
                drop(state);
                tracing::debug!("flusher stopped");
                return;
            }
        }
    }
}
