//! The generation file, which detects a `db` file that lost durable data.
//!
//! sled 0.34 recovers its log up to the first damaged or missing entry and drops everything
//! after it, as it does for a write torn by a crash. A truncated or partly overwritten `db` file
//! (or a damaged file under `blobs/`) therefore opens as an older or empty database, without an
//! error. To notice that, the broker
//! counts generations. On every open and every clean close it writes a higher generation into
//! the meta tree, fsyncs it, and then writes the same number to the file `aqueduct.generation`
//! beside sled's files. An open that finds a lower generation in the meta tree than in the file
//! fails with [`Error::Corrupt`].
//!
//! The check cannot see damage that spares the latest generation record, nor the loss of data
//! written after it (which a crash may legitimately lose). A directory without the file, as
//! written by earlier builds or after an operator deleted it, is not checked.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{self, Kind};

/// Name of the generation file inside the database directory.
pub(crate) const GENERATION_FILE: &str = "aqueduct.generation";

/// Name of the file written before it atomically replaces [`GENERATION_FILE`].
const PENDING_FILE: &str = "aqueduct.generation.pending";

/// The value stored in the meta tree and in the generation file.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GenerationRecord {
    pub generation: u64,
}

/// Reads the generation recorded in `dir`, or `None` when there is no generation file.
pub(crate) fn read(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(GENERATION_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path, source }),
    };
    let record: GenerationRecord = record::decode(GENERATION_FILE, b"", Kind::Generation, &bytes)?;
    Ok(Some(record.generation))
}

/// Records `generation` in `dir`. The file is written and fsynced under another name and then
/// renamed over the old one, so a crash leaves either the old or the new generation.
pub(crate) fn write(dir: &Path, generation: u64) -> Result<()> {
    let bytes = record::encode(Kind::Generation, &GenerationRecord { generation })?;
    let pending = dir.join(PENDING_FILE);
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };

    let mut file = File::create(&pending).map_err(io_error(&pending))?;
    file.write_all(&bytes).map_err(io_error(&pending))?;
    file.sync_all().map_err(io_error(&pending))?;
    drop(file);

    let target = dir.join(GENERATION_FILE);
    std::fs::rename(&pending, &target).map_err(io_error(&target))?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(dir))
}
