//! The business rules that make orders fail, each a pure function of the order data, so that
//! every run on the same data reaches the same outcome.

use std::collections::BTreeMap;

use super::data::{Invoice, InvoiceKind};

/// Stock codes of postage and carriage: charged with the order, never stocked.
pub const SERVICE_CODES: [&str; 3] = ["POST", "DOT", "C2"];

/// Stock codes that are not products: manual entries, samples, discounts, bad-debt
/// adjustments, commissions and fees. Gift vouchers (`gift_...`) count too. The inventory
/// service rejects an order with such a line, because such a line cannot be picked from a shelf.
pub const NON_PRODUCT_CODES: [&str; 7] = ["M", "S", "D", "B", "CRUK", "AMAZONFEE", "BANK CHARGES"];

/// The kind of a stock code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeKind {
    /// A product kept in stock.
    Product,
    /// Postage or carriage, charged but not stocked.
    Service,
    /// Not a product; see [`NON_PRODUCT_CODES`].
    NonProduct,
}

/// Returns what `code` stands for.
pub fn code_kind(code: &str) -> CodeKind {
    if SERVICE_CODES.contains(&code) {
        CodeKind::Service
    } else if NON_PRODUCT_CODES.contains(&code) || code.starts_with("gift_") {
        CodeKind::NonProduct
    } else {
        CodeKind::Product
    }
}

/// The rules of one checkout run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Initial stock of each product, in percent of the units that the loaded orders ask
    /// for, rounded up. Below 100 the popular products run out before the last orders.
    pub stock_percent: u64,
    /// The largest order total the payment service charges, in pence.
    pub payment_limit_pence: i64,
    /// Countries the carrier does not deliver to.
    pub no_shipping: Vec<String>,
    /// Customers whose email address bounces, so their confirmation cannot be sent.
    pub bounced_customers: Vec<u32>,
}

impl Default for Rules {
    /// 95 % stock, a limit of 5,000.00 GBP per order, no shipping to Japan and Lithuania, and
    /// no bouncing addresses.
    fn default() -> Self {
        Rules {
            stock_percent: 95,
            payment_limit_pence: 500_000,
            no_shipping: vec!["Japan".to_string(), "Lithuania".to_string()],
            bounced_customers: Vec::new(),
        }
    }
}

impl Rules {
    /// Returns the initial stock of every product that the orders in `invoices` ask for.
    pub fn initial_stock(&self, invoices: &[Invoice]) -> BTreeMap<String, i64> {
        let mut demand: BTreeMap<String, i64> = BTreeMap::new();
        let orders = invoices.iter().filter(|i| i.kind() == InvoiceKind::Order);
        for line in orders.flat_map(|invoice| &invoice.lines) {
            if code_kind(&line.stock_code) == CodeKind::Product {
                *demand.entry(line.stock_code.clone()).or_default() += line.quantity;
            }
        }
        let percent = i64::try_from(self.stock_percent).unwrap_or(i64::MAX);
        demand
            .into_iter()
            .map(|(code, units)| (code, (units * percent + 99) / 100))
            .collect()
    }

    /// Checks an order total against the payment limit.
    ///
    /// # Errors
    ///
    /// The decline reason when the total is above the limit.
    pub fn check_payment(&self, total_pence: i64) -> Result<(), String> {
        if total_pence > self.payment_limit_pence {
            return Err(format!(
                "payment declined: total {} is above the limit of {} per order",
                gbp(total_pence),
                gbp(self.payment_limit_pence)
            ));
        }
        Ok(())
    }

    /// Checks that the carrier delivers to `country`.
    ///
    /// # Errors
    ///
    /// The reason when it does not.
    pub fn check_shipping(&self, country: &str) -> Result<(), String> {
        if self.no_shipping.iter().any(|c| c == country) {
            return Err(format!("no shipping to {country}"));
        }
        Ok(())
    }

    /// Checks that a confirmation to `customer` can be delivered.
    ///
    /// # Errors
    ///
    /// The reason when the customer's address bounces.
    pub fn check_email(&self, customer: Option<u32>) -> Result<(), String> {
        match customer {
            Some(id) if self.bounced_customers.contains(&id) => Err(format!(
                "confirmation bounced: the address of customer {id} is unknown"
            )),
            _ => Ok(()),
        }
    }

    /// Returns one line per rule, for printing at the start of a run.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "stock: each product starts with {} % of the units the orders ask for, rounded \
                 up, so popular products run out",
                self.stock_percent
            ),
            format!(
                "stock codes {} are postage and carriage: charged, not stocked",
                SERVICE_CODES.join(", ")
            ),
            format!(
                "stock codes {} and gift vouchers are not products: the order is rejected",
                NON_PRODUCT_CODES.join(", ")
            ),
            format!(
                "payment: orders above {} are declined",
                gbp(self.payment_limit_pence)
            ),
            format!("shipping: no delivery to {}", self.no_shipping.join(" or ")),
        ];
        if !self.bounced_customers.is_empty() {
            let ids: Vec<String> = self.bounced_customers.iter().map(u32::to_string).collect();
            lines.push(format!(
                "email: the addresses of customers {} bounce",
                ids.join(", ")
            ));
        }
        lines
    }
}

/// Formats pence as pounds, for example `5,000.00 GBP`.
pub fn gbp(pence: i64) -> String {
    let sign = if pence < 0 { "-" } else { "" };
    let pence = pence.unsigned_abs();
    format!("{sign}{}.{:02} GBP", thousands(pence / 100), pence % 100)
}

/// Formats a count with commas between groups of three digits, for example `1,264`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbp_groups_thousands() {
        assert_eq!(gbp(500_000), "5,000.00 GBP");
        assert_eq!(gbp(123_456_789), "1,234,567.89 GBP");
        assert_eq!(thousands(1_264), "1,264");
        assert_eq!(thousands(999), "999");
        assert_eq!(gbp(-5), "-0.05 GBP");
    }

    #[test]
    fn code_kinds() {
        assert_eq!(code_kind("85123A"), CodeKind::Product);
        assert_eq!(code_kind("POST"), CodeKind::Service);
        assert_eq!(code_kind("M"), CodeKind::NonProduct);
        assert_eq!(code_kind("gift_0001_40"), CodeKind::NonProduct);
    }

    #[test]
    fn payment_limit_is_inclusive() {
        let rules = Rules::default();
        assert!(rules.check_payment(500_000).is_ok());
        assert!(rules.check_payment(500_001).is_err());
    }
}
