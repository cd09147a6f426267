//! Validation of topic and group names.

use crate::error::{Error, Result};

/// Longest accepted topic or group name, in bytes (Kafka's limit).
pub const MAX_NAME_LEN: usize = 249;

/// Checks that `name` is 1 to 249 characters from `[A-Za-z0-9._-]`.
pub(crate) fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 249 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "it contains a character outside [A-Za-z0-9._-]"
    } else if name == "." || name == ".." {
        "it is a path component"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        kind,
        name: name.to_string(),
        reason,
    })
}

/// Checks a topic name: 1 to 249 characters from `[A-Za-z0-9._-]`, and not `.` or `..`.
///
/// # Errors
///
/// [`Error::InvalidName`] naming the value and the rule.
///
/// # Examples
///
/// ```
/// assert!(aqueduct::validate_topic_name("orders.v2").is_ok());
/// assert!(aqueduct::validate_topic_name("orders/v2").is_err());
/// ```
pub fn validate_topic_name(name: &str) -> Result<()> {
    validate_name("topic", name)
}

/// Checks a consumer group name by the same rules as a topic name.
///
/// # Errors
///
/// [`Error::InvalidName`] naming the value and the rule.
pub fn validate_group_name(name: &str) -> Result<()> {
    validate_name("group", name)
}
