//! Operation sequences that once broke the delivery model, kept as fixed cases.

// The regressions use only some of the model's operations.
#[allow(dead_code)]
mod delivery_model;

use aqueduct::OrderingMode;
use delivery_model::{GroupSetup, Op, Setup};

fn one_group(prefetch: usize) -> Setup {
    Setup {
        partitions: 1,
        groups: vec![GroupSetup {
            ordering: OrderingMode::Unordered,
            prefetch,
        }],
        max_deliveries: None,
        max_unacked: 2,
        flushed: false,
    }
}

#[test]
fn ack_after_broker_close_survives_reopen() {
    let ops = [
        Op::Publish {
            keys: vec![None],
            ids: true,
        },
        Op::Receive(0),
        Op::Reopen { settle_late: true },
    ];
    delivery_model::run(&one_group(1), &ops);
}

#[test]
fn per_key_dead_letter_parks_key() {
    let mut setup = one_group(1);
    setup.groups[0].ordering = OrderingMode::PerKey;
    let ops = [
        Op::Publish {
            keys: vec![Some(0), Some(0)],
            ids: true,
        },
        Op::Receive(0),
        Op::DeadLetter(0),
    ];
    delivery_model::run(&setup, &ops);
}

#[test]
fn buffered_stale_ack_at_delivery_limit() {
    let mut setup = one_group(4);
    setup.max_deliveries = Some(2);
    let ops = [
        Op::Publish {
            keys: vec![None, None, None],
            ids: true,
        },
        Op::Receive(1),
        Op::Ack(0),
        Op::Receive(0),
        Op::Nack(0),
        Op::Receive(2),
        Op::Advance(1_000),
        Op::Receive(0),
        Op::Ack(2),
        Op::Receive(0),
    ];
    delivery_model::run(&setup, &ops);
}

#[test]
fn second_consumer_gets_next_offset() {
    let ops = [
        Op::Publish {
            keys: vec![None, None],
            ids: true,
        },
        Op::Receive(0),
        Op::Receive(1),
    ];
    delivery_model::run(&one_group(1), &ops);
}

#[test]
fn batch_receipts_follow_input_order() {
    let mut setup = one_group(1);
    setup.partitions = 2;
    let ops = [Op::Publish {
        keys: vec![None, None, None],
        ids: false,
    }];
    delivery_model::run(&setup, &ops);
}

/// A `nack_after` delay set before a dead letter in the same partition was not written, because
/// the dead letter wrote the cursor in its transaction and the delay record waited for the
/// next cursor change. After a reopen the delayed message came back at once.
#[test]
fn nack_after_delay_survives_dead_letter() {
    let setup = Setup {
        partitions: 1,
        groups: vec![
            GroupSetup {
                ordering: OrderingMode::Unordered,
                prefetch: 1,
            },
            GroupSetup {
                ordering: OrderingMode::Unordered,
                prefetch: 1,
            },
        ],
        max_deliveries: Some(2),
        max_unacked: 1000,
        flushed: false,
    };
    let publish = || Op::Publish {
        keys: vec![None],
        ids: false,
    };
    let ops = [
        publish(),
        publish(),
        Op::Receive(1),
        Op::NackAfter(0, 100),
        publish(),
        Op::Receive(1),
        Op::Receive(1),
        Op::Extend(0),
        Op::Nack(0),
        Op::Nack(0),
        Op::Advance(250),
        Op::Receive(2),
        publish(),
        Op::Receive(1),
        Op::Receive(1),
        publish(),
        Op::Receive(1),
        Op::Receive(1),
        Op::Ack(0),
        Op::NackAfter(3, 100),
        Op::Reopen { settle_late: false },
        Op::Receive(1),
    ];
    delivery_model::run(&setup, &ops);
}
