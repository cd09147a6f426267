//! `aqueduct groups`: consumer groups with lag per partition, in-flight deliveries, parked keys,
//! the age of the oldest unacknowledged message and the broker's counters.

use std::time::Duration;

use aqueduct::{Broker, GroupStats, OrderingMode};
use serde::Serialize;

use crate::error::Result;
use crate::output::Report;
use crate::render;
use crate::table::{truncate, Column, Table};

/// Every group of one topic or of all topics.
#[derive(Debug, Serialize)]
pub struct GroupsReport {
    /// The topic asked for, or `None` for all topics.
    topic: Option<String>,
    groups: Vec<GroupView>,
}

#[derive(Debug, Serialize)]
struct GroupView {
    topic: String,
    #[serde(flatten)]
    stats: GroupStats,
    /// High watermark of each partition, in partition order.
    #[serde(skip)]
    high_watermarks: Vec<u64>,
}

/// Reads the groups of `topic`, or of every topic when `topic` is `None`.
///
/// # Errors
///
/// [`CliError::TopicNotFound`](crate::error::CliError::TopicNotFound) for an unknown topic,
/// storage failures.
pub fn run(broker: &Broker, topic: Option<&str>) -> Result<GroupsReport> {
    if let Some(topic) = topic {
        super::topic_config(broker, topic)?;
    }
    let stats = broker.stats()?;
    let mut groups = Vec::new();
    for topic_stats in stats.topics {
        if topic.is_some_and(|topic| topic != topic_stats.name) {
            continue;
        }
        let high_watermarks: Vec<u64> = topic_stats
            .partitions
            .iter()
            .map(|partition| partition.high_watermark)
            .collect();
        for group in topic_stats.groups {
            groups.push(GroupView {
                topic: topic_stats.name.clone(),
                stats: group,
                high_watermarks: high_watermarks.clone(),
            });
        }
    }
    Ok(GroupsReport {
        topic: topic.map(str::to_string),
        groups,
    })
}

impl Report for GroupsReport {
    fn text(&self, width: usize) -> Vec<String> {
        if self.groups.is_empty() {
            return vec![match &self.topic {
                Some(topic) => format!("no consumer groups on topic {topic}"),
                None => "no consumer groups in this database".to_string(),
            }];
        }
        let summary = self.summary_table().render(width);
        let mut truncated = summary.truncated;
        let mut lines = summary.lines;
        for group in &self.groups {
            lines.push(String::new());
            lines.extend(group.heading(width));
            let partitions = group.partition_table().render(width);
            truncated |= partitions.truncated;
            lines.extend(partitions.lines);
        }
        lines.push(String::new());
        lines.push(
            "Note: this command opened the database itself, so in-flight counts and counters"
                .into(),
        );
        lines.push("read 0. An application reads its live values with Broker::stats().".into());
        if truncated {
            lines.push("Long names are cut (…); --json shows them whole.".to_string());
        }
        lines
    }
}

impl GroupsReport {
    fn summary_table(&self) -> Table {
        let mut table = Table::new(vec![
            Column::left("TOPIC").max(24),
            Column::left("GROUP").max(24),
            Column::left("ORDERING"),
            Column::right("LAG"),
            Column::right("IN FLIGHT"),
            Column::right("PARKED KEYS"),
            Column::left("OLDEST UNACKED").flexible(),
        ]);
        for group in &self.groups {
            let stats = &group.stats;
            let oldest = stats.oldest_unacked_age_ms.map_or("-".to_string(), |ms| {
                render::duration(Duration::from_millis(ms))
            });
            table.row(vec![
                group.topic.clone(),
                stats.name.clone(),
                ordering(stats.ordering).to_string(),
                stats.lag.to_string(),
                stats.in_flight.to_string(),
                stats.parked_keys.to_string(),
                oldest,
            ]);
        }
        table
    }
}

impl GroupView {
    /// Returns the group's name and counters, on two lines.
    fn heading(&self, width: usize) -> [String; 2] {
        let stats = &self.stats;
        let name = truncate(&format!("{} / {}", self.topic, stats.name), width).0;
        let counters = format!(
            "  redelivered {}, dead-lettered {}, removed unacknowledged {}",
            stats.redeliveries, stats.dead_letters, stats.unconsumed_removals,
        );
        [name, counters]
    }

    fn partition_table(&self) -> Table {
        let mut table = Table::new(vec![
            Column::right("PARTITION"),
            Column::right("COMMITTED"),
            Column::right("HIGH WATERMARK"),
            Column::right("LAG"),
            Column::right("IN FLIGHT"),
        ])
        .indent(2);
        for partition in &self.stats.partitions {
            let high = self
                .high_watermarks
                .get(partition.partition as usize)
                .map_or("-".to_string(), u64::to_string);
            table.row(vec![
                partition.partition.to_string(),
                partition.committed.to_string(),
                high,
                partition.lag.to_string(),
                partition.in_flight.to_string(),
            ]);
        }
        table
    }
}

fn ordering(ordering: Option<OrderingMode>) -> &'static str {
    match ordering {
        Some(OrderingMode::Unordered) => "unordered",
        Some(OrderingMode::PerKey) => "per key",
        Some(OrderingMode::PerPartition) => "per partition",
        None => "unknown",
    }
}
