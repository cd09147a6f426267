//! Setup shared by the aqueduct benchmarks: payloads and keys, a broker on a temporary
//! directory, the raw-sled baseline store, criterion settings for the matrix benchmarks, and a
//! gang of threads that run one job together.
//!
//! Every fixture lives on a real directory under the system's temporary directory, so
//! flushes reach the disk. The benchmarks panic on any setup or I/O failure, because a
//! failed run has no figure to report.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aqueduct::{Broker, BrokerConfig, Consumer, Durability, TopicConfig};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use tempfile::TempDir;

/// Size of every benchmark message's payload, in bytes.
pub const PAYLOAD_BYTES: usize = 100;

/// Name of the one topic each benchmark broker has.
pub const TOPIC: &str = "bench";

/// sled's page cache for the raw-sled baseline, in bytes: the broker's default
/// (`BrokerConfig::cache_bytes`, 256 MiB), so both stores cache the same amount.
const SLED_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// Maximum wait for one delivery before a benchmark panics.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns a payload of [`PAYLOAD_BYTES`] bytes.
pub fn payload() -> Vec<u8> {
    payload_of(PAYLOAD_BYTES)
}

/// Returns a payload of `bytes` bytes.
pub fn payload_of(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i % 251) as u8).collect()
}

/// Returns `count` distinct message keys, `key-0` to `key-{count - 1}`.
pub fn message_keys(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("key-{i}").into_bytes())
        .collect()
}

/// Returns criterion's default configuration without plots, so that the dozens of short
/// matrix benchmarks do not each wait for their plots to be drawn.
pub fn matrix_criterion() -> Criterion {
    Criterion::default().without_plots()
}

/// Applies the settings of the matrix benchmarks: 10 samples (criterion's minimum) in flat
/// sampling mode, 0.5 s of warm-up and `measurement` of measurement per benchmark.
pub fn configure_matrix(group: &mut BenchmarkGroup<'_, WallTime>, measurement: Duration) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(measurement)
        .sampling_mode(SamplingMode::Flat);
}

/// Times `sends` sends per iteration on an unbounded crossbeam channel, of the values that
/// `message` returns for `0..sends`, and returns the total over `iterations`, for
/// `Bencher::iter_custom`. Only the sends are timed: draining the channel after each
/// iteration is not publishing.
///
/// # Panics
///
/// When a send fails.
pub fn time_channel_sends<T>(
    iterations: u64,
    sends: u64,
    mut message: impl FnMut(u64) -> T,
) -> Duration {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let mut elapsed = Duration::ZERO;
    for _ in 0..iterations {
        let start = Instant::now();
        for i in 0..sends {
            sender.send(message(i)).expect("send");
        }
        elapsed += start.elapsed();
        receiver.try_iter().for_each(drop);
    }
    elapsed
}

/// Returns the receiving end of an unbounded crossbeam channel that contains `count` copies of
/// `payload`, with the sending end closed.
///
/// # Panics
///
/// When a send fails.
pub fn filled_channel(count: u64, payload: &[u8]) -> crossbeam_channel::Receiver<Vec<u8>> {
    let (sender, receiver) = crossbeam_channel::unbounded();
    for _ in 0..count {
        sender.send(payload.to_vec()).expect("send");
    }
    receiver
}

/// Receives `count` deliveries with `consumer` and acks each one.
///
/// # Panics
///
/// When a receive or an ack fails, or no delivery arrives within [`RECEIVE_TIMEOUT`].
pub fn receive_and_ack(consumer: &mut Consumer, count: u64) {
    for _ in 0..count {
        let delivery = consumer
            .recv_timeout(RECEIVE_TIMEOUT)
            .expect("receive")
            .expect("a delivery before the timeout");
        std::hint::black_box(delivery.payload());
        delivery.ack().expect("ack");
    }
}

/// A broker on its own temporary directory with one topic, [`TOPIC`].
pub struct BrokerFixture {
    /// The broker under test.
    pub broker: Broker,
    _dir: TempDir,
}

impl BrokerFixture {
    /// Opens a broker with `durability` and default settings otherwise, with a
    /// single-partition topic.
    ///
    /// # Panics
    ///
    /// When the directory, the database or the topic cannot be created.
    pub fn open(durability: Durability) -> Self {
        Self::with_partitions(durability, 1)
    }

    /// Opens a broker with `durability` and default settings otherwise, with a topic of
    /// `partitions` partitions.
    ///
    /// # Panics
    ///
    /// When the directory, the database or the topic cannot be created.
    pub fn with_partitions(durability: Durability, partitions: u32) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = BrokerConfig::default().durability(durability);
        let broker = Broker::open_with(dir.path(), config).expect("open the broker");
        let topic = TopicConfig::default().partitions(partitions);
        broker
            .create_topic(TOPIC, topic)
            .expect("create the benchmark topic");
        BrokerFixture { broker, _dir: dir }
    }
}

/// The raw-sled baseline: one sled key per message, as a broker without record batches would
/// store them.
///
/// sled is configured as the broker configures it: the same cache size and no background
/// flushing. [`flush`](Self::flush) does what the broker's durable flush does: sled's own
/// `flush` followed by an `fdatasync` of the database file. Keys are big-endian `u64`
/// sequence numbers, so sled's order is insertion order.
pub struct RawSled {
    /// The tree that holds the messages.
    pub tree: sled::Tree,
    db: sled::Db,
    db_file: File,
    _dir: TempDir,
}

impl RawSled {
    /// Opens a sled database on its own temporary directory.
    ///
    /// # Panics
    ///
    /// When the directory or the database cannot be created.
    pub fn open() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let tree = db.open_tree("messages").expect("open the sled tree");
        let db_file = open_db_file(dir.path());
        RawSled {
            tree,
            db,
            db_file,
            _dir: dir,
        }
    }

    /// Stores `value` under sequence number `seq`.
    ///
    /// # Panics
    ///
    /// When sled fails to write.
    pub fn insert(&self, seq: u64, value: &[u8]) {
        self.tree
            .insert(seq.to_be_bytes(), value)
            .expect("sled insert");
    }

    /// Returns the value stored under `seq`, if any.
    ///
    /// # Panics
    ///
    /// When sled fails to read.
    pub fn get(&self, seq: u64) -> Option<sled::IVec> {
        self.tree.get(seq.to_be_bytes()).expect("sled get")
    }

    /// Stores `count` copies of `value` under sequence numbers `first..first + count`, in one
    /// atomic `apply_batch`, as the broker stores a batch all or nothing.
    ///
    /// # Panics
    ///
    /// When sled fails to write.
    pub fn insert_batch(&self, first: u64, count: u64, value: &[u8]) {
        let mut batch = sled::Batch::default();
        for seq in first..first + count {
            batch.insert(&seq.to_be_bytes(), value);
        }
        self.tree.apply_batch(batch).expect("sled apply_batch");
    }

    /// Removes the value stored under `seq`.
    ///
    /// # Panics
    ///
    /// When sled fails to write.
    pub fn remove(&self, seq: u64) {
        self.tree.remove(seq.to_be_bytes()).expect("sled remove");
    }

    /// Opens another tree of the same database, for baselines that move data between trees.
    ///
    /// # Panics
    ///
    /// When sled cannot open the tree.
    pub fn open_tree(&self, name: &str) -> sled::Tree {
        self.db.open_tree(name).expect("open a sled tree")
    }

    /// Writes sled's buffers to the database file and fsyncs it.
    ///
    /// # Panics
    ///
    /// When the flush or the fsync fails.
    pub fn flush(&self) {
        self.flush_without_fsync();
        self.db_file
            .sync_data()
            .expect("fdatasync of the sled file");
    }

    /// Runs sled's own `flush` without the `fdatasync` that [`flush`](Self::flush) adds, as
    /// the patterns do after each commit (`flush_on_commit`).
    ///
    /// # Panics
    ///
    /// When the flush fails.
    pub fn flush_without_fsync(&self) {
        self.db.flush().expect("sled flush");
    }
}

fn open_db_file(dir: &Path) -> File {
    File::open(dir.join("db")).expect("open sled's database file")
}

/// A fixed set of threads that run one job together, so that a benchmark iteration with many
/// concurrent callers does not pay for spawning threads.
///
/// [`run`](Self::run) releases every thread into one call of the job and returns when all of
/// them have finished it. Dropping the gang stops and joins the threads.
pub struct ThreadGang {
    start: Arc<Barrier>,
    finish: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    /// Set when a job panicked, so that `run` can panic on the caller's thread.
    failed: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ThreadGang {
    /// Starts `count` threads; thread `i` calls `job(i)` once per [`run`](Self::run).
    ///
    /// # Panics
    ///
    /// When a thread cannot be spawned.
    pub fn new<F>(count: usize, job: F) -> Self
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        let start = Arc::new(Barrier::new(count + 1));
        let finish = Arc::new(Barrier::new(count + 1));
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let job = Arc::new(job);
        let threads = (0..count)
            .map(|index| {
                let (start, finish) = (Arc::clone(&start), Arc::clone(&finish));
                let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
                let job = Arc::clone(&job);
                std::thread::Builder::new()
                    .name(format!("bench-gang-{index}"))
                    .spawn(move || loop {
                        start.wait();
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        finish.wait();
                    })
                    .expect("spawn a gang thread")
            })
            .collect();
        ThreadGang {
            start,
            finish,
            stop,
            failed,
            threads,
        }
    }

    /// Runs the job once on every thread and waits until all have returned.
    ///
    /// # Panics
    ///
    /// When the job panicked on any thread.
    pub fn run(&self) {
        self.start.wait();
        self.finish.wait();
        assert!(
            !self.failed.load(Ordering::SeqCst),
            "a gang thread panicked; its message is printed above"
        );
    }
}

impl Drop for ThreadGang {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.start.wait();
        for thread in self.threads.drain(..) {
            // Jobs run under `catch_unwind`, so a thread only ends by returning.
            let _ = thread.join();
        }
    }
}
