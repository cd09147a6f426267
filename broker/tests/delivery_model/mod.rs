//! A reference model of per-group delivery state and a driver that applies one operation
//! sequence to a real broker and to the model, checking every observable result.
//!
//! Groups whose consumers use a prefetch of 1 are modelled exactly: such a consumer fetches one
//! message per `try_recv` and hands it out at once, so the model tracks every lease, its deadline
//! and each attempt count. A consumer with a larger prefetch keeps leases in its buffer that the
//! application has not seen. For groups with such consumers the model keeps bounds instead:
//! a handed-out lease is live for at least half the ack timeout (older buffered leases are
//! returned, not handed out), and an attempt count can exceed the last one handed out only
//! after a buffered lease could have expired, which takes one ack timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{
    partition_for_key, Broker, BrokerConfig, Consumer, ConsumerConfig, Delivery, Durability, Error,
    ManualClock, Message, OrderingMode, TopicConfig,
};

/// Ack timeout of the topic under test, in milliseconds.
pub const ACK_TIMEOUT_MS: u64 = 1_000;

/// Number of consumer slots. Slot `i` belongs to group `i % groups`.
pub const CONSUMER_SLOTS: usize = 4;

const TOPIC: &str = "orders";
const DEAD_LETTER_TOPIC: &str = "orders.dead";
const GROUP_NAMES: [&str; 2] = ["billing", "shipping"];
const KEYS: [&str; 3] = ["red", "green", "blue"];
const START_MS: u64 = 1_000_000;
const SEQUENCE_HEADER: &str = "sequence";

/// The fixed part of one test case: topic, groups and broker settings.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Partitions of the topic under test.
    pub partitions: u32,
    /// One entry per consumer group, at most two.
    pub groups: Vec<GroupSetup>,
    /// The topic's delivery limit.
    pub max_deliveries: Option<u32>,
    /// `ConsumerConfig::max_unacked` of every consumer.
    pub max_unacked: usize,
    /// `Durability::Flushed` instead of the default buffered mode.
    pub flushed: bool,
}

/// Ordering mode and prefetch of every consumer of one group.
#[derive(Clone, Debug)]
pub struct GroupSetup {
    /// The group's ordering mode; the model covers `Unordered` and `PerKey`.
    pub ordering: OrderingMode,
    /// `ConsumerConfig::prefetch`. Above 1, the group is checked against bounds.
    pub prefetch: usize,
}

/// One step of a test case. Delivery indexes pick among the deliveries the application holds,
/// modulo their number, and a step that finds none does nothing.
#[derive(Clone, Debug)]
pub enum Op {
    /// Publishes one message per entry of `keys`, with the key `KEYS[i]` or no key. Two or more
    /// entries go through `publish_batch`.
    Publish {
        /// One key index or `None` per message.
        keys: Vec<Option<usize>>,
        /// Whether the messages carry ids, which sends them through deduplication.
        ids: bool,
    },
    /// Calls `try_recv` on a consumer slot, subscribing first if the slot is empty.
    Receive(usize),
    /// Acks a held delivery.
    Ack(usize),
    /// Nacks a held delivery.
    Nack(usize),
    /// Nacks a held delivery with a redelivery delay in milliseconds.
    NackAfter(usize, u64),
    /// Dead-letters a held delivery.
    DeadLetter(usize),
    /// Extends the lease of a held delivery.
    Extend(usize),
    /// Drops a held delivery without settling it.
    DropDelivery(usize),
    /// Drops the consumer in a slot.
    DropConsumer(usize),
    /// Moves the clock forward by this many milliseconds.
    Advance(u64),
    /// Calls `release_key` for group `g % groups` and key `KEYS[k % KEYS.len()]`.
    ReleaseKey(usize, usize),
    /// Closes the broker and opens it again on the same directory. With `settle_late`, the
    /// held deliveries are acked after the broker and its consumers are dropped; otherwise
    /// they are dropped unsettled first.
    Reopen {
        /// Whether held deliveries are acked after the broker handle is gone.
        settle_late: bool,
    },
}

/// Runs one test case and panics with the failing step on the first mismatch.
pub fn run(setup: &Setup, ops: &[Op]) {
    let mut world = World::open(setup.clone());
    for (step, op) in ops.iter().enumerate() {
        world.context = format!("step {step} ({op:?})");
        world.apply(op);
    }
    world.context = "final check".to_string();
    world.finish();
}

struct World {
    setup: Setup,
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    now: u64,
    broker: Option<Broker>,
    consumers: Vec<Option<Consumer>>,
    held: Vec<HeldDelivery>,
    /// Published messages per partition, indexed by offset.
    log: Vec<Vec<Published>>,
    groups: Vec<GroupModel>,
    next_number: u64,
    next_delivery: u64,
    context: String,
}

struct HeldDelivery {
    delivery: Delivery,
    group: usize,
    id: u64,
}

#[derive(Clone, Copy)]
struct Published {
    key: Option<usize>,
    number: u64,
    with_id: bool,
}

struct GroupModel {
    name: &'static str,
    ordering: OrderingMode,
    /// Whether consumers may hold leases the application has not seen (prefetch above 1).
    buffered: bool,
    /// Per partition, per offset.
    messages: Vec<Vec<MessageState>>,
    dead_letters: Vec<DeadLetter>,
    /// Set once the dead-letter topic has been read, after which every dead letter is known.
    audited: bool,
    /// Per-key groups only: keys parked by a dead letter, by key index, that are not released.
    parked: BTreeMap<usize, Parked>,
}

/// Where a key was parked: the dead-lettered message and the dead letter's reason and time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parked {
    partition: u32,
    offset: u64,
    reason: String,
    at_ms: u64,
}

#[derive(Clone, Debug)]
struct MessageState {
    settled: Option<Settled>,
    /// The implementation's delivery count in exact groups, and in buffered groups the attempt
    /// of the last delivery handed to the application.
    attempts: u32,
    /// The lease of the last delivery handed out, while that delivery still holds the
    /// message's current epoch.
    lease: Option<Lease>,
    not_before: u64,
    /// Clock time at which `attempts` was last known exactly.
    anchor_ms: u64,
    /// Set when an outcome could not be observed and may have dead-lettered the message.
    maybe_dead: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Acked,
    DeadLettered,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    delivery: u64,
    /// The lease deadline in exact groups, and a lower bound on it in buffered groups.
    deadline_ms: u64,
    /// Exact groups only: a fetch has processed the expiry, so the lease is gone while the
    /// delivery still holds the message's epoch.
    expired: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DeadLetter {
    partition: u32,
    offset: u64,
    attempts: u32,
    reason: String,
    at_ms: u64,
}

enum Settle {
    Ack,
    Nack { delay_ms: u64 },
    DeadLetter(String),
    Drop,
}

impl Published {
    fn payload(&self) -> Vec<u8> {
        format!("payload {}", self.number).into_bytes()
    }

    fn id(&self) -> Option<String> {
        self.with_id.then(|| format!("message-{}", self.number))
    }

    fn key(&self) -> Option<&'static [u8]> {
        self.key.map(|index| KEYS[index].as_bytes())
    }

    fn message(&self) -> Message {
        let mut message = Message::new(self.payload())
            .header(SEQUENCE_HEADER, self.number.to_be_bytes().to_vec());
        if let Some(id) = self.id() {
            message = message.id(id);
        }
        if let Some(key) = self.key() {
            message = message.key(key);
        }
        message
    }
}

impl MessageState {
    fn new(now: u64) -> Self {
        MessageState {
            settled: None,
            attempts: 0,
            lease: None,
            not_before: 0,
            anchor_ms: now,
            maybe_dead: false,
        }
    }

    fn lease_of(&self, delivery: u64) -> Option<Lease> {
        self.lease.filter(|lease| lease.delivery == delivery)
    }
}

impl World {
    fn open(setup: Setup) -> Self {
        assert!(
            (1..=GROUP_NAMES.len()).contains(&setup.groups.len()),
            "a setup has one or two groups"
        );
        let groups = setup
            .groups
            .iter()
            .enumerate()
            .map(|(index, group)| GroupModel {
                name: GROUP_NAMES[index],
                ordering: group.ordering,
                buffered: group.prefetch > 1,
                messages: vec![Vec::new(); setup.partitions as usize],
                dead_letters: Vec::new(),
                audited: false,
                parked: BTreeMap::new(),
            })
            .collect();
        let mut world = World {
            dir: tempfile::tempdir().expect("temporary directory"),
            clock: ManualClock::new(START_MS),
            now: START_MS,
            broker: None,
            consumers: (0..CONSUMER_SLOTS).map(|_| None).collect(),
            held: Vec::new(),
            log: vec![Vec::new(); setup.partitions as usize],
            groups,
            next_number: 0,
            next_delivery: 0,
            context: "open".to_string(),
            setup,
        };
        world.open_broker();
        world
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Publish { keys, ids } => self.publish(keys, *ids),
            Op::Receive(slot) => self.receive(*slot),
            Op::Ack(index) => self.settle(*index, Settle::Ack),
            Op::Nack(index) => self.settle(*index, Settle::Nack { delay_ms: 0 }),
            Op::NackAfter(index, delay_ms) => {
                let delay_ms = *delay_ms;
                self.settle(*index, Settle::Nack { delay_ms });
            }
            Op::DeadLetter(index) => {
                let reason = format!("rejected at {}", self.context);
                self.settle(*index, Settle::DeadLetter(reason));
            }
            Op::Extend(index) => self.extend(*index),
            Op::DropDelivery(index) => self.settle(*index, Settle::Drop),
            Op::DropConsumer(slot) => self.consumers[slot % CONSUMER_SLOTS] = None,
            Op::ReleaseKey(group, key) => {
                self.release_key(group % self.groups.len(), key % KEYS.len());
            }
            Op::Advance(ms) => self.advance(*ms),
            Op::Reopen { settle_late } => self.reopen(*settle_late),
        }
    }

    fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("broker is open between steps")
    }

    fn broker_config(&self) -> BrokerConfig {
        let durability = if self.setup.flushed {
            Durability::Flushed
        } else {
            Durability::Buffered {
                max_delay: Duration::from_millis(10),
            }
        };
        BrokerConfig::default()
            .clock(self.clock.clone())
            .durability(durability)
    }

    fn topic_config(&self) -> TopicConfig {
        let config = TopicConfig::default()
            .partitions(self.setup.partitions)
            .ack_timeout(Duration::from_millis(ACK_TIMEOUT_MS))
            .dead_letter_topic(DEAD_LETTER_TOPIC);
        match self.setup.max_deliveries {
            Some(max) => config.max_deliveries(max),
            None => config,
        }
    }

    /// Opens the broker and creates both topics, which succeeds again after a reopen because
    /// the configuration is the same.
    fn open_broker(&mut self) {
        let broker = Broker::open_with(self.dir.path(), self.broker_config())
            .unwrap_or_else(|error| panic!("{}: open failed: {error}", self.context));
        broker
            .create_topic(DEAD_LETTER_TOPIC, TopicConfig::default())
            .unwrap_or_else(|error| {
                panic!(
                    "{}: create_topic {DEAD_LETTER_TOPIC} failed: {error}",
                    self.context
                )
            });
        broker
            .create_topic(TOPIC, self.topic_config())
            .unwrap_or_else(|error| {
                panic!("{}: create_topic {TOPIC} failed: {error}", self.context)
            });
        self.broker = Some(broker);
    }

    fn consumer_config(&self, group: usize) -> ConsumerConfig {
        ConsumerConfig::default()
            .ordering(self.groups[group].ordering)
            .prefetch(self.setup.groups[group].prefetch)
            .max_unacked(self.setup.max_unacked)
    }

    fn subscribe(&self, group: usize, config: ConsumerConfig) -> Consumer {
        let name = self.groups[group].name;
        self.broker()
            .subscribe_with(TOPIC, name, config)
            .unwrap_or_else(|error| panic!("{}: subscribe {name} failed: {error}", self.context))
    }

    fn advance(&mut self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
        self.now += ms;
    }

    fn limit_reached(&self, attempts: u32) -> bool {
        self.setup.max_deliveries.is_some_and(|max| attempts >= max)
    }

    fn publish(&mut self, keys: &[Option<usize>], with_id: bool) {
        let messages: Vec<Published> = keys
            .iter()
            .map(|key| {
                self.next_number += 1;
                Published {
                    key: key.map(|index| index % KEYS.len()),
                    number: self.next_number,
                    with_id,
                }
            })
            .collect();
        let receipts = if messages.len() == 1 {
            vec![self.broker().publish(TOPIC, messages[0].message())]
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        } else {
            let batch = messages.iter().map(Published::message);
            self.broker().publish_batch(TOPIC, batch)
        };
        let receipts =
            receipts.unwrap_or_else(|error| panic!("{}: publish failed: {error}", self.context));
        assert_eq!(
            receipts.len(),
            messages.len(),
            "{}: one receipt per published message",
            self.context
        );
        for (message, receipt) in messages.into_iter().zip(receipts) {
            self.record_publish(message, receipt.partition, receipt.offset);
        }
    }

    fn record_publish(&mut self, message: Published, partition: u32, offset: u64) {
        assert!(
            partition < self.setup.partitions,
            "{}: receipt names partition {partition} of a {}-partition topic",
            self.context,
            self.setup.partitions
        );
        if let Some(key) = message.key() {
            assert_eq!(
                partition,
                partition_for_key(key, self.setup.partitions),
                "{}: a keyed message must go to the partition of its key hash",
                self.context
            );
        }
        let expected = self.log[partition as usize].len() as u64;
        assert_eq!(
            offset, expected,
            "{}: offsets in partition {partition} must be dense from 0 in publish order",
            self.context
        );
        self.log[partition as usize].push(message);
        let now = self.now;
        for group in &mut self.groups {
            group.messages[partition as usize].push(MessageState::new(now));
        }
    }

    fn receive(&mut self, slot: usize) {
        let slot = slot % CONSUMER_SLOTS;
        let group = slot % self.groups.len();
        if self.consumers[slot].is_none() {
            let consumer = self.subscribe(group, self.consumer_config(group));
            self.consumers[slot] = Some(consumer);
        }
        let exact = !self.groups[group].buffered;
        if exact {
            self.expire_leases(group);
        }
        let deliverable = if exact {
            self.deliverable(group)
        } else {
            BTreeSet::new()
        };
        let consumer = self.consumers[slot].as_mut().expect("subscribed above");
        let received = consumer
            .try_recv()
            .unwrap_or_else(|error| panic!("{}: try_recv failed: {error}", self.context));
        match received {
            None => assert!(
                deliverable.is_empty(),
                "{}: group {} received nothing although {:?} (partition, offset) are deliverable",
                self.context,
                self.groups[group].name,
                deliverable
            ),
            Some(delivery) => {
                self.check_delivery(group, &delivery, exact.then_some(&deliverable));
                let id = self.lease_delivery(group, &delivery);
                self.held.push(HeldDelivery {
                    delivery,
                    group,
                    id,
                });
            }
        }
    }

    /// Applies what the group's next fetch does first: every lease past its deadline ends, and a
    /// message at the delivery limit moves to the dead-letter topic. Exact groups only.
    fn expire_leases(&mut self, group: usize) {
        let now = self.now;
        let mut limit_hits = Vec::new();
        for (partition, states) in self.groups[group].messages.iter_mut().enumerate() {
            for (offset, state) in states.iter_mut().enumerate() {
                let Some(lease) = state.lease.as_mut() else {
                    continue;
                };
                if lease.expired || lease.deadline_ms > now {
                    continue;
                }
                lease.expired = true;
                limit_hits.push((partition as u32, offset as u64, state.attempts));
            }
        }
        for (partition, offset, attempts) in limit_hits {
            if self.limit_reached(attempts) {
                let reason = format!("ack timeout expired on delivery {attempts}, the limit");
                self.dead_letter(group, partition, offset, reason);
            }
        }
    }

    /// Lists the messages that a fetch of an exact group may hand out now.
    fn deliverable(&self, group: usize) -> BTreeSet<(u32, u64)> {
        let mut deliverable = BTreeSet::new();
        for partition in 0..self.setup.partitions {
            for offset in self.window(group, partition) {
                let state = self.state(group, partition, offset);
                let leased = state.lease.is_some_and(|lease| !lease.expired);
                if state.settled.is_some() || leased || state.not_before > self.now {
                    continue;
                }
                if self.key_blocker(group, partition, offset).is_some()
                    || self.parked_key(group, partition, offset).is_some()
                {
                    continue;
                }
                assert!(
                    !self.limit_reached(state.attempts),
                    "{}: model error: {partition}/{offset} is ready at the delivery limit",
                    self.context
                );
                deliverable.insert((partition, offset));
            }
        }
        deliverable
    }

    /// Returns the offsets a group tracks in a partition: `max_unacked` offsets from the first
    /// one that may be unsettled.
    fn window(&self, group: usize, partition: u32) -> std::ops::Range<u64> {
        let states = &self.groups[group].messages[partition as usize];
        let first = states
            .iter()
            .position(|state| !self.possibly_settled(group, state))
            .unwrap_or(states.len()) as u64;
        let end = (first + self.setup.max_unacked as u64).min(states.len() as u64);
        first..end
    }

    /// Returns whether the message is settled or, in a buffered group, may have been
    /// dead-lettered without the model seeing it.
    fn possibly_settled(&self, group: usize, state: &MessageState) -> bool {
        state.settled.is_some() || self.possibly_dead(group, state)
    }

    fn possibly_dead(&self, group: usize, state: &MessageState) -> bool {
        let model = &self.groups[group];
        if state.settled.is_some() || !model.buffered || model.audited {
            return false;
        }
        let lease_live = state
            .lease
            .is_some_and(|lease| self.now < lease.deadline_ms);
        let hidden_expiry = self.setup.max_deliveries.is_some()
            && self.now >= state.anchor_ms + ACK_TIMEOUT_MS
            && !lease_live;
        state.maybe_dead || hidden_expiry
    }

    /// In a per-key group, returns an earlier message with the same key in the same partition
    /// that is still unsettled.
    fn key_blocker(&self, group: usize, partition: u32, offset: u64) -> Option<u64> {
        if self.groups[group].ordering != OrderingMode::PerKey {
            return None;
        }
        let log = &self.log[partition as usize];
        let key = log[offset as usize].key?;
        (0..offset).find(|&earlier| {
            let state = self.state(group, partition, earlier);
            log[earlier as usize].key == Some(key) && !self.possibly_settled(group, state)
        })
    }

    /// Returns the key of a message if the group has parked it.
    fn parked_key(&self, group: usize, partition: u32, offset: u64) -> Option<usize> {
        let key = self.log[partition as usize][offset as usize].key?;
        self.groups[group].parked.contains_key(&key).then_some(key)
    }

    /// Returns whether a buffered group may have parked a key without the model seeing the
    /// dead letter that parked it.
    fn possibly_parked(&self, group: usize, key: usize) -> bool {
        let model = &self.groups[group];
        if model.ordering != OrderingMode::PerKey {
            return false;
        }
        self.log.iter().enumerate().any(|(partition, log)| {
            log.iter().enumerate().any(|(offset, published)| {
                let state = &model.messages[partition][offset];
                published.key == Some(key) && self.possibly_dead(group, state)
            })
        })
    }

    fn state(&self, group: usize, partition: u32, offset: u64) -> &MessageState {
        &self.groups[group].messages[partition as usize][offset as usize]
    }

    fn state_mut(&mut self, group: usize, partition: u32, offset: u64) -> &mut MessageState {
        &mut self.groups[group].messages[partition as usize][offset as usize]
    }

    /// Checks a delivery against the published message and the group's state. `deliverable`
    /// is the exact set for exact groups and `None` for buffered ones.
    fn check_delivery(
        &self,
        group: usize,
        delivery: &Delivery,
        deliverable: Option<&BTreeSet<(u32, u64)>>,
    ) {
        let ctx = &self.context;
        let name = self.groups[group].name;
        let (partition, offset) = (delivery.partition(), delivery.offset());
        self.check_content(delivery, &format!("{ctx}: group {name}"));

        let state = self.state(group, partition, offset);
        assert_eq!(
            state.settled, None,
            "{ctx}: group {name} received {partition}/{offset}, which it had already settled"
        );
        let blocker = self.key_blocker(group, partition, offset);
        assert_eq!(
            blocker, None,
            "{ctx}: group {name} received {partition}/{offset} while an earlier message with \
             its key was unsettled"
        );
        let parked = self.parked_key(group, partition, offset);
        assert_eq!(
            parked, None,
            "{ctx}: group {name} received {partition}/{offset} although its key is parked"
        );
        let window = self.window(group, partition);
        assert!(
            offset < window.end,
            "{ctx}: group {name} received {partition}/{offset} outside its window {window:?}"
        );

        let attempt = delivery.attempt();
        match deliverable {
            Some(deliverable) => {
                assert!(
                    deliverable.contains(&(partition, offset)),
                    "{ctx}: group {name} received {partition}/{offset}, which is not deliverable \
                     ({state:?}); deliverable: {deliverable:?}"
                );
                assert_eq!(
                    attempt,
                    state.attempts + 1,
                    "{ctx}: group {name} {partition}/{offset}: each delivery adds one attempt"
                );
            }
            None => self.check_buffered_delivery(name, state, partition, offset, attempt),
        }
    }

    fn check_buffered_delivery(
        &self,
        name: &str,
        state: &MessageState,
        partition: u32,
        offset: u64,
        attempt: u32,
    ) {
        let ctx = &self.context;
        if let Some(lease) = state.lease {
            assert!(
                self.now >= lease.deadline_ms,
                "{ctx}: group {name} handed out {partition}/{offset} while delivery {} still \
                 held a live lease on it",
                lease.delivery
            );
        }
        assert!(
            attempt > state.attempts,
            "{ctx}: group {name} {partition}/{offset}: attempt {attempt} does not exceed the \
             previous delivery's {}",
            state.attempts
        );
        if self.now < state.anchor_ms + ACK_TIMEOUT_MS {
            assert_eq!(
                attempt,
                state.attempts + 1,
                "{ctx}: group {name} {partition}/{offset}: no buffered lease can have expired \
                 since the last delivery, so the attempt must be one more"
            );
        }
    }

    /// Checks that a delivery carries the published payload, key, id and headers.
    fn check_content(&self, delivery: &Delivery, ctx: &str) {
        let (partition, offset) = (delivery.partition(), delivery.offset());
        assert_eq!(delivery.topic(), TOPIC, "{ctx}: delivery topic");
        let published = self
            .log
            .get(partition as usize)
            .and_then(|log| log.get(offset as usize))
            .unwrap_or_else(|| panic!("{ctx}: delivered {partition}/{offset} was never published"));
        self.check_copy(
            ctx,
            published,
            delivery.payload(),
            delivery.key(),
            delivery.id(),
            delivery.header(SEQUENCE_HEADER),
        );
    }

    fn check_copy(
        &self,
        ctx: &str,
        published: &Published,
        payload: &[u8],
        key: Option<&[u8]>,
        id: Option<&str>,
        sequence: Option<&[u8]>,
    ) {
        let number = published.number;
        assert_eq!(payload, published.payload(), "{ctx}: payload of {number}");
        assert_eq!(key, published.key(), "{ctx}: key of {number}");
        assert_eq!(id, published.id().as_deref(), "{ctx}: id of {number}");
        assert_eq!(
            sequence,
            Some(&number.to_be_bytes()[..]),
            "{ctx}: header of {number}"
        );
    }

    /// Records the lease of a delivery just handed out and returns the delivery's model id.
    fn lease_delivery(&mut self, group: usize, delivery: &Delivery) -> u64 {
        self.next_delivery += 1;
        let id = self.next_delivery;
        let buffered = self.groups[group].buffered;
        let deadline_ms = if buffered {
            self.now + ACK_TIMEOUT_MS / 2
        } else {
            self.now + ACK_TIMEOUT_MS
        };
        let now = self.now;
        let state = self.state_mut(group, delivery.partition(), delivery.offset());
        state.attempts = delivery.attempt();
        state.anchor_ms = now;
        state.maybe_dead = false;
        state.lease = Some(Lease {
            delivery: id,
            deadline_ms,
            expired: false,
        });
        id
    }

    fn take_held(&mut self, index: usize) -> Option<HeldDelivery> {
        if self.held.is_empty() {
            return None;
        }
        let index = index % self.held.len();
        Some(self.held.remove(index))
    }

    fn settle(&mut self, index: usize, settlement: Settle) {
        if let Some(held) = self.take_held(index) {
            self.settle_held(held, settlement);
        }
    }

    fn settle_held(&mut self, held: HeldDelivery, settlement: Settle) {
        let HeldDelivery {
            delivery,
            group,
            id,
        } = held;
        let (partition, offset) = (delivery.partition(), delivery.offset());
        let state = self.state(group, partition, offset);
        let lease = state.lease_of(id).filter(|_| state.settled.is_none());
        // Exact groups track every lease. In buffered groups only a lease that is surely live
        // has a known outcome.
        let known = !self.groups[group].buffered || lease.is_some_and(|l| self.now < l.deadline_ms);
        let (effect, result) = match settlement {
            Settle::Ack => (Effect::Ack, Some(delivery.ack())),
            Settle::Nack { delay_ms: 0 } => (Effect::Nack { delay_ms: 0 }, Some(delivery.nack())),
            Settle::Nack { delay_ms } => {
                let result = delivery.nack_after(Duration::from_millis(delay_ms));
                (Effect::Nack { delay_ms }, Some(result))
            }
            Settle::DeadLetter(reason) => {
                let result = delivery.dead_letter(reason.clone());
                (Effect::DeadLetter(reason), Some(result))
            }
            Settle::Drop => {
                drop(delivery);
                (Effect::Nack { delay_ms: 0 }, None)
            }
        };
        let took_effect = match (lease.is_some(), known, &result) {
            (false, _, Some(result)) => {
                self.expect_lease_expired(result, partition, offset);
                false
            }
            (false, _, None) => false,
            (true, true, Some(result)) => {
                assert!(
                    result.is_ok(),
                    "{}: settling {partition}/{offset} with a current lease failed: {result:?}",
                    self.context
                );
                true
            }
            (true, true, None) | (true, false, Some(Ok(()))) => true,
            (true, false, Some(result)) => {
                self.expect_lease_expired(result, partition, offset);
                false
            }
            (true, false, None) => {
                // The lease of this dropped delivery may have expired and moved on, and nothing
                // shows whether it did.
                let state = self.state_mut(group, partition, offset);
                state.lease = None;
                state.maybe_dead = true;
                return;
            }
        };
        if took_effect {
            self.apply_effect(group, partition, offset, effect);
        } else if lease.is_some() {
            // Only a buffered lease that may have expired gets here. Another fetch took the
            // message, possibly into a consumer's buffer and past the delivery limit.
            let limit = self.setup.max_deliveries.is_some();
            let state = self.state_mut(group, partition, offset);
            state.lease = None;
            state.maybe_dead = limit;
        }
    }

    fn apply_effect(&mut self, group: usize, partition: u32, offset: u64, effect: Effect) {
        let now = self.now;
        let attempts = self.state(group, partition, offset).attempts;
        match effect {
            Effect::Ack => {
                let state = self.state_mut(group, partition, offset);
                state.settled = Some(Settled::Acked);
                state.lease = None;
            }
            Effect::Nack { .. } if self.limit_reached(attempts) => {
                let reason = format!("nacked on delivery {attempts}, the limit");
                self.dead_letter(group, partition, offset, reason);
            }
            Effect::Nack { delay_ms } => {
                let state = self.state_mut(group, partition, offset);
                state.lease = None;
                state.not_before = now + delay_ms;
                state.anchor_ms = now;
            }
            Effect::DeadLetter(reason) => self.dead_letter(group, partition, offset, reason),
        }
    }

    fn dead_letter(&mut self, group: usize, partition: u32, offset: u64, reason: String) {
        let now = self.now;
        let state = self.state_mut(group, partition, offset);
        state.settled = Some(Settled::DeadLettered);
        state.lease = None;
        let attempts = state.attempts;
        let key = self.log[partition as usize][offset as usize].key;
        let model = &mut self.groups[group];
        if let (Some(key), OrderingMode::PerKey) = (key, model.ordering) {
            let parked = Parked {
                partition,
                offset,
                reason: reason.clone(),
                at_ms: now,
            };
            model.parked.insert(key, parked);
        }
        model.dead_letters.push(DeadLetter {
            partition,
            offset,
            attempts,
            reason,
            at_ms: now,
        });
    }

    fn release_key(&mut self, group: usize, key: usize) {
        let name = self.groups[group].name;
        let released = self
            .broker()
            .release_key(TOPIC, name, KEYS[key].as_bytes())
            .unwrap_or_else(|error| panic!("{}: release_key failed: {error}", self.context));
        let was_parked = self.groups[group].parked.remove(&key).is_some();
        if was_parked || !self.possibly_parked(group, key) {
            assert_eq!(
                released, was_parked,
                "{}: release_key on group {name} must return whether {} was parked",
                self.context, KEYS[key]
            );
        }
    }

    fn expect_lease_expired(&self, result: &aqueduct::Result<()>, partition: u32, offset: u64) {
        match result {
            Err(Error::LeaseExpired {
                topic,
                partition: error_partition,
                offset: error_offset,
                ..
            }) => {
                assert_eq!(
                    topic, TOPIC,
                    "{}: LeaseExpired names the topic",
                    self.context
                );
                assert_eq!(
                    (*error_partition, *error_offset),
                    (partition, offset),
                    "{}: LeaseExpired names the partition and offset",
                    self.context
                );
            }
            other => panic!(
                "{}: settling {partition}/{offset} with a superseded lease must fail with \
                 LeaseExpired, got {other:?}",
                self.context
            ),
        }
    }

    fn extend(&mut self, index: usize) {
        let Some(held) = self.take_held(index) else {
            return;
        };
        let (partition, offset) = (held.delivery.partition(), held.delivery.offset());
        let state = self.state(held.group, partition, offset);
        let lease = state.lease_of(held.id).filter(|_| state.settled.is_none());
        let buffered = self.groups[held.group].buffered;
        let result = held.delivery.extend();
        let renewed = match lease {
            None => {
                self.expect_lease_expired(&result, partition, offset);
                false
            }
            Some(lease) if !buffered && lease.expired => {
                self.expect_lease_expired(&result, partition, offset);
                false
            }
            Some(lease) if !buffered || self.now < lease.deadline_ms => {
                assert!(
                    result.is_ok(),
                    "{}: extending the live lease on {partition}/{offset} failed: {result:?}",
                    self.context
                );
                true
            }
            // A buffered lease that may have expired allows both outcomes. After a failure the
            // delivery may still hold the epoch, so its lease entry stays.
            Some(_) => match &result {
                Ok(()) => true,
                Err(_) => {
                    self.expect_lease_expired(&result, partition, offset);
                    let limit = self.setup.max_deliveries.is_some();
                    self.state_mut(held.group, partition, offset).maybe_dead |= limit;
                    false
                }
            },
        };
        if renewed {
            let deadline_ms = self.now + ACK_TIMEOUT_MS;
            let state = self.state_mut(held.group, partition, offset);
            if let Some(lease) = state.lease.as_mut() {
                lease.deadline_ms = deadline_ms;
            }
        }
        self.held.push(held);
    }

    /// Drops every held delivery unsettled, then every consumer.
    fn drop_all(&mut self) {
        for held in std::mem::take(&mut self.held) {
            self.settle_held(held, Settle::Drop);
        }
        for consumer in &mut self.consumers {
            *consumer = None;
        }
    }

    /// Closes the broker and opens it on the same directory. A clean close writes every cursor,
    /// so no `flush` is needed first: the check that acks hold after this reopen is the test of
    /// that guarantee.
    fn reopen(&mut self, settle_late: bool) {
        if settle_late {
            for consumer in &mut self.consumers {
                *consumer = None;
            }
            self.broker = None;
            for held in std::mem::take(&mut self.held) {
                self.settle_held(held, Settle::Ack);
            }
        } else {
            self.drop_all();
            self.broker = None;
        }
        self.open_broker();
        for group in &mut self.groups {
            for state in group.messages.iter_mut().flatten() {
                // A `nack_after` delay is stored with the group's cursor, so it outlives the
                // restart; leases do not.
                state.lease = None;
            }
        }
        self.check_end_offsets();
    }

    fn check_end_offsets(&self) {
        for partition in 0..self.setup.partitions {
            let end = self
                .broker()
                .end_offset(TOPIC, partition)
                .unwrap_or_else(|error| panic!("{}: end_offset failed: {error}", self.context));
            assert_eq!(
                end,
                self.log[partition as usize].len() as u64,
                "{}: end offset of partition {partition} after reopen",
                self.context
            );
        }
    }

    /// Settles everything, checks the dead letters, drains every group and checks that a
    /// reopen delivers nothing more.
    fn finish(&mut self) {
        self.drop_all();
        self.advance(10 * ACK_TIMEOUT_MS);
        self.audit_dead_letters();
        for group in 0..self.groups.len() {
            self.check_parked_keys(group);
            for key in 0..KEYS.len() {
                self.release_key(group, key);
            }
            self.drain(group);
        }
        self.reopen(false);
        for group in 0..self.groups.len() {
            let mut consumer = self.subscribe(group, self.consumer_config(group));
            let received = consumer
                .try_recv()
                .unwrap_or_else(|error| panic!("{}: try_recv failed: {error}", self.context));
            assert!(
                received.is_none(),
                "{}: group {} received {:?} after everything was acked and the broker reopened",
                self.context,
                self.groups[group].name,
                received
                    .as_ref()
                    .map(|d| (d.partition(), d.offset(), d.attempt()))
            );
        }
    }

    /// Compares `Broker::parked_keys` with the model. In a buffered group a dead letter that the
    /// audit found unseen may have parked a key as well.
    fn check_parked_keys(&mut self, group: usize) {
        let name = self.groups[group].name;
        let listed = self
            .broker()
            .parked_keys(TOPIC, name)
            .unwrap_or_else(|error| panic!("{}: parked_keys failed: {error}", self.context));
        let mut found = BTreeMap::new();
        for parked in listed {
            let key = KEYS
                .iter()
                .position(|key| key.as_bytes() == parked.key.as_slice())
                .unwrap_or_else(|| panic!("{}: parked unknown key {:?}", self.context, parked.key));
            let entry = Parked {
                partition: parked.partition,
                offset: parked.offset,
                reason: parked.reason,
                at_ms: parked.parked_at_ms,
            };
            assert!(
                found.insert(key, entry).is_none(),
                "{}: group {name} lists key {} twice",
                self.context,
                KEYS[key]
            );
        }
        let expected = self.groups[group].parked.clone();
        if !self.groups[group].buffered {
            assert_eq!(
                found, expected,
                "{}: parked keys of group {name}",
                self.context
            );
            return;
        }
        for (key, parked) in &expected {
            assert_eq!(
                found.get(key),
                Some(parked),
                "{}: group {name} parked {} by a dead letter the model saw",
                self.context,
                KEYS[*key]
            );
        }
        for (key, parked) in &found {
            let letters = &self.groups[group].dead_letters;
            let matching = letters.iter().any(|letter| {
                letter.partition == parked.partition
                    && letter.offset == parked.offset
                    && letter.reason == parked.reason
                    && letter.at_ms == parked.at_ms
            });
            assert!(
                matching,
                "{}: group {name} parked {} without a matching dead letter: {parked:?}",
                self.context, KEYS[*key]
            );
        }
        self.groups[group].parked = found;
    }

    /// Reads the whole dead-letter topic and matches it against the model's dead letters.
    fn audit_dead_letters(&mut self) {
        let mut consumer = self
            .broker()
            .subscribe_with(
                DEAD_LETTER_TOPIC,
                "inspector",
                ConsumerConfig::default().prefetch(1),
            )
            .unwrap_or_else(|error| {
                panic!(
                    "{}: subscribe to {DEAD_LETTER_TOPIC} failed: {error}",
                    self.context
                )
            });
        let mut found: BTreeMap<&'static str, Vec<DeadLetter>> = BTreeMap::new();
        let mut count = 0u64;
        while let Some(letter) = consumer
            .try_recv()
            .unwrap_or_else(|error| panic!("{}: try_recv failed: {error}", self.context))
        {
            count += 1;
            let info = letter
                .dead_letter_info()
                .unwrap_or_else(|| panic!("{}: dead letter without DeadLetterInfo", self.context))
                .clone();
            assert_eq!(
                info.source_topic, TOPIC,
                "{}: dead letter source",
                self.context
            );
            let group = self
                .groups
                .iter()
                .find(|group| group.name == info.group)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: dead letter of unknown group {}",
                        self.context, info.group
                    )
                })
                .name;
            let published = self
                .log
                .get(info.source_partition as usize)
                .and_then(|log| log.get(info.source_offset as usize))
                .unwrap_or_else(|| {
                    panic!("{}: dead letter of an unpublished message", self.context)
                });
            let ctx = format!("{}: dead letter of {group}", self.context);
            let sequence = letter.header(SEQUENCE_HEADER);
            self.check_copy(
                &ctx,
                published,
                letter.payload(),
                letter.key(),
                letter.id(),
                sequence,
            );
            found.entry(group).or_default().push(DeadLetter {
                partition: info.source_partition,
                offset: info.source_offset,
                attempts: info.attempts,
                reason: info.last_error,
                at_ms: info.dead_lettered_at_ms,
            });
            letter.ack().unwrap_or_else(|error| {
                panic!("{}: ack of a dead letter failed: {error}", self.context)
            });
        }
        let end = self
            .broker()
            .end_offset(DEAD_LETTER_TOPIC, 0)
            .unwrap_or_else(|error| panic!("{}: end_offset failed: {error}", self.context));
        assert_eq!(
            count, end,
            "{}: every dead letter is readable",
            self.context
        );
        for group in 0..self.groups.len() {
            let letters = found.remove(self.groups[group].name).unwrap_or_default();
            self.match_dead_letters(group, letters);
            self.groups[group].audited = true;
        }
    }

    fn match_dead_letters(&mut self, group: usize, mut found: Vec<DeadLetter>) {
        let ctx = self.context.clone();
        let name = self.groups[group].name;
        found.sort();
        let mut expected = self.groups[group].dead_letters.clone();
        expected.sort();
        if !self.groups[group].buffered {
            assert_eq!(found, expected, "{ctx}: dead letters of group {name}");
            return;
        }
        for letter in &expected {
            assert!(
                found.contains(letter),
                "{ctx}: group {name} dead-lettered {letter:?}, which is missing from {found:?}"
            );
        }
        let mut seen = BTreeSet::new();
        for letter in found {
            assert!(
                seen.insert((letter.partition, letter.offset)),
                "{ctx}: group {name} dead-lettered {}/{} twice",
                letter.partition,
                letter.offset
            );
            if !expected.contains(&letter) {
                self.match_unseen_dead_letter(group, letter);
            }
        }
    }

    /// Accepts a dead letter of a buffered group that the model did not see happen. Such a
    /// dead letter comes from a lease that expired at the delivery limit, either in a
    /// consumer's buffer or after an outcome the model could not observe.
    fn match_unseen_dead_letter(&mut self, group: usize, letter: DeadLetter) {
        let ctx = self.context.clone();
        let name = self.groups[group].name;
        let state = self.state(group, letter.partition, letter.offset);
        assert_eq!(
            state.settled, None,
            "{ctx}: group {name} dead-lettered {letter:?}, which it had settled otherwise"
        );
        assert!(
            self.possibly_dead(group, state),
            "{ctx}: group {name} dead-lettered {letter:?} although no lease on it can have \
             expired unseen ({state:?})"
        );

        let max = self.setup.max_deliveries;
        assert_eq!(
            Some(letter.attempts),
            max,
            "{ctx}: group {name}: an unseen dead letter happens only at the delivery limit"
        );
        let reasons = [
            format!(
                "ack timeout expired on delivery {}, the limit",
                letter.attempts
            ),
            format!("nacked on delivery {}, the limit", letter.attempts),
        ];
        assert!(
            reasons.contains(&letter.reason),
            "{ctx}: group {name}: unexpected reason for an unseen dead letter: {letter:?}"
        );
        assert!(
            letter.at_ms >= state.anchor_ms,
            "{ctx}: group {name}: {letter:?} happened before the last delivery at {}",
            state.anchor_ms
        );

        let state = self.state_mut(group, letter.partition, letter.offset);
        state.settled = Some(Settled::DeadLettered);
        self.groups[group].dead_letters.push(letter);
    }

    /// Receives and acks everything left in a group with a fresh consumer of prefetch 1 and
    /// checks that exactly the unsettled messages arrive, each once.
    fn drain(&mut self, group: usize) {
        let config = self.consumer_config(group).prefetch(1);
        let mut consumer = self.subscribe(group, config);
        let name = self.groups[group].name;
        let mut drained = BTreeSet::new();
        while let Some(delivery) = consumer
            .try_recv()
            .unwrap_or_else(|error| panic!("{}: try_recv failed: {error}", self.context))
        {
            let (partition, offset) = (delivery.partition(), delivery.offset());
            let ctx = format!("{}: drain of {name}", self.context);
            self.check_content(&delivery, &ctx);
            assert!(
                drained.insert((partition, offset)),
                "{ctx}: {partition}/{offset} arrived twice although it was acked"
            );
            let state = self.state(group, partition, offset);
            assert_eq!(
                state.settled, None,
                "{ctx}: {partition}/{offset} was already settled"
            );
            assert_eq!(
                self.key_blocker(group, partition, offset),
                None,
                "{ctx}: {partition}/{offset} arrived before an earlier message with its key"
            );
            if self.groups[group].buffered {
                assert!(
                    delivery.attempt() > state.attempts,
                    "{ctx}: {partition}/{offset} attempt went down"
                );
            } else {
                assert_eq!(
                    delivery.attempt(),
                    state.attempts + 1,
                    "{ctx}: {partition}/{offset}: each delivery adds one attempt"
                );
            }
            delivery.ack().unwrap_or_else(|error| {
                panic!("{ctx}: ack of {partition}/{offset} failed: {error}")
            });
            let state = self.state_mut(group, partition, offset);
            state.settled = Some(Settled::Acked);
        }
        let mut missing = Vec::new();
        for (partition, states) in self.groups[group].messages.iter().enumerate() {
            for (offset, state) in states.iter().enumerate() {
                if state.settled.is_none() {
                    missing.push((partition, offset));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{}: group {name} never received the unsettled messages {missing:?}",
            self.context
        );
    }
}

enum Effect {
    Ack,
    Nack { delay_ms: u64 },
    DeadLetter(String),
}
