//! State shared by the workers of one pool, and how a handler's result settles a delivery.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aqueduct::{Broker, Consumer, ConsumerConfig, Delivery};

use super::config::{PoolStats, WorkerConfig, WorkerContext};
use super::error::{HandlerError, WorkerError};

/// State that every worker of one pool shares.
pub(crate) struct Shared {
    pub broker: Broker,
    pub topic: String,
    pub group: String,
    pub config: WorkerConfig,
    max_deliveries: Option<u32>,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    panics: AtomicU64,
    in_flight: AtomicU64,
}

impl Shared {
    pub fn new(
        broker: &Broker,
        topic: &str,
        group: &str,
        config: WorkerConfig,
    ) -> Result<Self, WorkerError> {
        config.validate()?;
        let topic_config = broker
            .topic_config(topic)
            .map_err(|source| WorkerError::Subscribe {
                topic: topic.to_string(),
                group: group.to_string(),
                source: Box::new(source),
            })?;
        Ok(Shared {
            broker: broker.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            config,
            max_deliveries: topic_config.max_deliveries_limit(),
            acked: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        })
    }

    /// Joins the group with the pool's ordering mode and prefetch.
    pub fn subscribe(&self) -> Result<Consumer, WorkerError> {
        let config = ConsumerConfig::default()
            .ordering(self.config.ordering)
            .prefetch(self.config.prefetch);
        self.broker
            .subscribe_with(&self.topic, &self.group, config)
            .map_err(|source| WorkerError::Subscribe {
                topic: self.topic.clone(),
                group: self.group.clone(),
                source: Box::new(source),
            })
    }

    pub fn stats(&self, workers: usize) -> PoolStats {
        PoolStats {
            workers,
            acked: self.acked.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Turns a caught handler panic into a retryable error.
    pub fn panicked(&self, context: &WorkerContext, payload: &(dyn Any + Send)) -> HandlerError {
        self.panics.fetch_add(1, Ordering::Relaxed);
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_string());
        tracing::error!(
            topic = %self.topic,
            group = %self.group,
            worker = context.worker(),
            panic = %message,
            "handler panicked; the message will be retried"
        );
        HandlerError::retry(format!("handler panicked: {message}"))
    }

    /// Acks, retries or dead-letters `delivery` according to the handler's result.
    pub fn settle(
        &self,
        delivery: Delivery,
        result: Result<(), HandlerError>,
        context: &WorkerContext,
    ) {
        match result {
            Ok(()) => self.ack(delivery, context),
            Err(error) if error.is_permanent() => self.dead_letter(delivery, &error, context),
            Err(error) => self.retry(delivery, &error, context),
        }
    }

    fn ack(&self, delivery: Delivery, context: &WorkerContext) {
        let (partition, offset) = (delivery.partition(), delivery.offset());
        match delivery.ack() {
            Ok(()) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => tracing::warn!(
                topic = %self.topic,
                group = %self.group,
                worker = context.worker(),
                partition,
                offset,
                %error,
                "ack failed after the handler succeeded; the message will be redelivered"
            ),
        }
    }

    fn dead_letter(&self, delivery: Delivery, error: &HandlerError, context: &WorkerContext) {
        let (partition, offset, id) = position(&delivery);
        match delivery.dead_letter(error.to_string()) {
            Ok(()) => {
                self.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    topic = %self.topic,
                    group = %self.group,
                    worker = context.worker(),
                    partition,
                    offset,
                    id = %id,
                    %error,
                    "message dead-lettered"
                );
            }
            Err(settle_error) => tracing::error!(
                topic = %self.topic,
                group = %self.group,
                worker = context.worker(),
                partition,
                offset,
                id = %id,
                %error,
                %settle_error,
                "could not dead-letter the message; it is redelivered after the ack timeout"
            ),
        }
    }

    fn retry(&self, delivery: Delivery, error: &HandlerError, context: &WorkerContext) {
        let attempt = delivery.attempt();
        if let Some(max) = self.max_deliveries.filter(|max| attempt >= *max) {
            // The broker would dead-letter the nack with its own reason; dead-lettering here
            // keeps the handler's error in the dead letter.
            let reason =
                HandlerError::permanent(format!("{error} (delivery {attempt} of at most {max})"));
            self.dead_letter(delivery, &reason, context);
            return;
        }
        let (partition, offset, id) = position(&delivery);
        // A stopping worker hands the message back at once, so another worker takes it now.
        let delay = if context.stop_requested() {
            Duration::ZERO
        } else {
            self.config.retry.delay(attempt)
        };
        if let Err(settle_error) = delivery.nack_after(delay) {
            tracing::warn!(
                topic = %self.topic,
                group = %self.group,
                partition,
                offset,
                %settle_error,
                "could not return the message after a handler error; it is redelivered after \
                 the ack timeout"
            );
            return;
        }
        self.retried.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            topic = %self.topic,
            group = %self.group,
            worker = context.worker(),
            partition,
            offset,
            id = %id,
            attempt,
            delay_ms = delay.as_millis() as u64,
            %error,
            "handler failed; retrying after backoff"
        );
    }

    /// Logs a failed receive; repeats are logged at warn once per ten.
    pub fn receive_failed(&self, context: &WorkerContext, error: &aqueduct::Error, failures: u32) {
        if failures == 1 || failures % 10 == 0 {
            tracing::warn!(
                topic = %self.topic,
                group = %self.group,
                worker = context.worker(),
                %error,
                failures,
                "receiving from the group failed; retrying"
            );
        }
    }
}

fn position(delivery: &Delivery) -> (u32, u64, String) {
    (
        delivery.partition(),
        delivery.offset(),
        delivery.id().unwrap_or_default().to_string(),
    )
}
