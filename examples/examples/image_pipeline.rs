//! Image uploads on a queue, processed by a worker pool that grows from 3 to 40 workers during a
//! burst and shrinks back when the burst is done.
//!
//! A producer publishes a steady trickle of upload jobs, then a burst, then a trickle again.
//! An autoscaler watches the backlog (published minus settled jobs) and resizes the pool. Each
//! job stands for resizing an image (a short sleep). Some jobs fail once and are retried with
//! backoff; a few carry a corrupt image and are dead-lettered at once. A progress bar shows the
//! work, and a summary closes the run.
//!
//! Run with `cargo run --release --example image_pipeline`. The database lives in a temporary
//! directory that is removed at the end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Delivery, Message, TopicConfig};
use aqueduct_patterns::{Backoff, HandlerError, WorkerConfig, WorkerContext, WorkerPool};
use indicatif::{ProgressBar, ProgressStyle};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TRICKLE_JOBS: u64 = 250;
const TRICKLE_INTERVAL: Duration = Duration::from_millis(8);
const BURST_JOBS: u64 = 3_000;
const TOTAL_JOBS: u64 = 2 * TRICKLE_JOBS + BURST_JOBS;
const BASE_WORKERS: usize = 3;
const BURST_WORKERS: usize = 40;
/// Backlog above which the pool grows to `BURST_WORKERS`.
const GROW_AT: u64 = 200;
/// Backlog below which the pool shrinks back to `BASE_WORKERS`.
const SHRINK_AT: u64 = 20;
/// Jobs that carry a corrupt image.
const CORRUPT_JOBS: [u64; 4] = [0, 997, 1_994, 2_991];

fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .init();
    let dir = tempfile::tempdir()?;
    let broker = Broker::open(dir.path())?;
    broker.create_topic("uploads.dead", TopicConfig::default())?;
    let topic = TopicConfig::default()
        .partitions(8)
        .max_deliveries(4)
        .dead_letter_topic("uploads.dead");
    broker.create_topic("uploads", topic)?;

    let config = WorkerConfig::default()
        .workers(BASE_WORKERS)
        .prefetch(1)
        .retry(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
        ));
    let pool = WorkerPool::start(&broker, "uploads", "thumbnailers", config, resize_image)?;

    let started = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let producer = spawn_producer(broker.clone(), Arc::clone(&published));
    let peak_workers = AtomicUsize::new(BASE_WORKERS);
    let timeline = autoscale(&pool, &published, &peak_workers, started)?;
    producer.join().map_err(|_| "the producer panicked")??;
    let elapsed = started.elapsed();

    let stats = pool.stats();
    let report = pool.shutdown(Duration::from_secs(5));
    let dead_letters = read_dead_letters(&broker)?;

    println!();
    println!("summary");
    println!("  jobs published      {TOTAL_JOBS}");
    println!("  images resized      {}", stats.acked);
    println!("  retries             {}", stats.retried);
    println!(
        "  dead-lettered       {} ({})",
        stats.dead_lettered,
        dead_letters.join(", ")
    );
    println!(
        "  peak workers        {}",
        peak_workers.load(Ordering::Relaxed)
    );
    println!("  total time          {elapsed:.2?}");
    for line in timeline {
        println!("  {line}");
    }
    println!(
        "  shutdown            {} workers stopped, {} still running",
        report.stopped, report.still_running
    );
    if stats.acked + stats.dead_lettered != TOTAL_JOBS {
        return Err(format!(
            "{} jobs settled, expected {TOTAL_JOBS}",
            stats.acked + stats.dead_lettered
        )
        .into());
    }
    Ok(())
}

/// The handler: resizes one image, that is, sleeps 4 to 15 ms. Every 50th job fails on its
/// first attempt (a busy storage service), and corrupt images are rejected for good.
fn resize_image(delivery: &Delivery, _: &WorkerContext) -> Result<(), HandlerError> {
    let job: u64 = delivery.decode()?;
    if CORRUPT_JOBS.contains(&job) {
        return Err(HandlerError::permanent(format!(
            "upload {job}: image header is corrupt"
        )));
    }
    if job % 50 == 7 && delivery.attempt() == 1 {
        return Err(HandlerError::retry(format!(
            "upload {job}: storage service busy"
        )));
    }
    std::thread::sleep(Duration::from_millis(4 + job % 12));
    Ok(())
}

/// Publishes a trickle, a burst and another trickle of jobs.
fn spawn_producer(
    broker: Broker,
    published: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Result<(), aqueduct::Error>> {
    std::thread::spawn(move || {
        let publish = |job: u64| {
            let message = Message::encode(&job)?.id(format!("upload-{job}"));
            broker.publish("uploads", message)?;
            published.fetch_add(1, Ordering::Relaxed);
            Ok::<(), aqueduct::Error>(())
        };
        for job in 0..TRICKLE_JOBS {
            publish(job)?;
            std::thread::sleep(TRICKLE_INTERVAL);
        }
        for job in TRICKLE_JOBS..TRICKLE_JOBS + BURST_JOBS {
            publish(job)?;
        }
        for job in TRICKLE_JOBS + BURST_JOBS..TOTAL_JOBS {
            publish(job)?;
            std::thread::sleep(TRICKLE_INTERVAL);
        }
        Ok(())
    })
}

/// Resizes the pool by backlog until every job is settled; shows progress and returns the
/// resize timeline.
fn autoscale(
    pool: &WorkerPool,
    published: &AtomicU64,
    peak_workers: &AtomicUsize,
    started: Instant,
) -> Result<Vec<String>, BoxError> {
    let bar = ProgressBar::new(TOTAL_JOBS);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} images  {msg}",
    )?);
    let mut timeline = Vec::new();
    let mut last_settled = 0;
    let mut last_time = Instant::now();
    loop {
        let stats = pool.stats();
        let settled = stats.acked + stats.dead_lettered;
        let backlog = published.load(Ordering::Relaxed).saturating_sub(settled);
        let size = pool.size();
        let target = if backlog > GROW_AT {
            BURST_WORKERS
        } else if backlog < SHRINK_AT {
            BASE_WORKERS
        } else {
            size
        };
        if target != size {
            pool.resize(target)?;
            peak_workers.fetch_max(target, Ordering::Relaxed);
            timeline.push(format!(
                "{:>6.2} s          {size} -> {target} workers at a backlog of {backlog}",
                started.elapsed().as_secs_f64()
            ));
        }

        let rate = (settled - last_settled) as f64 / last_time.elapsed().as_secs_f64();
        (last_settled, last_time) = (settled, Instant::now());
        bar.set_position(settled);
        bar.set_message(format!(
            "{:>2} workers  backlog {backlog:>4}  {rate:>5.0} images/s",
            pool.size()
        ));
        if settled >= TOTAL_JOBS {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish();
    Ok(timeline)
}

fn read_dead_letters(broker: &Broker) -> Result<Vec<String>, aqueduct::Error> {
    let mut consumer = broker.subscribe("uploads.dead", "operators")?;
    let mut letters = Vec::new();
    while let Some(letter) = consumer.recv_timeout(Duration::from_millis(200))? {
        letters.push(letter.id().unwrap_or("no id").to_string());
        letter.ack()?;
    }
    Ok(letters)
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"))
}
