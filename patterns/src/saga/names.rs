//! Name and id validation shared by the orchestrator and the choreography helpers.

use super::error::SagaError;

/// Longest accepted orchestrator, saga, step or choreography name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 100;

/// Longest accepted saga id or correlation id, in bytes.
pub(crate) const MAX_ID_LEN: usize = 200;

/// Returns why `name` is not 1 to `max` bytes of `[A-Za-z0-9._-]`, or `None` when it is.
pub(crate) fn name_problem(name: &str, max: usize) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > max {
        Some("it is too long")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("it contains a character outside [A-Za-z0-9._-]")
    } else {
        None
    }
}

pub(crate) fn validate_name(what: &'static str, name: &str, max: usize) -> Result<(), SagaError> {
    match name_problem(name, max) {
        None => Ok(()),
        Some(reason) => Err(SagaError::InvalidName {
            what,
            name: name.to_string(),
            reason,
            max,
        }),
    }
}
