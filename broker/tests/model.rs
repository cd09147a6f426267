//! Random operation sequences against a real broker, checked step by step against a reference
//! model of delivery semantics.

mod delivery_model;

use aqueduct::OrderingMode;
use delivery_model::{GroupSetup, Op, Setup, ACK_TIMEOUT_MS, CONSUMER_SLOTS};
use proptest::prelude::*;

fn group_setup() -> impl Strategy<Value = GroupSetup> {
    let ordering = prop_oneof![Just(OrderingMode::Unordered), Just(OrderingMode::PerKey)];
    let prefetch = prop_oneof![3 => Just(1usize), 2 => 2usize..=4];
    (ordering, prefetch).prop_map(|(ordering, prefetch)| GroupSetup { ordering, prefetch })
}

fn setup() -> impl Strategy<Value = Setup> {
    let max_unacked = prop_oneof![Just(2usize), Just(3), Just(1_000)];
    (
        1u32..=3,
        prop::collection::vec(group_setup(), 1..=2),
        prop::option::of(2u32..=4),
        max_unacked,
        any::<bool>(),
    )
        .prop_map(
            |(partitions, groups, max_deliveries, max_unacked, flushed)| Setup {
                partitions,
                groups,
                max_deliveries,
                max_unacked,
                flushed,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..CONSUMER_SLOTS;
    let held = 0usize..8;
    let key = prop::option::of(0usize..3);
    let advance = prop_oneof![
        Just(ACK_TIMEOUT_MS / 4),
        Just(ACK_TIMEOUT_MS / 2 + 100),
        Just(ACK_TIMEOUT_MS),
        Just(ACK_TIMEOUT_MS * 5 / 2),
    ];
    let delay = prop_oneof![Just(ACK_TIMEOUT_MS / 10), Just(ACK_TIMEOUT_MS * 3 / 2)];
    prop_oneof![
        5 => (prop::collection::vec(key, 1..=4), any::<bool>())
            .prop_map(|(keys, ids)| Op::Publish { keys, ids }),
        10 => slot.clone().prop_map(Op::Receive),
        4 => held.clone().prop_map(Op::Ack),
        1 => held.clone().prop_map(Op::Nack),
        1 => (held.clone(), delay).prop_map(|(index, ms)| Op::NackAfter(index, ms)),
        1 => held.clone().prop_map(Op::DeadLetter),
        1 => held.clone().prop_map(Op::Extend),
        1 => held.prop_map(Op::DropDelivery),
        1 => slot.prop_map(Op::DropConsumer),
        1 => (0usize..2, 0usize..3).prop_map(|(group, key)| Op::ReleaseKey(group, key)),
        3 => advance.prop_map(Op::Advance),
        1 => any::<bool>().prop_map(|settle_late| Op::Reopen { settle_late }),
    ]
}

/// Cases per run: 128, or `PROPTEST_CASES` for longer runs outside CI.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn delivery_matches_model(setup in setup(), ops in prop::collection::vec(op(), 1..80)) {
        delivery_model::run(&setup, &ops);
    }
}
