//! Text forms of payloads, keys, times, durations and sizes.
//!
//! Text escapes what a terminal cannot show safely: a byte that is not part of valid UTF-8
//! becomes `\xNN`, a backslash becomes `\\`, and control characters become `\n`, `\r`, `\t`
//! or `\u{NN}`, as do the invisible characters that reorder text, such as bidirectional
//! overrides. The escaping is reversible, so no byte of a payload is hidden.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use clap::ValueEnum;
use serde::Serialize;

/// Display format of payloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// UTF-8 text; invalid bytes as `\xNN`, control characters escaped.
    #[default]
    Text,
    /// JSON (pretty-printed with --full) when the payload parses as JSON, otherwise text.
    Json,
    /// Lowercase hexadecimal.
    Hex,
}

/// Whether escaped text may span lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// Newlines and tabs are escaped too, for one table cell.
    Single,
    /// Newlines and tabs stay as they are.
    Multiple,
}

/// A payload in the requested format, and the format actually used.
#[derive(Clone, Debug)]
pub struct RenderedPayload {
    /// The format used: `Text` when `Json` was requested but the payload is not JSON.
    pub format: PayloadFormat,
    /// The payload as a JSON value: parsed JSON, or a string of text or hex.
    pub value: serde_json::Value,
}

impl RenderedPayload {
    /// Renders `payload` in `format`, falling back from JSON to text.
    pub fn new(payload: &[u8], format: PayloadFormat) -> Self {
        if format == PayloadFormat::Json {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) {
                return RenderedPayload { format, value };
            }
        }
        let (format, text) = match format {
            PayloadFormat::Hex => (PayloadFormat::Hex, hex::encode(payload)),
            PayloadFormat::Text | PayloadFormat::Json => {
                (PayloadFormat::Text, escape_text(payload, Lines::Multiple))
            }
        };
        RenderedPayload {
            format,
            value: serde_json::Value::String(text),
        }
    }

    /// Returns the payload on one line, for a table cell.
    pub fn single_line(&self) -> String {
        match &self.value {
            // Multi-line text differs from single-line text only in raw newlines and tabs.
            serde_json::Value::String(text) if self.format != PayloadFormat::Json => {
                text.replace('\n', "\\n").replace('\t', "\\t")
            }
            value => value.to_string(),
        }
    }

    /// Returns the payload on as many lines as it needs: pretty-printed JSON, text with its
    /// own line breaks, or a hex dump of 16 bytes per line.
    pub fn block(&self, payload: &[u8]) -> String {
        match (&self.value, self.format) {
            (_, PayloadFormat::Hex) => hex_dump(payload),
            (serde_json::Value::String(text), PayloadFormat::Text) => text.clone(),
            (value, _) => serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()),
        }
    }
}

/// Escapes `bytes` as described in the module documentation.
pub fn escape_text(bytes: &[u8], lines: Lines) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut text, c, lines);
        }
        for byte in chunk.invalid() {
            let _ = write!(text, "\\x{byte:02x}");
        }
    }
    text
}

fn push_escaped(text: &mut String, c: char, lines: Lines) {
    match c {
        '\\' => text.push_str("\\\\"),
        '\n' | '\t' if lines == Lines::Multiple => text.push(c),
        '\n' => text.push_str("\\n"),
        '\t' => text.push_str("\\t"),
        '\r' => text.push_str("\\r"),
        c if c.is_control() || reorders_text(c) => {
            let _ = write!(text, "\\u{{{:02x}}}", u32::from(c));
        }
        c => text.push(c),
    }
}

/// Returns whether `c` is an invisible formatting character that changes how a terminal
/// orders or joins the text around it: the bidirectional marks, embeddings, overrides and
/// isolates, the zero-width characters and the byte order mark. Shown raw, they can make a
/// line read differently from its bytes.
fn reorders_text(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Escapes stored text, such as an id, a header name or a dead-letter reason, for one line.
pub fn escape_line(text: &str) -> String {
    escape_text(text.as_bytes(), Lines::Single)
}

/// Formats `payload` like `xxd`: offset, 16 bytes in hex, and the printable ASCII bytes.
pub fn hex_dump(payload: &[u8]) -> String {
    let mut dump = String::new();
    for (index, chunk) in payload.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|byte| format!("{byte:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&byte| {
                if byte.is_ascii_graphic() || byte == b' ' {
                    char::from(byte)
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(dump, "{:08x}  {:<47}  {ascii}", index * 16, hex.join(" "));
    }
    dump.truncate(dump.trim_end_matches('\n').len());
    dump
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, to the second.
pub fn time_seconds(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, to the millisecond.
pub fn time_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Formats a duration compactly: milliseconds below one second, whole seconds above.
pub fn duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{}ms", duration.as_millis());
    }
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

/// Formats `count` followed by `noun`, with an `s` added to `noun` unless `count` is 1.
pub fn count_of(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Formats a byte count with a binary unit (B, KiB, MiB, GiB, TiB).
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_marks_invalid_bytes() {
        assert_eq!(escape_text(b"ok\xff\xfe", Lines::Single), "ok\\xff\\xfe");
    }

    #[test]
    fn escape_doubles_backslash() {
        assert_eq!(escape_text(b"a\\xff", Lines::Single), "a\\\\xff");
    }

    #[test]
    fn escape_single_line_hides_newlines() {
        assert_eq!(escape_text(b"a\nb\tc", Lines::Single), "a\\nb\\tc");
    }

    #[test]
    fn escape_multiple_lines_keeps_newlines() {
        assert_eq!(escape_text(b"a\nb", Lines::Multiple), "a\nb");
    }

    #[test]
    fn escape_bidi_override() {
        assert_eq!(escape_line("abc\u{202e}def"), "abc\\u{202e}def");
    }

    #[test]
    fn escape_control_character() {
        assert_eq!(escape_text(b"\x1b[31m", Lines::Single), "\\u{1b}[31m");
    }

    #[test]
    fn json_payload_parses() {
        let rendered = RenderedPayload::new(br#"{"a": 1}"#, PayloadFormat::Json);
        assert_eq!(rendered.single_line(), r#"{"a":1}"#);
    }

    #[test]
    fn json_falls_back_to_text() {
        let rendered = RenderedPayload::new(b"not json", PayloadFormat::Json);
        assert_eq!(rendered.format, PayloadFormat::Text);
    }

    #[test]
    fn hex_payload_is_lowercase() {
        let rendered = RenderedPayload::new(b"\x01\xab", PayloadFormat::Hex);
        assert_eq!(rendered.single_line(), "01ab");
    }

    #[test]
    fn hex_dump_shows_ascii() {
        let dump = hex_dump(b"hi\x00");
        assert_eq!(dump, format!("00000000  {:<47}  hi.", "68 69 00"));
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn duration_rounds_to_seconds() {
        assert_eq!(duration(Duration::from_millis(192_400)), "3m 12s");
    }
}
