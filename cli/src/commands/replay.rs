//! `aqueduct replay`: publish dead letters back to their source topics.

use aqueduct::Broker;
use clap::Args;
use serde::Serialize;

use crate::error::Result;
use crate::output::Report;
use crate::render::count_of;

/// Arguments of `replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Dead-letter topic to replay from
    pub topic: String,

    /// Consumer group on the dead-letter topic that tracks replay progress; a later run with
    /// the same group continues where this one stopped
    #[arg(long, short)]
    pub group: String,

    /// Maximum number of dead letters to replay [default: all]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
}

/// How many dead letters were replayed and how many the group has left.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    topic: String,
    group: String,
    replayed: usize,
    /// Dead letters that the group has not replayed yet.
    remaining: u64,
}

/// Replays dead letters from `args.topic` to their source topics.
///
/// # Errors
///
/// [`CliError::NotDeadLetterTopic`](crate::error::CliError::NotDeadLetterTopic), and the
/// broker's errors for subscribing and publishing.
pub fn run(broker: &Broker, args: &ReplayArgs) -> Result<ReplayReport> {
    super::require_dead_letter_topic(broker, &args.topic)?;
    let max = args
        .max
        .map_or(usize::MAX, |max| usize::try_from(max).unwrap_or(usize::MAX));
    let replayed = broker.replay_dead_letters(&args.topic, &args.group, max)?;
    broker.flush()?;
    tracing::info!(topic = %args.topic, group = %args.group, replayed, "replayed dead letters");

    let stats = broker.stats()?;
    let remaining = stats
        .topic(&args.topic)
        .and_then(|topic| topic.group(&args.group))
        .map_or(0, |group| group.lag);
    Ok(ReplayReport {
        topic: args.topic.clone(),
        group: args.group.clone(),
        replayed,
        remaining,
    })
}

impl Report for ReplayReport {
    fn text(&self, _width: usize) -> Vec<String> {
        vec![
            format!(
                "replayed {} from {} to their source topics",
                count_of(self.replayed as u64, "dead letter"),
                self.topic
            ),
            format!(
                "group {} has {} left to replay",
                self.group,
                count_of(self.remaining, "dead letter")
            ),
        ]
    }
}
