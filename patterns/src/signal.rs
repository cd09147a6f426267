//! A change counter that threads can wait on, used to wake subscribers and waiters.
//!
//! Waiting compares against a sequence number read before the check that found nothing to do,
//! so a bump between that check and the wait is never lost.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct Signal {
    seq: Mutex<u64>,
    changed: Condvar,
}

impl Signal {
    /// Returns the current sequence number.
    pub(crate) fn seq(&self) -> u64 {
        *self.seq.lock()
    }

    /// Advances the sequence number and wakes every waiter.
    pub(crate) fn bump(&self) {
        *self.seq.lock() += 1;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for the sequence number to move past `seen`.
    pub(crate) fn wait(&self, seen: u64, timeout: Duration) {
        let mut seq = self.seq.lock();
        if *seq == seen {
            self.changed.wait_for(&mut seq, timeout);
        }
    }
}
