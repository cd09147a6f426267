//! Turns fuzz input bytes into a delivery model case and back.
//!
//! The fuzz target `delivery_semantics` and the replay tests include this file together with
//! `delivery_model`, so both run the same decoding and the same model. The bytes go through
//! `arbitrary::Unstructured`, where each byte picks one choice, modulo the number of choices,
//! and a missing byte picks the first choice. The choices are the ranges that the property test
//! in `model.rs` draws from:
//!
//! - setup: partitions (1 to 3), number of groups (1 or 2), per group the ordering mode
//!   (unordered, per key) and the prefetch (1, 1, 1, 2, 3, 4), the delivery limit (none, 2, 3,
//!   4), `max_unacked` (2, 3, 1000) and whether durability is `Flushed`;
//! - then up to [`MAX_OPS`] operations until the bytes run out: a tag byte, weighted like the
//!   property test (see [`WEIGHTS`]), followed by the operation's arguments.

use crate::delivery_model::{GroupSetup, Op, Setup, ACK_TIMEOUT_MS, CONSUMER_SLOTS};
use aqueduct::OrderingMode;
use arbitrary::Unstructured;

/// Most operations in one case, the longest sequence the property test draws.
pub const MAX_OPS: usize = 80;

/// Operation kinds with their weights in the property test. A tag byte modulo the total weight
/// picks a kind, each kind taking as many consecutive tag values as its weight.
const WEIGHTS: [(Kind, usize); 12] = [
    (Kind::Publish, 5),
    (Kind::Receive, 10),
    (Kind::Ack, 4),
    (Kind::Nack, 1),
    (Kind::NackAfter, 1),
    (Kind::DeadLetter, 1),
    (Kind::Extend, 1),
    (Kind::DropDelivery, 1),
    (Kind::DropConsumer, 1),
    (Kind::ReleaseKey, 1),
    (Kind::Advance, 3),
    (Kind::Reopen, 1),
];

const PREFETCH: [usize; 6] = [1, 1, 1, 2, 3, 4];
const MAX_DELIVERIES: [Option<u32>; 4] = [None, Some(2), Some(3), Some(4)];
const MAX_UNACKED: [usize; 3] = [2, 3, 1_000];
const ADVANCE_MS: [u64; 4] = [
    ACK_TIMEOUT_MS / 4,
    ACK_TIMEOUT_MS / 2 + 100,
    ACK_TIMEOUT_MS,
    ACK_TIMEOUT_MS * 5 / 2,
];
const NACK_DELAY_MS: [u64; 2] = [ACK_TIMEOUT_MS / 10, ACK_TIMEOUT_MS * 3 / 2];
/// Held deliveries an index picks among, modulo their number at the time of the operation.
const HELD_INDEXES: usize = 8;
/// Number of keys a published message can carry. The choice after them means no key.
const KEYS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Publish,
    Receive,
    Ack,
    Nack,
    NackAfter,
    DeadLetter,
    Extend,
    DropDelivery,
    DropConsumer,
    ReleaseKey,
    Advance,
    Reopen,
}

/// Decodes `data` into a setup and its operations and runs them against a real broker and the
/// model, panicking at the first mismatch.
pub fn run(data: &[u8]) {
    let (setup, ops) = decode(data);
    crate::delivery_model::run(&setup, &ops);
}

/// Decodes `data` into a setup and at most [`MAX_OPS`] operations.
pub fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut input = Unstructured::new(data);
    let setup = decode_setup(&mut input);
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < MAX_OPS {
        ops.push(decode_op(&mut input));
    }
    (setup, ops)
}

/// Encodes a case so that [`decode`] returns it. Values outside the decoder's ranges panic.
pub fn encode(setup: &Setup, ops: &[Op]) -> Vec<u8> {
    let mut out = encode_setup(setup);
    for op in ops {
        encode_op(op, &mut out);
    }
    out
}

/// Returns the index of one of `choices` choices. `Unstructured::choose_index` reads one byte
/// for fewer than 256 choices and takes it modulo their number, or picks the first choice when
/// the bytes have run out, which is what `encode` relies on.
fn pick(input: &mut Unstructured<'_>, choices: usize) -> usize {
    input
        .choose_index(choices)
        .expect("every choice list is non-empty")
}

fn pick_from<T: Copy>(input: &mut Unstructured<'_>, choices: &[T]) -> T {
    choices[pick(input, choices.len())]
}

fn decode_setup(input: &mut Unstructured<'_>) -> Setup {
    let partitions = 1 + pick(input, 3) as u32;
    let group_count = 1 + pick(input, 2);
    let groups = (0..group_count)
        .map(|_| GroupSetup {
            ordering: pick_from(input, &[OrderingMode::Unordered, OrderingMode::PerKey]),
            prefetch: pick_from(input, &PREFETCH),
        })
        .collect();
    Setup {
        partitions,
        groups,
        max_deliveries: pick_from(input, &MAX_DELIVERIES),
        max_unacked: pick_from(input, &MAX_UNACKED),
        flushed: pick(input, 2) == 1,
    }
}

fn decode_op(input: &mut Unstructured<'_>) -> Op {
    match kind_of_tag(pick(input, total_weight())) {
        Kind::Publish => {
            let count = 1 + pick(input, 4);
            let keys = (0..count)
                .map(|_| Some(pick(input, KEYS + 1)).filter(|&key| key < KEYS))
                .collect();
            let ids = pick(input, 2) == 1;
            Op::Publish { keys, ids }
        }
        Kind::Receive => Op::Receive(pick(input, CONSUMER_SLOTS)),
        Kind::Ack => Op::Ack(pick(input, HELD_INDEXES)),
        Kind::Nack => Op::Nack(pick(input, HELD_INDEXES)),
        Kind::NackAfter => {
            let index = pick(input, HELD_INDEXES);
            Op::NackAfter(index, pick_from(input, &NACK_DELAY_MS))
        }
        Kind::DeadLetter => Op::DeadLetter(pick(input, HELD_INDEXES)),
        Kind::Extend => Op::Extend(pick(input, HELD_INDEXES)),
        Kind::DropDelivery => Op::DropDelivery(pick(input, HELD_INDEXES)),
        Kind::DropConsumer => Op::DropConsumer(pick(input, CONSUMER_SLOTS)),
        Kind::ReleaseKey => {
            let group = pick(input, 2);
            Op::ReleaseKey(group, pick(input, KEYS))
        }
        Kind::Advance => Op::Advance(pick_from(input, &ADVANCE_MS)),
        Kind::Reopen => Op::Reopen {
            settle_late: pick(input, 2) == 1,
        },
    }
}

fn total_weight() -> usize {
    WEIGHTS.iter().map(|(_, weight)| weight).sum()
}

fn kind_of_tag(mut tag: usize) -> Kind {
    for (kind, weight) in WEIGHTS {
        if tag < weight {
            return kind;
        }
        tag -= weight;
    }
    panic!("tag values stay below the total weight")
}

fn first_tag(kind: Kind) -> u8 {
    let position = WEIGHTS.iter().position(|(candidate, _)| *candidate == kind);
    let position = position.expect("every kind has a weight");
    let tag: usize = WEIGHTS[..position].iter().map(|(_, weight)| weight).sum();
    u8::try_from(tag).expect("the total weight is below 256")
}

/// Returns the position of `value` in `choices` as a byte.
fn index_of<T: PartialEq + std::fmt::Debug>(choices: &[T], value: &T) -> u8 {
    let index = choices
        .iter()
        .position(|choice| choice == value)
        .unwrap_or_else(|| panic!("{value:?} is not one of the choices {choices:?}"));
    u8::try_from(index).expect("choice lists are shorter than 256")
}

/// Returns `value` as a byte after checking that it is below `choices`.
fn below(value: usize, choices: usize) -> u8 {
    assert!(value < choices, "{value} is not below {choices}");
    u8::try_from(value).expect("choice counts are at most 256")
}

fn encode_setup(setup: &Setup) -> Vec<u8> {
    let group_count = setup.groups.len();
    assert!(
        (1..=3).contains(&setup.partitions) && (1..=2).contains(&group_count),
        "the setup has 1 to 3 partitions and 1 or 2 groups"
    );
    let mut out = vec![setup.partitions as u8 - 1, group_count as u8 - 1];
    for group in &setup.groups {
        let orderings = [OrderingMode::Unordered, OrderingMode::PerKey];
        out.push(index_of(&orderings, &group.ordering));
        out.push(index_of(&PREFETCH, &group.prefetch));
    }
    out.push(index_of(&MAX_DELIVERIES, &setup.max_deliveries));
    out.push(index_of(&MAX_UNACKED, &setup.max_unacked));
    out.push(u8::from(setup.flushed));
    out
}

fn encode_op(op: &Op, out: &mut Vec<u8>) {
    let (kind, arguments) = match op {
        Op::Publish { keys, ids } => {
            assert!(
                (1..=4).contains(&keys.len()),
                "a publish has 1 to 4 messages"
            );
            let mut arguments = vec![below(keys.len() - 1, 4)];
            for key in keys {
                arguments.push(below(key.unwrap_or(KEYS), KEYS + 1));
            }
            arguments.push(u8::from(*ids));
            (Kind::Publish, arguments)
        }
        Op::Receive(slot) => (Kind::Receive, vec![below(*slot, CONSUMER_SLOTS)]),
        Op::Ack(index) => (Kind::Ack, vec![below(*index, HELD_INDEXES)]),
        Op::Nack(index) => (Kind::Nack, vec![below(*index, HELD_INDEXES)]),
        Op::NackAfter(index, delay) => {
            let delay = index_of(&NACK_DELAY_MS, delay);
            (Kind::NackAfter, vec![below(*index, HELD_INDEXES), delay])
        }
        Op::DeadLetter(index) => (Kind::DeadLetter, vec![below(*index, HELD_INDEXES)]),
        Op::Extend(index) => (Kind::Extend, vec![below(*index, HELD_INDEXES)]),
        Op::DropDelivery(index) => (Kind::DropDelivery, vec![below(*index, HELD_INDEXES)]),
        Op::DropConsumer(slot) => (Kind::DropConsumer, vec![below(*slot, CONSUMER_SLOTS)]),
        Op::ReleaseKey(group, key) => (Kind::ReleaseKey, vec![below(*group, 2), below(*key, KEYS)]),
        Op::Advance(ms) => (Kind::Advance, vec![index_of(&ADVANCE_MS, ms)]),
        Op::Reopen { settle_late } => (Kind::Reopen, vec![u8::from(*settle_late)]),
    };
    out.push(first_tag(kind));
    out.extend(arguments);
}
