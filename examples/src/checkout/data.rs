//! Reading the order data: the CSV export of the UCI "Online Retail" data set, one row per
//! invoice line, with every invoice's rows contiguous.
//!
//! Each invoice becomes an [`Invoice`] in file order. An invoice number that starts with `C` is
//! a cancellation. An invoice without a customer whose lines all have price 0 is a stock
//! adjustment (goods found or written off), not a customer order.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The header the file must start with.
pub const HEADER: [&str; 8] = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
];

/// Errors of reading the order data. Each names the file line it found the problem on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened.
    #[error("could not open order data {path}: {source}; pass an existing CSV file")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The CSV reader failed: an I/O error, invalid UTF-8 or a row with a wrong field count.
    #[error("order data line {line}: {source}")]
    Csv {
        /// The file line, from 1.
        line: u64,
        /// The csv crate's error.
        #[source]
        source: csv::Error,
    },

    /// The first line is not the expected header.
    #[error("order data line 1: header is {found:?}, expected {expected:?}")]
    Header {
        /// The header found.
        found: Vec<String>,
        /// The expected header.
        expected: Vec<String>,
    },

    /// A field does not hold a valid value.
    #[error("order data line {line}: invalid {field} {value:?}: {reason}")]
    InvalidField {
        /// The file line, from 1.
        line: u64,
        /// The column name.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// The expected form of the value.
        reason: &'static str,
    },

    /// The rows of an invoice are not contiguous, or disagree on the customer or country.
    #[error("order data line {line}: invoice {invoice}: {reason}")]
    InvalidInvoice {
        /// The file line, from 1.
        line: u64,
        /// The invoice number.
        invoice: String,
        /// The problem.
        reason: &'static str,
    },
}

/// The kind of an invoice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvoiceKind {
    /// A customer order.
    Order,
    /// A cancellation: the customer returned goods and gets a refund.
    Cancellation,
    /// A stock adjustment: no customer and every price 0.
    StockAdjustment,
}

/// One invoice line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The stock code, for example `85123A` or `POST`.
    pub stock_code: String,
    /// The description, which may be empty.
    pub description: String,
    /// Units; negative in cancellations.
    pub quantity: i64,
    /// Price of one unit in pence.
    pub unit_price_pence: i64,
    /// The file line of the row, from 1.
    pub file_line: u64,
}

impl Line {
    /// Returns quantity times unit price, in pence.
    pub fn amount_pence(&self) -> i64 {
        self.quantity * self.unit_price_pence
    }
}

/// One invoice with its lines, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoice {
    /// The invoice number, for example `536365` or `C536379`.
    pub number: String,
    /// The date and time of the first row, `DD/MM/YYYY HH:MM`.
    pub date: String,
    /// The customer id, `None` for guest checkouts and stock adjustments.
    pub customer: Option<u32>,
    /// The delivery country.
    pub country: String,
    /// The lines in file order.
    pub lines: Vec<Line>,
    /// The file line of the first row, from 1.
    pub first_line: u64,
}

impl Invoice {
    /// Returns what the invoice stands for.
    pub fn kind(&self) -> InvoiceKind {
        if self.number.starts_with('C') {
            InvoiceKind::Cancellation
        } else if self.customer.is_none() && self.lines.iter().all(|l| l.unit_price_pence == 0) {
            InvoiceKind::StockAdjustment
        } else {
            InvoiceKind::Order
        }
    }

    /// Returns the sum of the line amounts, in pence; negative for a cancellation.
    pub fn total_pence(&self) -> i64 {
        self.lines.iter().map(Line::amount_pence).sum()
    }
}

/// Reads the invoices of the CSV file at `path`.
///
/// # Errors
///
/// [`DataError::Open`] when the file cannot be opened, and as for [`read`].
pub fn load(path: &Path) -> Result<Vec<Invoice>, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    read(std::io::BufReader::new(file))
}

/// Reads invoices from CSV text with the [`HEADER`] columns.
///
/// # Errors
///
/// [`DataError::Csv`], [`DataError::Header`], [`DataError::InvalidField`] and
/// [`DataError::InvalidInvoice`], each naming the file line.
pub fn read(input: impl Read) -> Result<Vec<Invoice>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(input);
    check_header(&mut reader)?;

    let mut invoices: Vec<Invoice> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        let more = reader
            .read_record(&mut record)
            .map_err(|source| DataError::Csv { line, source })?;
        if !more {
            break;
        }
        let line = record.position().map_or(line, csv::Position::line);
        let row = parse_row(&record, line)?;
        add_row(&mut invoices, &mut seen, row, line)?;
    }
    invoices.iter().try_for_each(check_order_quantities)?;
    Ok(invoices)
}

/// Checks that every line of an order has a quantity of at least 1.
fn check_order_quantities(invoice: &Invoice) -> Result<(), DataError> {
    if invoice.kind() != InvoiceKind::Order {
        return Ok(());
    }
    match invoice.lines.iter().find(|line| line.quantity <= 0) {
        Some(line) => Err(DataError::InvalidInvoice {
            line: line.file_line,
            invoice: invoice.number.clone(),
            reason: "an order line has a quantity of 0 or less; only cancellations and stock \
                     adjustments may",
        }),
        None => Ok(()),
    }
}

fn check_header<R: Read>(reader: &mut csv::Reader<R>) -> Result<(), DataError> {
    let header = reader
        .headers()
        .map_err(|source| DataError::Csv { line: 1, source })?;
    let found: Vec<String> = header.iter().map(str::to_string).collect();
    if found != HEADER {
        return Err(DataError::Header {
            found,
            expected: HEADER.iter().map(|name| name.to_string()).collect(),
        });
    }
    Ok(())
}

/// One parsed CSV row.
struct Row {
    invoice: String,
    date: String,
    customer: Option<u32>,
    country: String,
    line: Line,
}

fn parse_row(record: &csv::StringRecord, line: u64) -> Result<Row, DataError> {
    let field = |index: usize| record.get(index).unwrap_or_default();
    let invalid =
        |field: &'static str, value: &str, reason: &'static str| DataError::InvalidField {
            line,
            field,
            value: value.to_string(),
            reason,
        };

    let invoice = field(0).trim().to_string();
    if invoice.is_empty() || !invoice.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid(
            "InvoiceNo",
            field(0),
            "expected letters and digits",
        ));
    }
    let stock_code = field(1).trim().to_string();
    if stock_code.is_empty() {
        return Err(invalid("StockCode", field(1), "expected a stock code"));
    }
    let quantity = field(3)
        .trim()
        .parse::<i64>()
        .map_err(|_| invalid("Quantity", field(3), "expected a whole number"))?;
    let date = field(4).trim().to_string();
    if !is_date(&date) {
        return Err(invalid(
            "InvoiceDate",
            field(4),
            "expected DD/MM/YYYY HH:MM",
        ));
    }
    let unit_price_pence = parse_pence(field(5)).ok_or_else(|| {
        invalid(
            "UnitPrice",
            field(5),
            "expected pounds with at most 2 decimals",
        )
    })?;
    let customer =
        match field(6).trim() {
            "" => None,
            text => Some(text.parse::<u32>().map_err(|_| {
                invalid("CustomerID", field(6), "expected a whole number or nothing")
            })?),
        };
    let country = field(7).trim().to_string();
    if country.is_empty() {
        return Err(invalid("Country", field(7), "expected a country name"));
    }
    let line = Line {
        stock_code,
        description: field(2).trim().to_string(),
        quantity,
        unit_price_pence,
        file_line: line,
    };
    Ok(Row {
        invoice,
        date,
        customer,
        country,
        line,
    })
}

/// Appends a row to the last invoice or starts a new one.
fn add_row(
    invoices: &mut Vec<Invoice>,
    seen: &mut std::collections::HashSet<String>,
    row: Row,
    line: u64,
) -> Result<(), DataError> {
    let invoice_number = row.invoice.clone();
    let invalid = |reason| DataError::InvalidInvoice {
        line,
        invoice: invoice_number.clone(),
        reason,
    };
    if let Some(last) = invoices
        .last_mut()
        .filter(|last| last.number == row.invoice)
    {
        if last.customer != row.customer {
            return Err(invalid(
                "the row names another customer than the invoice's first row",
            ));
        }
        if last.country != row.country {
            return Err(invalid(
                "the row names another country than the invoice's first row",
            ));
        }
        last.lines.push(row.line);
        return Ok(());
    }
    if !seen.insert(row.invoice.clone()) {
        return Err(invalid(
            "its rows are not contiguous; keep each invoice's rows together",
        ));
    }
    let invoice = Invoice {
        number: row.invoice,
        date: row.date,
        customer: row.customer,
        country: row.country,
        lines: vec![row.line],
        first_line: line,
    };
    invoices.push(invoice);
    Ok(())
}

/// Parses a price in pounds such as `2.55`, `0.8` or `165` into pence.
fn parse_pence(text: &str) -> Option<i64> {
    let text = text.trim();
    let (pounds, decimals) = text.split_once('.').unwrap_or((text, ""));
    if pounds.is_empty() || decimals.len() > 2 {
        return None;
    }
    if !pounds
        .bytes()
        .chain(decimals.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let pounds: i64 = pounds.parse().ok()?;
    let mut pence: i64 = if decimals.is_empty() {
        0
    } else {
        decimals.parse().ok()?
    };
    if decimals.len() == 1 {
        pence *= 10;
    }
    pounds.checked_mul(100)?.checked_add(pence)
}

/// Returns true for `DD/MM/YYYY HH:MM`, digits and separators only.
fn is_date(text: &str) -> bool {
    let shape = b"00/00/0000 00:00";
    text.len() == shape.len()
        && text
            .bytes()
            .zip(shape)
            .all(|(byte, &expected)| match expected {
                b'0' => byte.is_ascii_digit(),
                separator => byte == separator,
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER_LINE: &str =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n";

    fn parse(rows: &str) -> Result<Vec<Invoice>, DataError> {
        read(format!("{HEADER_LINE}{rows}").as_bytes())
    }

    #[test]
    fn rows_group_into_invoices() {
        let invoices = parse(
            "536365,85123A,WHITE HANGING HEART,6,01/12/2010 08:26,2.55,17850,United Kingdom\n\
             536365,71053,\"LANTERN, WHITE\",6,01/12/2010 08:26,3.4,17850,United Kingdom\n\
             C536379,D,Discount,-1,01/12/2010 09:41,27.5,14527,United Kingdom\n",
        )
        .unwrap();
        assert_eq!(invoices.len(), 2);
        assert_eq!(invoices[0].lines.len(), 2);
        assert_eq!(invoices[0].lines[1].description, "LANTERN, WHITE");
        assert_eq!(invoices[0].total_pence(), 6 * 255 + 6 * 340);
        assert_eq!(invoices[1].kind(), InvoiceKind::Cancellation);
        assert_eq!(invoices[1].first_line, 4);
    }

    #[test]
    fn price_zero_without_customer_is_adjustment() {
        let invoices = parse("536414,22139,,56,01/12/2010 11:52,0,,United Kingdom\n").unwrap();
        assert_eq!(invoices[0].kind(), InvoiceKind::StockAdjustment);
    }

    #[test]
    fn bad_quantity_names_line() {
        let error = parse(
            "536365,85123A,HEART,6,01/12/2010 08:26,2.55,17850,United Kingdom\n\
             536365,71053,LANTERN,six,01/12/2010 08:26,3.39,17850,United Kingdom\n",
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                DataError::InvalidField {
                    line: 3,
                    field: "Quantity",
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().starts_with("order data line 3:"),
            "{error}"
        );
    }

    #[test]
    fn bad_price_names_line() {
        let error = parse("536365,85123A,HEART,6,01/12/2010 08:26,2.555,17850,UK\n").unwrap_err();
        assert!(
            matches!(
                error,
                DataError::InvalidField {
                    line: 2,
                    field: "UnitPrice",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn missing_field_names_line() {
        let error = parse("536365,85123A,HEART,6,01/12/2010 08:26,2.55\n").unwrap_err();
        assert!(matches!(error, DataError::Csv { line: 2, .. }), "{error}");
    }

    #[test]
    fn split_invoice_is_rejected() {
        let error = parse(
            "536365,85123A,HEART,6,01/12/2010 08:26,2.55,17850,United Kingdom\n\
             536366,22633,HAND WARMER,6,01/12/2010 08:28,1.85,17850,United Kingdom\n\
             536365,71053,LANTERN,6,01/12/2010 08:26,3.39,17850,United Kingdom\n",
        )
        .unwrap_err();
        assert!(
            matches!(error, DataError::InvalidInvoice { line: 4, .. }),
            "{error}"
        );
    }

    #[test]
    fn negative_order_quantity_names_line() {
        let error = parse(
            "536365,85123A,HEART,6,01/12/2010 08:26,2.55,17850,United Kingdom\n\
             536365,71053,LANTERN,-2,01/12/2010 08:26,3.39,17850,United Kingdom\n",
        )
        .unwrap_err();
        assert!(
            matches!(error, DataError::InvalidInvoice { line: 3, .. }),
            "{error}"
        );
    }

    #[test]
    fn wrong_header_is_rejected() {
        let error = read("Invoice,Code\n1,2\n".as_bytes()).unwrap_err();
        assert!(matches!(error, DataError::Header { .. }), "{error}");
    }

    #[test]
    fn pence_parse() {
        assert_eq!(parse_pence("2.55"), Some(255));
        assert_eq!(parse_pence("0.8"), Some(80));
        assert_eq!(parse_pence("165"), Some(16_500));
        assert_eq!(parse_pence("-1.00"), None);
        assert_eq!(parse_pence("1.234"), None);
    }
}
