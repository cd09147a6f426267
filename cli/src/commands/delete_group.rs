//! `aqueduct delete-group`: remove a consumer group and everything stored for it.

use aqueduct::Broker;
use clap::Args;
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::output::Report;

/// Arguments of `delete-group`.
#[derive(Debug, Clone, Args)]
pub struct DeleteGroupArgs {
    /// Topic of the group
    pub topic: String,

    /// Group to delete: its offsets, attempt counts, delays and parked keys; messages stay
    pub group: String,

    /// Confirm the delete, which cannot be undone
    #[arg(long)]
    pub yes: bool,
}

/// The group that was deleted.
#[derive(Debug, Serialize)]
pub struct DeleteGroupReport {
    topic: String,
    group: String,
}

/// Deletes `args.group` of `args.topic`, once `--yes` confirms it.
///
/// # Errors
///
/// [`CliError::DeleteGroupNotConfirmed`] without `--yes`, [`CliError::GroupNotFound`],
/// [`CliError::TopicNotFound`], storage failures.
pub fn run(broker: &Broker, args: &DeleteGroupArgs) -> Result<DeleteGroupReport> {
    super::topic_config(broker, &args.topic)?;
    let stats = broker.stats()?;
    let exists = stats
        .topic(&args.topic)
        .is_some_and(|topic| topic.groups.iter().any(|group| group.name == args.group));
    if !exists {
        return Err(CliError::GroupNotFound {
            topic: args.topic.clone(),
            group: args.group.clone(),
        });
    }
    if !args.yes {
        return Err(CliError::DeleteGroupNotConfirmed {
            topic: args.topic.clone(),
            group: args.group.clone(),
        });
    }
    broker.delete_group(&args.topic, &args.group)?;
    Ok(DeleteGroupReport {
        topic: args.topic.clone(),
        group: args.group.clone(),
    })
}

impl Report for DeleteGroupReport {
    fn text(&self, _width: usize) -> Vec<String> {
        vec![format!(
            "deleted group {} of topic {}; the topic's messages stay, and subscribing with \
             that name creates a new group",
            self.group, self.topic
        )]
    }
}
