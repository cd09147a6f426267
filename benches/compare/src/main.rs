//! Runs one produce and consume-with-ack workload against `aqueduct` in this process, Redis
//! Streams and NATS JetStream over loopback, and prints one table.
//!
//! `run.sh` beside this crate's manifest installs and starts the servers, runs this program
//! with their URLs and stops them again. `README.md` there and the comparison section of
//! `docs/BENCHMARKS.md` describe the scenarios and what is comparable.

mod aqueduct_system;
mod end_to_end;
mod nats_system;
mod redis_system;
mod report;
mod workload;

use std::fmt::Display;
use std::net::TcpListener;

use clap::Parser;

use crate::nats_system::NatsServer;
use crate::redis_system::RedisServer;
use crate::report::Row;
use crate::workload::{Mode, Scenario, ScenarioKind, System, Workload, BATCH, PAYLOAD_BYTES};

/// Error type of the harness: a message that names the action that failed.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Result type of the harness.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a single-threaded tokio runtime, for one producer or consumer on one thread.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// Builds a tokio runtime with one worker thread per core, for concurrent producers.
pub fn multi_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// Adds what the harness was doing to an error.
pub trait Context<T> {
    /// Prefixes the error with `action`, as in "XADD: connection refused".
    fn context(self, action: &str) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, action: &str) -> Result<T> {
        self.map_err(|error| format!("{action}: {error}").into())
    }
}

/// Command-line options. Every option can also be set by the environment variable named in
/// `--help`.
#[derive(Parser, Debug)]
#[command(
    about = "Runs one produce and consume-with-ack workload against aqueduct, Redis Streams \
             and NATS JetStream and prints a table. benches/compare/run.sh starts the servers."
)]
struct Args {
    /// Messages per scenario, except where --flushed-messages or --concurrent-messages apply.
    #[arg(long, env = "COMPARE_MESSAGES", default_value_t = 200_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,

    /// Messages per scenario in flushed mode where one producer or consumer waits for an fsync
    /// per message: produce one per call, consume and ack, end to end.
    #[arg(long, env = "COMPARE_FLUSHED_MESSAGES", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    flushed_messages: u64,

    /// Messages per concurrent-producer scenario, split evenly among the producers.
    #[arg(long, env = "COMPARE_CONCURRENT_MESSAGES", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    concurrent_messages: u64,

    /// Numbers of concurrent producers (threads for aqueduct, connections for the servers),
    /// comma-separated.
    #[arg(long, env = "COMPARE_PRODUCERS", value_delimiter = ',', default_values_t = [16, 64],
          value_parser = clap::value_parser!(u16).range(1..))]
    producers: Vec<u16>,

    /// Systems to run, comma-separated.
    #[arg(long, env = "COMPARE_SYSTEMS", value_delimiter = ',', value_enum,
          default_values_t = [System::Aqueduct, System::Redis, System::Nats])]
    systems: Vec<System>,

    /// Scenarios to run, comma-separated.
    #[arg(long, env = "COMPARE_SCENARIOS", value_delimiter = ',', value_enum,
          default_values_t = [ScenarioKind::ProduceOne, ScenarioKind::ProduceBatch,
                              ScenarioKind::ConsumeAck, ScenarioKind::EndToEnd,
                              ScenarioKind::EndToEndPaced, ScenarioKind::ProduceConcurrent])]
    scenarios: Vec<ScenarioKind>,

    /// Durability modes to run, comma-separated.
    #[arg(long, env = "COMPARE_MODES", value_delimiter = ',', value_enum,
          default_values_t = [Mode::Buffered, Mode::Flushed])]
    modes: Vec<Mode>,

    /// URL of the Redis server with `appendfsync everysec`, used in buffered mode.
    #[arg(long, env = "COMPARE_REDIS_BUFFERED_URL")]
    redis_buffered_url: Option<String>,

    /// URL of the Redis server with `appendfsync always`, used in flushed mode.
    #[arg(long, env = "COMPARE_REDIS_FLUSHED_URL")]
    redis_flushed_url: Option<String>,

    /// URL of the NATS server with JetStream, used in both modes.
    #[arg(long, env = "COMPARE_NATS_URL")]
    nats_url: Option<String>,

    /// Offered load of the paced end-to-end scenario in buffered mode, in messages per second.
    #[arg(long, env = "COMPARE_BUFFERED_RATE", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    buffered_rate: u64,

    /// Offered load of the paced end-to-end scenario in flushed mode, in messages per second.
    #[arg(long, env = "COMPARE_FLUSHED_RATE", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    flushed_rate: u64,

    /// Duration of the paced end-to-end scenario in seconds, including 0.5 s of warm-up that
    /// is not recorded.
    #[arg(long, env = "COMPARE_PACED_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    paced_seconds: u64,

    /// Commit of the aqueduct checkout, printed with the parameters.
    #[arg(long, env = "COMPARE_COMMIT", default_value = "unknown")]
    commit: String,

    /// Prints a free TCP port on 127.0.0.1 and exits, ignoring the other options. run.sh
    /// places the servers with it.
    #[arg(long)]
    free_port: bool,
}

/// The servers that the selected systems and modes need.
struct Servers {
    redis_buffered: Option<RedisServer>,
    redis_flushed: Option<RedisServer>,
    nats: Option<NatsServer>,
}

impl Servers {
    fn from_args(args: &Args) -> Result<Servers> {
        let wants = |system, mode| args.systems.contains(&system) && args.modes.contains(&mode);
        let redis = |wanted: bool, url: &Option<String>, option: &str| -> Result<_> {
            if !wanted {
                return Ok(None);
            }
            let url = url.as_deref().ok_or_else(|| {
                format!("{option} is missing; pass it or drop redis from --systems")
            })?;
            Ok(Some(RedisServer::new(url)?))
        };
        let redis_buffered = redis(
            wants(System::Redis, Mode::Buffered),
            &args.redis_buffered_url,
            "--redis-buffered-url",
        )?;
        let redis_flushed = redis(
            wants(System::Redis, Mode::Flushed),
            &args.redis_flushed_url,
            "--redis-flushed-url",
        )?;
        let nats = if args.systems.contains(&System::Nats) {
            let url = args
                .nats_url
                .as_deref()
                .ok_or("--nats-url is missing; pass it or drop nats from --systems")?;
            Some(NatsServer::new(url))
        } else {
            None
        };
        Ok(Servers {
            redis_buffered,
            redis_flushed,
            nats,
        })
    }

    fn redis(&self, mode: Mode) -> Result<&RedisServer> {
        let server = match mode {
            Mode::Buffered => &self.redis_buffered,
            Mode::Flushed => &self.redis_flushed,
        };
        server
            .as_ref()
            .ok_or_else(|| format!("no Redis server for {mode} mode").into())
    }

    fn nats(&self) -> Result<&NatsServer> {
        self.nats.as_ref().ok_or_else(|| "no NATS server".into())
    }
}

fn main() {
    let args = Args::parse();
    if args.free_port {
        match free_port() {
            Ok(port) => println!("{port}"),
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Err(error) = run(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

fn run(args: &Args) -> Result<()> {
    let workload = Workload {
        messages: args.messages,
        flushed_messages: args.flushed_messages,
        concurrent_messages: args.concurrent_messages,
        producers: args.producers.iter().map(|&p| usize::from(p)).collect(),
        buffered_rate: args.buffered_rate,
        flushed_rate: args.flushed_rate,
        paced_duration: std::time::Duration::from_secs(args.paced_seconds),
    };
    let servers = Servers::from_args(args)?;
    // Payload timestamps count from the first call.
    workload::now_nanos();

    print_parameters(args, &workload);
    print_versions(&servers, args)?;
    println!("load average (1 min) at start: {}", load_average());
    println!();

    let mut rows = Vec::new();
    for &mode in &args.modes {
        for scenario in workload.scenarios(mode) {
            if !args.scenarios.contains(&scenario.kind()) {
                continue;
            }
            let count = workload.count(scenario, mode);
            for &system in &args.systems {
                let measurement = match system {
                    System::Aqueduct => aqueduct_system::run(scenario, mode, count)?,
                    System::Redis => {
                        let key = format!("bench:{mode}:{}", slug(scenario));
                        servers.redis(mode)?.run(scenario, count, &key)?
                    }
                    System::Nats => {
                        let name = format!("bench_{mode}_{}", slug(scenario));
                        let mut measurement = servers.nats()?.run(scenario, count, &name)?;
                        if mode == Mode::Flushed {
                            measurement.note = join_notes(
                                "not comparable: default JetStream syncing, no fsync per message",
                                &measurement.note,
                            );
                        }
                        measurement
                    }
                };
                let row = Row {
                    scenario,
                    system,
                    mode,
                    measurement,
                };
                eprintln!("{}", report::progress_line(&row));
                rows.push(row);
            }
        }
    }

    println!("{}", report::table(&rows));
    println!();
    println!(
        "p50 and p99: per publish call (produce rows); from the start of the publish call to \
         the return of the ack (end to end, which includes the backlog when the producer is \
         faster than the consumer); from the scheduled send time to the return of the ack \
         (end to end at a fixed rate). Consume and batched rows record no latency."
    );
    println!("load average (1 min) at end: {}", load_average());
    Ok(())
}

fn print_parameters(args: &Args, workload: &Workload) {
    let modes: Vec<String> = args.modes.iter().map(Mode::to_string).collect();
    let systems: Vec<String> = args.systems.iter().map(System::to_string).collect();
    println!(
        "aqueduct comparison harness, aqueduct commit {}",
        args.commit
    );
    println!(
        "payload {PAYLOAD_BYTES} bytes; batch {BATCH}; messages {}; flushed one-at-a-time \
         messages {}; concurrent messages {}; producers {:?}",
        workload.messages, workload.flushed_messages, workload.concurrent_messages, args.producers
    );
    println!(
        "paced end to end: {} msg/s buffered, {} msg/s flushed, {} s each, first {} ms not \
         recorded",
        workload.buffered_rate,
        workload.flushed_rate,
        args.paced_seconds,
        workload::WARM_UP.as_millis()
    );
    println!("modes {}; systems {}", modes.join(", "), systems.join(", "));
    println!(
        "cores available to this process: {}",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
}

fn print_versions(servers: &Servers, args: &Args) -> Result<()> {
    if args.systems.contains(&System::Aqueduct) {
        println!(
            "aqueduct: in process, path dependency at commit {}",
            args.commit
        );
    }
    for (mode, server) in [
        (Mode::Buffered, &servers.redis_buffered),
        (Mode::Flushed, &servers.redis_flushed),
    ] {
        if let Some(server) = server {
            println!("redis for {mode}: {}", server.describe()?);
        }
    }
    if let Some(server) = &servers.nats {
        println!("jetstream: {}", server.describe()?);
    }
    Ok(())
}

/// Returns a name for `scenario` that is valid as a Redis key part and a JetStream stream name.
fn slug(scenario: Scenario) -> String {
    match scenario {
        Scenario::ProduceOne => "produce_one".to_string(),
        Scenario::ProduceBatch => "produce_batch".to_string(),
        Scenario::ConsumeAck => "consume_ack".to_string(),
        Scenario::EndToEnd => "end_to_end".to_string(),
        Scenario::EndToEndPaced(rate) => format!("end_to_end_paced_{rate}"),
        Scenario::ProduceConcurrent(producers) => format!("produce_concurrent_{producers}"),
    }
}

fn join_notes(first: &str, second: &str) -> String {
    if second.is_empty() {
        first.to_string()
    } else {
        format!("{first}; {second}")
    }
}

/// Returns the 1-minute load average from `/proc/loadavg`, or "unavailable".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unavailable".to_string())
}
