//! Messaging patterns over the [`aqueduct`] broker: transactional outbox, CQRS, event sourcing,
//! sagas and competing consumers. The crate has no public items yet.
