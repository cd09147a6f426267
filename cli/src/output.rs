//! Writing a command's result to stdout, as text for people or as JSON for scripts.

use std::io::{self, Write};

use serde::Serialize;

/// Width used when stdout is not a terminal.
pub const DEFAULT_WIDTH: usize = 80;

/// Bounds on the width taken from the terminal.
const MIN_WIDTH: usize = 60;
const MAX_WIDTH: usize = 200;

/// A command's result, printable as text or as one JSON document.
pub trait Report: Serialize {
    /// Returns the text form, with lines that fit `width` characters where possible.
    fn text(&self, width: usize) -> Vec<String>;
}

/// Returns the terminal's width when stdout is a terminal, and [`DEFAULT_WIDTH`] otherwise.
pub fn terminal_width() -> usize {
    match terminal_size::terminal_size() {
        Some((terminal_size::Width(columns), _)) => {
            usize::from(columns).clamp(MIN_WIDTH, MAX_WIDTH)
        }
        None => DEFAULT_WIDTH,
    }
}

/// Writes `report` to stdout: pretty-printed JSON when `json` is set, text otherwise.
///
/// # Errors
///
/// Failures to write to stdout, such as a closed pipe.
pub fn print(report: &impl Report, json: bool) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, report)?;
        writeln!(stdout)?;
    } else {
        for line in report.text(terminal_width()) {
            writeln!(stdout, "{line}")?;
        }
    }
    stdout.flush()
}
