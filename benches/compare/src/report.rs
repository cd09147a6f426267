//! The results table.

use crate::workload::{Measurement, Mode, Scenario, System};

/// One line of the results table.
pub struct Row {
    /// The scenario that ran.
    pub scenario: Scenario,
    /// The system it ran on.
    pub system: System,
    /// The durability mode.
    pub mode: Mode,
    /// The measured figures.
    pub measurement: Measurement,
}

/// Returns one progress line for a finished row, for stderr.
pub fn progress_line(row: &Row) -> String {
    let measurement = &row.measurement;
    format!(
        "done: {} / {} / {}: {} messages in {:.2} s, {} msg/s",
        row.scenario,
        row.system,
        row.mode,
        measurement.messages,
        measurement.elapsed.as_secs_f64(),
        thousands(measurement.rate().round() as u64)
    )
}

/// Returns the rows as a Markdown table, latencies in microseconds.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "system",
        "durability",
        "messages",
        "msg/s",
        "p50 µs",
        "p99 µs",
        "note",
    ];
    let mut lines = vec![
        format!("| {} |", header.join(" | ")),
        format!("|{}", "---|".repeat(header.len())),
    ];
    for row in rows {
        let measurement = &row.measurement;
        let (p50, p99) = match &measurement.latency {
            Some(histogram) => (
                micros(histogram.value_at_quantile(0.50)),
                micros(histogram.value_at_quantile(0.99)),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let cells = [
            row.scenario.to_string(),
            row.system.to_string(),
            row.mode.to_string(),
            thousands(measurement.messages),
            thousands(measurement.rate().round() as u64),
            p50,
            p99,
            measurement.note.clone(),
        ];
        lines.push(format!("| {} |", cells.join(" | ")));
    }
    lines.join("\n")
}

/// Formats nanoseconds as whole microseconds with thousands separators, or with one decimal
/// below 10 µs.
fn micros(nanos: u64) -> String {
    if nanos < 10_000 {
        format!("{:.1}", nanos as f64 / 1_000.0)
    } else {
        thousands((nanos as f64 / 1_000.0).round() as u64)
    }
}

/// Formats `value` with a comma every three digits.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn micros_keeps_one_decimal_below_ten() {
        assert_eq!(micros(2_345), "2.3");
        assert_eq!(micros(12_345_678), "12,346");
    }
}
