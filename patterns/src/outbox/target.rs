//! The relay's destination: the [`OutboxTarget`] trait and the local broker as its default.

use std::collections::HashSet;

use aqueduct::{Broker, Message};
use parking_lot::Mutex;

use super::error::{BoxError, TargetError};

/// A destination for outbox rows: the local broker ([`BrokerTarget`]), another broker, or a
/// test double.
///
/// The relay's guarantees rest on this contract:
///
/// - `publish` stores the messages in the given order. When it fails it may have stored a
///   prefix of them, but never a message after the one that failed.
/// - The target deduplicates by message id: a message whose id it stored recently is not
///   stored again. Without that, a relay crash between a publish and the removal of its rows
///   duplicates those rows.
/// - After `flush` returns, every message that `publish` accepted before it survives a crash.
///
/// # Examples
///
/// A target that prints instead of publishing:
///
/// ```
/// use aqueduct::Message;
/// use aqueduct_patterns::{BoxError, OutboxTarget, TargetError};
///
/// struct Printer;
///
/// impl OutboxTarget for Printer {
///     fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TargetError> {
///         for message in messages {
///             println!("{topic}: {:?}", message.message_id());
///         }
///         Ok(())
///     }
///
///     fn flush(&self) -> Result<(), BoxError> {
///         Ok(())
///     }
/// }
/// ```
pub trait OutboxTarget: Send + Sync + 'static {
    /// Publishes `messages` to `topic` in order.
    ///
    /// # Errors
    ///
    /// [`TargetError::Unavailable`] when waiting may help, [`TargetError::Rejected`] when the
    /// target will never accept the messages.
    fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TargetError>;

    /// Makes every message published so far durable.
    ///
    /// # Errors
    ///
    /// Any failure; the relay treats it as the target being unavailable and publishes the rows
    /// again later.
    fn flush(&self) -> Result<(), BoxError>;
}

/// The local broker as an outbox target.
///
/// Batches go to [`Broker::publish_batch`], which stores all messages of a batch or none.
/// Messages the broker rejects for their content (too large, invalid header) are
/// [`TargetError::Rejected`]. Everything else, including a missing topic and a broker that
/// stopped after a storage failure, is [`TargetError::Unavailable`], so rows wait until the
/// topic is created or the broker reopened.
///
/// # Examples
///
/// ```
/// use aqueduct::{Broker, Message, TopicConfig};
/// use aqueduct_patterns::{BoxError, BrokerTarget, OutboxTarget};
///
/// # fn main() -> Result<(), BoxError> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("events", TopicConfig::default())?;
/// let target = BrokerTarget::new(broker.clone());
/// target.publish("events", vec![Message::new("hello").id("event-1")])?;
/// target.flush()?;
/// assert_eq!(broker.end_offset("events", 0)?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct BrokerTarget {
    broker: Broker,
    /// Topics whose dedup window was checked, so that a warning is logged once per topic.
    checked: Mutex<HashSet<String>>,
}

impl BrokerTarget {
    /// Creates a target that publishes to `broker`.
    pub fn new(broker: Broker) -> Self {
        BrokerTarget {
            broker,
            checked: Mutex::new(HashSet::new()),
        }
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    fn warn_without_dedup(&self, topic: &str) {
        if self.checked.lock().contains(topic) {
            return;
        }
        let Ok(config) = self.broker.topic_config(topic) else {
            return;
        };
        if config.dedup_window_duration().is_zero() {
            tracing::warn!(
                topic,
                "topic has deduplication turned off; a relay crash between publishing and \
                 removing outbox rows can publish those rows twice"
            );
        }
        self.checked.lock().insert(topic.to_string());
    }
}

impl OutboxTarget for BrokerTarget {
    fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TargetError> {
        self.warn_without_dedup(topic);
        match self.broker.publish_batch(topic, messages) {
            Ok(_) => Ok(()),
            Err(error) if is_permanent(&error) => Err(TargetError::rejected(topic, error)),
            Err(error) => Err(TargetError::unavailable(topic, error)),
        }
    }

    fn flush(&self) -> Result<(), BoxError> {
        self.broker.flush().map_err(BoxError::from)
    }
}

/// Returns true for broker errors that a retry of the same message cannot fix.
fn is_permanent(error: &aqueduct::Error) -> bool {
    matches!(
        error,
        aqueduct::Error::MessageTooLarge { .. }
            | aqueduct::Error::InvalidHeader { .. }
            | aqueduct::Error::InvalidName { .. }
    )
}
