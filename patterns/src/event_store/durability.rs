//! Making appends durable.
//!
//! The broker opens sled without periodic flushing and flushes only in its own rounds, which
//! do not know about application trees. The event store therefore flushes its writes itself:
//!
//! - `Durability::Flushed`: an append returns after sled's `flush` and an `fdatasync` of the
//!   database file. Appenders that arrive while a flush runs share the next one (group
//!   commit).
//! - `Durability::Buffered { max_delay }`: an append returns at once; a background thread
//!   flushes within `max_delay`. A crash loses at most the appends of that window.
//!
//! After a failed flush the store is poisoned and rejects appends.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aqueduct::Durability;
use parking_lot::{Condvar, Mutex};

use super::error::EventStoreError;

#[derive(Debug, Default)]
struct State {
    /// Number of the last write that requested durability.
    requested: u64,
    /// All writes up to this number are durable.
    done: u64,
    flushing: bool,
    poisoned: Option<String>,
}

/// Flushes the sled database that contains the store's tree.
pub(crate) struct DiskSync {
    tree: sled::Tree,
    db_file: Option<(PathBuf, File)>,
    durability: Durability,
    state: Mutex<State>,
    finished: Condvar,
}

impl DiskSync {
    pub(crate) fn start(
        tree: sled::Tree,
        database_dir: Option<PathBuf>,
        durability: Durability,
    ) -> Result<Arc<Self>, EventStoreError> {
        let db_file = match database_dir {
            Some(dir) => {
                let path = dir.join("db");
                let file = File::open(&path).map_err(|source| EventStoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                Some((path, file))
            }
            None => None,
        };
        let sync = Arc::new(DiskSync {
            tree,
            db_file,
            durability,
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
        });
        if let Durability::Buffered { max_delay } = durability {
            let weak = Arc::downgrade(&sync);
            std::thread::Builder::new()
                .name("aqueduct-event-store-flush".to_string())
                .spawn(move || flush_periodically(&weak, max_delay))
                .map_err(|source| EventStoreError::Io {
                    path: PathBuf::from("<thread spawn>"),
                    source,
                })?;
        }
        Ok(sync)
    }

    /// Returns an error when an earlier flush failed.
    pub(crate) fn check_writable(&self) -> Result<(), EventStoreError> {
        match &self.state.lock().poisoned {
            Some(cause) => Err(EventStoreError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records a committed write, and in `Flushed` mode waits until it is durable.
    pub(crate) fn after_write(&self) -> Result<(), EventStoreError> {
        let ticket = {
            let mut state = self.state.lock();
            state.requested += 1;
            state.requested
        };
        match self.durability {
            Durability::Flushed => self.sync_through(ticket),
            Durability::Buffered { .. } => Ok(()),
        }
    }

    /// Flushes everything written so far and waits for it.
    pub(crate) fn sync_all(&self) -> Result<(), EventStoreError> {
        let ticket = self.state.lock().requested;
        self.sync_through(ticket)
    }

    fn sync_through(&self, ticket: u64) -> Result<(), EventStoreError> {
        let mut state = self.state.lock();
        loop {
            if let Some(cause) = &state.poisoned {
                return Err(EventStoreError::Poisoned {
                    cause: cause.clone(),
                });
            }
            if state.done >= ticket {
                return Ok(());
            }
            if state.flushing {
                self.finished.wait(&mut state);
                continue;
            }
            state.flushing = true;
            let target = state.requested;
            drop(state);

            let result = self.flush_and_fsync();

            state = self.state.lock();
            state.flushing = false;
            match result {
                Ok(()) => state.done = state.done.max(target),
                Err(error) => {
                    tracing::error!(%error, "event store flush failed; rejecting further appends");
                    state.poisoned = Some(error.to_string());
                }
            }
            self.finished.notify_all();
        }
    }

    fn flush_and_fsync(&self) -> Result<(), EventStoreError> {
        self.tree.flush()?;
        if let Some((path, file)) = &self.db_file {
            file.sync_data().map_err(|source| EventStoreError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn is_dirty(&self) -> bool {
        let state = self.state.lock();
        state.done < state.requested && state.poisoned.is_none()
    }
}

impl Drop for DiskSync {
    fn drop(&mut self) {
        if self.is_dirty() {
            if let Err(error) = self.sync_all() {
                tracing::error!(%error, "final event store flush failed");
            }
        }
    }
}

fn flush_periodically(sync: &Weak<DiskSync>, max_delay: Duration) {
    loop {
        std::thread::sleep(max_delay);
        let Some(sync) = sync.upgrade() else {
            return;
        };
        if sync.is_dirty() {
            // A failure poisons the store; appenders see it on their next call.
            let _ = sync.sync_all();
        }
    }
}
