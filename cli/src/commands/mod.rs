//! The subcommands. Each takes an open broker and returns a [`Report`](crate::output::Report).

pub mod dead_letters;
pub mod delete_group;
pub mod groups;
pub mod peek;
pub mod purge;
pub mod replay;
pub mod topics;

use aqueduct::{Broker, TopicConfig};

use crate::error::{CliError, Result};

/// Returns the configuration of `topic`, or [`CliError::TopicNotFound`].
fn topic_config(broker: &Broker, topic: &str) -> Result<TopicConfig> {
    Ok(broker.topic_config(topic)?)
}

/// Checks that `topic` exists and that some topic names it as its dead-letter topic.
fn require_dead_letter_topic(broker: &Broker, topic: &str) -> Result<()> {
    topic_config(broker, topic)?;
    let mut dead_letter_topics: Vec<String> = broker
        .topics()
        .into_iter()
        .filter_map(|(_, config)| config.dead_letter_topic_name().map(str::to_string))
        .collect();
    dead_letter_topics.sort();
    dead_letter_topics.dedup();
    if dead_letter_topics.iter().any(|name| name == topic) {
        return Ok(());
    }
    let known = if dead_letter_topics.is_empty() {
        "no topic in this database has a dead-letter topic".to_string()
    } else {
        format!("dead-letter topics here: {}", dead_letter_topics.join(", "))
    };
    Err(CliError::NotDeadLetterTopic {
        topic: topic.to_string(),
        known,
    })
}
