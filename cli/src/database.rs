//! Opening the broker database named by `--db`.
//!
//! `Broker::open` creates a database where none exists, so the directory is checked first: a
//! mistyped path must be an error, not a new empty database. sled 0.34 keeps its settings in a
//! file named `conf` and its data in a file named `db` in the directory.

use std::path::Path;

use aqueduct::Broker;

use crate::error::{CliError, Result};

/// Files that sled 0.34 creates in every database directory.
const SLED_FILES: [&str; 2] = ["conf", "db"];

/// Opens the existing broker database in `path`.
///
/// # Errors
///
/// [`CliError::DatabaseNotFound`] or [`CliError::NotADatabase`] when `path` is not a sled
/// database directory, [`CliError::Locked`] when another process has it open, and any error of
/// `Broker::open`.
pub fn open(path: &Path) -> Result<Broker> {
    check_directory(path)?;
    tracing::debug!(path = %path.display(), "opening database");
    Ok(Broker::open(path)?)
}

fn check_directory(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(CliError::DatabaseNotFound {
            path: path.to_path_buf(),
        });
    }
    if !path.is_dir() {
        return Err(CliError::NotADatabase {
            path: path.to_path_buf(),
            reason: "it is not a directory".to_string(),
        });
    }
    let missing: Vec<&str> = SLED_FILES
        .into_iter()
        .filter(|name| !path.join(name).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(CliError::NotADatabase {
            path: path.to_path_buf(),
            reason: format!("it has no sled `{}` file", missing.join("` or `")),
        });
    }
    Ok(())
}
