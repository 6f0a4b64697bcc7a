//! Finding the region files in a directory.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::io_err;
use super::{RegionError, VmUuid};

/// Region files in `dir`: entries named `<prefix><uuid>` with a canonical
/// UUID, sorted by UUID. Other entries (and directories) are ignored.
pub fn list_regions(dir: &Path, prefix: &str) -> Result<Vec<(VmUuid, PathBuf)>, RegionError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "list"))? {
        let entry = entry.map_err(io_err(dir, "list"))?;
        let name = entry.file_name();
        let Some(uuid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.parse::<VmUuid>().ok())
        else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        found.push((uuid, entry.path()));
    }
    found.sort();
    Ok(found)
}
