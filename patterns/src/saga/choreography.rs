//! Choreography: services react to each other's events, and a correlation id in every event
//! ties one business flow together across topics.
//!
//! [`Choreography::start`] gives the first event a new correlation id; [`Choreography::follow`]
//! publishes an event caused by a delivery, with the delivery's correlation id and a
//! `causation-id` header naming the delivery. [`Choreography::flow`] returns the events that
//! this choreography published for one correlation id, recorded in its tree;
//! [`Choreography::trace`] finds them by scanning topics, including events that other code
//! published with the header. Both order events by cause, then by time.
//!
//! An event's id is its message id, or `TOPIC/PARTITION/OFFSET` when it has none.
//!
//! # Guarantees
//!
//! - Every event published through a `Choreography` carries the `correlation-id` header, so
//!   `trace` finds it as long as the topic retains it.
//! - The flow record is written after the broker stored the event, so a crash between the two
//!   leaves an event that `flow` misses and `trace` finds. A repeated publish with the same
//!   message id is stored once by the topic's dedup and recorded once.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aqueduct::{Broker, Clock, Delivery, Message, PeekedMessage, Receipt, SystemClock};
use serde::{Deserialize, Serialize};

use super::error::ChoreographyError;
use super::messages::CORRELATION_ID_HEADER;
use super::names::{name_problem, MAX_ID_LEN, MAX_NAME_LEN};
use super::record::FORMAT_VERSION;

/// Header that names the event an event was caused by.
pub const CAUSATION_ID_HEADER: &str = "causation-id";

/// Messages read per [`Broker::peek`] call while tracing.
const PEEK_BATCH: usize = 512;

/// One event of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlowEvent {
    /// The flow's correlation id.
    pub correlation_id: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The message id, if any.
    pub message_id: Option<String>,
    /// The id of the event that caused it, if any.
    pub causation_id: Option<String>,
}

impl FlowEvent {
    /// Returns the event's id: its message id, or `TOPIC/PARTITION/OFFSET`.
    pub fn event_id(&self) -> String {
        event_id(
            self.message_id.as_deref(),
            &self.topic,
            self.partition,
            self.offset,
        )
    }
}

/// A stored flow event, with the format version first.
#[derive(Serialize, Deserialize)]
struct StoredFlowEvent {
    version: u8,
    event: FlowEvent,
}

/// Publishes events with correlation and causation headers and reconstructs flows.
///
/// `Choreography` is a cheap handle; clones share the flow records.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use aqueduct::{Broker, Message, TopicConfig};
/// use aqueduct_patterns::Choreography;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Broker::temporary()?;
/// broker.create_topic("orders", TopicConfig::default())?;
/// broker.create_topic("payments", TopicConfig::default())?;
/// let flows = Choreography::open(&broker, "shop")?;
///
/// let (correlation_id, _) = flows.start("orders", Message::new("order placed"))?;
///
/// // The payment service reacts to the order event.
/// let mut consumer = broker.subscribe("orders", "payments")?;
/// let order = consumer.recv_timeout(Duration::from_secs(1))?.expect("an order");
/// flows.follow(&order, "payments", Message::new("payment taken"))?;
/// order.ack()?;
///
/// let flow = flows.flow(&correlation_id)?;
/// assert_eq!(flow.len(), 2);
/// assert_eq!(flow[1].topic, "payments");
/// assert_eq!(flow[1].causation_id, Some(flow[0].event_id()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Choreography {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    broker: Broker,
    tree: sled::Tree,
    clock: Arc<dyn Clock>,
    next: AtomicU64,
    random: RandomState,
}

impl Choreography {
    /// Opens the choreography `name` (1 to 100 characters from `[A-Za-z0-9._-]`), whose flow
    /// records live in the sled tree `choreography.NAME`.
    ///
    /// # Examples
    ///
    /// See [`Choreography`].
    ///
    /// # Errors
    ///
    /// [`ChoreographyError::InvalidName`], [`ChoreographyError::Broker`] when the tree cannot
    /// be opened.
    pub fn open(broker: &Broker, name: &str) -> Result<Self, ChoreographyError> {
        Self::open_with(broker, name, Arc::new(SystemClock))
    }

    /// Like [`open`](Self::open), with the clock that stamps new correlation ids; pass the
    /// broker's clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::{Broker, ManualClock};
    /// use aqueduct_patterns::Choreography;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// let flows = Choreography::open_with(&broker, "shop", ManualClock::new(1_000))?;
    /// assert!(flows.new_correlation_id().starts_with("3e8-"));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub fn open_with(
        broker: &Broker,
        name: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ChoreographyError> {
        check_name("choreography", name, MAX_NAME_LEN)?;
        let tree = broker
            .tree(&format!("choreography.{name}"))
            .map_err(|source| ChoreographyError::Broker {
                choreography: name.to_string(),
                source: Box::new(source),
            })?;
        Ok(Choreography {
            inner: Arc::new(Inner {
                name: name.to_string(),
                broker: broker.clone(),
                tree,
                clock,
                next: AtomicU64::new(0),
                random: RandomState::new(),
            }),
        })
    }

    /// Returns a new correlation id: the clock's time and a random part, in hexadecimal.
    pub fn new_correlation_id(&self) -> String {
        let inner = &self.inner;
        let mut hasher = inner.random.build_hasher();
        hasher.write_u64(inner.next.fetch_add(1, Ordering::Relaxed));
        format!("{:x}-{:016x}", inner.clock.now_ms(), hasher.finish())
    }

    /// Publishes the first event of a new flow and returns the flow's correlation id with the
    /// receipt.
    ///
    /// # Examples
    ///
    /// See [`Choreography`].
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish).
    pub fn start(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<(String, Receipt), ChoreographyError> {
        let correlation_id = self.new_correlation_id();
        let receipt = self.publish(topic, &correlation_id, message)?;
        Ok((correlation_id, receipt))
    }

    /// Publishes an event of flow `correlation_id` and records it in the flow.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::{Broker, Message, TopicConfig};
    /// use aqueduct_patterns::Choreography;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// broker.create_topic("orders", TopicConfig::default())?;
    /// let flows = Choreography::open(&broker, "shop")?;
    /// flows.publish("orders", "order-42", Message::new("order placed"))?;
    /// assert_eq!(flows.flow("order-42")?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ChoreographyError::InvalidName`] for a correlation id that is not 1 to 200
    /// characters from `[A-Za-z0-9._-]`, [`ChoreographyError::CorrelationMismatch`] when the
    /// message has another correlation id, [`ChoreographyError::Broker`] when the publish
    /// fails, [`ChoreographyError::Storage`] when the record cannot be written.
    pub fn publish(
        &self,
        topic: &str,
        correlation_id: &str,
        message: Message,
    ) -> Result<Receipt, ChoreographyError> {
        self.publish_caused(topic, correlation_id, None, message)
    }

    /// Publishes an event caused by `cause`: it gets the delivery's correlation id and a
    /// `causation-id` header with the delivery's event id.
    ///
    /// # Examples
    ///
    /// See [`Choreography`].
    ///
    /// # Errors
    ///
    /// [`ChoreographyError::MissingCorrelation`] when the delivery has no correlation id, and
    /// as for [`publish`](Self::publish).
    pub fn follow(
        &self,
        cause: &Delivery,
        topic: &str,
        message: Message,
    ) -> Result<Receipt, ChoreographyError> {
        let correlation_id =
            Self::correlation_id(cause).ok_or_else(|| ChoreographyError::MissingCorrelation {
                topic: cause.topic().to_string(),
                partition: cause.partition(),
                offset: cause.offset(),
            })?;
        let causation = event_id(cause.id(), cause.topic(), cause.partition(), cause.offset());
        self.publish_caused(topic, &correlation_id, Some(causation), message)
    }

    /// Returns the correlation id of a delivery, if it has a UTF-8 `correlation-id` header.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use aqueduct::{Broker, Message, TopicConfig};
    /// use aqueduct_patterns::Choreography;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// broker.create_topic("orders", TopicConfig::default())?;
    /// let flows = Choreography::open(&broker, "shop")?;
    /// flows.publish("orders", "order-42", Message::new("order placed"))?;
    /// let mut consumer = broker.subscribe("orders", "audit")?;
    /// let delivery = consumer.recv_timeout(Duration::from_secs(1))?.expect("an event");
    /// assert_eq!(Choreography::correlation_id(&delivery).as_deref(), Some("order-42"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn correlation_id(delivery: &Delivery) -> Option<String> {
        let value = delivery.header(CORRELATION_ID_HEADER)?;
        String::from_utf8(value.to_vec()).ok()
    }

    /// Returns the recorded events of flow `correlation_id`, causes before effects, then by
    /// time.
    ///
    /// # Examples
    ///
    /// See [`Choreography`].
    ///
    /// # Errors
    ///
    /// [`ChoreographyError::Corrupt`], [`ChoreographyError::Storage`].
    pub fn flow(&self, correlation_id: &str) -> Result<Vec<FlowEvent>, ChoreographyError> {
        let inner = &self.inner;
        let mut prefix = correlation_id.as_bytes().to_vec();
        prefix.push(0);
        let mut events = Vec::new();
        for item in inner.tree.scan_prefix(prefix) {
            let (_, value) = item.map_err(|e| self.storage(e))?;
            let stored: StoredFlowEvent =
                postcard::from_bytes(&value).map_err(|error| ChoreographyError::Corrupt {
                    tree: format!("choreography.{}", inner.name),
                    reason: error.to_string(),
                })?;
            events.push(stored.event);
        }
        Ok(causal_order(events))
    }

    /// Finds every event of flow `correlation_id` in `topics` by reading each partition from
    /// its low watermark with [`Broker::peek`], causes before effects, then by time. This reads
    /// every retained message of those topics, so it suits operators' questions, not a hot
    /// path.
    ///
    /// # Examples
    ///
    /// ```
    /// use aqueduct::{Broker, Message, TopicConfig};
    /// use aqueduct_patterns::{Choreography, CORRELATION_ID_HEADER};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broker = Broker::temporary()?;
    /// broker.create_topic("orders", TopicConfig::default())?;
    /// // Published by code that does not use Choreography, with the header set by hand.
    /// broker.publish("orders", Message::new("order placed").header(CORRELATION_ID_HEADER, "order-42"))?;
    /// broker.publish("orders", Message::new("other order").header(CORRELATION_ID_HEADER, "order-43"))?;
    /// let flow = Choreography::trace(&broker, &["orders"], "order-42")?;
    /// assert_eq!(flow.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ChoreographyError::Trace`] for a topic that does not exist or a failed read.
    pub fn trace(
        broker: &Broker,
        topics: &[&str],
        correlation_id: &str,
    ) -> Result<Vec<FlowEvent>, ChoreographyError> {
        let mut events = Vec::new();
        for &topic in topics {
            let broker_error = |source| ChoreographyError::Trace {
                topic: topic.to_string(),
                correlation_id: correlation_id.to_string(),
                source: Box::new(source),
            };
            let partitions = broker
                .topic_config(topic)
                .map_err(broker_error)?
                .partition_count();
            for partition in 0..partitions {
                let mut offset = 0;
                loop {
                    let batch = broker
                        .peek(topic, partition, offset, PEEK_BATCH)
                        .map_err(broker_error)?;
                    let Some(last) = batch.last() else {
                        break;
                    };
                    offset = last.offset + 1;
                    events.extend(
                        batch
                            .iter()
                            .filter(|m| header(m, CORRELATION_ID_HEADER) == Some(correlation_id))
                            .map(|m| peeked_event(topic, correlation_id, m)),
                    );
                }
            }
        }
        Ok(causal_order(events))
    }

    fn publish_caused(
        &self,
        topic: &str,
        correlation_id: &str,
        causation_id: Option<String>,
        mut message: Message,
    ) -> Result<Receipt, ChoreographyError> {
        check_name("correlation id", correlation_id, MAX_ID_LEN)?;
        let existing = message
            .headers()
            .iter()
            .find(|(name, _)| name == CORRELATION_ID_HEADER)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
        match existing {
            None => message = message.header(CORRELATION_ID_HEADER, correlation_id),
            Some(existing) if existing == correlation_id => {}
            Some(existing) => {
                return Err(ChoreographyError::CorrelationMismatch {
                    topic: topic.to_string(),
                    existing,
                    requested: correlation_id.to_string(),
                })
            }
        }
        if let Some(causation) = &causation_id {
            message = message.header(CAUSATION_ID_HEADER, causation.clone());
        }
        let message_id = message.message_id().map(str::to_string);
        let receipt = self
            .inner
            .broker
            .publish(topic, message)
            .map_err(|source| ChoreographyError::Broker {
                choreography: self.inner.name.clone(),
                source: Box::new(source),
            })?;

        let event = FlowEvent {
            correlation_id: correlation_id.to_string(),
            topic: topic.to_string(),
            partition: receipt.partition,
            offset: receipt.offset,
            timestamp_ms: self.inner.clock.now_ms(),
            message_id,
            causation_id,
        };
        self.record(&event)?;
        tracing::trace!(
            choreography = %self.inner.name,
            correlation_id,
            topic,
            offset = receipt.offset,
            "flow event published"
        );
        Ok(receipt)
    }

    fn record(&self, event: &FlowEvent) -> Result<(), ChoreographyError> {
        let mut key = event.correlation_id.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(event.topic.as_bytes());
        key.push(0);
        key.extend_from_slice(&event.partition.to_be_bytes());
        key.extend_from_slice(&event.offset.to_be_bytes());
        let stored = StoredFlowEvent {
            version: FORMAT_VERSION,
            event: event.clone(),
        };
        let value = postcard::to_stdvec(&stored).map_err(|error| ChoreographyError::Corrupt {
            tree: format!("choreography.{}", self.inner.name),
            reason: format!("flow event could not be encoded: {error}"),
        })?;
        self.inner
            .tree
            .insert(key, value)
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    fn storage(&self, source: sled::Error) -> ChoreographyError {
        ChoreographyError::Storage {
            choreography: self.inner.name.clone(),
            source,
        }
    }
}

impl std::fmt::Debug for Choreography {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Choreography")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), ChoreographyError> {
    match name_problem(name, max) {
        None => Ok(()),
        Some(reason) => Err(ChoreographyError::InvalidName {
            what,
            name: name.to_string(),
            reason,
            max,
        }),
    }
}

fn event_id(message_id: Option<&str>, topic: &str, partition: u32, offset: u64) -> String {
    match message_id {
        Some(id) => id.to_string(),
        None => format!("{topic}/{partition}/{offset}"),
    }
}

fn header<'a>(message: &'a PeekedMessage, name: &str) -> Option<&'a str> {
    message
        .headers
        .iter()
        .find(|(header, _)| header == name)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

fn peeked_event(topic: &str, correlation_id: &str, message: &PeekedMessage) -> FlowEvent {
    FlowEvent {
        correlation_id: correlation_id.to_string(),
        topic: topic.to_string(),
        partition: message.partition,
        offset: message.offset,
        timestamp_ms: message.timestamp_ms,
        message_id: message.id.clone(),
        causation_id: header(message, CAUSATION_ID_HEADER).map(str::to_string),
    }
}

/// Orders events so that every event comes after the event that caused it, and otherwise by
/// time, topic, partition and offset. Events whose cause is not in the list count as roots.
fn causal_order(events: Vec<FlowEvent>) -> Vec<FlowEvent> {
    let index: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .map(|(i, event)| (event.event_id(), i))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
    let mut waiting = vec![false; events.len()];
    for (i, event) in events.iter().enumerate() {
        let cause = event.causation_id.as_ref().and_then(|id| index.get(id));
        if let Some(&cause) = cause.filter(|&&cause| cause != i) {
            children[cause].push(i);
            waiting[i] = true;
        }
    }
    let sort_key = |i: usize| {
        let event = &events[i];
        Reverse((
            event.timestamp_ms,
            event.topic.clone(),
            event.partition,
            event.offset,
            i,
        ))
    };
    let mut ready: BinaryHeap<_> = (0..events.len())
        .filter(|&i| !waiting[i])
        .map(sort_key)
        .collect();
    let mut order = Vec::with_capacity(events.len());
    while let Some(Reverse((.., i))) = ready.pop() {
        order.push(i);
        for &child in &children[i] {
            ready.push(sort_key(child));
        }
    }
    // Events in a causation cycle never become ready; keep them, in time order, at the end.
    let mut placed = vec![false; events.len()];
    for &i in &order {
        placed[i] = true;
    }
    let mut rest: Vec<usize> = (0..events.len()).filter(|&i| !placed[i]).collect();
    rest.sort_by_key(|&i| sort_key(i).0);
    order.extend(rest);

    let mut slots: Vec<Option<FlowEvent>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}
