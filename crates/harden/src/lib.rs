//! Host hardening and supply chain: `spinforge doctor` (read-only checks
//! of the host and of SpinForge's own setup), the hardened systemd
//! install, the nftables ruleset, and scans of bundle lockfiles against a
//! local OSV database. The `spinforge` binary only parses flags and prints;
//! every decision lives here. Nothing in this crate talks to the network.
#![forbid(unsafe_code)]

pub mod doctor;
pub mod firewall;
pub mod install;
pub mod scan;
pub mod vulndb;

use std::path::{Path, PathBuf};

/// The crate's one error type. Each variant says whose input is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HardenError {
    /// The operator's or the bundle's file is malformed; `line` is 1-based
    /// (0 when the format has no lines to point at, such as a zip member).
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The operator asked for something that breaks a rule; the message
    /// names the flag or key.
    #[error("{0}")]
    Invalid(String),
}

impl HardenError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> HardenError {
        HardenError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn parse(file: &Path, line: usize, message: impl Into<String>) -> HardenError {
        HardenError::Parse {
            file: file.display().to_string(),
            line,
            message: message.into(),
        }
    }
}

/// `path` (absolute, as on the host) seen through `root`: `/etc/x` under
/// root `/tmp/t` is `/tmp/t/etc/x`. Relative paths are taken as they are.
pub fn under(root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    match path.strip_prefix("/") {
        Ok(rest) => root.join(rest),
        Err(_) => path.to_path_buf(),
    }
}
