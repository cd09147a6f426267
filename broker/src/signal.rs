//! Wake-ups for waiting consumers.
//!
//! A [`Signal`] is a sequence number with a condition variable and a tokio `Notify`. Anything
//! that can make a message deliverable (a publish, an ack that frees a key, a nack, a clock
//! jump) bumps it. A waiter reads the sequence before it checks for work and sleeps only while
//! the sequence is unchanged, so no wake-up is lost between the check and the sleep.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Signal {
    seq: Mutex<u64>,
    cond: Condvar,
    notify: Notify,
}

impl Signal {
    pub fn seq(&self) -> u64 {
        *self.seq.lock()
    }

    pub fn bump(&self) {
        let mut seq = self.seq.lock();
        *seq += 1;
        self.cond.notify_all();
        drop(seq);
        self.notify.notify_waiters();
    }

    /// Blocks until the sequence differs from `seen` or `timeout` passes.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let mut seq = self.seq.lock();
        if *seq == seen {
            self.cond.wait_for(&mut seq, timeout);
        }
    }

    /// Returns a future that completes on the next bump. Call `enable` on it before checking
    /// for work.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}
