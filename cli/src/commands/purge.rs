//! `aqueduct purge`: remove every message of a topic.

use aqueduct::Broker;
use clap::Args;
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::output::Report;
use crate::render::count_of;

/// Arguments of `purge`.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// Topic whose messages are removed; the topic, its configuration and its groups stay
    pub topic: String,

    /// Confirm the purge, which cannot be undone
    #[arg(long)]
    pub yes: bool,
}

/// How many messages a purge removed.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    topic: String,
    removed: u64,
}

/// Removes every message of `args.topic`, once `--yes` confirms it.
///
/// # Errors
///
/// [`CliError::PurgeNotConfirmed`] without `--yes`, [`CliError::TopicNotFound`], storage
/// failures.
pub fn run(broker: &Broker, args: &PurgeArgs) -> Result<PurgeReport> {
    super::topic_config(broker, &args.topic)?;
    if !args.yes {
        let stats = broker.stats()?;
        let messages = stats.topic(&args.topic).map_or(0, |topic| {
            topic
                .partitions
                .iter()
                .map(|p| p.high_watermark.saturating_sub(p.low_watermark))
                .sum()
        });
        return Err(CliError::PurgeNotConfirmed {
            topic: args.topic.clone(),
            messages,
        });
    }
    let removed = broker.purge_topic(&args.topic)?;
    tracing::info!(topic = %args.topic, removed, "purged topic");
    Ok(PurgeReport {
        topic: args.topic.clone(),
        removed,
    })
}

impl Report for PurgeReport {
    fn text(&self, _width: usize) -> Vec<String> {
        vec![format!(
            "removed {} from topic {}; new messages continue at the next offsets",
            count_of(self.removed, "message"),
            self.topic
        )]
    }
}
