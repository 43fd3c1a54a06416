//! Safe extraction of uploaded deploy bundles (gzip-compressed tar archives).
//!
//! This module owns the rules for what a bundle may contain and writes every
//! file itself with `std::fs`; it never calls `tar`'s own unpacking. It does
//! not choose, prepare or clean up the destination: on error the caller
//! deletes it. Unix only (modes and symlinks are written with `std::os::unix`).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tar::{Archive, Entry, EntryType};
use tracing::debug;

const MIB: u64 = 1024 * 1024;

/// Below this many decompressed bytes the ratio rule is not enforced: tiny
/// bundles compress absurdly well and are harmless.
const RATIO_GRACE_BYTES: u64 = MIB;

/// Most bytes of headers, extension headers, padding and skipped data the
/// archive may hold between two entries (or after the last one). Real
/// archives need a few KiB; the `tar` crate reads PAX and GNU long-name
/// headers into memory, so this is also what bounds that allocation.
const MAX_METADATA_PER_ENTRY: u64 = MIB;

/// Longest relative path (after normalisation) an entry may have, in bytes.
/// Keeps `dest` plus the entry comfortably below the kernel's `PATH_MAX`, so
/// an over-long name is reported as the client's fault rather than as an
/// I/O error of ours.
const MAX_PATH_BYTES: usize = 1024;

/// Longest single path component, in bytes (`NAME_MAX` on Linux).
const MAX_COMPONENT_BYTES: usize = 255;

const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Longest entry path quoted back in an error message, in characters.
const MAX_SHOWN_CHARS: usize = 200;

/// Caps applied while a bundle is unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLimits {
    /// Most bytes of file content the bundle may unpack to (default 512 MiB).
    pub max_unpacked_bytes: u64,
    /// Most non-directory entries (default 20 000). Directories, explicit or
    /// implied by a file's path, are capped separately at the same number.
    pub max_files: u64,
    /// Most decompressed bytes per compressed byte (default 200); enforced
    /// only once more than 1 MiB has been decompressed.
    pub max_ratio: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 512 * MIB,
            max_files: 20_000,
            max_ratio: 200,
        }
    }
}

/// What a successful [`unpack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Bytes of file content written, hard-link copies included.
    pub size_bytes: u64,
    /// Non-directory entries written: regular files, hard-link copies and
    /// symlinks (the same count [`BundleLimits::max_files`] caps).
    pub file_count: u64,
}

/// Why a bundle could not be unpacked.
///
/// Every variant except [`BundleError::Io`] is the client's fault: the
/// uploaded bytes break a rule, and retrying the same upload cannot succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Client: the upload does not start with the gzip magic bytes.
    #[error("bundle is not gzip-compressed")]
    NotGzip,
    /// Client: the gzip stream is damaged (bad deflate data or checksum).
    #[error("bundle's gzip stream is corrupt: {detail}")]
    CorruptGzip { detail: String },
    /// Client: the decompressed bytes do not start with a tar header.
    #[error("bundle is not a tar archive")]
    NotTar,
    /// Client: the tar stream is damaged after at least one good entry.
    #[error("bundle's tar stream is corrupt: {detail}")]
    CorruptTar { detail: String },
    /// Client: the gzip or tar stream ends early.
    #[error("bundle is truncated")]
    Truncated,
    /// Client: an entry's path starts at `/`.
    #[error("entry `{path}` has an absolute path")]
    AbsolutePath { path: String },
    /// Client: an entry's path has a `..` component.
    #[error("entry `{path}` escapes the bundle")]
    PathEscapes { path: String },
    /// Client: an entry's path is empty, holds a NUL byte, or is too long.
    #[error("entry `{path}` has an unusable path: {reason}")]
    UnusablePath { path: String, reason: &'static str },
    /// Client: two entries have the same path.
    #[error("entry `{path}` appears more than once")]
    Duplicate { path: String },
    /// Client: an entry needs a path that an earlier entry of another kind
    /// holds (a file where a directory is needed, or the reverse).
    #[error("entry `{path}` collides with an earlier entry of another kind")]
    Collides { path: String },
    /// Client: an entry would be written below a symlink from the bundle.
    #[error("entry `{path}` would be written through the symlink `{link}`")]
    ThroughSymlink { path: String, link: String },
    /// Client: a symlink's target is absolute, escapes, or cannot be checked.
    #[error("symlink `{path}` -> `{target}` {reason}")]
    UnsafeSymlink {
        path: String,
        target: String,
        reason: &'static str,
    },
    /// Client: a hard link does not name a file extracted before it.
    #[error("hard link `{path}` -> `{target}` {reason}")]
    UnsafeHardLink {
        path: String,
        target: String,
        reason: &'static str,
    },
    /// Client: a device, FIFO, sparse file or unknown entry type.
    #[error("entry `{path}` is of type {kind}, which bundles may not contain")]
    UnsupportedType { path: String, kind: String },
    /// Client: file content exceeds [`BundleLimits::max_unpacked_bytes`].
    #[error("bundle unpacks to more than {limit} bytes (stopped at entry `{path}`)")]
    TooLarge { limit: u64, path: String },
    /// Client: more non-directory entries than [`BundleLimits::max_files`].
    #[error("bundle has more than {limit} files (stopped at entry `{path}`)")]
    TooManyFiles { limit: u64, path: String },
    /// Client: more directories than [`BundleLimits::max_files`].
    #[error("bundle has more than {limit} directories (stopped at entry `{path}`)")]
    TooManyDirectories { limit: u64, path: String },
    /// Client: the stream expands beyond [`BundleLimits::max_ratio`].
    #[error(
        "bundle expands to more than {limit} times its compressed size; \
         refusing a likely compression bomb"
    )]
    CompressionBomb { limit: u64 },
    /// Client: too many bytes of headers, padding or skipped data between two
    /// entries (for instance a huge PAX header).
    #[error("bundle has more than {limit} bytes of headers or padding around one entry")]
    OversizedMetadata { limit: u64 },
    /// Client: the bundle holds no regular file at all.
    #[error("bundle contains no files")]
    NoFiles,
    /// Our side: reading the stored upload or writing to `dest` failed.
    /// `path` is empty when the error came through `From<io::Error>`.
    #[error("could not {action}{}: {source}", at(path))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BundleError {
    /// Returns true if and only if the uploaded bytes caused this error, so
    /// the client should be told what to fix rather than that we failed.
    pub fn is_client_fault(&self) -> bool {
        !matches!(self, BundleError::Io { .. })
    }
}

/// For the caller's own I/O around [`unpack`] (creating `dest`, say): always
/// our side.
impl From<io::Error> for BundleError {
    fn from(source: io::Error) -> Self {
        BundleError::Io {
            action: "prepare the bundle",
            path: PathBuf::new(),
            source,
        }
    }
}

fn at(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" {}", path.display())
    }
}

/// Unpacks the gzip-compressed tar at `archive` into `dest` (an existing,
/// empty directory).
///
/// Only regular files, directories, symlinks that stay inside the bundle and
/// hard links to files extracted earlier (written as copies) are accepted.
/// Files are written `0644`, or `0755` if the header has any execute bit;
/// directories `0755`; ownership and timestamps are not restored. Caps are
/// checked while streaming, so a compression bomb stops early.
///
/// On error `dest` is left partly filled; the caller must delete it.
pub fn unpack(archive: &Path, dest: &Path, limits: &BundleLimits) -> Result<Unpacked, BundleError> {
    let result = unpack_checked(archive, dest, limits);
    match &result {
        Ok(unpacked) => debug!(
            files = unpacked.file_count,
            bytes = unpacked.size_bytes,
            "bundle unpacked"
        ),
        Err(error) => debug!(%error, client_fault = error.is_client_fault(), "bundle refused"),
    }
    result
}

fn unpack_checked(
    archive: &Path,
    dest: &Path,
    limits: &BundleLimits,
) -> Result<Unpacked, BundleError> {
    let reading = |source| BundleError::Io {
        action: "read the bundle",
        path: archive.to_path_buf(),
        source,
    };
    let mut file = File::open(archive).map_err(reading)?;
    let compressed_bytes = file.metadata().map_err(reading)?.len();

    let mut magic = [0u8; 2];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == [0x1f, 0x8b] => {}
        Ok(()) => return Err(BundleError::NotGzip),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(BundleError::NotGzip),
        Err(e) => return Err(reading(e)),
    }
    file.seek(SeekFrom::Start(0)).map_err(reading)?;

    let gauge = Gauge::new(compressed_bytes, limits.max_ratio);
    let source = Source {
        file,
        gauge: &gauge,
    };
    let stream = Metered {
        inner: GzDecoder::new(source),
        gauge: &gauge,
    };
    let mut tar = Archive::new(stream);
    let mut extractor = Extractor::new(dest, limits, compressed_bytes);
    let entries = tar.entries().map_err(|e| gauge.classify(e, archive))?;
    for entry in entries {
        let entry = entry.map_err(|e| gauge.classify(e, archive))?;
        gauge.entry_started();
        extractor.add(entry, &gauge, archive)?;
    }

    // Read to the end of the gzip stream so its checksum is verified and a
    // cut-off upload is noticed even when the tar part happened to end
    // cleanly; trailing padding counts against MAX_METADATA_PER_ENTRY.
    gauge.entry_started();
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(|e| gauge.classify(e, archive))?;

    extractor.finish()
}

/// Shared bookkeeping for the reader stack `File -> GzDecoder -> tar`.
///
/// The readers record *why* a read failed here, because by the time the
/// error surfaces from the `tar` crate it is an anonymous `io::Error`.
struct Gauge {
    compressed_bytes: u64,
    max_ratio: u64,
    decompressed: Cell<u64>,
    /// Decompressed bytes since the current entry started, outside its data.
    metadata: Cell<u64>,
    /// True while [`Extractor`] is copying an entry's data.
    in_data: Cell<bool>,
    first_entry_seen: Cell<bool>,
    decoder_at_eof: Cell<bool>,
    fault: RefCell<Option<Fault>>,
}

enum Fault {
    /// Reading the stored upload failed: our side.
    Source(io::Error),
    /// The gzip decoder refused the stream: the client's bytes.
    Decoder(io::Error),
    Bomb,
    OversizedMetadata,
}

impl Gauge {
    fn new(compressed_bytes: u64, max_ratio: u64) -> Self {
        Self {
            compressed_bytes,
            max_ratio,
            decompressed: Cell::new(0),
            metadata: Cell::new(0),
            in_data: Cell::new(false),
            first_entry_seen: Cell::new(false),
            decoder_at_eof: Cell::new(false),
            fault: RefCell::new(None),
        }
    }

    fn entry_started(&self) {
        self.first_entry_seen.set(true);
        self.metadata.set(0);
    }

    /// Records the first fault only: later readers see the same failure
    /// bubbling up and must not overwrite its cause.
    fn record(&self, fault: Fault) {
        let mut slot = self.fault.borrow_mut();
        if slot.is_none() {
            *slot = Some(fault);
        }
    }

    fn has_fault(&self) -> bool {
        self.fault.borrow().is_some()
    }

    /// Counts `n` freshly decompressed bytes and trips a cap if one is
    /// crossed.
    fn count(&self, n: u64) -> Result<(), Fault> {
        let total = self.decompressed.get().saturating_add(n);
        self.decompressed.set(total);
        if total > RATIO_GRACE_BYTES && total > self.compressed_bytes.saturating_mul(self.max_ratio)
        {
            return Err(Fault::Bomb);
        }
        if !self.in_data.get() {
            let metadata = self.metadata.get().saturating_add(n);
            self.metadata.set(metadata);
            if metadata > MAX_METADATA_PER_ENTRY {
                return Err(Fault::OversizedMetadata);
            }
        }
        Ok(())
    }

    /// Turns an error that surfaced from the reader stack into the rule it
    /// broke.
    fn classify(&self, error: io::Error, archive: &Path) -> BundleError {
        match self.fault.borrow_mut().take() {
            Some(Fault::Source(source)) => BundleError::Io {
                action: "read the bundle",
                path: archive.to_path_buf(),
                source,
            },
            Some(Fault::Decoder(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                BundleError::Truncated
            }
            Some(Fault::Decoder(e)) => BundleError::CorruptGzip {
                detail: e.to_string(),
            },
            Some(Fault::Bomb) => BundleError::CompressionBomb {
                limit: self.max_ratio,
            },
            Some(Fault::OversizedMetadata) => BundleError::OversizedMetadata {
                limit: MAX_METADATA_PER_ENTRY,
            },
            None if !self.first_entry_seen.get() => BundleError::NotTar,
            None if self.decoder_at_eof.get() => BundleError::Truncated,
            None => BundleError::CorruptTar {
                detail: error.to_string(),
            },
        }
    }
}

/// The stored upload; remembers failures of its own so they are reported as
/// ours and not blamed on the client.
struct Source<'g> {
    file: File,
    gauge: &'g Gauge,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.file.read(buf);
        if let Err(e) = &result {
            if e.kind() != io::ErrorKind::Interrupted {
                self.gauge
                    .record(Fault::Source(io::Error::new(e.kind(), e.to_string())));
            }
        }
        result
    }
}

/// The decompressed tar stream, counted against the caps as it is produced.
struct Metered<'g> {
    inner: GzDecoder<Source<'g>>,
    gauge: &'g Gauge,
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.gauge.has_fault() {
            return Err(io::Error::other("bundle stream already failed"));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.gauge
                    .record(Fault::Decoder(io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        if n == 0 && !buf.is_empty() {
            self.gauge.decoder_at_eof.set(true);
        }
        if let Err(fault) = self.gauge.count(n as u64) {
            self.gauge.record(fault);
            return Err(io::Error::other("bundle cap exceeded"));
        }
        Ok(n)
    }
}

/// Writes accepted entries below `dest` and keeps the per-bundle tallies.
struct Extractor<'a> {
    dest: &'a Path,
    limits: &'a BundleLimits,
    /// Every entry path seen so far, relative and normalised.
    seen: HashSet<PathBuf>,
    /// Regular files written so far: the only valid hard-link targets.
    regular_files: HashSet<PathBuf>,
    unpacked_bytes: u64,
    file_count: u64,
    dir_count: u64,
    /// Size of the upload: bytes written, hard-link copies included, are
    /// held to the ratio rule against it too.
    compressed_bytes: u64,
}

impl<'a> Extractor<'a> {
    fn new(dest: &'a Path, limits: &'a BundleLimits, compressed_bytes: u64) -> Self {
        Self {
            dest,
            limits,
            compressed_bytes,
            seen: HashSet::new(),
            regular_files: HashSet::new(),
            unpacked_bytes: 0,
            file_count: 0,
            dir_count: 0,
        }
    }

    fn add<R: Read>(
        &mut self,
        mut entry: Entry<'_, R>,
        gauge: &Gauge,
        archive: &Path,
    ) -> Result<(), BundleError> {
        let kind = entry.header().entry_type();
        // A PAX global header (`git archive` writes one) carries no file.
        if kind.is_pax_global_extensions() {
            return Ok(());
        }

        let raw_path = entry.path_bytes().into_owned();
        let shown = show(&raw_path);
        let components = normal_components(&raw_path).map_err(|problem| match problem {
            PathProblem::Absolute => BundleError::AbsolutePath {
                path: shown.clone(),
            },
            PathProblem::Escapes => BundleError::PathEscapes {
                path: shown.clone(),
            },
            PathProblem::Unusable(reason) => BundleError::UnusablePath {
                path: shown.clone(),
                reason,
            },
        })?;
        if components.is_empty() {
            // `tar -C site .` starts with `./`: the bundle root, which exists.
            if kind.is_dir() {
                return Ok(());
            }
            return Err(BundleError::UnusablePath {
                path: shown,
                reason: "it is empty once `.` and `/` are removed",
            });
        }
        let rel = join(&components);

        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            other => {
                return Err(BundleError::UnsupportedType {
                    path: shown,
                    kind: describe(other),
                })
            }
        }
        if !self.seen.insert(rel.clone()) {
            return Err(BundleError::Duplicate { path: shown });
        }

        match kind {
            EntryType::Directory => self.make_dir(&rel, &shown),
            EntryType::Symlink => self.make_symlink(&entry, &components, &rel, &shown),
            EntryType::Link => self.copy_hard_link(&entry, &rel, &shown),
            _ => {
                let mode = match entry.header().mode() {
                    Ok(bits) if bits & 0o111 != 0 => 0o755,
                    _ => 0o644,
                };
                let declared = entry.size();
                let mut out = self.create_file(&rel, &shown, mode)?;
                gauge.in_data.set(true);
                let copied = self.copy_capped(&mut entry, &mut out, &rel, &shown, |e| {
                    gauge.classify(e, archive)
                });
                gauge.in_data.set(false);
                if copied? != declared {
                    return Err(BundleError::Truncated);
                }
                self.regular_files.insert(rel);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<Unpacked, BundleError> {
        if self.regular_files.is_empty() {
            return Err(BundleError::NoFiles);
        }
        Ok(Unpacked {
            size_bytes: self.unpacked_bytes,
            file_count: self.file_count,
        })
    }

    fn make_dir(&mut self, rel: &Path, shown: &str) -> Result<(), BundleError> {
        let full = self.prepare_parents(rel, shown)?;
        match fs::symlink_metadata(&full) {
            // Already created as the parent of an earlier entry.
            Ok(meta) if meta.file_type().is_dir() => Ok(()),
            Ok(_) => Err(BundleError::Collides {
                path: shown.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.create_dir(&full, shown),
            Err(source) => Err(write_error("inspect", &full, source)),
        }
    }

    fn make_symlink<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
        components: &[&[u8]],
        rel: &Path,
        shown: &str,
    ) -> Result<(), BundleError> {
        let raw_target = entry.link_name_bytes().unwrap_or_default().into_owned();
        let target = symlink_target(components, &raw_target).map_err(|reason| {
            BundleError::UnsafeSymlink {
                path: shown.to_owned(),
                target: show(&raw_target),
                reason,
            }
        })?;

        self.count_file(shown)?;
        let full = self.prepare_parents(rel, shown)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                BundleError::Collides {
                    path: shown.to_owned(),
                }
            } else {
                write_error("create symlink", &full, e)
            }
        })
    }

    fn copy_hard_link<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
        rel: &Path,
        shown: &str,
    ) -> Result<(), BundleError> {
        let raw_target = entry.link_name_bytes().unwrap_or_default().into_owned();
        let refuse = |reason| BundleError::UnsafeHardLink {
            path: shown.to_owned(),
            target: show(&raw_target),
            reason,
        };
        let target = match normal_components(&raw_target) {
            Ok(components) if !components.is_empty() => join(&components),
            Ok(_) => return Err(refuse("has an empty target")),
            Err(PathProblem::Absolute) => return Err(refuse("has an absolute target")),
            Err(PathProblem::Escapes) => return Err(refuse("escapes the bundle")),
            Err(PathProblem::Unusable(reason)) => return Err(refuse(reason)),
        };
        if !self.regular_files.contains(&target) {
            return Err(refuse("does not name a regular file extracted before it"));
        }

        // The target's parents were checked when it was written and a
        // directory is never replaced, so this path stays inside `dest`.
        let source_path = self.dest.join(&target);
        let mut source =
            File::open(&source_path).map_err(|e| write_error("open", &source_path, e))?;
        let mode = source
            .metadata()
            .map_err(|e| write_error("inspect", &source_path, e))?
            .permissions()
            .mode()
            & 0o777;
        let mut out = self.create_file(rel, shown, mode)?;
        self.copy_capped(&mut source, &mut out, rel, shown, |e| {
            write_error("read", &source_path, e)
        })?;
        self.regular_files.insert(rel.to_path_buf());
        Ok(())
    }

    /// Creates a new regular file at `rel` with exactly `mode` (the umask is
    /// overridden); counts it against the file cap.
    fn create_file(&mut self, rel: &Path, shown: &str, mode: u32) -> Result<File, BundleError> {
        self.count_file(shown)?;
        let full = self.prepare_parents(rel, shown)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&full)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    BundleError::Collides {
                        path: shown.to_owned(),
                    }
                } else {
                    write_error("create", &full, e)
                }
            })?;
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| write_error("set permissions on", &full, e))?;
        Ok(file)
    }

    /// Copies `from` into `to`, refusing before any byte past the size cap is
    /// written. Returns the number of bytes copied.
    fn copy_capped(
        &mut self,
        from: &mut dyn Read,
        to: &mut File,
        rel: &Path,
        shown: &str,
        on_read_error: impl Fn(io::Error) -> BundleError,
    ) -> Result<u64, BundleError> {
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        let mut copied = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(on_read_error(e)),
            };
            let total = self.unpacked_bytes.saturating_add(n as u64);
            if total > self.limits.max_unpacked_bytes {
                return Err(BundleError::TooLarge {
                    limit: self.limits.max_unpacked_bytes,
                    path: shown.to_owned(),
                });
            }
            // Hard links are copied, so they write bytes the compressed
            // stream never held: the ratio rule applies to what is written.
            let ratio_cap = self.compressed_bytes.saturating_mul(self.limits.max_ratio);
            if total > RATIO_GRACE_BYTES && total > ratio_cap {
                return Err(BundleError::CompressionBomb {
                    limit: self.limits.max_ratio,
                });
            }
            let chunk = buf.get(..n).unwrap_or_default();
            to.write_all(chunk)
                .map_err(|e| write_error("write", &self.dest.join(rel), e))?;
            self.unpacked_bytes = total;
            copied = copied.saturating_add(n as u64);
        }
    }

    fn count_file(&mut self, shown: &str) -> Result<(), BundleError> {
        self.file_count += 1;
        if self.file_count > self.limits.max_files {
            return Err(BundleError::TooManyFiles {
                limit: self.limits.max_files,
                path: shown.to_owned(),
            });
        }
        Ok(())
    }

    fn create_dir(&mut self, full: &Path, shown: &str) -> Result<(), BundleError> {
        self.dir_count += 1;
        if self.dir_count > self.limits.max_files {
            return Err(BundleError::TooManyDirectories {
                limit: self.limits.max_files,
                path: shown.to_owned(),
            });
        }
        fs::create_dir(full).map_err(|e| write_error("create directory", full, e))?;
        fs::set_permissions(full, Permissions::from_mode(0o755))
            .map_err(|e| write_error("set permissions on", full, e))
    }

    /// Walks the parents of `rel` inside `dest`, creating missing ones and
    /// refusing if any is a symlink or not a directory. Returns the full
    /// path of `rel` itself.
    ///
    /// This is what stops `d -> sub` followed by `d/x` from writing through
    /// the link: the walk uses `symlink_metadata`, which never follows one.
    fn prepare_parents(&mut self, rel: &Path, shown: &str) -> Result<PathBuf, BundleError> {
        let mut dir = self.dest.to_path_buf();
        let mut prefix = PathBuf::new();
        let parents = rel.parent().map(Path::components).into_iter().flatten();
        for component in parents {
            dir.push(component);
            prefix.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(BundleError::ThroughSymlink {
                        path: shown.to_owned(),
                        link: show(prefix.as_os_str().as_bytes()),
                    })
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(BundleError::Collides {
                        path: shown.to_owned(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.create_dir(&dir, shown)?,
                Err(source) => return Err(write_error("inspect", &dir, source)),
            }
        }
        Ok(self.dest.join(rel))
    }
}

fn write_error(action: &'static str, path: &Path, source: io::Error) -> BundleError {
    BundleError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

enum PathProblem {
    Absolute,
    Escapes,
    Unusable(&'static str),
}

/// Splits an archive path into its normal components, dropping empty and
/// `.` ones. Refuses NUL bytes, absolute paths, any `..`, and over-long
/// names. An empty result means the path named the bundle root.
fn normal_components(raw: &[u8]) -> Result<Vec<&[u8]>, PathProblem> {
    if raw.contains(&0) {
        return Err(PathProblem::Unusable("it contains a NUL byte"));
    }
    if raw.starts_with(b"/") {
        return Err(PathProblem::Absolute);
    }
    let mut components = Vec::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(PathProblem::Escapes),
            name if name.len() > MAX_COMPONENT_BYTES => {
                return Err(PathProblem::Unusable(
                    "one of its components is longer than 255 bytes",
                ))
            }
            name => components.push(name),
        }
    }
    let joined_len = components.iter().map(|c| c.len() + 1).sum::<usize>();
    if joined_len > MAX_PATH_BYTES {
        return Err(PathProblem::Unusable("it is longer than 1024 bytes"));
    }
    Ok(components)
}

fn join(components: &[&[u8]]) -> PathBuf {
    components.iter().map(|c| OsStr::from_bytes(c)).collect()
}

/// Checks a symlink target lexically against the link's own location and
/// returns it normalised (`.` and empty components dropped).
///
/// Only targets of the form `../../name/name` are accepted. A `..` after a
/// name is refused: if that name were itself a symlink, the kernel would
/// climb from *its* target, which lexical resolution cannot see. With that
/// form, and every link's parents being real directories, a target that
/// stays inside lexically also stays inside when the kernel resolves it.
fn symlink_target(link: &[&[u8]], raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.is_empty() {
        return Err("has an empty target");
    }
    if raw.contains(&0) {
        return Err("has a NUL byte in its target");
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err("has a target longer than 1024 bytes");
    }
    if raw.starts_with(b"/") {
        return Err("has an absolute target");
    }

    let mut ups = 0usize;
    let mut names: Vec<&[u8]> = Vec::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if names.is_empty() => ups += 1,
            b".." => return Err("climbs back out of a name it entered, which cannot be checked"),
            name => names.push(name),
        }
    }
    let link_depth = link.len().saturating_sub(1);
    if ups > link_depth {
        return Err("escapes the bundle");
    }

    let mut parts: Vec<&[u8]> = vec![b".."; ups];
    parts.extend(names);
    if parts.is_empty() {
        return Ok(b".".to_vec());
    }
    Ok(parts.join(&b'/'))
}

fn describe(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".to_owned(),
        EntryType::Block => "block device".to_owned(),
        EntryType::Fifo => "FIFO".to_owned(),
        EntryType::GNUSparse => "sparse file".to_owned(),
        EntryType::GNULongName | EntryType::GNULongLink => "stray GNU long-name header".to_owned(),
        EntryType::XHeader => "stray PAX header".to_owned(),
        other => format!("unknown ({:?})", char::from(other.as_byte())),
    }
}

/// An entry path as quoted in an error: lossy UTF-8, control characters
/// escaped so they cannot rewrite a terminal or a log line, and cut short.
fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    if let Some((cut, _)) = shown.char_indices().nth(MAX_SHOWN_CHARS) {
        shown.truncate(cut);
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    use flate2::write::GzEncoder;
    use flate2::Compression;
    use tar::{Builder, Header};
    use tempfile::{NamedTempFile, TempDir};

    /// What one entry of a test bundle is. The third element of a spec is
    /// the file's content, or the link's target.
    #[derive(Clone, Copy)]
    enum Kind {
        File,
        Exec,
        Dir,
        Symlink,
        HardLink,
        /// Any type, with an explicit mode (for setuid and devices).
        Raw(EntryType, u32),
        /// PAX extension records (`key=value` lines) for the next entry.
        Pax,
    }

    type Spec<'a> = (&'a str, Kind, &'a [u8]);

    /// Builds a tar.gz from `specs`, writing names verbatim (so `..`, `/x`
    /// and the like survive), with a GNU long-name record for names over 100
    /// bytes.
    fn bundle(specs: &[Spec]) -> NamedTempFile {
        let mut tar = Builder::new(Vec::new());
        for &(path, kind, content) in specs {
            if let Kind::Pax = kind {
                let header =
                    raw_header(b"pax", EntryType::XHeader, content.len() as u64, 0o644, b"");
                tar.append(&header, content).expect("append pax header");
                continue;
            }
            if path.len() > 100 {
                let mut name = path.as_bytes().to_vec();
                name.push(0);
                let mut long = Header::new_gnu();
                long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
                long.set_entry_type(EntryType::GNULongName);
                long.set_size(name.len() as u64);
                long.set_cksum();
                tar.append(&long, name.as_slice())
                    .expect("append long name");
            }
            let name = &path.as_bytes()[..path.len().min(100)];
            let (entry_type, mode, data, link): (_, _, &[u8], &[u8]) = match kind {
                Kind::File => (EntryType::Regular, 0o644, content, b""),
                Kind::Exec => (EntryType::Regular, 0o755, content, b""),
                Kind::Dir => (EntryType::Directory, 0o755, b"", b""),
                Kind::Symlink => (EntryType::Symlink, 0o777, b"", content),
                Kind::HardLink => (EntryType::Link, 0o644, b"", content),
                Kind::Raw(entry_type, mode) => (entry_type, mode, content, b""),
                Kind::Pax => unreachable!("handled above"),
            };
            let header = raw_header(name, entry_type, data.len() as u64, mode, link);
            tar.append(&header, data).expect("append entry");
        }
        let tar = tar.into_inner().expect("finish tar");
        gzip(&tar)
    }

    fn raw_header(name: &[u8], kind: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(0);
        if let Some(gnu) = header.as_gnu_mut() {
            // A sparse header must state its real size to parse at all.
            gnu.set_real_size(size);
        }
        header.set_cksum();
        header
    }

    /// One PAX record, `"<len> key=value\n"`, where len counts itself.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = key.len() + value.len() + 3; // space, '=', newline
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let mut record = format!("{len} {key}=").into_bytes();
        record.extend_from_slice(value);
        record.push(b'\n');
        record
    }

    fn gzip(bytes: &[u8]) -> NamedTempFile {
        let file = NamedTempFile::new().expect("temp file");
        let mut encoder = GzEncoder::new(file, Compression::fast());
        encoder.write_all(bytes).expect("compress");
        encoder.finish().expect("finish gzip")
    }

    fn raw_file(bytes: &[u8]) -> NamedTempFile {
        let mut file = NamedTempFile::new().expect("temp file");
        file.write_all(bytes).expect("write");
        file
    }

    fn unpack_with(
        archive: &NamedTempFile,
        limits: &BundleLimits,
    ) -> (TempDir, Result<Unpacked, BundleError>) {
        let dest = TempDir::new().expect("temp dir");
        let result = unpack(archive.path(), dest.path(), limits);
        (dest, result)
    }

    fn refusal(specs: &[Spec]) -> BundleError {
        let (_dest, result) = unpack_with(&bundle(specs), &BundleLimits::default());
        let error = result.expect_err("bundle should be refused");
        assert!(
            error.is_client_fault(),
            "{error} should be the client's fault"
        );
        error
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    /// Incompressible filler, so a cut gzip stream really loses data.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn well_formed_bundle_unpacks_with_nested_dirs_unicode_names_and_internal_links() {
        let long = format!("deep/{}/page.html", "n".repeat(120));
        let archive = bundle(&[
            ("./", Kind::Dir, b""),
            ("site/", Kind::Dir, b""),
            ("site/index.html", Kind::File, b"<h1>hi</h1>"),
            ("site/assets/css/app.css", Kind::File, b"body{}"),
            (
                "site/caf\u{e9}/\u{65e5}\u{672c}.txt",
                Kind::File,
                b"bonjour",
            ),
            ("site/bin/run.sh", Kind::Exec, b"#!/bin/sh\n"),
            ("site/home.html", Kind::Symlink, b"./index.html"),
            ("site/assets/up.css", Kind::Symlink, b"../index.html"),
            ("site/copy.html", Kind::HardLink, b"site/index.html"),
            (&long, Kind::File, b"long"),
        ]);

        let (dest, result) = unpack_with(&archive, &BundleLimits::default());
        let unpacked = result.expect("bundle unpacks");

        let root = dest.path();
        assert_eq!(unpacked.file_count, 8);
        assert_eq!(unpacked.size_bytes, 11 + 6 + 7 + 10 + 11 + 4);
        let read = |p: &str| fs::read(root.join(p)).expect("read unpacked file");
        assert_eq!(read("site/caf\u{e9}/\u{65e5}\u{672c}.txt"), b"bonjour");
        assert_eq!(read("site/home.html"), b"<h1>hi</h1>");
        assert_eq!(read("site/copy.html"), b"<h1>hi</h1>");
        assert_eq!(read(&long), b"long");
        let link = fs::read_link(root.join("site/home.html")).expect("symlink");
        assert_eq!(link, Path::new("index.html"));
        let copy = fs::symlink_metadata(root.join("site/copy.html")).expect("copy");
        assert!(
            copy.file_type().is_file(),
            "hard links are written as copies"
        );
        assert_eq!(mode_of(&root.join("site/index.html")), 0o644);
        assert_eq!(mode_of(&root.join("site/bin/run.sh")), 0o755);
        assert_eq!(mode_of(&root.join("site/assets/css")), 0o755);
    }

    #[test]
    fn non_gzip_input_is_refused() {
        let archive = raw_file(b"PK\x03\x04 this is a zip");
        let (_dest, result) = unpack_with(&archive, &BundleLimits::default());
        let error = result.expect_err("refused");
        assert!(matches!(error, BundleError::NotGzip), "{error}");
        assert_eq!(error.to_string(), "bundle is not gzip-compressed");
    }

    #[test]
    fn gzip_that_is_not_a_tar_is_refused() {
        for content in [&b"hello world"[..], &noise(4096)] {
            let (_dest, result) = unpack_with(&gzip(content), &BundleLimits::default());
            let error = result.expect_err("refused");
            assert!(matches!(error, BundleError::NotTar), "{error}");
            assert_eq!(error.to_string(), "bundle is not a tar archive");
        }
    }

    #[test]
    fn truncated_gzip_stream_is_refused() {
        let data = noise(64 * 1024);
        let whole = bundle(&[("big.bin", Kind::File, &data)]);
        let bytes = fs::read(whole.path()).expect("read bundle");
        let cut = raw_file(&bytes[..bytes.len() / 2]);

        let (_dest, result) = unpack_with(&cut, &BundleLimits::default());
        let error = result.expect_err("refused");
        assert!(matches!(error, BundleError::Truncated), "{error}");
        assert!(error.is_client_fault());
    }

    #[test]
    fn tar_cut_inside_file_data_is_refused() {
        let mut tar = Vec::new();
        let header = raw_header(b"a.txt", EntryType::Regular, 4096, 0o644, b"");
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(&[b'x'; 1000]);

        let (_dest, result) = unpack_with(&gzip(&tar), &BundleLimits::default());
        let error = result.expect_err("refused");
        assert!(matches!(error, BundleError::Truncated), "{error}");
    }

    #[test]
    fn absolute_paths_are_refused() {
        let error = refusal(&[("/etc/passwd", Kind::File, b"root")]);
        assert!(matches!(error, BundleError::AbsolutePath { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            "entry `/etc/passwd` has an absolute path"
        );
    }

    #[test]
    fn parent_dir_components_are_refused() {
        for path in ["../x", "a/../../x", "a/../b", "a/.."] {
            let error = refusal(&[("ok.txt", Kind::File, b"ok"), (path, Kind::File, b"x")]);
            assert!(matches!(error, BundleError::PathEscapes { .. }), "{error}");
            assert_eq!(
                error.to_string(),
                format!("entry `{path}` escapes the bundle")
            );
        }
    }

    #[test]
    fn nul_bytes_in_paths_are_refused() {
        let records = pax_record("path", b"a\0b.txt");
        let error = refusal(&[("", Kind::Pax, &records), ("ab.txt", Kind::File, b"x")]);
        assert!(matches!(error, BundleError::UnusablePath { .. }), "{error}");
        assert!(error.to_string().contains("NUL"), "{error}");
    }

    #[test]
    fn paths_that_normalise_to_nothing_are_refused() {
        for path in [".", "./", ".//./"] {
            let error = refusal(&[("ok.txt", Kind::File, b"ok"), (path, Kind::File, b"x")]);
            assert!(matches!(error, BundleError::UnusablePath { .. }), "{error}");
        }
    }

    #[test]
    fn root_directory_entry_is_accepted_as_a_no_op() {
        let archive = bundle(&[("./", Kind::Dir, b""), ("./a.txt", Kind::File, b"a")]);
        let (dest, result) = unpack_with(&archive, &BundleLimits::default());
        assert_eq!(result.expect("unpacks").file_count, 1);
        assert!(dest.path().join("a.txt").is_file());
    }

    #[test]
    fn over_long_names_are_refused_as_the_clients_fault() {
        let component = "c".repeat(256);
        let error = refusal(&[(&component, Kind::File, b"x")]);
        assert!(matches!(error, BundleError::UnusablePath { .. }), "{error}");

        let deep = vec!["d".repeat(200); 6].join("/");
        let error = refusal(&[(&deep, Kind::File, b"x")]);
        assert!(matches!(error, BundleError::UnusablePath { .. }), "{error}");
    }

    #[test]
    fn symlinks_with_absolute_targets_are_refused() {
        let error = refusal(&[
            ("ok.txt", Kind::File, b"ok"),
            ("etc", Kind::Symlink, b"/etc"),
        ]);
        assert!(
            matches!(error, BundleError::UnsafeSymlink { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("absolute"), "{error}");
    }

    #[test]
    fn symlinks_escaping_the_bundle_are_refused() {
        for (path, target) in [("evil", ".."), ("a/b", "../../x"), ("a/c", "./../.././x")] {
            let error = refusal(&[
                ("ok.txt", Kind::File, b"ok"),
                (path, Kind::Symlink, target.as_bytes()),
            ]);
            assert!(
                matches!(error, BundleError::UnsafeSymlink { .. }),
                "{error}"
            );
            assert_eq!(
                error.to_string(),
                format!("symlink `{path}` -> `{target}` escapes the bundle")
            );
        }
    }

    #[test]
    fn symlink_to_bundle_root_is_accepted() {
        let archive = bundle(&[("a.txt", Kind::File, b"a"), ("here", Kind::Symlink, b".")]);
        let (dest, result) = unpack_with(&archive, &BundleLimits::default());
        result.expect("unpacks");
        let target = fs::read_link(dest.path().join("here")).expect("link");
        assert_eq!(target, Path::new("."));
    }

    #[test]
    fn symlink_targets_that_climb_after_descending_are_refused() {
        // `d/s -> ..` is the root, so the kernel reads `t -> d/s/..` as the
        // root's parent even though it looks like `d` lexically.
        let error = refusal(&[
            ("ok.txt", Kind::File, b"ok"),
            ("d/s", Kind::Symlink, b".."),
            ("t", Kind::Symlink, b"d/s/.."),
        ]);
        assert!(
            matches!(error, BundleError::UnsafeSymlink { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("`t`"), "{error}");
    }

    #[test]
    fn writing_through_a_directory_symlink_is_refused() {
        let (dest, result) = unpack_with(
            &bundle(&[
                ("sub/", Kind::Dir, b""),
                ("d", Kind::Symlink, b"sub"),
                ("d/x", Kind::File, b"sneaky"),
            ]),
            &BundleLimits::default(),
        );
        let error = result.expect_err("refused");
        assert!(
            matches!(error, BundleError::ThroughSymlink { .. }),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "entry `d/x` would be written through the symlink `d`"
        );
        assert!(!dest.path().join("sub/x").exists());
    }

    #[test]
    fn hard_links_to_missing_or_outside_targets_are_refused() {
        let cases: [&[u8]; 5] = [b"nope.txt", b"../secret", b"/etc/passwd", b"dir", b"link"];
        for target in cases {
            let error = refusal(&[
                ("a.txt", Kind::File, b"a"),
                ("dir/", Kind::Dir, b""),
                ("link", Kind::Symlink, b"a.txt"),
                ("h", Kind::HardLink, target),
            ]);
            assert!(
                matches!(error, BundleError::UnsafeHardLink { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn hard_link_copies_count_toward_the_ratio_rule() {
        // 64 KiB of noise keeps the compressed size near 64 KiB, so the
        // stream itself (noise plus 8 MiB of zeros) stays under 200 times
        // that; five copies of the zeros through hard links do not.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let zeros = vec![0u8; 8 * 1024 * 1024];
        let mut specs: Vec<Spec> = vec![("noise", Kind::File, &noise), ("z", Kind::File, &zeros)];
        let (_dest, without_links) = unpack_with(&bundle(&specs), &BundleLimits::default());
        assert!(
            without_links.is_ok(),
            "the stream alone passes: {without_links:?}"
        );
        let names: Vec<String> = (0..5).map(|i| format!("h{i}")).collect();
        for name in &names {
            specs.push((name, Kind::HardLink, b"z"));
        }
        let error = refusal(&specs);
        assert!(
            matches!(error, BundleError::CompressionBomb { .. }),
            "{error}"
        );
    }

    #[test]
    fn hard_link_before_its_target_is_refused() {
        let error = refusal(&[("h", Kind::HardLink, b"a.txt"), ("a.txt", Kind::File, b"a")]);
        assert!(
            matches!(error, BundleError::UnsafeHardLink { .. }),
            "{error}"
        );
    }

    #[test]
    fn devices_fifos_and_unknown_types_are_refused_by_name() {
        let cases = [
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "FIFO"),
            (EntryType::GNUSparse, "sparse file"),
            (EntryType::new(b'V'), "unknown ('V')"),
        ];
        for (entry_type, name) in cases {
            let error = refusal(&[
                ("ok.txt", Kind::File, b"ok"),
                ("dev/thing", Kind::Raw(entry_type, 0o644), b""),
            ]);
            assert!(
                matches!(error, BundleError::UnsupportedType { .. }),
                "{error}"
            );
            assert_eq!(
                error.to_string(),
                format!("entry `dev/thing` is of type {name}, which bundles may not contain")
            );
        }
    }

    #[test]
    fn duplicate_entries_are_refused() {
        for kind in [Kind::File, Kind::Dir] {
            let error = refusal(&[
                ("a.txt", Kind::File, b"a"),
                ("same", kind, b""),
                ("./same", kind, b""),
            ]);
            assert!(matches!(error, BundleError::Duplicate { .. }), "{error}");
        }
    }

    #[test]
    fn file_in_place_of_a_directory_collides() {
        let error = refusal(&[("a", Kind::File, b"a"), ("a/b.txt", Kind::File, b"b")]);
        assert!(matches!(error, BundleError::Collides { .. }), "{error}");

        let error = refusal(&[("a/b.txt", Kind::File, b"b"), ("a", Kind::File, b"a")]);
        assert!(matches!(error, BundleError::Collides { .. }), "{error}");
    }

    #[test]
    fn size_cap_stops_a_zero_bomb_before_it_is_written() {
        let limits = BundleLimits {
            max_unpacked_bytes: MIB,
            ..BundleLimits::default()
        };
        let archive = zeros_bundle(50 * MIB);

        let (dest, result) = unpack_with(&archive, &limits);
        let error = result.expect_err("refused");
        assert!(matches!(error, BundleError::TooLarge { .. }), "{error}");
        assert!(error
            .to_string()
            .starts_with("bundle unpacks to more than 1048576 bytes"));
        let written = fs::metadata(dest.path().join("zeros.bin"))
            .expect("partial")
            .len();
        assert!(written <= MIB, "wrote {written} bytes past a 1 MiB cap");
    }

    #[test]
    fn high_compression_ratio_is_refused_as_a_bomb() {
        let archive = zeros_bundle(50 * MIB);

        let (dest, result) = unpack_with(&archive, &BundleLimits::default());
        let error = result.expect_err("refused");
        assert!(
            matches!(error, BundleError::CompressionBomb { limit: 200 }),
            "{error}"
        );
        let written = fs::metadata(dest.path().join("zeros.bin"))
            .expect("partial")
            .len();
        assert!(written < 20 * MIB, "stopped late, after {written} bytes");
    }

    #[test]
    fn small_bundles_are_exempt_from_the_ratio_rule() {
        let zeros = vec![0u8; 512 * 1024];
        let archive = bundle(&[("zeros.bin", Kind::File, &zeros)]);
        let (_dest, result) = unpack_with(&archive, &BundleLimits::default());
        assert_eq!(result.expect("unpacks").size_bytes, 512 * 1024);
    }

    fn zeros_bundle(len: u64) -> NamedTempFile {
        let file = NamedTempFile::new().expect("temp file");
        // Best compression, as an attacker would use: about 1000:1 on zeros.
        let mut tar = Builder::new(GzEncoder::new(file, Compression::best()));
        let header = raw_header(b"zeros.bin", EntryType::Regular, len, 0o644, b"");
        tar.append(&header, io::repeat(0).take(len))
            .expect("append zeros");
        tar.into_inner()
            .expect("finish tar")
            .finish()
            .expect("finish gzip")
    }

    #[test]
    fn too_many_files_are_refused() {
        let limits = BundleLimits {
            max_files: 2,
            ..BundleLimits::default()
        };
        let archive = bundle(&[
            ("a", Kind::File, b"a"),
            ("b", Kind::Symlink, b"a"),
            ("c", Kind::File, b"c"),
        ]);
        let (_dest, result) = unpack_with(&archive, &limits);
        let error = result.expect_err("refused");
        assert!(
            matches!(error, BundleError::TooManyFiles { limit: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("`c`"), "{error}");
    }

    #[test]
    fn too_many_directories_are_refused_even_when_implied() {
        let limits = BundleLimits {
            max_files: 2,
            ..BundleLimits::default()
        };
        let archive = bundle(&[("a/b/c/file", Kind::File, b"x")]);
        let (_dest, result) = unpack_with(&archive, &limits);
        let error = result.expect_err("refused");
        assert!(
            matches!(error, BundleError::TooManyDirectories { limit: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn bundles_without_regular_files_are_refused() {
        let cases: [Vec<Spec>; 3] = [
            vec![],
            vec![("a/", Kind::Dir, b""), ("a/b/", Kind::Dir, b"")],
            vec![("l", Kind::Symlink, b".")],
        ];
        for specs in cases {
            let error = refusal(&specs);
            assert!(matches!(error, BundleError::NoFiles), "{error}");
            assert_eq!(error.to_string(), "bundle contains no files");
        }
    }

    #[test]
    fn special_mode_bits_are_dropped() {
        let archive = bundle(&[
            ("suid", Kind::Raw(EntryType::Regular, 0o4755), b"x"),
            ("sgid", Kind::Raw(EntryType::Regular, 0o2600), b"x"),
            ("private", Kind::Raw(EntryType::Regular, 0o600), b"x"),
            ("tmp/", Kind::Raw(EntryType::Directory, 0o1777), b""),
        ]);
        let (dest, result) = unpack_with(&archive, &BundleLimits::default());
        result.expect("unpacks");
        assert_eq!(mode_of(&dest.path().join("suid")), 0o755);
        assert_eq!(mode_of(&dest.path().join("sgid")), 0o644);
        assert_eq!(mode_of(&dest.path().join("private")), 0o644);
        assert_eq!(mode_of(&dest.path().join("tmp")), 0o755);
    }

    #[test]
    fn pax_headers_are_honoured_and_global_ones_ignored() {
        let path = pax_record("path", "caf\u{e9}/menu.txt".as_bytes());
        let comment = pax_record("comment", b"0123abcd");
        let archive = bundle(&[
            (
                "pax_global_header",
                Kind::Raw(EntryType::XGlobalHeader, 0o644),
                &comment,
            ),
            ("", Kind::Pax, &path),
            ("short-name", Kind::File, b"menu"),
        ]);
        let (dest, result) = unpack_with(&archive, &BundleLimits::default());
        assert_eq!(result.expect("unpacks").file_count, 1);
        let menu = fs::read(dest.path().join("caf\u{e9}/menu.txt")).expect("pax path used");
        assert_eq!(menu, b"menu");
    }

    #[test]
    fn oversized_pax_headers_are_refused() {
        // Incompressible, so the ratio rule does not trip first.
        let filler: Vec<u8> = noise(2 * MIB as usize)
            .iter()
            .map(|b| b'a' + b % 26)
            .collect();
        let records = pax_record("comment", &filler);
        let error = refusal(&[("", Kind::Pax, &records), ("a.txt", Kind::File, b"a")]);
        assert!(
            matches!(error, BundleError::OversizedMetadata { .. }),
            "{error}"
        );
    }

    #[test]
    fn unreadable_destination_is_our_fault_not_the_clients() {
        let archive = bundle(&[("a/b.txt", Kind::File, b"b")]);
        let missing = TempDir::new().expect("temp dir").path().join("gone");
        let error =
            unpack(archive.path(), &missing, &BundleLimits::default()).expect_err("cannot write");
        assert!(matches!(error, BundleError::Io { .. }), "{error}");
        assert!(!error.is_client_fault());
    }

    #[test]
    fn plain_io_errors_are_our_fault() {
        let error = BundleError::from(io::Error::other("disk full"));
        assert!(!error.is_client_fault());
        assert_eq!(error.to_string(), "could not prepare the bundle: disk full");
    }

    #[test]
    fn control_characters_in_paths_are_escaped_in_errors() {
        let error = refusal(&[("/\x1b[2Jit's", Kind::File, b"x")]);
        assert_eq!(
            error.to_string(),
            "entry `/\\u{1b}[2Jit's` has an absolute path"
        );
    }
}
