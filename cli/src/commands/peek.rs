//! `aqueduct peek`: stored messages of a topic, read without consuming them.
//!
//! Without `--partition`, every partition is read from `--offset` and the messages are merged
//! by publish time, so the output shows the oldest `--count` messages across the topic.

use std::collections::VecDeque;

use aqueduct::{Broker, DeadLetterInfo, PeekedMessage};
use clap::Args;
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::output::Report;
use crate::render::{self, escape_text, Lines, PayloadFormat, RenderedPayload};
use crate::table::{Column, Table};

/// Most partitions named one by one in the "more messages follow" hint.
const HINT_PARTITIONS: usize = 4;

/// Options that select the messages to read and the way to show them.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Partition to read [default: all partitions, merged by publish time]
    #[arg(long, short)]
    pub partition: Option<u32>,

    /// First offset to read in each partition; offsets that retention removed are skipped
    #[arg(long, short, default_value_t = 0)]
    pub offset: u64,

    /// Maximum number of messages to show (1 to 10000)
    #[arg(
        long,
        short = 'n',
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub count: u64,

    /// Payload display format
    #[arg(long, short, value_enum, default_value_t)]
    pub format: PayloadFormat,

    /// Show every message whole (headers, id and the entire payload) instead of one table row
    #[arg(long)]
    pub full: bool,
}

/// Messages read from a topic, and where reading can continue.
#[derive(Debug, Serialize)]
pub struct PeekReport {
    pub(crate) topic: String,
    /// The requested payload format.
    pub(crate) format: PayloadFormat,
    pub(crate) messages: Vec<MessageView>,
    /// Per partition read: the offset after the last message shown.
    pub(crate) next_offsets: Vec<NextOffset>,
    #[serde(skip)]
    pub(crate) full: bool,
}

/// One message, with its key, headers and payload rendered as text.
#[derive(Debug, Serialize)]
pub struct MessageView {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) timestamp_ms: u64,
    /// Publish time, RFC 3339 in UTC.
    pub(crate) published: String,
    pub(crate) key: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) headers: Vec<HeaderView>,
    pub(crate) deliver_at_ms: Option<u64>,
    pub(crate) dead_letter: Option<DeadLetterView>,
    pub(crate) payload_bytes: usize,
    /// The format used for `payload`: `text` when `json` was requested but did not parse.
    pub(crate) payload_format: PayloadFormat,
    pub(crate) payload: serde_json::Value,
    #[serde(skip)]
    pub(crate) raw_payload: Vec<u8>,
    #[serde(skip)]
    pub(crate) rendered: RenderedPayload,
}

/// A header with its value rendered as text.
#[derive(Debug, Serialize)]
pub struct HeaderView {
    name: String,
    value: String,
}

/// Dead-letter metadata with the time in RFC 3339.
#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    #[serde(flatten)]
    pub(crate) info: DeadLetterInfo,
    /// When the message was dead-lettered, RFC 3339 in UTC.
    pub(crate) dead_lettered_at: String,
}

/// The next offset to read in one partition.
#[derive(Debug, Serialize)]
pub struct NextOffset {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    /// Whether the partition contains messages at or after `offset`.
    pub(crate) more: bool,
}

/// Reads the messages of `topic` that `window` selects.
///
/// # Errors
///
/// [`CliError::TopicNotFound`], [`CliError::PartitionNotFound`], storage failures.
pub fn run(broker: &Broker, topic: &str, window: &WindowArgs) -> Result<PeekReport> {
    let config = super::topic_config(broker, topic)?;
    let count = config.partition_count();
    let partitions: Vec<u32> = match window.partition {
        Some(partition) if partition >= count => {
            return Err(CliError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
                count,
            });
        }
        Some(partition) => vec![partition],
        None => (0..count).collect(),
    };

    let max = usize::try_from(window.count).unwrap_or(usize::MAX);
    let mut queues = Vec::new();
    for &partition in &partitions {
        let fetched = broker.peek(topic, partition, window.offset, max)?;
        queues.push(VecDeque::from(fetched));
    }
    let messages = merge_by_time(&mut queues, max);

    let mut next_offsets = Vec::new();
    for (&partition, unshown) in partitions.iter().zip(&queues) {
        let end = broker.end_offset(topic, partition)?;
        let last_shown = messages
            .iter()
            .filter(|message| message.partition == partition)
            .map(|message| message.offset)
            .max();
        let offset = match (unshown.front(), last_shown) {
            (Some(first_unshown), _) => first_unshown.offset,
            (None, Some(last)) => last + 1,
            (None, None) => window.offset.max(end),
        };
        next_offsets.push(NextOffset {
            partition,
            offset,
            more: offset < end,
        });
    }

    Ok(PeekReport {
        topic: topic.to_string(),
        format: window.format,
        messages: messages
            .iter()
            .map(|m| MessageView::new(m, window.format))
            .collect(),
        next_offsets,
        full: window.full,
    })
}

/// Takes up to `max` messages from the front of the per-partition `queues`, oldest publish time
/// first (ties go to the lower partition). Each partition's messages stay in offset order, so
/// the messages shown from a partition are always a prefix of what was read from it.
fn merge_by_time(queues: &mut [VecDeque<PeekedMessage>], max: usize) -> Vec<PeekedMessage> {
    let mut merged = Vec::new();
    while merged.len() < max {
        let oldest = queues
            .iter()
            .enumerate()
            .filter_map(|(index, queue)| queue.front().map(|m| (m.timestamp_ms, index)))
            .min();
        let Some((_, index)) = oldest else {
            break;
        };
        merged.extend(queues[index].pop_front());
    }
    merged
}

impl MessageView {
    fn new(message: &PeekedMessage, format: PayloadFormat) -> Self {
        let rendered = RenderedPayload::new(&message.payload, format);
        MessageView {
            partition: message.partition,
            offset: message.offset,
            timestamp_ms: message.timestamp_ms,
            published: render::time_millis(message.timestamp_ms),
            key: message
                .key
                .as_deref()
                .map(|key| escape_text(key, Lines::Multiple)),
            id: message.id.clone(),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| HeaderView {
                    name: name.clone(),
                    value: escape_text(value, Lines::Multiple),
                })
                .collect(),
            deliver_at_ms: message.deliver_at_ms,
            dead_letter: message.dead_letter.clone().map(|info| DeadLetterView {
                dead_lettered_at: render::time_millis(info.dead_lettered_at_ms),
                info,
            }),
            payload_bytes: message.payload.len(),
            payload_format: rendered.format,
            payload: rendered.value.clone(),
            raw_payload: message.payload.clone(),
            rendered,
        }
    }

    /// Returns the key on one line, or `-`.
    pub(crate) fn key_line(&self) -> String {
        self.key.as_deref().map_or("-".to_string(), |key| {
            key.replace('\n', "\\n").replace('\t', "\\t")
        })
    }

    /// Returns the payload on one line.
    pub(crate) fn payload_line(&self) -> String {
        self.rendered.single_line()
    }

    /// Returns the lines of the `--full` view: position, metadata, then the whole payload.
    pub(crate) fn full_lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "partition {}, offset {}, published {}",
            self.partition, self.offset, self.published
        )];
        if let Some(key) = &self.key {
            lines.push(format!("  key: {key}"));
        }
        if let Some(id) = &self.id {
            lines.push(format!("  id: {}", render::escape_line(id)));
        }
        if let Some(deliver_at) = self.deliver_at_ms {
            lines.push(format!("  deliver at: {}", render::time_millis(deliver_at)));
        }
        for header in &self.headers {
            let name = render::escape_line(&header.name);
            lines.push(format!("  header {name}: {}", header.value));
        }
        if let Some(dead_letter) = &self.dead_letter {
            lines.extend(dead_letter.lines());
        }
        let format = match self.payload_format {
            PayloadFormat::Text => "text",
            PayloadFormat::Json => "json",
            PayloadFormat::Hex => "hex",
        };
        lines.push(format!(
            "  payload ({} bytes, {format}):",
            self.payload_bytes
        ));
        let block = self.rendered.block(&self.raw_payload);
        lines.extend(block.lines().map(str::to_string));
        lines
    }
}

impl DeadLetterView {
    /// Returns the source, group, attempts, time and error, one per line.
    fn lines(&self) -> Vec<String> {
        let info = &self.info;
        vec![
            format!(
                "  source: topic {}, partition {}, offset {}",
                info.source_topic, info.source_partition, info.source_offset
            ),
            format!("  group: {}, attempts: {}", info.group, info.attempts),
            format!("  dead-lettered at: {}", self.dead_lettered_at),
            format!("  last error: {}", render::escape_line(&info.last_error)),
        ]
    }
}

impl Report for PeekReport {
    fn text(&self, width: usize) -> Vec<String> {
        if self.full {
            return self.full_text();
        }
        let mut table = Table::new(vec![
            Column::right("PARTITION"),
            Column::right("OFFSET"),
            Column::left("PUBLISHED (UTC)"),
            Column::left("KEY").max(16),
            Column::left("PAYLOAD").flexible(),
        ]);
        for message in &self.messages {
            table.row(vec![
                message.partition.to_string(),
                message.offset.to_string(),
                render::time_seconds(message.timestamp_ms),
                message.key_line(),
                message.payload_line(),
            ]);
        }
        let rendered = table.render(width);
        self.with_footer(rendered.lines, rendered.truncated)
    }
}

impl PeekReport {
    fn full_text(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for message in &self.messages {
            lines.extend(message.full_lines());
            lines.push(String::new());
        }
        self.with_footer(lines, false)
    }

    /// Appends the hints: no messages, more messages, cut cells.
    pub(crate) fn with_footer(&self, mut lines: Vec<String>, truncated: bool) -> Vec<String> {
        if self.messages.is_empty() {
            return vec![self.empty_message()];
        }
        if truncated {
            lines.push(
                "Long keys and payloads are cut (…); add --full to see them whole.".to_string(),
            );
        }
        lines.extend(self.more_hint());
        lines
    }

    fn empty_message(&self) -> String {
        match self.next_offsets.as_slice() {
            [only] => format!(
                "no messages in topic {} partition {} from offset {}",
                self.topic, only.partition, only.offset
            ),
            _ => format!("no messages in topic {} from the given offset", self.topic),
        }
    }

    /// Returns where to continue reading when a partition contains more messages.
    fn more_hint(&self) -> Vec<String> {
        let more: Vec<&NextOffset> = self.next_offsets.iter().filter(|next| next.more).collect();
        match more.as_slice() {
            [] => Vec::new(),
            [only] if self.next_offsets.len() == 1 => vec![format!(
                "More messages follow: add --offset {} to continue.",
                only.offset
            )],
            _ => {
                let mut lines = vec![
                    "More messages follow; continue with --partition and --offset:".to_string(),
                ];
                for next in more.iter().take(HINT_PARTITIONS) {
                    lines.push(format!(
                        "  partition {} from offset {}",
                        next.partition, next.offset
                    ));
                }
                let rest = more.len().saturating_sub(HINT_PARTITIONS);
                if rest > 0 {
                    lines.push(format!("  and {rest} more partitions (--json lists them)"));
                }
                lines
            }
        }
    }
}
