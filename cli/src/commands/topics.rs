//! `aqueduct topics`: every topic with its size, groups and configuration.

use aqueduct::{BacklogLimit, Broker, Retention, TopicStats, WhenFull};
use serde::Serialize;

use crate::error::Result;
use crate::output::Report;
use crate::render;
use crate::table::{Column, Table};

/// Every topic with its statistics and configuration.
#[derive(Debug, Serialize)]
pub struct TopicsReport {
    topics: Vec<TopicView>,
}

#[derive(Debug, Serialize)]
struct TopicView {
    /// Sum over partitions of high minus low watermark.
    retained_messages: u64,
    #[serde(flatten)]
    stats: TopicStats,
}

/// Reads the statistics of every topic.
///
/// # Errors
///
/// Storage failures while reading group records.
pub fn run(broker: &Broker) -> Result<TopicsReport> {
    let stats = broker.stats()?;
    let topics = stats
        .topics
        .into_iter()
        .map(|stats| TopicView {
            retained_messages: stats
                .partitions
                .iter()
                .map(|p| p.high_watermark.saturating_sub(p.low_watermark))
                .sum(),
            stats,
        })
        .collect();
    Ok(TopicsReport { topics })
}

impl Report for TopicsReport {
    fn text(&self, width: usize) -> Vec<String> {
        if self.topics.is_empty() {
            return vec!["no topics in this database".to_string()];
        }
        let sizes = self.size_table().render(width);
        let configs = self.config_table().render(width);
        let mut lines = sizes.lines;
        lines.push(String::new());
        lines.extend(configs.lines);
        if sizes.truncated || configs.truncated {
            lines.push(String::new());
            let hint = "Long names and settings are cut (…); --json shows them whole.";
            lines.push(hint.to_string());
        }
        lines
    }
}

impl TopicsReport {
    fn size_table(&self) -> Table {
        let mut table = Table::new(vec![
            Column::left("TOPIC").max(32),
            Column::right("PARTITIONS"),
            Column::right("MESSAGES"),
            Column::right("SIZE"),
            Column::right("GROUPS"),
            Column::left("DEAD-LETTER TOPIC").flexible(),
        ]);
        for topic in &self.topics {
            let stats = &topic.stats;
            let stored: u64 = stats.partitions.iter().map(|p| p.stored_bytes).sum();
            table.row(vec![
                stats.name.clone(),
                stats.config.partition_count().to_string(),
                topic.retained_messages.to_string(),
                render::bytes(stored),
                stats.groups.len().to_string(),
                stats
                    .config
                    .dead_letter_topic_name()
                    .unwrap_or("-")
                    .to_string(),
            ]);
        }
        table
    }

    fn config_table(&self) -> Table {
        let mut table = Table::new(vec![
            Column::left("TOPIC").max(32),
            Column::left("ACK TIMEOUT"),
            Column::left("MAX DELIVERIES"),
            Column::left("DEDUP WINDOW"),
            Column::left("RETENTION").max(28),
            Column::left("BACKLOG LIMIT").flexible(),
        ]);
        for topic in &self.topics {
            let config = &topic.stats.config;
            let dedup = config.dedup_window_duration();
            table.row(vec![
                topic.stats.name.clone(),
                render::duration(config.ack_timeout_duration()),
                config
                    .max_deliveries_limit()
                    .map_or("unlimited".to_string(), |max| max.to_string()),
                if dedup.is_zero() {
                    "off".to_string()
                } else {
                    render::duration(dedup)
                },
                retention(config.retention_policy()),
                config.backlog().map_or("none".to_string(), backlog_limit),
            ]);
        }
        table
    }
}

fn retention(retention: Retention) -> String {
    match retention {
        Retention::Forever => "forever".to_string(),
        Retention::UntilAcked => "until acked".to_string(),
        Retention::Limits { max_age, max_bytes } => {
            let mut limits = Vec::new();
            if let Some(age) = max_age {
                limits.push(format!("age {}", render::duration(age)));
            }
            if let Some(bytes) = max_bytes {
                limits.push(render::bytes(bytes));
            }
            if limits.is_empty() {
                "forever".to_string()
            } else {
                limits.join(", ")
            }
        }
    }
}

fn backlog_limit(limit: BacklogLimit) -> String {
    let mut parts = Vec::new();
    if let Some(messages) = limit.max_messages {
        parts.push(format!("{messages} messages"));
    }
    if let Some(bytes) = limit.max_bytes {
        parts.push(render::bytes(bytes));
    }
    let action = match limit.when_full {
        WhenFull::Reject => "then reject".to_string(),
        WhenFull::Block { timeout } => format!("then block {}", render::duration(timeout)),
    };
    parts.push(action);
    parts.join(", ")
}
