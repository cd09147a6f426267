//! `aqueduct dead-letters`: messages of a dead-letter topic with where they came from and why
//! they were dead-lettered.

use aqueduct::Broker;
use serde::Serialize;

use super::peek::{self, DeadLetterView, PeekReport, WindowArgs};
use crate::error::Result;
use crate::output::Report;
use crate::render;
use crate::table::{Column, Table};

/// Dead letters read from a dead-letter topic.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct DeadLettersReport(PeekReport);

/// Reads the messages of dead-letter topic `topic` that `window` selects.
///
/// # Errors
///
/// [`CliError::NotDeadLetterTopic`](crate::error::CliError::NotDeadLetterTopic) when no topic
/// names `topic` as its dead-letter topic, and the errors of [`peek::run`].
pub fn run(broker: &Broker, topic: &str, window: &WindowArgs) -> Result<DeadLettersReport> {
    super::require_dead_letter_topic(broker, topic)?;
    Ok(DeadLettersReport(peek::run(broker, topic, window)?))
}

impl Report for DeadLettersReport {
    fn text(&self, width: usize) -> Vec<String> {
        let report = &self.0;
        if report.full {
            return report.text(width);
        }
        let rendered = self.table().render(width);
        let mut lines = rendered.lines;

        if !report.messages.is_empty() {
            lines.push("SOURCE is topic/partition@offset.".into());
            let cut = if rendered.truncated {
                "whole errors, "
            } else {
                ""
            };
            lines.push(format!("Add --full to see {cut}payloads and headers."));
        }
        report.with_footer(lines, false)
    }
}

impl DeadLettersReport {
    /// Builds the table, with a partition column only when the topic has several partitions.
    fn table(&self) -> Table {
        let several_partitions = self.0.next_offsets.len() > 1;
        let mut columns = Vec::new();
        if several_partitions {
            columns.push(Column::right("PARTITION"));
        }
        columns.extend([
            Column::right("OFFSET"),
            Column::left("SOURCE").max(24),
            Column::left("GROUP").max(16),
            Column::right("ATTEMPTS"),
            Column::left("DEAD-LETTERED (UTC)"),
            Column::left("LAST ERROR").flexible(),
        ]);
        let mut table = Table::new(columns);

        for message in &self.0.messages {
            let mut row = Vec::new();
            if several_partitions {
                row.push(message.partition.to_string());
            }
            row.push(message.offset.to_string());
            row.extend(dead_letter_cells(message.dead_letter.as_ref()));
            table.row(row);
        }
        table
    }
}

/// Returns the source, group, attempts, time and error cells of one dead letter.
fn dead_letter_cells(dead_letter: Option<&DeadLetterView>) -> [String; 5] {
    let Some(dead_letter) = dead_letter else {
        return ["-", "-", "-", "-", "no dead-letter metadata"].map(String::from);
    };
    let info = &dead_letter.info;
    [
        format!(
            "{}/{}@{}",
            info.source_topic, info.source_partition, info.source_offset
        ),
        info.group.clone(),
        info.attempts.to_string(),
        render::time_seconds(info.dead_lettered_at_ms),
        render::escape_text(info.last_error.as_bytes(), render::Lines::Single),
    ]
}
