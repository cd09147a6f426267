//! Input checks and the format check of the store's tree.

use super::error::EventStoreError;
use super::record;
use super::types::NewEvent;
use super::MAX_NAME_BYTES;

pub(super) fn check_format(tree_name: &str, tree: &sled::Tree) -> Result<(), EventStoreError> {
    match tree.get(record::FORMAT_KEY)? {
        Some(found) => match found.first() {
            Some(&record::RECORD_FORMAT) => Ok(()),
            Some(&other) => Err(EventStoreError::IncompatibleFormat {
                tree: tree_name.to_string(),
                found: other,
                supported: record::RECORD_FORMAT,
            }),
            None => Err(EventStoreError::Corrupt {
                tree: tree_name.to_string(),
                key: record::hex(record::FORMAT_KEY),
                reason: "the format record is empty".to_string(),
            }),
        },
        None => {
            tree.insert(record::FORMAT_KEY, &[record::RECORD_FORMAT])?;
            Ok(())
        }
    }
}

pub(super) fn validate_store_name(name: &str) -> Result<(), EventStoreError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        Some("use only [A-Za-z0-9._-]")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EventStoreError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(super) fn validate_stream(stream: &str) -> Result<(), EventStoreError> {
    let reason = if stream.is_empty() {
        Some("it is empty")
    } else if stream.len() > MAX_NAME_BYTES {
        Some("it is longer than 255 bytes")
    } else if stream.contains('\0') {
        Some("it contains NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EventStoreError::InvalidStream {
            stream: stream.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(super) fn validate_append(stream: &str, events: &[NewEvent]) -> Result<(), EventStoreError> {
    validate_stream(stream)?;
    if events.is_empty() {
        return Err(EventStoreError::EmptyAppend {
            stream: stream.to_string(),
        });
    }
    for event in events {
        let reason = if event.event_type.is_empty() {
            Some("it is empty")
        } else if event.event_type.len() > MAX_NAME_BYTES {
            Some("it is longer than 255 bytes")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(EventStoreError::InvalidEventType {
                event_type: event.event_type.clone(),
                reason,
            });
        }
    }
    Ok(())
}
