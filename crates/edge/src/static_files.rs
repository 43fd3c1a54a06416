//! Serves one site's active release folder over HTTP: safe path resolution,
//! directory index and SPA fallback, validators and conditional requests,
//! single byte ranges, and on-the-fly br/gzip for text-like files.
//! It never lists a directory, never serves a dotfile, and never leaves the
//! release root, whatever the request path or the symlinks in the release say.
//! It does not pick the site or the release: the caller hands it the root.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use async_compression::Level;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use mime_guess::{mime, Mime};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio_util::io::ReaderStream;

use crate::body::{self, BoxError, EdgeBody};

/// Read size of file streams (bytes). Each read is a trip to the blocking
/// pool, so large reads keep big files cheap.
const CHUNK: usize = 256 * 1024;

/// The buffer in front of a compressor (bytes).
const COMPRESS_BUFFER: usize = 64 * 1024;

/// Smaller files go out as they are: compressing them saves too little (bytes).
const MIN_COMPRESS_SIZE: u64 = 1024;

/// Larger files go out as they are: compressing them on every request
/// would let any client spend our CPU cheaply (bytes).
// Limitation: big text files are sent uncompressed; precompressing at
// deploy time would lift this.
const MAX_COMPRESS_SIZE: u64 = 4 * 1024 * 1024;

/// Brotli quality for on-the-fly work. Quality 0 is fastest but packs text
/// worse than gzip at level 1; 4 is still cheap and clearly better.
const BROTLI_QUALITY: i32 = 4;

/// Characters escaped when a decoded segment goes back into a `Location`.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Serves `request_path` (the raw, still percent-encoded path of the URI, without query) from
/// `root` (an existing directory: the active release folder, given as a
/// canonical path with no symlinks in it; every file served is checked to
/// lie under it).
///
/// Only GET and HEAD are served; HEAD gets exactly the headers GET would get
/// (a HEAD request ignores `Range`, as RFC 9110 asks). Every response, errors
/// included, carries `X-Content-Type-Options: nosniff`, and error bodies are
/// short fixed texts that never name a path or an OS error.
pub async fn serve(
    root: &Path,
    spa: bool,
    method: &Method,
    request_path: &str,
    headers: &HeaderMap,
) -> Response<EdgeBody> {
    let mut response = if method != Method::GET && method != Method::HEAD {
        Refusal::MethodNotAllowed.into_response()
    } else {
        // Resolving, opening and (for a small file) reading happen in one
        // trip to the blocking pool: each filesystem call made through
        // tokio::fs would be a trip of its own.
        let (root, path) = (root.to_owned(), request_path.to_owned());
        let found = tokio::task::spawn_blocking(move || open(&root, spa, &path))
            .await
            .unwrap_or(Err(Refusal::Internal));
        match found {
            Ok(Found::File(opened)) => respond_with_file(opened, method, headers)
                .await
                .unwrap_or_else(Refusal::into_response),
            Ok(Found::Redirect(location)) => redirect(&location),
            Err(refusal) => refusal.into_response(),
        }
    };

    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if method == Method::HEAD {
        *response.body_mut() = body::empty();
    }
    response
}

/// Why a request gets no file. All but `Internal` are the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client: a method other than GET or HEAD.
    MethodNotAllowed,
    /// The client: a path that cannot name a file (NUL, backslash, bad
    /// UTF-8, a `.` or `..` segment).
    BadPath,
    /// The client: nothing servable there (missing, hidden, or outside root).
    NotFound,
    /// Our side: the release root or a file in it could not be read.
    Internal,
}

impl Refusal {
    /// The one place a refusal becomes a response.
    fn into_response(self) -> Response<EdgeBody> {
        match self {
            Refusal::MethodNotAllowed => {
                let mut response = plain(StatusCode::METHOD_NOT_ALLOWED);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
            Refusal::BadPath => plain(StatusCode::BAD_REQUEST),
            Refusal::NotFound => plain(StatusCode::NOT_FOUND),
            Refusal::Internal => plain(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// What a request path resolves to.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// A regular file, canonical and inside the root.
    File(PathBuf),
    /// A directory asked for without its trailing slash; holds the `Location`.
    Redirect(String),
}

/// A file ready to be served, with its contents when it is small.
struct Opened {
    file: std::fs::File,
    info: FileInfo,
    /// The whole file, read in the same blocking call, when it is at most
    /// [`SMALL_FILE`] bytes.
    contents: Option<bytes::Bytes>,
}

enum Found {
    File(Opened),
    Redirect(String),
}

/// Files up to this size are read whole while resolving (bytes).
const SMALL_FILE: u64 = 64 * 1024;

/// Resolves the path, opens the file and reads it if small. Blocking.
fn open(root: &Path, spa: bool, request_path: &str) -> Result<Found, Refusal> {
    let path = match resolve(root, spa, request_path)? {
        Resolved::File(path) => path,
        Resolved::Redirect(location) => return Ok(Found::Redirect(location)),
    };
    let mut file = std::fs::File::open(&path).map_err(internal)?;
    let info = FileInfo::new(&path, &file.metadata().map_err(internal)?);
    let contents = if info.size <= SMALL_FILE {
        let mut buffer = Vec::with_capacity(info.size as usize);
        std::io::Read::read_to_end(&mut file, &mut buffer).map_err(internal)?;
        Some(bytes::Bytes::from(buffer))
    } else {
        None
    };
    Ok(Found::File(Opened {
        file,
        info,
        contents,
    }))
}

/// Where a candidate path really lands once symlinks are followed.
enum Place {
    File(PathBuf),
    Directory(PathBuf),
    /// Does not exist (or cannot be looked at).
    Missing,
    /// Exists but must not be served: outside the root, under a dot name,
    /// or neither a regular file nor a directory.
    Forbidden,
}

/// Maps a raw request path to the file to serve, following the rules in the
/// module doc: decode once, refuse dot segments and dotfiles, stay in root.
fn resolve(root: &Path, spa: bool, request_path: &str) -> Result<Resolved, Refusal> {
    let decoded = percent_decode_str(request_path)
        .decode_utf8()
        .map_err(|_| Refusal::BadPath)?;
    if decoded.contains(['\0', '\\']) {
        return Err(Refusal::BadPath);
    }
    let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(Refusal::BadPath);
    }
    if segments.iter().any(|s| s.starts_with('.')) {
        return Err(Refusal::NotFound);
    }

    // The caller hands over a canonical root (see `serve`), so it is not
    // resolved again on every request.
    let root = root.to_path_buf();
    let wants_directory = decoded.ends_with('/');
    let target = segments.iter().fold(root.clone(), |path, s| path.join(s));

    match confine(&root, &target) {
        Place::File(file) if !wants_directory => return Ok(Resolved::File(file)),
        Place::Directory(_) if !wants_directory => {
            return Ok(Resolved::Redirect(directory_location(&segments)));
        }
        Place::Directory(dir) => match confine(&root, &dir.join("index.html")) {
            Place::File(index) => return Ok(Resolved::File(index)),
            Place::Forbidden => return Err(Refusal::NotFound),
            Place::Directory(_) | Place::Missing => {}
        },
        Place::Forbidden => return Err(Refusal::NotFound),
        // A file asked for with a trailing slash counts as missing.
        Place::File(_) | Place::Missing => {}
    }

    // Nothing is here: a client-side route of a single-page app, perhaps.
    let has_extension = segments
        .last()
        .is_some_and(|last| Path::new(last).extension().is_some());
    if spa && !has_extension {
        if let Place::File(index) = confine(&root, &root.join("index.html")) {
            return Ok(Resolved::File(index));
        }
    }
    Err(Refusal::NotFound)
}

/// Follows `candidate` to its real location and says whether it may be
/// served. `root` must already be canonical.
fn confine(root: &Path, candidate: &Path) -> Place {
    let Ok(real) = std::fs::canonicalize(candidate) else {
        return Place::Missing;
    };
    // Checked on the real path too: a symlink in the release may point out
    // of it, or at a dot directory inside it.
    let Ok(inside) = real.strip_prefix(root) else {
        return Place::Forbidden;
    };
    if inside
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    {
        return Place::Forbidden;
    }

    match std::fs::metadata(&real) {
        Ok(meta) if meta.is_file() => Place::File(real),
        Ok(meta) if meta.is_dir() => Place::Directory(real),
        // FIFOs, sockets, devices: opening some of them would block.
        Ok(_) => Place::Forbidden,
        Err(_) => Place::Missing,
    }
}

/// The canonical path of a directory, with its slash: re-encoded from the
/// decoded segments, so it always starts with exactly one `/` and can never
/// be read as a scheme-relative `//host` redirect.
// Limitation: the query string is dropped from the redirect (`serve` would
// need the raw query as an argument to carry it over).
fn directory_location(segments: &[&str]) -> String {
    let mut location = String::from("/");
    for segment in segments {
        location.extend(utf8_percent_encode(segment, SEGMENT));
        location.push('/');
    }
    location
}

/// What the client gets from a file it may read.
async fn respond_with_file(
    opened: Opened,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<EdgeBody>, Refusal> {
    let Opened {
        file,
        info,
        contents,
    } = opened;

    let range = if method == Method::GET {
        requested_range(headers, &info)
    } else {
        ByteRange::Full
    };
    let coding = if range == ByteRange::Full
        && info.compressible()
        && (MIN_COMPRESS_SIZE..=MAX_COMPRESS_SIZE).contains(&info.size)
    {
        negotiate(headers)
    } else {
        Coding::Identity
    };
    let etag = info.etag(coding);

    let mut out = HeaderMap::new();
    insert(&mut out, header::ETAG, &etag);
    if let Some(modified) = info.modified {
        insert(
            &mut out,
            header::LAST_MODIFIED,
            &httpdate::fmt_http_date(modified),
        );
    }
    if info.mime.essence_str() == "text/html" {
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if info.compressible() {
        out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if is_not_modified(headers, &etag, info.modified_secs()) {
        return Ok(assemble(StatusCode::NOT_MODIFIED, out, body::empty()));
    }

    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let response = match range {
        ByteRange::Unsatisfiable => {
            let text = "416 Range Not Satisfiable\n";
            insert(
                &mut out,
                header::CONTENT_RANGE,
                &format!("bytes */{}", info.size),
            );
            out.insert(header::CONTENT_TYPE, text_plain());
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
            assemble(StatusCode::RANGE_NOT_SATISFIABLE, out, body::full(text))
        }
        ByteRange::Partial { start, end } => {
            let length = end - start + 1;
            let range = format!("bytes {start}-{end}/{}", info.size);
            insert(&mut out, header::CONTENT_RANGE, &range);
            insert(&mut out, header::CONTENT_TYPE, &info.content_type());
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            let body = match contents {
                // The range was checked against the size this was read at.
                Some(all) if all.len() as u64 == info.size => {
                    body::full(all.slice(start as usize..=end as usize))
                }
                _ => {
                    let mut file = tokio::fs::File::from_std(file);
                    file.seek(std::io::SeekFrom::Start(start))
                        .await
                        .map_err(internal)?;
                    stream(file.take(length))
                }
            };
            assemble(StatusCode::PARTIAL_CONTENT, out, body)
        }
        ByteRange::Full => {
            insert(&mut out, header::CONTENT_TYPE, &info.content_type());
            let body = match (coding, contents) {
                (Coding::Identity, Some(all)) => {
                    out.insert(header::CONTENT_LENGTH, HeaderValue::from(all.len()));
                    body::full(all)
                }
                (Coding::Identity, None) => {
                    out.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
                    stream(tokio::fs::File::from_std(file))
                }
                (coding, Some(all)) => compress(coding, std::io::Cursor::new(all), &mut out),
                (coding, None) => {
                    let file = tokio::fs::File::from_std(file);
                    compress(
                        coding,
                        BufReader::with_capacity(COMPRESS_BUFFER, file),
                        &mut out,
                    )
                }
            };
            assemble(StatusCode::OK, out, body)
        }
    };
    Ok(response)
}

/// A body compressed on the fly from `source`, with its Content-Encoding.
fn compress<R>(coding: Coding, source: R, out: &mut HeaderMap) -> EdgeBody
where
    R: tokio::io::AsyncBufRead + Send + Sync + 'static,
{
    match coding {
        Coding::Brotli => {
            out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
            stream(BrotliEncoder::with_quality(
                source,
                Level::Precise(BROTLI_QUALITY),
            ))
        }
        Coding::Gzip => {
            out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            stream(GzipEncoder::with_quality(source, Level::Fastest))
        }
        Coding::Identity => stream(source),
    }
}

fn assemble(status: StatusCode, headers: HeaderMap, body: EdgeBody) -> Response<EdgeBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The facts about a file that its response headers are made from.
struct FileInfo {
    /// Length on disk (bytes).
    size: u64,
    modified: Option<SystemTime>,
    mime: Mime,
}

impl FileInfo {
    fn new(path: &Path, meta: &std::fs::Metadata) -> FileInfo {
        FileInfo {
            size: meta.len(),
            modified: meta.modified().ok(),
            mime: mime_guess::from_path(path).first_or_octet_stream(),
        }
    }

    /// Seconds since the epoch: the precision of HTTP dates.
    fn modified_secs(&self) -> Option<u64> {
        let since_epoch = self.modified?.duration_since(UNIX_EPOCH).ok()?;
        Some(since_epoch.as_secs())
    }

    /// `"<size hex>-<mtime nanos hex>"`, with `-br`/`-gz` inside the quotes
    /// for a compressed variant so caches never mix the variants up.
    fn etag(&self, coding: Coding) -> String {
        let nanos = self
            .modified
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("\"{:x}-{:x}{}\"", self.size, nanos, coding.etag_suffix())
    }

    fn content_type(&self) -> String {
        let essence = self.mime.essence_str();
        if self.mime.type_() == mime::TEXT || essence == "application/javascript" {
            format!("{essence}; charset=utf-8")
        } else {
            essence.to_string()
        }
    }

    /// True if and only if the type is text-like, so compression pays off.
    fn compressible(&self) -> bool {
        self.mime.type_() == mime::TEXT
            || matches!(
                self.mime.essence_str(),
                "application/javascript"
                    | "application/json"
                    | "application/manifest+json"
                    | "application/xml"
                    | "application/wasm"
                    | "image/svg+xml"
            )
    }
}

/// A content coding this server can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Brotli,
}

impl Coding {
    fn etag_suffix(self) -> &'static str {
        match self {
            Coding::Identity => "",
            Coding::Gzip => "-gz",
            Coding::Brotli => "-br",
        }
    }
}

/// Picks br or gzip from `Accept-Encoding`: the higher q wins, br on a tie,
/// and `q=0` (or an unreadable q) means "not acceptable". `*` stands for
/// whichever of the two is not named.
fn negotiate(headers: &HeaderMap) -> Coding {
    let (mut brotli, mut gzip, mut any) = (None, None, None);
    let values = headers.get_all(header::ACCEPT_ENCODING);
    for item in values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.trim().split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
        match name.as_str() {
            "br" => brotli = Some(quality),
            "gzip" | "x-gzip" => gzip = Some(quality),
            "*" => any = Some(quality),
            _ => {}
        }
    }

    let brotli = brotli.or(any).unwrap_or(0.0);
    let gzip = gzip.or(any).unwrap_or(0.0);
    if brotli > 0.0 && brotli >= gzip {
        Coding::Brotli
    } else if gzip > 0.0 {
        Coding::Gzip
    } else {
        Coding::Identity
    }
}

/// `If-None-Match` decides when present (weak comparison, `*` matches any);
/// otherwise `If-Modified-Since` does, to the second.
fn is_not_modified(headers: &HeaderMap, etag: &str, modified_secs: Option<u64>) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    }
    match (
        header_date(headers, header::IF_MODIFIED_SINCE),
        modified_secs,
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// A header's HTTP date as seconds since the epoch; `None` if absent or bad.
fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    let date = httpdate::parse_http_date(value.trim()).ok()?;
    Some(date.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// The part of a file a GET asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// No usable `Range`: serve everything with 200.
    Full,
    /// Inclusive byte offsets, both inside the file.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Reads `Range`, honouring `If-Range` against the identity ETag (strong
/// comparison) or Last-Modified (same second).
fn requested_range(headers: &HeaderMap, info: &FileInfo) -> ByteRange {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return ByteRange::Full;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        let validator = if_range.to_str().unwrap_or_default().trim();
        let holds = if validator.starts_with('"') {
            validator == info.etag(Coding::Identity)
        } else {
            let date = header_date(headers, header::IF_RANGE);
            date.is_some() && date == info.modified_secs()
        };
        if !holds {
            return ByteRange::Full;
        }
    }
    parse_byte_range(value, info.size)
}

/// Parses one `bytes=` range against a file of `size` bytes. Anything this
/// server does not take (other units, several ranges, malformed specs) is
/// ignored, which RFC 9110 allows, and yields `Full`.
fn parse_byte_range(value: &str, size: u64) -> ByteRange {
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .and_then(|_| value.get(6..))
    else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };

    match (digits(first), digits(last)) {
        // `bytes=-n`: the last n bytes.
        (Some(None), Some(Some(suffix))) => {
            if suffix == 0 || size == 0 {
                return ByteRange::Unsatisfiable;
            }
            ByteRange::Partial {
                start: size - suffix.min(size),
                end: size - 1,
            }
        }
        // `bytes=a-` and `bytes=a-b`.
        (Some(Some(start)), Some(end)) => {
            if end.is_some_and(|end| end < start) {
                return ByteRange::Full;
            }
            if start >= size {
                return ByteRange::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |end| end.min(size - 1));
            ByteRange::Partial { start, end }
        }
        _ => ByteRange::Full,
    }
}

/// `Some(None)` for an empty string, `Some(Some(n))` for plain ASCII digits
/// that fit a u64, and `None` for anything else.
fn digits(text: &str) -> Option<Option<u64>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(None);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Some)
}

/// Streams `reader` in `CHUNK`-sized frames; a read error ends the body with
/// an error, so the connection is cut rather than the file silently truncated.
fn stream<R>(reader: R) -> EdgeBody
where
    R: AsyncRead + Send + Sync + 'static,
{
    let frames = ReaderStream::with_capacity(reader, CHUNK)
        .map_ok(Frame::data)
        .map_err(BoxError::from);
    StreamBody::new(frames).boxed()
}

/// A short text response: `"<code> <reason>\n"`.
fn plain(status: StatusCode) -> Response<EdgeBody> {
    let text = format!("{status}\n");
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, text_plain());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    assemble(status, headers, body::full(text))
}

fn redirect(location: &str) -> Response<EdgeBody> {
    let mut response = plain(StatusCode::PERMANENT_REDIRECT);
    insert(response.headers_mut(), header::LOCATION, location);
    response
}

fn text_plain() -> HeaderValue {
    HeaderValue::from_static("text/plain; charset=utf-8")
}

/// Sets a header built here from our own ASCII text; a value that could not
/// be a header is dropped rather than risking a panic.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn internal(error: std::io::Error) -> Refusal {
    tracing::warn!(%error, "static file could not be read");
    Refusal::Internal
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;
    use http::header::{self, HeaderMap, HeaderValue};
    use http::{Method, StatusCode};
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    use super::serve;

    /// Lives in the temp folder next to the release, never inside it.
    const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-RELEASE";

    /// A release folder inside a temp folder that also holds a secret file.
    struct Release {
        _dir: tempfile::TempDir,
        root: PathBuf,
        big_text: String,
        blob: Vec<u8>,
    }

    fn release() -> Release {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("release");
        let write = |path: &str, contents: &[u8]| {
            let path = root.join(path);
            let parent = path.parent().expect("fixture paths have a parent");
            std::fs::create_dir_all(parent).expect("create fixture dir");
            std::fs::write(path, contents).expect("write fixture file");
        };
        let big_text: String = "static files want to be small. ".repeat(200)[..5000].into();
        let blob: Vec<u8> = (0..2048u32).map(|i| (i * 7 % 256) as u8).collect();

        write("index.html", b"<h1>home</h1>");
        write("docs/index.html", b"<h1>docs</h1>");
        write("\u{fc}n\u{ef}/r\u{e9}sum\u{e9}.txt", b"curriculum vitae");
        write("assets/big.txt", big_text.as_bytes());
        write("assets/blob.bin", &blob);
        write("assets/small.css", b"body { margin: 0 }");
        write(".git/config", SECRET.as_bytes());
        write(".env", SECRET.as_bytes());
        std::fs::create_dir_all(root.join("empty")).expect("create empty dir");
        std::fs::write(dir.path().join("secret.txt"), SECRET).expect("write secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(dir.path().join("secret.txt"), root.join("assets/leak.txt"))
                .expect("file symlink");
            symlink(dir.path(), root.join("outside")).expect("dir symlink");
            symlink(root.join(".git"), root.join("gitlink")).expect("dot symlink");
        }
        let root = root.canonicalize().expect("canonical fixture root");
        Release {
            _dir: dir,
            root,
            big_text,
            blob,
        }
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        fn header(&self, name: header::HeaderName) -> &str {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        }
    }

    async fn request(
        release: &Release,
        spa: bool,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
    ) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                name.clone(),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let response = serve(&release.root, spa, &method, path, &map).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body streams").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(release: &Release, path: &str) -> Reply {
        request(release, false, Method::GET, path, &[]).await
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    const ESCAPES: &[(&str, StatusCode)] = &[
        ("/../secret.txt", StatusCode::BAD_REQUEST),
        ("/assets/../../secret.txt", StatusCode::BAD_REQUEST),
        ("/%2e%2e/secret.txt", StatusCode::BAD_REQUEST),
        ("/%2E%2E/secret.txt", StatusCode::BAD_REQUEST),
        ("/./index.html", StatusCode::BAD_REQUEST),
        ("/%252e%252e/secret.txt", StatusCode::NOT_FOUND),
        ("/..%5csecret.txt", StatusCode::BAD_REQUEST),
        ("/%00", StatusCode::BAD_REQUEST),
        ("/index.html%00.txt", StatusCode::BAD_REQUEST),
        ("/%c0%ae%c0%ae/secret.txt", StatusCode::BAD_REQUEST),
        ("/.git/config", StatusCode::NOT_FOUND),
        ("/.git", StatusCode::NOT_FOUND),
        ("/.env", StatusCode::NOT_FOUND),
        ("/assets/%2eenv", StatusCode::NOT_FOUND),
        ("//etc/passwd", StatusCode::NOT_FOUND),
        ("/assets/leak.txt", StatusCode::NOT_FOUND),
        ("/outside/secret.txt", StatusCode::NOT_FOUND),
        ("/gitlink/config", StatusCode::NOT_FOUND),
    ];

    #[tokio::test]
    async fn dot_segments_never_escape_the_root() {
        let release = release();
        for (path, expected) in ESCAPES {
            let reply = get(&release, path).await;
            assert_eq!(reply.status, *expected, "{path}");
            assert!(!contains(&reply.body, SECRET.as_bytes()), "{path} leaked");
            assert!(
                !contains(&reply.body, b"root:"),
                "{path} leaked /etc/passwd"
            );
        }
    }

    #[tokio::test]
    async fn spa_fallback_never_reveals_hidden_or_outside_files() {
        let release = release();
        for (path, _) in ESCAPES {
            let reply = request(&release, true, Method::GET, path, &[]).await;
            assert!(!contains(&reply.body, SECRET.as_bytes()), "{path} leaked");
            assert!(
                !contains(&reply.body, b"root:"),
                "{path} leaked /etc/passwd"
            );
        }
        for path in [
            "/.git/config",
            "/.git",
            "/.env",
            "/gitlink",
            "/outside/secret.txt",
        ] {
            let reply = request(&release, true, Method::GET, path, &[]).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn errors_are_short_texts_that_name_no_path() {
        let release = release();
        let missing = get(&release, "/nope/missing.txt").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.body, "404 Not Found\n");
        assert_eq!(
            missing.header(header::CONTENT_TYPE),
            "text/plain; charset=utf-8"
        );
        assert_eq!(missing.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");

        let bad = get(&release, "/%c0%ae").await;
        assert_eq!(bad.body, "400 Bad Request\n");
    }

    #[tokio::test]
    async fn methods_other_than_get_and_head_are_refused_with_allow() {
        let release = release();
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let reply = request(&release, false, method.clone(), "/index.html", &[]).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(reply.header(header::ALLOW), "GET, HEAD");
            assert_eq!(reply.body, "405 Method Not Allowed\n");
        }
    }

    #[tokio::test]
    async fn get_serves_a_file_with_type_length_and_validators() {
        let release = release();
        let reply = get(&release, "/assets/blob.bin").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, release.blob);
        assert_eq!(reply.header(header::CONTENT_LENGTH), "2048");
        assert_eq!(
            reply.header(header::CONTENT_TYPE),
            "application/octet-stream"
        );
        assert_eq!(reply.header(header::ACCEPT_RANGES), "bytes");
        assert_eq!(reply.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert!(reply.header(header::ETAG).starts_with("\"800-"));
        assert!(httpdate::parse_http_date(reply.header(header::LAST_MODIFIED)).is_ok());
        assert!(reply.headers.get(header::CACHE_CONTROL).is_none());
    }

    #[tokio::test]
    async fn head_gets_the_headers_of_get_and_no_body() {
        let release = release();
        for path in ["/assets/blob.bin", "/nope.txt", "/docs"] {
            let got = get(&release, path).await;
            let head = request(&release, false, Method::HEAD, path, &[]).await;
            assert_eq!(head.status, got.status, "{path}");
            assert_eq!(head.headers, got.headers, "{path}");
            assert!(head.body.is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn percent_encoded_unicode_names_are_served() {
        let release = release();
        let reply = get(&release, "/%C3%BCn%C3%AF/r%C3%A9sum%C3%A9.txt").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "curriculum vitae");
        assert_eq!(
            reply.header(header::CONTENT_TYPE),
            "text/plain; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn html_is_revalidated_on_every_use() {
        let release = release();
        let reply = get(&release, "/index.html").await;
        assert_eq!(
            reply.header(header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(reply.header(header::CACHE_CONTROL), "no-cache");
    }

    #[tokio::test]
    async fn directory_with_slash_serves_its_index() {
        let release = release();
        let docs = get(&release, "/docs/").await;
        assert_eq!(docs.status, StatusCode::OK);
        assert_eq!(docs.body, "<h1>docs</h1>");
        let home = get(&release, "/").await;
        assert_eq!(home.body, "<h1>home</h1>");
    }

    #[tokio::test]
    async fn directory_without_slash_redirects_to_the_slashed_path() {
        let release = release();
        for (path, location) in [
            ("/docs", "/docs/"),
            ("//docs", "/docs/"),
            ("/%C3%BCn%C3%AF", "/%C3%BCn%C3%AF/"),
            ("", "/"),
        ] {
            let reply = get(&release, path).await;
            assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT, "{path:?}");
            assert_eq!(reply.header(header::LOCATION), location, "{path:?}");
        }
    }

    #[tokio::test]
    async fn directories_are_never_listed() {
        let release = release();
        assert_eq!(get(&release, "/empty/").await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&release, "/assets/").await.status,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn spa_serves_the_root_index_for_extensionless_misses() {
        let release = release();
        for path in ["/app/settings", "/app/settings/", "/empty/"] {
            let reply = request(&release, true, Method::GET, path, &[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            assert_eq!(reply.body, "<h1>home</h1>", "{path}");
        }
        let asset = request(&release, true, Method::GET, "/missing.js", &[]).await;
        assert_eq!(asset.status, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&release, "/app/settings").await.status,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn a_file_with_a_trailing_slash_is_not_found() {
        let release = release();
        assert_eq!(
            get(&release, "/assets/blob.bin/").await.status,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn matching_if_none_match_gets_304_without_body() {
        let release = release();
        let etag = get(&release, "/assets/blob.bin")
            .await
            .header(header::ETAG)
            .to_string();
        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        for candidate in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let reply = request(
                &release,
                false,
                Method::GET,
                "/assets/blob.bin",
                &[(header::IF_NONE_MATCH, candidate)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{candidate}");
            assert_eq!(reply.header(header::ETAG), etag);
            assert!(reply.headers.contains_key(header::LAST_MODIFIED));
            assert!(reply.body.is_empty());
        }
        let stale = [(header::IF_NONE_MATCH, "\"other\"")];
        let reply = request(&release, false, Method::GET, "/assets/blob.bin", &stale).await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn if_modified_since_gets_304_only_when_unchanged() {
        let release = release();
        let first = get(&release, "/assets/blob.bin").await;
        let modified = first.header(header::LAST_MODIFIED);
        let path = "/assets/blob.bin";

        let same = [(header::IF_MODIFIED_SINCE, modified)];
        let reply = request(&release, false, Method::GET, path, &same).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);

        let old = [(header::IF_MODIFIED_SINCE, "Sat, 01 Jan 2000 00:00:00 GMT")];
        let reply = request(&release, false, Method::GET, path, &old).await;
        assert_eq!(reply.status, StatusCode::OK);

        // If-None-Match takes precedence over the date.
        let both = [
            (header::IF_MODIFIED_SINCE, modified),
            (header::IF_NONE_MATCH, "\"x\""),
        ];
        let reply = request(&release, false, Method::GET, path, &both).await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    async fn ranged(release: &Release, range: &str) -> Reply {
        let headers = [(header::RANGE, range)];
        request(release, false, Method::GET, "/assets/blob.bin", &headers).await
    }

    #[tokio::test]
    async fn single_ranges_get_206_with_content_range() {
        let release = release();
        for (range, start, end) in [
            ("bytes=0-99", 0, 99),
            ("bytes=2000-", 2000, 2047),
            ("bytes=-10", 2038, 2047),
            ("bytes=100-999999", 100, 2047),
            ("bytes=-99999", 0, 2047),
        ] {
            let reply = ranged(&release, range).await;
            assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{range}");
            let expected = format!("bytes {start}-{end}/2048");
            assert_eq!(reply.header(header::CONTENT_RANGE), expected);
            let length = (end - start + 1).to_string();
            assert_eq!(reply.header(header::CONTENT_LENGTH), length);
            assert_eq!(reply.body, release.blob[start..=end], "{range}");
        }
    }

    #[tokio::test]
    async fn unsatisfiable_ranges_get_416_with_the_size() {
        let release = release();
        for range in ["bytes=2048-", "bytes=5000-6000", "bytes=-0"] {
            let reply = ranged(&release, range).await;
            assert_eq!(reply.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(reply.header(header::CONTENT_RANGE), "bytes */2048");
        }
    }

    #[tokio::test]
    async fn several_or_malformed_ranges_get_the_whole_file() {
        let release = release();
        for range in [
            "bytes=0-1,5-6",
            "bytes=9-3",
            "items=0-5",
            "bytes=abc",
            "bytes=+1-2",
        ] {
            let reply = ranged(&release, range).await;
            assert_eq!(reply.status, StatusCode::OK, "{range}");
            assert_eq!(reply.body, release.blob, "{range}");
        }
    }

    #[tokio::test]
    async fn if_range_that_does_not_match_gets_the_whole_file() {
        let release = release();
        let first = get(&release, "/assets/blob.bin").await;
        let path = "/assets/blob.bin";
        for (validator, status) in [
            (first.header(header::ETAG), StatusCode::PARTIAL_CONTENT),
            (
                first.header(header::LAST_MODIFIED),
                StatusCode::PARTIAL_CONTENT,
            ),
            ("\"stale\"", StatusCode::OK),
            ("Sat, 01 Jan 2000 00:00:00 GMT", StatusCode::OK),
        ] {
            let headers = [(header::RANGE, "bytes=0-9"), (header::IF_RANGE, validator)];
            let reply = request(&release, false, Method::GET, path, &headers).await;
            assert_eq!(reply.status, status, "{validator}");
        }
    }

    #[tokio::test]
    async fn head_ignores_range() {
        let release = release();
        let headers = [(header::RANGE, "bytes=0-9")];
        let reply = request(&release, false, Method::HEAD, "/assets/blob.bin", &headers).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header(header::CONTENT_LENGTH), "2048");
    }

    async fn with_encoding(release: &Release, path: &str, accept: &str) -> Reply {
        let headers = [(header::ACCEPT_ENCODING, accept)];
        request(release, false, Method::GET, path, &headers).await
    }

    #[tokio::test]
    async fn brotli_is_preferred_and_decodes_to_the_file() {
        let release = release();
        let reply = with_encoding(&release, "/assets/big.txt", "gzip, deflate, br").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header(header::CONTENT_ENCODING), "br");
        assert_eq!(reply.header(header::VARY), "accept-encoding");
        assert!(reply.headers.get(header::CONTENT_LENGTH).is_none());
        assert!(reply.header(header::ETAG).ends_with("-br\""));
        assert!(reply.body.len() < 5000);

        let mut decoder = async_compression::tokio::bufread::BrotliDecoder::new(&reply.body[..]);
        let mut decoded = String::new();
        decoder
            .read_to_string(&mut decoded)
            .await
            .expect("valid brotli");
        assert_eq!(decoded, release.big_text);
    }

    #[tokio::test]
    async fn gzip_is_used_when_brotli_is_refused() {
        let release = release();
        let reply = with_encoding(&release, "/assets/big.txt", "br;q=0, gzip;q=0.5").await;
        assert_eq!(reply.header(header::CONTENT_ENCODING), "gzip");
        assert!(reply.header(header::ETAG).ends_with("-gz\""));

        let mut decoded = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&reply.body[..]),
            &mut decoded,
        )
        .expect("valid gzip");
        assert_eq!(decoded, release.big_text);
    }

    #[tokio::test]
    async fn refused_or_unknown_codings_get_the_identity() {
        let release = release();
        let plain_etag = get(&release, "/assets/big.txt")
            .await
            .header(header::ETAG)
            .to_string();
        for accept in [
            "br;q=0, gzip;q=0",
            "identity",
            "deflate",
            "*;q=0",
            "gzip;q=x",
        ] {
            let reply = with_encoding(&release, "/assets/big.txt", accept).await;
            assert!(
                reply.headers.get(header::CONTENT_ENCODING).is_none(),
                "{accept}"
            );
            assert_eq!(reply.header(header::CONTENT_LENGTH), "5000", "{accept}");
            assert_eq!(reply.header(header::VARY), "accept-encoding", "{accept}");
            assert_eq!(reply.header(header::ETAG), plain_etag, "{accept}");
            assert_eq!(reply.body, release.big_text, "{accept}");
        }
    }

    #[tokio::test]
    async fn small_binary_and_ranged_responses_are_not_compressed() {
        let release = release();
        let small = with_encoding(&release, "/assets/small.css", "br, gzip").await;
        assert!(small.headers.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(small.header(header::VARY), "accept-encoding");

        let binary = with_encoding(&release, "/assets/blob.bin", "br, gzip").await;
        assert!(binary.headers.get(header::CONTENT_ENCODING).is_none());
        assert!(binary.headers.get(header::VARY).is_none());

        let headers = [
            (header::ACCEPT_ENCODING, "br, gzip"),
            (header::RANGE, "bytes=0-9"),
        ];
        let ranged = request(&release, false, Method::GET, "/assets/big.txt", &headers).await;
        assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
        assert!(ranged.headers.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(ranged.body, release.big_text[..10]);
    }

    #[tokio::test]
    async fn conditional_requests_compare_against_the_chosen_variant() {
        let release = release();
        let path = "/assets/big.txt";
        let br = with_encoding(&release, path, "br").await;
        let br_etag = br.header(header::ETAG);

        let same = [
            (header::ACCEPT_ENCODING, "br"),
            (header::IF_NONE_MATCH, br_etag),
        ];
        let reply = request(&release, false, Method::GET, path, &same).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
        assert_eq!(reply.header(header::VARY), "accept-encoding");

        let other = [
            (header::ACCEPT_ENCODING, "gzip"),
            (header::IF_NONE_MATCH, br_etag),
        ];
        let reply = request(&release, false, Method::GET, path, &other).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header(header::CONTENT_ENCODING), "gzip");
    }
}
