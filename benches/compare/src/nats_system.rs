//! The scenarios on NATS JetStream over loopback.
//!
//! Every scenario creates a new stream with file storage and one replica on its own subject,
//! and deletes it afterwards (not timed). Every producer and consumer has a connection of its
//! own. A publish that waits for its acknowledgement waits for the server's PubAck, which the
//! server sends once the message is stored in the stream. Consumers are durable pull
//! consumers with explicit acks. An ack is a message that the client sends without waiting
//! for a reply, so the consume scenario ends only when the server reports every message as
//! acknowledged. One producer or consumer runs on a single-threaded tokio runtime on its own
//! thread; concurrent producers share a multi-threaded runtime.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context as JetStream};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::end_to_end;
use crate::workload::{
    histogram, join_tasks, now_nanos, payload, record_since, stamp, Measurement, Scenario, BATCH,
};
use crate::{current_thread_runtime, multi_thread_runtime, Context, Result};

const CONSUMER: &str = "bench";

/// How long a publish may wait for its PubAck and an API request for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the consume scenario waits for the server to report every ack.
const ACK_FLOOR_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the end-to-end consumer waits for the next message before the scenario fails.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A NATS server with JetStream enabled.
pub struct NatsServer {
    url: String,
}

impl NatsServer {
    /// Creates a handle for the server at `url` (`nats://127.0.0.1:PORT`).
    pub fn new(url: &str) -> NatsServer {
        NatsServer {
            url: url.to_string(),
        }
    }

    /// Returns the version that the server reports, and whether JetStream is on.
    pub fn describe(&self) -> Result<String> {
        current_thread_runtime()?.block_on(async {
            let (client, _) = connect(&self.url).await?;
            let info = client.server_info();
            Ok(format!(
                "nats-server {} (JetStream {})",
                info.version,
                if info.jetstream {
                    "enabled"
                } else {
                    "disabled"
                }
            ))
        })
    }

    /// Runs `scenario` with `count` messages on stream `name` and returns what it measured.
    pub fn run(&self, scenario: Scenario, count: u64, name: &str) -> Result<Measurement> {
        let runtime = current_thread_runtime()?;
        let (_client, context) = runtime.block_on(connect(&self.url))?;
        let subject = format!("{name}.messages");
        runtime.block_on(create_stream(&context, name, &subject))?;
        let measurement = match scenario {
            Scenario::ProduceOne => runtime.block_on(self.produce_one(&subject, count))?,
            Scenario::ProduceBatch => runtime.block_on(self.produce_batch(&subject, count))?,
            Scenario::ConsumeAck => runtime.block_on(self.consume_ack(name, &subject, count))?,
            Scenario::EndToEnd | Scenario::EndToEndPaced(_) => {
                self.end_to_end(name, &subject, count, scenario)?
            }
            Scenario::ProduceConcurrent(producers) => multi_thread_runtime()?
                .block_on(self.produce_concurrent(&subject, count, producers))?,
        };
        runtime
            .block_on(context.delete_stream(name))
            .context("deleting the stream")?;
        Ok(measurement)
    }

    async fn produce_one(&self, subject: &str, count: u64) -> Result<Measurement> {
        let (_client, context) = connect(&self.url).await?;
        let mut latency = histogram();
        let start = Instant::now();
        for index in 0..count {
            let call = Instant::now();
            publish(&context, subject, payload(now_nanos(), index))
                .await?
                .await
                .context("PubAck")?;
            record_since(&mut latency, call);
        }
        Ok(Measurement::new(count, start.elapsed(), Some(latency)))
    }

    async fn produce_batch(&self, subject: &str, count: u64) -> Result<Measurement> {
        let (_client, context) = connect(&self.url).await?;
        let start = Instant::now();
        for _ in 0..count / BATCH as u64 {
            publish_batch(&context, subject, BATCH).await?;
        }
        Ok(Measurement::new(count, start.elapsed(), None))
    }

    async fn consume_ack(&self, name: &str, subject: &str, count: u64) -> Result<Measurement> {
        let (_producer_client, producer_context) = connect(&self.url).await?;
        let mut published = 0;
        while published < count {
            let size = (count - published).min(BATCH as u64);
            publish_batch(&producer_context, subject, size as usize).await?;
            published += size;
        }
        let (client, context) = connect(&self.url).await?;
        let consumer = create_consumer(&context, name).await?;

        let start = Instant::now();
        let mut received = 0;
        while received < count {
            let mut batch = consumer
                .fetch()
                .max_messages(BATCH)
                .messages()
                .await
                .context("fetching")?;
            let before = received;
            while let Some(message) = batch.next().await {
                let message = message.context("receiving")?;
                message.ack().await.context("acking")?;
                received += 1;
            }
            if received == before {
                return Err(format!("a fetch returned nothing after {received} messages").into());
            }
        }
        client.flush().await.context("flushing the acks")?;
        wait_for_ack_floor(&consumer, count).await?;
        Ok(Measurement {
            messages: count,
            elapsed: start.elapsed(),
            latency: None,
            note: "until the server reports all acks".to_string(),
        })
    }

    /// Runs the producer on a thread of its own with its own runtime and connection, and the
    /// consumer on this thread.
    fn end_to_end(
        &self,
        name: &str,
        subject: &str,
        count: u64,
        scenario: Scenario,
    ) -> Result<Measurement> {
        let runtime = current_thread_runtime()?;
        let (_client, context) = runtime.block_on(connect(&self.url))?;
        let consumer = runtime.block_on(create_consumer(&context, name))?;
        let mut messages = runtime
            .block_on(consumer.stream().max_messages_per_batch(BATCH).messages())
            .context("starting the pull consumer")?;
        let url = self.url.clone();
        let producer_subject = subject.to_string();
        let setup_producer = move || {
            let runtime = current_thread_runtime()?;
            let (client, context) = runtime.block_on(connect(&url))?;
            Ok(move |payload: Vec<u8>| {
                // Keeps the connection open while the producer runs.
                let _client = &client;
                runtime.block_on(async {
                    publish(&context, &producer_subject, payload)
                        .await?
                        .await
                        .context("PubAck")?;
                    Ok(())
                })
            })
        };
        let mut measurement = end_to_end::run(scenario, count, setup_producer, |latency| {
            runtime.block_on(async {
                for received in 0..count {
                    let next = tokio::time::timeout(RECEIVE_TIMEOUT, messages.next())
                        .await
                        .map_err(|_| {
                            format!("no message within {RECEIVE_TIMEOUT:?} after {received}")
                        })?;
                    let message = next
                        .ok_or_else(|| {
                            format!("the pull consumer ended after {received} messages")
                        })?
                        .context("receiving")?;
                    let stamp = stamp(&message.payload)?;
                    message.ack().await.context("acking")?;
                    latency.record(stamp);
                }
                Ok(())
            })
        })?;
        measurement.note = "ack sent, not confirmed".to_string();
        Ok(measurement)
    }

    async fn produce_concurrent(
        &self,
        subject: &str,
        count: u64,
        producers: usize,
    ) -> Result<Measurement> {
        let per_producer = count / producers as u64;
        let mut connections = Vec::with_capacity(producers);
        for _ in 0..producers {
            connections.push(connect(&self.url).await?);
        }
        let start = Instant::now();
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|(client, context)| {
                let subject = subject.to_string();
                tokio::spawn(async move {
                    // Keeps the connection open until the task ends.
                    let _client = client;
                    let mut latency = histogram();
                    for index in 0..per_producer {
                        let call = Instant::now();
                        publish(&context, &subject, payload(now_nanos(), index))
                            .await?
                            .await
                            .context("PubAck")?;
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

async fn connect(url: &str) -> Result<(Client, JetStream)> {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(url)
        .await
        .context("connecting to NATS")?;
    let context = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .build(client.clone());
    Ok((client, context))
}

/// Creates stream `name` on `subject` with file storage and one replica, after deleting a
/// stream of that name left over from an interrupted run.
async fn create_stream(context: &JetStream, name: &str, subject: &str) -> Result<()> {
    if context.get_stream(name).await.is_ok() {
        context
            .delete_stream(name)
            .await
            .context("deleting an old stream")?;
    }
    context
        .create_stream(StreamConfig {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            storage: StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    Ok(())
}

/// Sends one message and returns the future of its PubAck.
async fn publish(context: &JetStream, subject: &str, payload: Vec<u8>) -> Result<PublishAckFuture> {
    context
        .publish(subject.to_string(), Bytes::from(payload))
        .await
        .context("publishing")
}

/// Sends `size` messages, then waits for all their PubAcks.
async fn publish_batch(context: &JetStream, subject: &str, size: usize) -> Result<()> {
    let mut acks = Vec::with_capacity(size);
    for _ in 0..size {
        acks.push(publish(context, subject, payload(now_nanos(), 0)).await?);
    }
    for ack in acks {
        ack.await.context("PubAck")?;
    }
    Ok(())
}

async fn create_consumer(context: &JetStream, stream: &str) -> Result<PullConsumer> {
    let stream = context
        .get_stream(stream)
        .await
        .context("looking up the stream")?;
    stream
        .create_consumer(PullConfig {
            durable_name: Some(CONSUMER.to_string()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .context("creating the consumer")
}

/// Waits until the server reports the first `count` stream messages as acknowledged.
async fn wait_for_ack_floor(consumer: &PullConsumer, count: u64) -> Result<()> {
    let deadline = Instant::now() + ACK_FLOOR_TIMEOUT;
    loop {
        let info = consumer.get_info().await.context("consumer info")?;
        if info.ack_floor.stream_sequence >= count && info.num_ack_pending == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the server reported an ack floor of {} of {count} messages after {:?}",
                info.ack_floor.stream_sequence, ACK_FLOOR_TIMEOUT
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
