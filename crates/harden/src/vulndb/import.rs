//! `spinforge vulndb import`: OSV records from a folder or a zip,
//! checked one by one, merged into the database by id (the newer
//! `modified` wins) and written atomically.

use super::{load_file, parse_record, Advisory, DB_FILE};
use crate::HardenError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest single OSV record read (bytes); real ones are a few KiB.
const MAX_RECORD_BYTES: u64 = 4 * 1024 * 1024;

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// Records read from the source.
    pub read: usize,
    /// Records kept (new or replacing an older copy).
    pub imported: usize,
    /// Withdrawn records, and records with no npm, crates.io, PyPI or Go
    /// package.
    pub skipped: usize,
    /// Advisories in the database afterwards.
    pub total: usize,
    pub database: PathBuf,
}

/// Reads every `*.json` OSV record in `source` (a folder, searched
/// recursively, or a zip) and merges them into the database of
/// `data_dir`. The first malformed record stops the import and nothing is
/// written; the database file is replaced atomically.
pub fn import(source: &Path, data_dir: &Path) -> Result<ImportReport, HardenError> {
    let mut read = 0;
    let mut skipped = 0;
    let mut fresh: Vec<Advisory> = Vec::new();
    let mut take = |name: &Path, text: &str| -> Result<(), HardenError> {
        read += 1;
        match parse_record(name, text)? {
            Some(advisory) => fresh.push(advisory),
            None => skipped += 1,
        }
        Ok(())
    };
    let meta = std::fs::metadata(source).map_err(|e| HardenError::io(source, e))?;
    if meta.is_dir() {
        for path in json_files(source)? {
            let text = read_capped(&path)?;
            take(&path, &text)?;
        }
    } else {
        let file = std::fs::File::open(source).map_err(|e| HardenError::io(source, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            HardenError::parse(
                source,
                0,
                format!("neither a folder nor a zip archive: {e}"),
            )
        })?;
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| HardenError::parse(source, 0, format!("zip entry {i}: {e}")))?;
            if !entry.is_file() || !entry.name().ends_with(".json") {
                continue;
            }
            let name = source.join(entry.name());
            let mut text = String::new();
            (&mut entry)
                .take(MAX_RECORD_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(|e| HardenError::parse(&name, 0, format!("cannot read: {e}")))?;
            if text.len() as u64 > MAX_RECORD_BYTES {
                return Err(HardenError::parse(&name, 0, "record is larger than 4 MiB"));
            }
            take(&name, &text)?;
        }
    }
    if read == 0 {
        return Err(HardenError::Invalid(format!(
            "{}: no OSV records (*.json) found",
            source.display()
        )));
    }

    let database = data_dir.join(DB_FILE);
    let mut merged: BTreeMap<String, Advisory> = load_file(&database)?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let mut imported = 0;
    for advisory in fresh {
        // Keep the newer copy; RFC 3339 UTC times order as text.
        let newer = merged
            .get(&advisory.id)
            .is_none_or(|old| old.modified <= advisory.modified);
        if newer {
            imported += 1;
            merged.insert(advisory.id.clone(), advisory);
        }
    }
    write_atomically(&database, merged.values())?;
    Ok(ImportReport {
        read,
        imported,
        skipped,
        total: merged.len(),
        database,
    })
}

fn read_capped(path: &Path) -> Result<String, HardenError> {
    let file = std::fs::File::open(path).map_err(|e| HardenError::io(path, e))?;
    let mut text = String::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| HardenError::io(path, e))?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(HardenError::parse(path, 0, "record is larger than 4 MiB"));
    }
    Ok(text)
}

/// `*.json` files under `dir`, sorted, without following symlinks.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, HardenError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| HardenError::io(&d, e))? {
            let entry = entry.map_err(|e| HardenError::io(&d, e))?;
            let kind = entry.file_type().map_err(|e| HardenError::io(&d, e))?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn write_atomically<'a>(
    path: &Path,
    advisories: impl Iterator<Item = &'a Advisory>,
) -> Result<(), HardenError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| HardenError::io(dir, e))?;
    let tmp = path.with_extension("jsonl.tmp");
    let result = (|| -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for advisory in advisories {
            serde_json::to_writer(&mut out, advisory)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(HardenError::io(path, e));
    }
    Ok(())
}
