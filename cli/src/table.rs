//! Aligned text tables that fit a terminal width.
//!
//! Column widths follow the widest cell, up to each column's maximum. One column may be
//! flexible: it gets the width that the other columns leave, so long payloads and error texts
//! are cut instead of wrapping. A cut cell ends in an ellipsis (`…`). Widths count Unicode
//! scalar values, so East Asian wide characters can still push a line past the width.

/// Spaces between two columns.
const GAP: usize = 2;

/// Narrowest width a flexible column gets, even when that makes the line too long.
const MIN_FLEXIBLE_WIDTH: usize = 12;

/// The ellipsis that marks a cut cell.
pub const ELLIPSIS: char = '…';

/// Alignment of the cells in a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text, padded on the right.
    Left,
    /// Numbers, padded on the left.
    Right,
}

/// One column: header, alignment and width limits.
#[derive(Clone, Debug)]
pub struct Column {
    header: &'static str,
    align: Align,
    max_width: usize,
    flexible: bool,
}

impl Column {
    /// Creates a left-aligned column without a width limit.
    pub fn left(header: &'static str) -> Self {
        Column {
            header,
            align: Align::Left,
            max_width: usize::MAX,
            flexible: false,
        }
    }

    /// Creates a right-aligned column without a width limit.
    pub fn right(header: &'static str) -> Self {
        Column {
            align: Align::Right,
            ..Column::left(header)
        }
    }

    /// Cuts cells longer than `width` characters.
    #[must_use]
    pub fn max(mut self, width: usize) -> Self {
        self.max_width = width;
        self
    }

    /// Gives this column the width that the other columns leave.
    #[must_use]
    pub fn flexible(mut self) -> Self {
        self.flexible = true;
        self
    }
}

/// A table under construction.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
    indent: usize,
}

/// A rendered table.
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    /// The header line and one line per row, without trailing spaces.
    pub lines: Vec<String>,
    /// Whether any cell was cut to fit.
    pub truncated: bool,
}

impl Table {
    /// Creates an empty table with the given columns.
    pub fn new(columns: Vec<Column>) -> Self {
        Table {
            columns,
            rows: Vec::new(),
            indent: 0,
        }
    }

    /// Starts every line with `spaces` spaces.
    #[must_use]
    pub fn indent(mut self, spaces: usize) -> Self {
        self.indent = spaces;
        self
    }

    /// Adds a row; missing cells are empty and extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the header and rows so that lines fit in `width` characters where the
    /// columns' limits allow.
    pub fn render(&self, width: usize) -> Rendered {
        let widths = self.widths(width);
        let mut rendered = Rendered::default();
        let headers: Vec<String> = self.columns.iter().map(|c| c.header.to_string()).collect();
        rendered
            .lines
            .push(self.line(&headers, &widths, &mut false));
        for row in &self.rows {
            let line = self.line(row, &widths, &mut rendered.truncated);
            rendered.lines.push(line);
        }
        rendered
    }

    fn widths(&self, width: usize) -> Vec<usize> {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, column)| {
                let widest = self
                    .rows
                    .iter()
                    .filter_map(|row| row.get(index))
                    .map(|cell| char_count(cell))
                    .max()
                    .unwrap_or(0);
                let header = char_count(column.header);
                widest.min(column.max_width).max(header)
            })
            .collect();

        if let Some(flexible) = self.columns.iter().position(|column| column.flexible) {
            let others: usize = widths
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != flexible)
                .map(|(_, width)| width + GAP)
                .sum();
            let available = width.saturating_sub(self.indent + others);
            let header = char_count(self.columns[flexible].header);
            widths[flexible] = widths[flexible]
                .min(available.max(MIN_FLEXIBLE_WIDTH))
                .max(header);
        }
        widths
    }

    fn line(&self, cells: &[String], widths: &[usize], truncated: &mut bool) -> String {
        let mut line = " ".repeat(self.indent);
        for (index, (column, width)) in self.columns.iter().zip(widths).enumerate() {
            if index > 0 {
                line.push_str(&" ".repeat(GAP));
            }
            let cell = cells.get(index).map_or("", String::as_str);
            let (text, cut) = truncate(cell, *width);
            *truncated |= cut;
            let padding = " ".repeat(width.saturating_sub(char_count(&text)));
            match column.align {
                Align::Left => {
                    line.push_str(&text);
                    line.push_str(&padding);
                }
                Align::Right => {
                    line.push_str(&padding);
                    line.push_str(&text);
                }
            }
        }
        line.truncate(line.trim_end().len());
        line
    }
}

/// Cuts `text` to at most `width` characters, ending a cut text with an ellipsis. Returns the
/// text and whether it was cut.
pub fn truncate(text: &str, width: usize) -> (String, bool) {
    if char_count(text) <= width {
        return (text.to_string(), false);
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push(ELLIPSIS);
    (cut, true)
}

/// Returns the number of Unicode scalar values in `text`.
pub fn char_count(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut table = Table::new(vec![
            Column::right("N"),
            Column::left("NAME").max(6),
            Column::left("TEXT").flexible(),
        ]);
        table.row(vec!["7".into(), "short".into(), "x".repeat(100)]);
        table.row(vec!["12".into(), "much too long".into(), "y".into()]);
        table
    }

    #[test]
    fn render_fits_width() {
        let rendered = sample().render(40);
        for line in &rendered.lines {
            assert!(char_count(line) <= 40, "line too long: {line:?}");
        }
    }

    #[test]
    fn render_reports_truncation() {
        assert!(sample().render(40).truncated);
    }

    #[test]
    fn render_aligns_numbers_right() {
        let rendered = sample().render(40);
        assert!(rendered.lines[1].starts_with(" 7  short "));
    }

    #[test]
    fn render_cuts_capped_column() {
        let rendered = sample().render(40);
        assert!(rendered.lines[2].starts_with("12  much …  y"));
    }

    #[test]
    fn render_keeps_short_table_whole() {
        let mut table = Table::new(vec![Column::left("A"), Column::left("B").flexible()]);
        table.row(vec!["a".into(), "b".into()]);
        let rendered = table.render(80);
        assert!(!rendered.truncated);
        assert_eq!(rendered.lines, vec!["A  B", "a  b"]);
    }

    #[test]
    fn truncate_ends_with_ellipsis() {
        assert_eq!(truncate("abcdef", 4), ("abc…".to_string(), true));
    }
}
