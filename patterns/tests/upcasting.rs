//! Event schema versions: events written by an older build decode through upcasters, stored
//! events keep their version, and the startup check names event types that no longer decode.

use std::convert::Infallible;

use aqueduct::Broker;
use aqueduct_patterns::{
    Aggregate, DomainEvent, EventStore, EventStoreError, ExpectedVersion, NewEvent, Repository,
    Upcasters,
};
use serde::{Deserialize, Serialize};

/// The account events as the first release wrote them.
#[derive(Serialize, Deserialize)]
enum AccountEventV1 {
    Opened { owner: String },
    Deposited { amount: u64 },
}

impl DomainEvent for AccountEventV1 {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEventV1::Opened { .. } => "Opened",
            AccountEventV1::Deposited { .. } => "Deposited",
        }
    }
}

/// The second release: deposits carry a currency.
#[derive(Serialize, Deserialize)]
enum AccountEventV2 {
    Opened { owner: String },
    Deposited { amount: u64, currency: String },
}

/// The current release: deposits are in cents.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64, currency: String },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "Opened",
            AccountEvent::Deposited { .. } => "Deposited",
        }
    }

    fn event_version(&self) -> u32 {
        match self {
            AccountEvent::Opened { .. } => 1,
            AccountEvent::Deposited { .. } => 3,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    owner: String,
    cents: u64,
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = u64;
    type Event = AccountEvent;
    type Error = Infallible;

    fn handle(&self, cents: u64) -> Result<Vec<AccountEvent>, Infallible> {
        Ok(vec![AccountEvent::Deposited {
            cents,
            currency: "EUR".to_string(),
        }])
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner.clone_from(owner),
            AccountEvent::Deposited { cents, .. } => self.cents += cents,
        }
    }
}

fn upcasters() -> Upcasters {
    Upcasters::new()
        .add("Deposited", 1, |old: AccountEventV1| match old {
            AccountEventV1::Opened { owner } => AccountEventV2::Opened { owner },
            AccountEventV1::Deposited { amount } => AccountEventV2::Deposited {
                amount,
                currency: "EUR".to_string(),
            },
        })
        .add("Deposited", 2, |old: AccountEventV2| match old {
            AccountEventV2::Opened { owner } => AccountEvent::Opened { owner },
            AccountEventV2::Deposited { amount, currency } => AccountEvent::Deposited {
                cents: amount * 100,
                currency,
            },
        })
}

/// Writes what the first release wrote: an opening and two deposits of version 1.
fn store_with_old_events() -> (Broker, EventStore) {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "bank").expect("store");
    let old = [
        AccountEventV1::Opened {
            owner: "ada".to_string(),
        },
        AccountEventV1::Deposited { amount: 5 },
        AccountEventV1::Deposited { amount: 7 },
    ];
    let events = old
        .iter()
        .map(|event| NewEvent::encode(event).expect("encode"))
        .collect();
    store
        .append("account-1", ExpectedVersion::NoStream, events)
        .expect("append")
        .expect("no conflict");
    (broker, store)
}

#[test]
fn old_versions_upcast_through_chain() {
    let (_broker, store) = store_with_old_events();
    let repository = Repository::<Account>::new(store)
        .expect("repository")
        .upcasters(upcasters());

    let loaded = repository.load("1").expect("load");

    assert_eq!(loaded.state.owner, "ada");
    assert_eq!(loaded.state.cents, 1200);
    assert_eq!(loaded.version, 3);
}

#[test]
fn upcast_event_has_current_shape() {
    let (_broker, store) = store_with_old_events();
    let recorded = store
        .read_stream("account-1", 2, 1)
        .expect("read")
        .remove(0);

    let event: AccountEvent = upcasters().decode(&recorded).expect("decode");

    assert_eq!(
        event,
        AccountEvent::Deposited {
            cents: 500,
            currency: "EUR".to_string()
        }
    );
}

#[test]
fn stored_events_keep_their_version() {
    let (_broker, store) = store_with_old_events();
    let repository = Repository::<Account>::new(store.clone())
        .expect("repository")
        .upcasters(upcasters());
    repository.load("1").expect("load");

    let versions: Vec<u32> = store
        .read_stream("account-1", 1, 10)
        .expect("read")
        .iter()
        .map(|e| e.schema_version)
        .collect();

    assert_eq!(versions, [1, 1, 1]);
}

#[test]
fn new_events_are_written_at_current_version() {
    let (_broker, store) = store_with_old_events();
    let repository = Repository::<Account>::new(store.clone())
        .expect("repository")
        .upcasters(upcasters());

    let executed = repository.execute("1", 300).expect("execute");
    let newest = store
        .read_stream_backward("account-1", u64::MAX, 1)
        .expect("read");

    assert_eq!(executed.state.cents, 1500);
    assert_eq!(newest[0].schema_version, 3);
}

#[test]
fn missing_upcaster_fails_decoding() {
    let (_broker, store) = store_with_old_events();
    let recorded = store
        .read_stream("account-1", 2, 1)
        .expect("read")
        .remove(0);

    let error = Upcasters::new()
        .decode::<AccountEvent>(&recorded)
        .expect_err("no upcaster");
    let message = error.to_string();

    assert!(matches!(error, EventStoreError::Decode { .. }), "{error}");
    assert!(
        message.contains("register an upcaster from version 1"),
        "{message}"
    );
}

#[test]
fn partial_chain_fails_decoding() {
    let (_broker, store) = store_with_old_events();
    let recorded = store
        .read_stream("account-1", 2, 1)
        .expect("read")
        .remove(0);
    let first_step_only = Upcasters::new().add("Deposited", 1, |old: AccountEventV1| match old {
        AccountEventV1::Opened { owner } => AccountEventV2::Opened { owner },
        AccountEventV1::Deposited { amount } => AccountEventV2::Deposited {
            amount,
            currency: "EUR".to_string(),
        },
    });

    let error = first_step_only
        .decode::<AccountEvent>(&recorded)
        .expect_err("missing second step");

    assert!(error.to_string().contains("from version 2"), "{error}");
}

#[test]
fn startup_check_passes_with_upcasters() {
    let (_broker, store) = store_with_old_events();
    let repository = Repository::<Account>::new(store)
        .expect("repository")
        .upcasters(upcasters());
    repository.execute("1", 1).expect("execute");

    let checked = repository.check_event_types().expect("all types decode");
    let mut types: Vec<(String, u32)> = checked
        .into_iter()
        .map(|info| (info.event_type, info.schema_version))
        .collect();
    types.sort();

    assert_eq!(
        types,
        [
            ("Deposited".to_string(), 1),
            ("Deposited".to_string(), 3),
            ("Opened".to_string(), 1)
        ]
    );
}

#[test]
fn startup_check_names_undecodable_types() {
    let (_broker, store) = store_with_old_events();
    let repository = Repository::<Account>::new(store).expect("repository");

    let error = repository
        .check_event_types()
        .expect_err("old deposits fail");

    let EventStoreError::SchemaCheckFailed { category, failures } = error else {
        panic!("expected a schema check failure, got {error}");
    };
    assert_eq!(category, "account");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with("Deposited version 1"),
        "{failures:?}"
    );
}
