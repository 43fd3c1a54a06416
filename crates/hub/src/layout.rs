//! Where the hub keeps files in the data directory, and the start-up sweep
//! that removes what an interrupted deploy left behind.
//!
//! ```text
//! DATA/spinforge.db                      the store
//! DATA/tmp/                              uploads and unpacking; emptied at start
//! DATA/sites/SITE_ID/releases/RELEASE/   immutable, complete releases
//! ```

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use store::{ReleaseId, SiteId};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(data_dir: impl Into<PathBuf>) -> Layout {
        Layout {
            root: data_dir.into(),
        }
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn site_dir(&self, site: SiteId) -> PathBuf {
        self.root.join("sites").join(site.0.to_string())
    }

    pub fn releases_dir(&self, site: SiteId) -> PathBuf {
        self.site_dir(site).join("releases")
    }

    pub fn release_dir(&self, site: SiteId, release: &ReleaseId) -> PathBuf {
        self.releases_dir(site).join(&release.0)
    }

    pub(crate) fn prepare(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.root.join("sites"))?;
        std::fs::create_dir_all(self.tmp_dir())
    }

    /// Deletes everything in `tmp/`, and every release folder the store
    /// does not know: a deploy killed between its rename and its commit
    /// leaves exactly such a folder.
    pub(crate) fn sweep(&self, known: &[(SiteId, ReleaseId)]) -> io::Result<()> {
        for entry in std::fs::read_dir(self.tmp_dir())? {
            remove_any(&entry?.path())?;
        }
        let known: HashSet<(i64, &str)> = known.iter().map(|(s, r)| (s.0, r.0.as_str())).collect();
        let known_sites: HashSet<i64> = known.iter().map(|(s, _)| *s).collect();
        for site_entry in std::fs::read_dir(self.root.join("sites"))? {
            let site_path = site_entry?.path();
            let Some(site_id) = file_name(&site_path).and_then(|n| n.parse::<i64>().ok()) else {
                continue;
            };
            let releases = site_path.join("releases");
            if releases.is_dir() {
                for release_entry in std::fs::read_dir(&releases)? {
                    let path = release_entry?.path();
                    let id = file_name(&path).unwrap_or_default();
                    if !known.contains(&(site_id, id)) {
                        tracing::info!(path = %path.display(), "removing unfinished release");
                        remove_any(&path)?;
                    }
                }
            }
            if !known_sites.contains(&site_id) && is_empty_dir(&releases) {
                remove_any(&site_path)?;
            }
        }
        Ok(())
    }
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none())
}

pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_keeps_known_releases_and_removes_strays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        layout.prepare().expect("prepare");
        let keep = (SiteId(1), ReleaseId("keep".into()));
        let stray = layout.release_dir(SiteId(1), &ReleaseId("stray".into()));
        let gone_site = layout.release_dir(SiteId(2), &ReleaseId("old".into()));
        for d in [
            layout.release_dir(keep.0, &keep.1),
            stray.clone(),
            gone_site.clone(),
        ] {
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("index.html"), "x").expect("write");
        }
        std::fs::write(layout.tmp_dir().join("upload-1"), "partial").expect("write");

        layout.sweep(std::slice::from_ref(&keep)).expect("sweep");

        assert!(layout
            .release_dir(keep.0, &keep.1)
            .join("index.html")
            .exists());
        assert!(!stray.exists());
        assert!(!layout.site_dir(SiteId(2)).exists());
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).expect("tmp").count(), 0);
    }
}
