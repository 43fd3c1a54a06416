//! Per-site app logs: a spinlet's stdout and stderr, plus SpinForge's own
//! notes about it, written to `DIR/app.log` and rotated by size.
//!
//! App output never reaches the hub's tracing log, and this module writes no
//! file but its own. Where DIR is, and who may read it, is the caller's call.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio::io::{AsyncBufReadExt, AsyncRead};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Longer output lines are split into pieces of at most this many bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

const FILE_NAME: &str = "app.log";

/// What a masked secret value becomes in the log.
pub const REDACTED: &str = "[redacted]";
/// Shortest secret value that is masked, in bytes.
pub const MIN_MASKED_LEN: usize = 4;
/// App output lines queued for the writer. With lines of at most 16 KiB,
/// that bounds queued memory at 4 MiB per app.
const LINE_QUEUE: usize = 256;
/// Notes and flush requests queued for the writer, apart from app output so
/// a flood of output cannot crowd out "exited with status 1".
const CONTROL_QUEUE: usize = 64;
/// Lines written per trip to the blocking pool.
const BATCH: usize = 256;
/// How long app output waits for a writer that has stopped keeping up before
/// lines are dropped instead.
const STALL: Duration = Duration::from_secs(2);
/// Bytes a capture task reads from a pipe at a time.
const PIPE_READ: usize = 64 * 1024;
/// How long a capture task waits after a short read (less than
/// [`PIPE_BUSY`]), so that an app printing a line per request is read a
/// batch at a time rather than woken for every line. Measured with the
/// Python example (a line per request): reading each line as it came cost
/// serve about 55 µs per request, a third of its CPU time per proxied
/// request.
const PIPE_PAUSE: Duration = Duration::from_millis(10);
/// A read of at least this many bytes is read again at once. Well below a
/// full pipe on purpose: a pipe filled by small writes holds a little less
/// than its 64 KiB, since each write starts on a page the last one left
/// partly empty. So only an app writing less than about 1.6 MB/s is read
/// in pauses, and such an app cannot fill a pipe during one; an app that
/// writes faster is read as fast as the disk takes it.
// Limitation: a fixed size; a pipe shrunk below it (by the
// `pipe-user-pages-soft` limit) is always read in pauses, at most about
// 0.8 MB/s with 8 KiB pipes.
const PIPE_BUSY: usize = 16 * 1024;
/// Bytes read per step when `tail` walks a file backwards.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Size limits of one site's log folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `app.log` is rotated before a line would take it past this (bytes,
    /// default 10 MiB). A single line longer than this gets a file to itself.
    pub max_file_bytes: u64,
    /// Rotated files kept, `app.log.1` (newest) to `app.log.N` (default 2).
    pub keep_files: usize,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            max_file_bytes: 10 * 1024 * 1024,
            keep_files: 2,
        }
    }
}

/// A handle to one site's app log. Clones share one writer task, which ends
/// once every clone and every capture task is gone.
///
/// Each line reads `2026-12-04T15:00:00.123Z stdout hello`: a UTC timestamp
/// with millisecond precision, the stream (`stdout`, `stderr` or
/// `spinforge`), and the text. Disk use stays under about
/// `(keep_files + 1) * max_file_bytes`.
///
/// Open at most one `AppLog` per folder at a time: two writers would rotate
/// each other's files.
// Limitation: one writer per folder is a rule for callers, not enforced (a
// flock on the folder at `open` would enforce it).
#[derive(Debug, Clone)]
pub struct AppLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    lines: mpsc::Sender<Record>,
    control: mpsc::Sender<Job>,
}

/// What the writer task and the handles both need. Holds no sender, so the
/// writer owning it does not keep its own queues open.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    config: LogConfig,
    /// Lines dropped since the writer last said so.
    dropped: AtomicU64,
    /// Held for writing while files are renamed and for reading while a
    /// reader opens them, so a reader sees one consistent set.
    files: RwLock<()>,
    /// Secret values of the site, replaced by `[redacted]` in every line,
    /// longest first (issue 8).
    masks: RwLock<Vec<SecretString>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
    SpinForge,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::SpinForge => "spinforge",
        }
    }
}

#[derive(Debug)]
struct Record {
    at: OffsetDateTime,
    stream: Stream,
    text: String,
}

#[derive(Debug)]
enum Job {
    Note(Record),
    Flush(oneshot::Sender<()>),
    /// A flush after which nothing more is written.
    Close(oneshot::Sender<()>),
}

impl AppLog {
    /// Creates `dir` (mode 0700) if needed, opens `dir/app.log` for appending
    /// and starts the writer task. Must be called inside a tokio runtime.
    ///
    /// Rotated files beyond `config.keep_files` left by an earlier
    /// configuration are removed.
    pub fn open(dir: &Path, config: LogConfig) -> io::Result<AppLog> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;

        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            config,
            dropped: AtomicU64::new(0),
            files: RwLock::new(()),
            masks: RwLock::new(Vec::new()),
        });
        let writer = Writer::open(Arc::clone(&shared))?;

        let (lines, lines_rx) = mpsc::channel(LINE_QUEUE);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        runtime.spawn(write_loop(writer, lines_rx, control_rx));
        Ok(AppLog {
            inner: Arc::new(Inner {
                shared,
                lines,
                control,
            }),
        })
    }

    /// Spawns tasks that copy the child's stdout and stderr into the log, line
    /// by line, until each pipe closes. Lines longer than [`MAX_LINE_BYTES`]
    /// are split (never inside a UTF-8 character), a trailing `\r` is dropped
    /// and invalid UTF-8 is replaced.
    ///
    /// A fast app is slowed to the speed of the disk. If the writer stops
    /// keeping up for a while, lines are dropped and counted instead, and the
    /// log says how many. Must be called inside a tokio runtime.
    pub fn capture(
        &self,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(pipe) = stdout {
            tasks.push(tokio::spawn(self.clone().copy_lines(pipe, Stream::Stdout)));
        }
        if let Some(pipe) = stderr {
            tasks.push(tokio::spawn(self.clone().copy_lines(pipe, Stream::Stderr)));
        }
        tasks
    }

    /// Sets the secret values to mask in every later line: each becomes
    /// `[redacted]`. Values shorter than [`MIN_MASKED_LEN`] bytes are left,
    /// as masking `1` or `on` would garble every line.
    // Limitation: a value that an overlong line splits at MAX_LINE_BYTES is
    // not masked (masking before the split would lift it).
    pub fn set_masks(&self, mut values: Vec<SecretString>) {
        values.retain(|v| v.expose_secret().len() >= MIN_MASKED_LEN);
        values.sort_by_key(|v| std::cmp::Reverse(v.expose_secret().len()));
        *self
            .inner
            .shared
            .masks
            .write()
            .unwrap_or_else(PoisonError::into_inner) = values;
    }

    /// `text` with the site's secret values masked.
    fn masked(&self, text: String) -> String {
        let masks = self
            .inner
            .shared
            .masks
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut text = text;
        for value in masks.iter() {
            let value = value.expose_secret();
            if text.contains(value) {
                text = text.replace(value, REDACTED);
            }
        }
        text
    }

    /// Writes one line from SpinForge about the app, such as "started pid
    /// 42", with stream name `spinforge`. Line breaks become spaces. Never
    /// waits: if the note queue is full the note is counted as dropped.
    pub fn note(&self, line: &str) {
        let mut text: String = line
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        truncate_at_char(&mut text, MAX_LINE_BYTES);
        let text = self.masked(text);
        let record = Record {
            at: OffsetDateTime::now_utc(),
            stream: Stream::SpinForge,
            text,
        };
        if let Err(TrySendError::Full(_)) = self.inner.control.try_send(Job::Note(record)) {
            self.inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every line sent before this call is written to the file
    /// (handed to the OS, not fsynced). Output still in an app's pipe is
    /// not covered: a capture task reads it up to [`PIPE_PAUSE`] later.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.control.send(Job::Flush(done)).await.is_ok() {
            // An error means the writer is gone; there is nothing to wait for.
            let _ = wait.await;
        }
    }

    /// Writes what is queued, then stops writing for good: output that
    /// comes later (what is still in an app's pipes) is dropped. For a site
    /// that goes away, so that its folder can be removed and a later site
    /// of the same name never gets its lines.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.control.send(Job::Close(done)).await.is_ok() {
            // An error means the writer is gone: it writes nothing anyway.
            let _ = wait.await;
        }
    }

    /// The last `n` lines across the current and rotated files, oldest first.
    ///
    /// This reads files: call it from a blocking context
    /// (`tokio::task::spawn_blocking`) when on the runtime. It reads only as
    /// much of each file as the `n` lines need.
    pub fn tail(&self, n: usize) -> io::Result<Vec<String>> {
        let mut newest_first = Vec::new();
        for (file, len) in self.snapshot()?.into_iter().rev() {
            if newest_first.len() >= n {
                break;
            }
            let want = n - newest_first.len();
            last_lines(file, len, want, &mut newest_first)?;
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Lines stamped at or after `since`, oldest first, at most `limit`.
    /// Lines without a readable timestamp are skipped.
    ///
    /// This reads files like [`AppLog::tail`].
    // Limitation: scans from the oldest file, so a recent `since` reads the
    // whole folder (bounded by the rotation cap; remembering each file's
    // first timestamp would let it skip files).
    pub fn since(&self, since: OffsetDateTime, limit: usize) -> io::Result<Vec<String>> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let mut raw = Vec::new();
        for (file, len) in self.snapshot()? {
            let mut reader = BufReader::new(file.take(len));
            loop {
                raw.clear();
                reader.read_until(b'\n', &mut raw)?;
                // Empty means the end; no newline means a line still being
                // written when the snapshot was taken.
                if raw.pop() != Some(b'\n') {
                    break;
                }
                let line = String::from_utf8_lossy(&raw);
                if line_time(&line).is_some_and(|at| at >= since) {
                    found.push(line.into_owned());
                    if found.len() >= limit {
                        return Ok(found);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Opens the current and rotated files, oldest first, with their length
    /// at this moment. Open handles survive later renames, so the set stays
    /// consistent while it is read.
    fn snapshot(&self) -> io::Result<Vec<(File, u64)>> {
        let shared = &self.inner.shared;
        let _files = shared.files.read().unwrap_or_else(PoisonError::into_inner);
        let mut files = Vec::new();
        for index in (0..=shared.config.keep_files).rev() {
            match File::open(log_path(&shared.dir, index)) {
                Ok(file) => {
                    let len = file.metadata()?.len();
                    files.push((file, len));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(files)
    }

    /// Copies one pipe into the log until it closes.
    async fn copy_lines(self, pipe: impl AsyncRead + Unpin, stream: Stream) {
        let mut reader = tokio::io::BufReader::with_capacity(PIPE_READ, pipe);
        let mut line = Vec::with_capacity(256);
        let mut stalled = false;
        // True right after an overlong line was split at the limit, so the
        // newline that ends it does not also produce an empty line.
        let mut just_split = false;
        // True after a read of less than PIPE_BUSY: the next one waits.
        let mut trickle = false;

        loop {
            // `fill_buf` reads only once the buffer is used up.
            let reads = reader.buffer().is_empty();
            if reads && trickle {
                tokio::time::sleep(PIPE_PAUSE).await;
            }
            let available = match reader.fill_buf().await {
                Ok(available) => available,
                Err(e) => {
                    self.note(&format!("reading {} failed: {e}", stream.name()));
                    break;
                }
            };
            if reads {
                trickle = available.len() < PIPE_BUSY;
            }
            if available.is_empty() {
                if !line.is_empty() {
                    self.send_line(&line, stream, &mut stalled).await;
                }
                break;
            }

            let room = MAX_LINE_BYTES - line.len();
            let window = &available[..available.len().min(room)];
            let newline = window.iter().position(|&b| b == b'\n');
            let taken = newline.unwrap_or(window.len());
            line.extend_from_slice(&window[..taken]);
            reader.consume(taken + usize::from(newline.is_some()));

            if newline.is_some() {
                if !(line.is_empty() && just_split) {
                    self.send_line(&line, stream, &mut stalled).await;
                }
                line.clear();
                just_split = false;
            } else if line.len() >= MAX_LINE_BYTES {
                let cut = utf8_cut(&line);
                self.send_line(&line[..cut], stream, &mut stalled).await;
                line.drain(..cut);
                just_split = line.is_empty();
            } else if taken > 0 {
                just_split = false;
            }
        }
    }

    /// Queues one line, waiting up to [`STALL`] for room. Once a wait has
    /// timed out, lines are dropped without waiting until there is room again,
    /// so a stuck disk cannot freeze the app behind a full pipe.
    async fn send_line(&self, bytes: &[u8], stream: Stream, stalled: &mut bool) {
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        let text = self.masked(escape_controls(text));
        let record = Record {
            at: OffsetDateTime::now_utc(),
            stream,
            text,
        };

        let lines = &self.inner.lines;
        let dropped = match lines.try_send(record) {
            Ok(()) => {
                *stalled = false;
                false
            }
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) if *stalled => true,
            Err(TrySendError::Full(record)) => {
                let sent = tokio::time::timeout(STALL, lines.send(record)).await;
                *stalled = sent.is_err();
                *stalled
            }
        };
        if dropped {
            self.inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Moves queued lines and notes to disk in batches, until every handle and
/// capture task is gone.
async fn write_loop(
    mut writer: Writer,
    mut lines: mpsc::Receiver<Record>,
    mut control: mpsc::Receiver<Job>,
) {
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let mut notes = Vec::new();
        let mut acks = Vec::new();
        let mut closing = false;
        let mut take_job = |job: Job| match job {
            Job::Note(record) => notes.push(record),
            Job::Flush(done) => acks.push(done),
            Job::Close(done) => {
                closing = true;
                acks.push(done);
            }
        };

        tokio::select! {
            Some(record) = lines.recv() => batch.push(record),
            Some(job) = control.recv() => take_job(job),
            else => break,
        }
        while let Ok(job) = control.try_recv() {
            take_job(job);
        }
        // A flush must cover every line queued before it, and the queue holds
        // at most LINE_QUEUE of them.
        let limit = if acks.is_empty() {
            BATCH
        } else {
            BATCH + LINE_QUEUE
        };
        while batch.len() < limit {
            match lines.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }

        // Notes go between the lines by time; each queue keeps its own order.
        for note in notes {
            let at = batch.partition_point(|line| line.at <= note.at);
            batch.insert(at, note);
        }
        let dropped = writer.shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.push(Record {
                at: OffsetDateTime::now_utc(),
                stream: Stream::SpinForge,
                text: format!("dropped {dropped} lines: the log writer fell behind"),
            });
        }

        let written = tokio::task::spawn_blocking(move || {
            writer.write(&batch);
            if closing {
                // Acknowledged only after this: nothing is written once
                // `close` has returned.
                writer.closed = true;
                writer.file = None;
            }
            writer
        })
        .await;
        writer = match written {
            Ok(writer) => writer,
            Err(e) => {
                tracing::error!(error = %e, "app log writer failed; app output is lost");
                return;
            }
        };
        for done in acks {
            let _ = done.send(());
        }
    }
}

/// The file side of the writer: owns `app.log` and rotates it. Runs on the
/// blocking pool.
struct Writer {
    shared: Arc<Shared>,
    file: Option<File>,
    /// Bytes in `app.log`, including those in `pending`.
    size: u64,
    pending: Vec<u8>,
    line: String,
    /// True while writes fail, so the failure is logged once, not per batch.
    failing: bool,
    /// Set by [`AppLog::close`]: every later batch is dropped.
    closed: bool,
}

impl Writer {
    fn open(shared: Arc<Shared>) -> io::Result<Writer> {
        remove_stale_rotations(&shared.dir, shared.config.keep_files)?;

        let path = log_path(&shared.dir, 0);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let mut size = file.metadata()?.len();

        // A crash can leave a partial last line; end it so ours start clean.
        if size > 0 {
            let mut last = [0u8];
            let mut reader = File::open(&path)?;
            reader.seek(SeekFrom::Start(size - 1))?;
            reader.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                size += 1;
            }
        }

        Ok(Writer {
            shared,
            file: Some(file),
            size,
            pending: Vec::with_capacity(64 * 1024),
            line: String::with_capacity(256),
            failing: false,
            closed: false,
        })
    }

    fn write(&mut self, records: &[Record]) {
        if self.closed {
            return;
        }
        let max = self.shared.config.max_file_bytes;
        for record in records {
            self.line.clear();
            format_line(&mut self.line, record);
            let len = self.line.len() as u64;

            // Rotate before the line would cross the limit, so no file is
            // ever larger than `max`, unless one line alone is.
            if self.size > 0 && self.size + len > max {
                self.write_pending();
                self.rotate();
            }
            self.pending.extend_from_slice(self.line.as_bytes());
            self.size += len;
        }
        self.write_pending();
    }

    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let result = match self.file.as_mut() {
            Some(file) => file.write_all(&self.pending),
            None => Err(io::Error::other("app.log could not be reopened")),
        };
        self.pending.clear();
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                let dir = self.shared.dir.display();
                tracing::warn!(dir = %dir, error = %e, "writing app log failed; lines are lost");
            }
            Err(_) => {}
        }
        if self.file.is_none() {
            self.reopen(false);
        }
    }

    /// Shifts `app.log.i` to `app.log.i+1`, drops the oldest and starts an
    /// empty `app.log`. If a rename fails, `app.log` is emptied instead, which
    /// loses lines but keeps the disk bound.
    fn rotate(&mut self) {
        let shared = Arc::clone(&self.shared);
        let _files = shared.files.write().unwrap_or_else(PoisonError::into_inner);
        self.file = None;

        let dir = &shared.dir;
        let keep = shared.config.keep_files;
        let mut shifted = remove_if_present(&log_path(dir, keep));
        for index in (0..keep).rev() {
            let from = log_path(dir, index);
            shifted = shifted.and_then(|()| match fs::rename(&from, log_path(dir, index + 1)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            });
        }
        if let Err(e) = &shifted {
            tracing::warn!(dir = %dir.display(), error = %e, "rotating app log failed; truncating");
        }

        self.reopen(true);
        tracing::debug!(dir = %dir.display(), "app log rotated");
    }

    fn reopen(&mut self, truncate: bool) {
        let path = log_path(&self.shared.dir, 0);
        let mut options = OpenOptions::new();
        options.create(true).mode(0o600);
        if truncate {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        match options
            .open(&path)
            .and_then(|file| Ok((file.metadata()?.len(), file)))
        {
            Ok((size, file)) => {
                self.file = Some(file);
                self.size = size;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "opening app log failed");
                self.file = None;
                self.size = 0;
            }
        }
    }
}

/// `app.log` for index 0, `app.log.N` for rotated file N.
fn log_path(dir: &Path, index: usize) -> PathBuf {
    if index == 0 {
        dir.join(FILE_NAME)
    } else {
        dir.join(format!("{FILE_NAME}.{index}"))
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn remove_stale_rotations(dir: &Path, keep: usize) -> io::Result<()> {
    let prefix = format!("{FILE_NAME}.");
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|index| index.parse::<usize>().ok());
        if index.is_some_and(|index| index > keep) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn format_line(out: &mut String, record: &Record) {
    let at = record.at.to_offset(UtcOffset::UTC);
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond(),
        record.stream.name(),
        record.text,
    );
}

/// The timestamp a log line starts with, if it has a valid one.
fn line_time(line: &str) -> Option<OffsetDateTime> {
    let (stamp, _) = line.split_once(' ')?;
    OffsetDateTime::parse(stamp, &Rfc3339).ok()
}

/// Where to split `bytes` so that no UTF-8 character is cut: before the last
/// character if it is incomplete, else at the end.
fn utf8_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: the character starts further back
        }
        let width = match byte {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC2..=0xDF => 2,
            _ => 1, // ASCII, or invalid anyway: cutting cannot make it worse
        };
        return if width > back { len - back } else { len };
    }
    len
}

fn truncate_at_char(text: &mut String, max_bytes: usize) {
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

/// Pushes up to `want` complete lines from the end of the first `len` bytes
/// of `file` onto `out`, newest first. An unterminated last line is one
/// still being written and is skipped.
fn last_lines(mut file: File, len: u64, want: usize, out: &mut Vec<String>) -> io::Result<()> {
    let goal = out.len() + want;
    let mut pos = len;
    // Bytes from `pos` up to the end of the last line not yet pushed.
    let mut region: Vec<u8> = Vec::new();
    let mut trimmed = false;

    while out.len() < goal && (pos > 0 || !region.is_empty()) {
        if pos > 0 {
            let start = pos.saturating_sub(TAIL_CHUNK);
            let mut chunk = vec![0; usize::try_from(pos - start).map_err(io::Error::other)?];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut chunk)?;
            chunk.extend_from_slice(&region);
            region = chunk;
            pos = start;
        }
        if !trimmed {
            match region.iter().rposition(|&b| b == b'\n') {
                Some(end) => {
                    region.truncate(end + 1);
                    trimmed = true;
                }
                None if pos > 0 => continue,
                None => break,
            }
        }

        // `region` ends with a newline here; take lines off its end.
        while out.len() < goal && !region.is_empty() {
            let body = region.len() - 1;
            match region[..body].iter().rposition(|&b| b == b'\n') {
                Some(start) => {
                    out.push(String::from_utf8_lossy(&region[start + 1..body]).into_owned());
                    region.truncate(start + 1);
                }
                None if pos == 0 => {
                    out.push(String::from_utf8_lossy(&region[..body]).into_owned());
                    region.clear();
                }
                None => break,
            }
        }
    }
    Ok(())
}

/// Control characters other than tab are written as `\u{1b}` and the like:
/// an app's output must not move the cursor of whoever reads the log, nor
/// fake a line of SpinForge's own with a carriage return.
fn escape_controls(text: String) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text;
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    fn small(max_file_bytes: u64, keep_files: usize) -> LogConfig {
        LogConfig {
            max_file_bytes,
            keep_files,
        }
    }

    /// Runs `script` under `sh -c` with both pipes captured into `log`, and
    /// waits until its output is on disk.
    async fn run_captured(log: &AppLog, script: &str) {
        run_captured_without_flush(log, script).await;
        log.flush().await;
    }

    async fn run_captured_without_flush(log: &AppLog, script: &str) {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let tasks = log.capture(child.stdout.take(), child.stderr.take());
        for task in tasks {
            task.await.expect("capture task");
        }
        child.wait().await.expect("wait for sh");
    }

    /// The text after the timestamp and stream name.
    fn text(line: &str) -> &str {
        line.splitn(3, ' ').nth(2).unwrap_or_default()
    }

    fn dir_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|entry| entry.metadata().ok())
                    .map(|meta| meta.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn capture_records_stdout_and_stderr_with_timestamps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        let before = OffsetDateTime::now_utc() - Duration::from_secs(1);

        log.note("started pid 42");
        run_captured(&log, "echo out; echo err >&2").await;

        let lines = log.tail(10).expect("tail");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with(" spinforge started pid 42"), "{lines:?}");
        assert!(
            lines.iter().any(|line| line.ends_with(" stdout out")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|line| line.ends_with(" stderr err")),
            "{lines:?}"
        );
        for line in &lines {
            let at = line_time(line).expect("timestamp");
            assert!(at >= before, "{line}");
            assert_eq!(
                line.find(' '),
                Some("2026-12-04T15:00:00.123Z".len()),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn tail_returns_the_newest_lines_oldest_first_across_rotations() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), small(200, 2)).expect("open");
        for index in 0..20 {
            log.note(&format!("line {index}"));
        }
        log.flush().await;

        let last = log.tail(5).expect("tail");
        let texts: Vec<&str> = last.iter().map(|line| text(line)).collect();
        assert_eq!(
            texts,
            ["line 15", "line 16", "line 17", "line 18", "line 19"]
        );

        // Everything still on disk is a contiguous run ending at the newest.
        let all = log.tail(1000).expect("tail");
        assert!(all.len() < 20 && all.len() >= 5, "{all:?}");
        let first: usize = text(&all[0])
            .trim_start_matches("line ")
            .parse()
            .expect("number");
        let expected: Vec<String> = (first..20).map(|i| format!("line {i}")).collect();
        let got: Vec<&str> = all.iter().map(|line| text(line)).collect();
        assert_eq!(got, expected);

        assert!(dir.path().join("app.log.2").exists());
        assert!(!dir.path().join("app.log.3").exists());
        assert_eq!(log.tail(0).expect("tail"), Vec::<String>::new());
    }

    #[tokio::test]
    async fn since_returns_lines_from_a_moment_on_up_to_a_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        let start = OffsetDateTime::now_utc() - Duration::from_secs(1);
        log.note("old");
        log.flush().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cut = OffsetDateTime::now_utc();
        tokio::time::sleep(Duration::from_millis(5)).await;
        log.note("new 1");
        log.note("new 2");
        log.flush().await;

        let texts = |lines: Vec<String>| -> Vec<String> {
            lines.iter().map(|line| text(line).to_owned()).collect()
        };
        assert_eq!(
            texts(log.since(cut, 10).expect("since")),
            ["new 1", "new 2"]
        );
        assert_eq!(texts(log.since(cut, 1).expect("since")), ["new 1"]);
        assert_eq!(
            texts(log.since(start, 10).expect("since")),
            ["old", "new 1", "new 2"]
        );
        assert!(log.since(start, 0).expect("since").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_caps_disk_use_while_an_app_writes_fifty_mib() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = small(1024 * 1024, 2);
        let log = AppLog::open(dir.path(), config.clone()).expect("open");
        let line_bytes = "2026-12-04T15:00:00.123Z stdout ".len() as u64 + 101;
        let cap = (config.keep_files as u64 + 1) * config.max_file_bytes + line_bytes;

        // Watch the folder while the app writes, not only at the end.
        let watched = dir.path().to_owned();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            let mut peak = 0;
            while stopped.try_recv().is_err() {
                peak = peak.max(dir_bytes(&watched));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            peak
        });

        let script = "head -c 52428800 /dev/zero | tr '\\0' a | fold -w 100; echo; echo LAST-LINE";
        run_captured(&log, script).await;
        let _ = stop.send(());
        let peak = watcher.await.expect("watcher");

        let total = dir_bytes(dir.path());
        assert!(total <= cap, "total {total} > cap {cap}");
        assert!(peak <= cap, "peak {peak} > cap {cap}");
        assert!(total >= config.max_file_bytes * 2, "rotated: {total}");
        // The app was slowed to the writer's pace, not dropped from.
        let everything = log
            .since(OffsetDateTime::UNIX_EPOCH, usize::MAX)
            .expect("since");
        assert!(everything
            .iter()
            .all(|line| !line.contains(" spinforge dropped ")));
        let last = log.tail(2).expect("tail");
        assert_eq!(text(&last[1]), "LAST-LINE", "{last:?}");
        assert_eq!(text(&last[0]), "a".repeat(100));
    }

    #[tokio::test]
    async fn long_lines_are_split_without_cutting_characters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        let script = "head -c 40000 /dev/zero | tr '\\0' x; echo; \
                      head -c 16384 /dev/zero | tr '\\0' y; echo; \
                      head -c 16383 /dev/zero | tr '\\0' z; printf '\\303\\251!\\n'; \
                      printf 'no newline at the end'";
        run_captured(&log, script).await;

        let lines = log.tail(100).expect("tail");
        let texts: Vec<&str> = lines.iter().map(|line| text(line)).collect();
        let expected = [
            "x".repeat(16384),
            "x".repeat(16384),
            "x".repeat(40000 - 2 * 16384),
            "y".repeat(16384),
            "z".repeat(16383),
            "é!".to_owned(),
            "no newline at the end".to_owned(),
        ];
        assert_eq!(texts, expected);
    }

    #[tokio::test]
    async fn output_in_pieces_and_in_bursts_arrives_whole_and_in_order() {
        // A line split across the pause after a short read, then more than
        // a buffer's worth at once (read again without a pause), then a
        // trickle again.
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        let script = "printf 'par'; sleep 0.05; printf 'tial\\n'; \
                      seq 1 20000 | sed 's/^/burst /'; sleep 0.05; echo last";
        run_captured(&log, script).await;

        let lines = log.tail(30_000).expect("tail");
        let texts: Vec<&str> = lines.iter().map(|line| text(line)).collect();
        let mut expected = vec!["partial".to_owned()];
        expected.extend((1..=20_000).map(|i| format!("burst {i}")));
        expected.push("last".to_owned());
        assert_eq!(texts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_read_pauses_the_next_and_a_busy_pipe_is_read_at_once() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        // A pipe that holds less than the capture reads at once but more
        // than PIPE_BUSY (as a pipe filled by small writes does): a write
        // beyond that waits until the capture reads.
        let (mut app, pipe) = tokio::io::duplex(PIPE_READ / 2);
        let capture = tokio::spawn(log.clone().copy_lines(pipe, Stream::Stdout));

        app.write_all(b"one line\n").await.expect("write");
        // Time stands still until every task waits; the capture reads the
        // short line and then pauses.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = tokio::time::Instant::now();
        app.write_all(&[b'x'; 4 * PIPE_READ]).await.expect("write");
        let waited = start.elapsed();
        // The write waited out the pause (less the 1 ms slept) ...
        assert!(
            waited >= PIPE_PAUSE - Duration::from_millis(1),
            "{waited:?}"
        );
        // ... and then no more: every read after it was a busy one.
        assert!(waited < 2 * PIPE_PAUSE, "{waited:?}");

        drop(app);
        capture.await.expect("capture task");
        log.flush().await;
        let lines = log.tail(100).expect("tail");
        assert_eq!(
            lines.len(),
            1 + 4 * PIPE_READ / MAX_LINE_BYTES,
            "{}",
            lines.len()
        );
        assert_eq!(text(&lines[0]), "one line");
    }

    #[tokio::test]
    async fn a_closed_log_writes_nothing_more() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), small(4096, 2)).expect("open");
        run_captured(&log, "echo before").await;
        log.close().await;
        // Enough to rotate many times over, were it written.
        run_captured(&log, "seq 1 2000").await;
        log.note("a note after the close");
        log.flush().await;

        let lines = log.tail(10).expect("tail");
        let texts: Vec<&str> = lines.iter().map(|line| text(line)).collect();
        assert_eq!(texts, ["before"]);
        assert!(!log_path(dir.path(), 1).exists(), "rotated after the close");
    }

    #[tokio::test]
    async fn invalid_utf8_and_carriage_returns_are_cleaned() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        run_captured(&log, "printf 'a\\377b\\n'; printf 'crlf\\r\\n'").await;

        let lines = log.tail(10).expect("tail");
        let texts: Vec<&str> = lines.iter().map(|line| text(line)).collect();
        assert_eq!(texts, ["a\u{FFFD}b", "crlf"]);
    }

    #[tokio::test]
    async fn secret_values_are_masked_in_app_lines_and_notes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        log.set_masks(vec![
            SecretString::from("tok-123456"),
            SecretString::from("tok-123456-long"),
            SecretString::from("on"),
        ]);
        run_captured(&log, "echo 'db=tok-123456-long key=tok-123456 debug=on'").await;
        log.note("value tok-123456 in a note");
        log.flush().await;
        let lines = log.tail(10).expect("tail");
        assert_eq!(text(&lines[0]), "db=[redacted] key=[redacted] debug=on");
        assert_eq!(text(&lines[1]), "value [redacted] in a note");
    }

    #[tokio::test]
    async fn notes_are_one_line_each() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        log.note("exited with status 1\nsecond line");
        log.flush().await;

        let lines = log.tail(10).expect("tail");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with(" spinforge exited with status 1 second line"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_writer_drops_lines_instead_of_freezing_the_app() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), small(1, 2)).expect("open");

        // Every line rotates, and rotation waits while a reader holds the
        // file lock, here on a thread of its own.
        let shared = Arc::clone(&log.inner.shared);
        let (held, is_held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let _reading = shared.files.read().unwrap_or_else(PoisonError::into_inner);
            let _ = held.send(());
            let _ = released.recv();
        });
        is_held.recv().expect("the reader holds the lock");

        let started = std::time::Instant::now();
        tokio::time::timeout(STALL * 5, run_captured_without_flush(&log, "seq 1 5000"))
            .await
            .expect("the app ran to the end although the writer was stuck");
        assert!(started.elapsed() >= STALL);
        let _ = release.send(());
        reader.join().expect("reader thread");
        log.flush().await;

        let lines = log.tail(3).expect("tail");
        let note = lines
            .iter()
            .find(|line| line.contains(" spinforge dropped "));
        assert!(note.is_some(), "{lines:?}");
    }

    #[tokio::test]
    async fn dropped_lines_are_counted_in_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), LogConfig::default()).expect("open");
        log.inner.shared.dropped.store(3, Ordering::Relaxed);
        log.flush().await;

        let lines = log.tail(1).expect("tail");
        assert_eq!(
            text(&lines[0]),
            "dropped 3 lines: the log writer fell behind"
        );
    }

    #[tokio::test]
    async fn reopening_ends_a_partial_line_and_removes_stale_rotations() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partial = "2026-12-04T15:00:00.123Z stdout cut of";
        fs::write(dir.path().join("app.log"), partial).expect("write");
        fs::write(dir.path().join("app.log.7"), "old\n").expect("write");
        fs::write(dir.path().join("app.log.1"), "kept\n").expect("write");

        let log = AppLog::open(dir.path(), small(1024, 2)).expect("open");
        log.note("after restart");
        log.flush().await;

        let lines = log.tail(10).expect("tail");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "kept");
        assert_eq!(lines[1], partial);
        assert_eq!(text(&lines[2]), "after restart");
        assert!(!dir.path().join("app.log.7").exists());
    }

    #[tokio::test]
    async fn keeping_no_rotated_files_still_caps_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::open(dir.path(), small(100, 0)).expect("open");
        for index in 0..10 {
            log.note(&format!("line {index}"));
        }
        log.flush().await;

        assert!(dir_bytes(dir.path()) <= 100);
        let lines = log.tail(10).expect("tail");
        assert_eq!(text(&lines[lines.len() - 1]), "line 9");
    }

    #[test]
    fn utf8_cut_never_splits_a_character() {
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut("aé".as_bytes()), 3);
        assert_eq!(utf8_cut(&"aé".as_bytes()[..2]), 1);
        assert_eq!(utf8_cut(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_cut(&"a😀".as_bytes()[..4]), 1);
        assert_eq!(utf8_cut("a😀".as_bytes()), 5);
        assert_eq!(utf8_cut(b"\xff\xff"), 2);
    }

    #[test]
    fn open_outside_a_runtime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(AppLog::open(dir.path(), LogConfig::default()).is_err());
    }
}

#[cfg(test)]
mod escape_tests {
    use super::escape_controls;

    #[test]
    fn escape_sequences_and_carriage_returns_are_made_visible() {
        let forged = "ok\r2026-01-01T00:00:00.000Z spinforge release FAKE\u{1b}[2J\u{1b}]0;t\u{7}";
        let shown = escape_controls(forged.to_owned());
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert!(shown.starts_with("ok\\u{d}2026"), "{shown}");
        assert!(shown.contains("\\u{1b}[2J"));
        assert_eq!(escape_controls("tab\tstays".to_owned()), "tab\tstays");
    }
}
