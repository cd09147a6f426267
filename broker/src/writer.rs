//! Background writes of sealed blocks to sled.
//!
//! A publish that fills a partition's open block seals it and hands its sled write to this
//! thread, so the publisher returns without waiting for sled. Readers find a sealed block's
//! messages in memory until the write is done. When a partition has
//! [`MAX_UNWRITTEN`](crate::log::MAX_UNWRITTEN) sealed blocks waiting, its publishers write
//! them themselves, which bounds the memory they hold. Flush rounds write whatever is still
//! waiting before they fsync, so durability does not depend on this thread.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::log::TopicLog;

#[derive(Default)]
struct State {
    queue: VecDeque<Weak<TopicLog>>,
    shutdown: bool,
}

pub(crate) struct BlockWriter {
    state: Mutex<State>,
    work: Condvar,
}

/// Owns the writer thread and stops it when dropped.
pub(crate) struct WriterHandle {
    pub writer: Arc<BlockWriter>,
    thread: Option<JoinHandle<()>>,
}

impl WriterHandle {
    /// Stops the thread after the writes it has queued and waits for it.
    pub fn stop(&mut self) {
        self.writer.shutdown();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("block writer thread panicked");
            }
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl BlockWriter {
    pub fn start() -> Result<WriterHandle> {
        let writer = Arc::new(BlockWriter {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
        });
        let worker = Arc::clone(&writer);
        let handle = std::thread::Builder::new()
            .name("aqueduct-writer".into())
            .spawn(move || worker.run())
            .map_err(|source| Error::Io {
                path: "aqueduct-writer thread".into(),
                source,
            })?;
        Ok(WriterHandle {
            writer,
            thread: Some(handle),
        })
    }

    /// Queues a topic whose partitions have sealed blocks to write.
    pub fn submit(&self, topic: Weak<TopicLog>) {
        let mut state = self.state.lock();
        state.queue.push_back(topic);
        self.work.notify_one();
    }

    /// Stops the thread once the queue is empty.
    fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.work.notify_one();
    }

    fn run(&self) {
        tracing::debug!("block writer started");
        loop {
            let next = {
                let mut state = self.state.lock();
                loop {
                    if let Some(topic) = state.queue.pop_front() {
                        break Some(topic);
                    }
                    if state.shutdown {
                        break None;
                    }
                    self.work.wait(&mut state);
                }
            };
            let Some(topic) = next else { break };
            let Some(topic) = topic.upgrade() else {
                continue;
            };
            if let Err(error) = topic.write_queued() {
                // The next flush round retries the write and reports the failure to callers.
                tracing::error!(topic = %topic.name, %error, "background block write failed");
            }
        }
        tracing::debug!("block writer stopped");
    }
}
