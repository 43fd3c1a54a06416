//! Packs a folder into the gzip-compressed tar the deploy API takes.
//! Entries are sorted, so the same folder always gives the same bundle;
//! version-control folders are left out.

use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::path::Path;

const SKIPPED: [&str; 3] = [".git", ".hg", ".svn"];

/// Writes the bundle of `dir` into `out`; returns the number of files.
pub fn pack<W: Write>(dir: &Path, out: W) -> anyhow::Result<u64> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
    builder.follow_symlinks(false);
    let mut files = 0;
    add_dir(&mut builder, dir, Path::new(""), &mut files)?;
    builder.into_inner()?.finish()?.flush()?;
    if files == 0 {
        bail!("{} contains no files", dir.display());
    }
    Ok(files)
}

pub fn pack_to_vec(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    pack(dir, &mut out)?;
    Ok(out)
}

fn add_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
    files: &mut u64,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let path = entry.path();
        let in_bundle = prefix.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            builder.append_dir(&in_bundle, &path)?;
            add_dir(builder, &path, &in_bundle, files)?;
        } else if kind.is_file() || kind.is_symlink() {
            builder
                .append_path_with_name(&path, &in_bundle)
                .with_context(|| format!("cannot add {}", path.display()))?;
            *files += 1;
        }
    }
    Ok(())
}
