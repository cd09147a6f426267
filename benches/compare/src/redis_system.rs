//! The scenarios on Redis Streams over loopback.
//!
//! Each message is one stream entry with one field, `p`, holding the payload. Every scenario
//! uses a new stream key and deletes it afterwards (not timed). Every producer and consumer
//! has a TCP connection of its own, and every command waits for its reply before the next is
//! sent, except in the pipelined scenario. One producer or consumer runs on a single-threaded
//! tokio runtime on its own thread; concurrent producers share a multi-threaded runtime.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client, Value};

use crate::end_to_end;
use crate::workload::{
    histogram, join_tasks, now_nanos, payload, record_since, stamp, Measurement, Scenario, BATCH,
};
use crate::{current_thread_runtime, multi_thread_runtime, Context, Result};

const GROUP: &str = "bench";
const CONSUMER: &str = "consumer-1";

/// How long a blocking XREADGROUP waits before it returns nil, in milliseconds.
const BLOCK_MS: u64 = 1_000;

/// How long the end-to-end consumer waits for the next entry before the scenario fails, in
/// milliseconds.
const RECEIVE_TIMEOUT_MS: u64 = 30_000;

/// How long a command may wait for its reply. The client's default of 500 ms is shorter than
/// an fsync on a busy disk.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A Redis server.
pub struct RedisServer {
    client: Client,
}

impl RedisServer {
    /// Creates a client for the server at `url` (`redis://127.0.0.1:PORT`).
    pub fn new(url: &str) -> Result<RedisServer> {
        let client = Client::open(url).context("parsing the Redis URL")?;
        Ok(RedisServer { client })
    }

    /// Returns the server's `redis_version` and its `appendonly` and `appendfsync` settings.
    pub fn describe(&self) -> Result<String> {
        current_thread_runtime()?.block_on(async {
            let mut connection = connect(&self.client).await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut connection)
                .await
                .context("INFO server")?;
            let version = info
                .lines()
                .find_map(|line| line.strip_prefix("redis_version:"))
                .unwrap_or("unknown")
                .trim()
                .to_string();
            let mut settings = Vec::new();
            for name in ["appendonly", "appendfsync"] {
                let pair: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut connection)
                    .await
                    .context("CONFIG GET")?;
                settings.push(pair.join(" "));
            }
            Ok(format!("Redis {version} ({})", settings.join(", ")))
        })
    }

    /// Runs `scenario` with `count` messages on stream key `key` and returns what it measured.
    pub fn run(&self, scenario: Scenario, count: u64, key: &str) -> Result<Measurement> {
        let runtime = current_thread_runtime()?;
        let mut connection = runtime.block_on(connect(&self.client))?;
        runtime.block_on(delete(&mut connection, key))?;
        let measurement = match scenario {
            Scenario::ProduceOne => runtime.block_on(self.produce_one(key, count))?,
            Scenario::ProduceBatch => runtime.block_on(self.produce_batch(key, count))?,
            Scenario::ConsumeAck => runtime.block_on(self.consume_ack(key, count))?,
            Scenario::EndToEnd | Scenario::EndToEndPaced(_) => {
                self.end_to_end(key, count, scenario)?
            }
            Scenario::ProduceConcurrent(producers) => {
                multi_thread_runtime()?.block_on(self.produce_concurrent(key, count, producers))?
            }
        };
        runtime.block_on(delete(&mut connection, key))?;
        Ok(measurement)
    }

    async fn produce_one(&self, key: &str, count: u64) -> Result<Measurement> {
        let mut connection = connect(&self.client).await?;
        let mut latency = histogram();
        let start = Instant::now();
        for index in 0..count {
            let call = Instant::now();
            xadd(&mut connection, key, payload(now_nanos(), index)).await?;
            record_since(&mut latency, call);
        }
        Ok(Measurement::new(count, start.elapsed(), Some(latency)))
    }

    async fn produce_batch(&self, key: &str, count: u64) -> Result<Measurement> {
        let mut connection = connect(&self.client).await?;
        let start = Instant::now();
        for _ in 0..count / BATCH as u64 {
            xadd_pipeline(&mut connection, key, BATCH).await?;
        }
        Ok(Measurement::new(count, start.elapsed(), None))
    }

    async fn consume_ack(&self, key: &str, count: u64) -> Result<Measurement> {
        let mut connection = connect(&self.client).await?;
        let mut published = 0;
        while published < count {
            let size = (count - published).min(BATCH as u64);
            xadd_pipeline(&mut connection, key, size as usize).await?;
            published += size;
        }
        create_group(&mut connection, key, "0").await?;

        let start = Instant::now();
        let mut received = 0;
        while received < count {
            let entries = read_group(&mut connection, key, None).await?;
            if entries.is_empty() {
                return Err(format!("XREADGROUP returned nothing after {received} entries").into());
            }
            for (id, _) in entries {
                xack(&mut connection, key, &id).await?;
                received += 1;
            }
        }
        Ok(Measurement::new(count, start.elapsed(), None))
    }

    /// Runs the producer on a thread of its own with its own runtime and connection, and the
    /// consumer on this thread.
    fn end_to_end(&self, key: &str, count: u64, scenario: Scenario) -> Result<Measurement> {
        let runtime = current_thread_runtime()?;
        let mut connection = runtime.block_on(connect(&self.client))?;
        runtime.block_on(create_group(&mut connection, key, "$"))?;
        let client = self.client.clone();
        let producer_key = key.to_string();
        let setup_producer = move || {
            let runtime = current_thread_runtime()?;
            let mut connection = runtime.block_on(connect(&client))?;
            Ok(move |payload: Vec<u8>| {
                runtime.block_on(xadd(&mut connection, &producer_key, payload))
            })
        };
        end_to_end::run(scenario, count, setup_producer, |latency| {
            runtime.block_on(async {
                let mut received = 0;
                let mut empty_reads = 0;
                while received < count {
                    let entries = read_group(&mut connection, key, Some(BLOCK_MS)).await?;
                    if entries.is_empty() {
                        empty_reads += 1;
                        if empty_reads * BLOCK_MS >= RECEIVE_TIMEOUT_MS {
                            let message =
                                format!("no entry within {RECEIVE_TIMEOUT_MS} ms after {received}");
                            return Err(message.into());
                        }
                        continue;
                    }
                    empty_reads = 0;
                    for (id, payload) in entries {
                        let stamp = stamp(&payload)?;
                        xack(&mut connection, key, &id).await?;
                        latency.record(stamp);
                        received += 1;
                    }
                }
                Ok(())
            })
        })
    }

    async fn produce_concurrent(
        &self,
        key: &str,
        count: u64,
        producers: usize,
    ) -> Result<Measurement> {
        let per_producer = count / producers as u64;
        let mut connections = Vec::with_capacity(producers);
        for _ in 0..producers {
            connections.push(connect(&self.client).await?);
        }
        let start = Instant::now();
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|mut connection| {
                let key = key.to_string();
                tokio::spawn(async move {
                    let mut latency = histogram();
                    for index in 0..per_producer {
                        let call = Instant::now();
                        xadd(&mut connection, &key, payload(now_nanos(), index)).await?;
                        record_since(&mut latency, call);
                    }
                    Ok::<_, crate::Error>(latency)
                })
            })
            .collect();
        let latency = join_tasks(tasks).await?;
        Ok(Measurement::new(
            per_producer * producers as u64,
            start.elapsed(),
            Some(latency),
        ))
    }
}

async fn connect(client: &Client) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis")
}

async fn delete(connection: &mut MultiplexedConnection, key: &str) -> Result<()> {
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(connection)
        .await
        .context("DEL")?;
    Ok(())
}

async fn xadd(connection: &mut MultiplexedConnection, key: &str, payload: Vec<u8>) -> Result<()> {
    let _id: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("p")
        .arg(payload)
        .query_async(connection)
        .await
        .context("XADD")?;
    Ok(())
}

/// Sends `size` XADDs in one pipeline and waits for all replies.
async fn xadd_pipeline(
    connection: &mut MultiplexedConnection,
    key: &str,
    size: usize,
) -> Result<()> {
    let mut pipeline = redis::pipe();
    for _ in 0..size {
        pipeline
            .cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("p")
            .arg(payload(now_nanos(), 0));
    }
    let ids: Vec<String> = pipeline
        .query_async(connection)
        .await
        .context("pipelined XADD")?;
    if ids.len() != size {
        return Err(format!("pipeline of {size} XADDs returned {} ids", ids.len()).into());
    }
    Ok(())
}

/// Creates the consumer group, starting at `start_id` (`0` for the whole stream, `$` for new
/// entries only), and the stream if it does not exist.
async fn create_group(
    connection: &mut MultiplexedConnection,
    key: &str,
    start_id: &str,
) -> Result<()> {
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg(start_id)
        .arg("MKSTREAM")
        .query_async(connection)
        .await
        .context("XGROUP CREATE")?;
    Ok(())
}

/// Reads up to [`BATCH`] new entries for the group and returns their ids and payloads.
/// With `block_ms`, waits up to that long for the first entry.
async fn read_group(
    connection: &mut MultiplexedConnection,
    key: &str,
    block_ms: Option<u64>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut command = redis::cmd("XREADGROUP");
    command
        .arg("GROUP")
        .arg(GROUP)
        .arg(CONSUMER)
        .arg("COUNT")
        .arg(BATCH);
    if let Some(block_ms) = block_ms {
        command.arg("BLOCK").arg(block_ms);
    }
    command.arg("STREAMS").arg(key).arg(">");
    let reply: Option<StreamReadReply> = command
        .query_async(connection)
        .await
        .context("XREADGROUP")?;
    let mut entries = Vec::new();
    for stream in reply.map(|reply| reply.keys).unwrap_or_default() {
        for entry in stream.ids {
            let payload = match entry.map.get("p") {
                Some(Value::BulkString(bytes)) => bytes.clone(),
                other => return Err(format!("entry {} has no payload: {other:?}", entry.id).into()),
            };
            entries.push((entry.id, payload));
        }
    }
    Ok(entries)
}

async fn xack(connection: &mut MultiplexedConnection, key: &str, id: &str) -> Result<()> {
    let acked: i64 = redis::cmd("XACK")
        .arg(key)
        .arg(GROUP)
        .arg(id)
        .query_async(connection)
        .await
        .context("XACK")?;
    if acked != 1 {
        return Err(format!("XACK of {id} acknowledged {acked} entries, expected 1").into());
    }
    Ok(())
}
