//! Splits a request into the values the WAF inspects.
//!
//! The path, each query argument (name and value), cookies, selected
//! headers and the body parsed by its type: urlencoded forms, JSON (keys
//! and string values), multipart (field values and file names) and text.
//! Every value is normalised here, once. Parse failures and suspicious
//! framing are reported as [`Anomaly`] values; scoring them is the
//! engine's business, not this module's.

use memchr::memmem;

use super::normalize::{normalize, Normalized, Source};

/// The parts of an HTTP request the WAF reads. Borrowed, so the edge can
/// build one without copying.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request method, e.g. `GET`.
    pub method: &'a str,
    /// The request target exactly as received: path, then `?query`.
    pub target: &'a str,
    /// Header names (any case) and raw values.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The request body as received (possibly empty).
    pub body: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Where in the request a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The decoded path.
    Path,
    /// A query argument's name.
    QueryName,
    /// A query argument's value (also arguments hidden behind `%3F`).
    Query,
    /// A cookie value.
    Cookie,
    /// A selected header value.
    Header,
    /// An urlencoded or multipart body field's name.
    BodyName,
    /// An urlencoded or multipart body field's value.
    Body,
    /// A key of a JSON body.
    JsonKey,
    /// A string value of a JSON body.
    Json,
    /// A multipart file name.
    FileName,
    /// A text body, or a body that failed to parse, as one value.
    BodyText,
    /// All copies of a repeated argument joined with `,`, the way some
    /// frameworks (ASP.NET) merge them.
    Joined,
}

impl Location {
    /// The name used in verdicts and audit events, CRS-like.
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Path => "PATH",
            Location::QueryName => "ARGS_NAMES",
            Location::Query => "ARGS",
            Location::Cookie => "COOKIES",
            Location::Header => "HEADERS",
            Location::BodyName => "BODY_NAMES",
            Location::Body => "BODY_ARGS",
            Location::JsonKey => "JSON_KEYS",
            Location::Json => "JSON",
            Location::FileName => "FILES_NAMES",
            Location::BodyText => "BODY",
            Location::Joined => "ARGS_JOINED",
        }
    }
}

/// One value to inspect.
#[derive(Debug, Clone)]
pub struct Target {
    pub location: Location,
    /// The argument, cookie or header name; the JSON key; empty for the path.
    pub name: String,
    pub value: Normalized,
}

/// Something about the request's framing that is suspicious in itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// The body did not parse as its declared type (`"json"`, `"multipart"`).
    BodyParse(&'static str),
    /// The declared charset is not one the WAF can read (UTF-7, say).
    Charset(String),
    /// The decoded path holds `?` or `#`: a query hidden from the router.
    QueryInPath,
    /// The request target holds a `#`, which clients never send.
    FragmentInTarget,
}

/// The result of splitting one request.
#[derive(Debug, Default)]
pub struct Extracted {
    pub targets: Vec<Target>,
    pub anomalies: Vec<Anomaly>,
    /// The body was longer than the inspection cap; only a prefix was read.
    pub body_truncated: bool,
}

/// Limits and choices for extraction, taken from the site's WAF config.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions<'a> {
    /// Body bytes inspected at most.
    pub body_cap: usize,
    /// Extra header names to inspect besides User-Agent and Referer.
    pub extra_headers: &'a [String],
    /// Whether multipart file contents are inspected as text.
    pub inspect_file_contents: bool,
}

/// Values inspected per request at most; past this the rest is skipped,
/// so a body of a million tiny JSON strings costs bounded time.
const MAX_TARGETS: usize = 4096;

/// Charsets whose bytes the normaliser reads correctly.
const READABLE_CHARSETS: &[&str] = &[
    "utf-8",
    "utf8",
    "us-ascii",
    "ascii",
    "iso-8859-1",
    "iso-8859-15",
    "latin1",
    "windows-1252",
];

/// Splits `req` into normalised targets.
pub fn extract(req: &RequestView<'_>, opts: &ExtractOptions<'_>) -> Extracted {
    let mut out = Extracted::default();

    let (before_fragment, fragment) = match req.target.split_once('#') {
        Some((a, b)) => (a, Some(b)),
        None => (req.target, None),
    };
    if fragment.is_some() {
        out.anomalies.push(Anomaly::FragmentInTarget);
    }
    let (raw_path, raw_query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_fragment, None),
    };

    let path = normalize(raw_path.as_bytes(), Source::Url);
    if let Some(i) = path.text.find(['?', '#']) {
        out.anomalies.push(Anomaly::QueryInPath);
        let hidden = path.text[i + 1..].to_owned();
        push_form(
            &mut out,
            hidden.as_bytes(),
            Source::Decoded,
            Location::QueryName,
        );
    }
    push(&mut out, Location::Path, String::new(), path);
    if let Some(q) = raw_query {
        push_form(&mut out, q.as_bytes(), Source::Form, Location::QueryName);
    }
    if let Some(f) = fragment {
        push_form(&mut out, f.as_bytes(), Source::Form, Location::QueryName);
    }

    if let Some(cookie) = req.header("cookie") {
        for pair in cookie.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let (name, value) = split_pair(pair);
            let name = String::from_utf8_lossy(name).into_owned();
            push(
                &mut out,
                Location::Cookie,
                name,
                normalize(value, Source::Url),
            );
        }
    }
    for name in ["user-agent", "referer"]
        .iter()
        .copied()
        .chain(opts.extra_headers.iter().map(String::as_str))
    {
        if let Some(v) = req.header(name) {
            push(
                &mut out,
                Location::Header,
                name.to_ascii_lowercase(),
                normalize(v, Source::Decoded),
            );
        }
    }

    if !req.body.is_empty() {
        body_targets(&mut out, req, opts);
    }
    join_repeated(&mut out);
    out
}

fn push(out: &mut Extracted, location: Location, name: String, value: Normalized) {
    if out.targets.len() < MAX_TARGETS {
        out.targets.push(Target {
            location,
            name,
            value,
        });
    }
}

fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|&b| b == b'=') {
        Some(i) => (&pair[..i], &pair[i + 1..]),
        None => (pair, &[]),
    }
}

/// Pushes the names and values of an `a=1&b=2` string. `names` is the
/// location for names; values go to its value counterpart.
fn push_form(out: &mut Extracted, raw: &[u8], source: Source, names: Location) {
    let values = match names {
        Location::BodyName => Location::Body,
        _ => Location::Query,
    };
    for pair in raw.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = split_pair(pair);
        let name = normalize(name, source);
        let key = name.text.clone();
        if !name.is_plain() {
            push(out, names, key.clone(), name);
        }
        push(out, values, key, normalize(value, source));
    }
}

/// Adds one `Joined` target per argument name that appears more than once.
fn join_repeated(out: &mut Extracted) {
    // name -> (copies, joined values); a map keeps this linear in the
    // number of arguments, however many distinct names a form has.
    let mut by_name: std::collections::HashMap<&str, (usize, String)> =
        std::collections::HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for t in &out.targets {
        if !matches!(t.location, Location::Query | Location::Body) {
            continue;
        }
        let entry = by_name.entry(t.name.as_str()).or_insert_with(|| {
            order.push(t.name.as_str());
            (0, String::new())
        });
        if entry.0 > 0 {
            entry.1.push(',');
        }
        entry.1.push_str(&t.value.text);
        entry.0 += 1;
    }
    let joined: Vec<(String, String)> = order
        .into_iter()
        .filter_map(|name| {
            let (copies, value) = by_name.remove(name)?;
            (copies > 1).then(|| (name.to_owned(), value))
        })
        .collect();
    for (name, value) in joined {
        push(
            out,
            Location::Joined,
            name,
            normalize(value.as_bytes(), Source::Decoded),
        );
    }
}

/// The media type and parameters of a Content-Type value, lower-cased.
struct ContentType {
    mime: String,
    charset: Option<String>,
    boundary: Option<String>,
}

fn parse_content_type(raw: &[u8]) -> ContentType {
    let s = String::from_utf8_lossy(raw);
    let mut parts = s.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut ct = ContentType {
        mime,
        charset: None,
        boundary: None,
    };
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "charset" => ct.charset = Some(v.to_ascii_lowercase()),
            // Boundaries are case-sensitive: keep as sent.
            "boundary" => ct.boundary = Some(v.to_owned()),
            _ => {}
        }
    }
    ct
}

fn body_targets(out: &mut Extracted, req: &RequestView<'_>, opts: &ExtractOptions<'_>) {
    let mut body = req.body;
    if body.len() > opts.body_cap {
        out.body_truncated = true;
        body = &body[..opts.body_cap];
    }
    let ct = parse_content_type(req.header("content-type").unwrap_or_default());
    if let Some(cs) = &ct.charset {
        if !READABLE_CHARSETS.contains(&cs.as_str()) {
            out.anomalies.push(Anomaly::Charset(cs.clone()));
        }
    }

    let mime = ct.mime.as_str();
    if mime == "application/x-www-form-urlencoded" {
        push_form(out, body, Source::Form, Location::BodyName);
    } else if mime == "application/json" || mime.ends_with("+json") {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => walk_json(out, &v, ""),
            Err(_) => {
                // A cut prefix is expected not to parse: inspect it as text.
                if !out.body_truncated {
                    out.anomalies.push(Anomaly::BodyParse("json"));
                }
                push_text(out, body);
            }
        }
    } else if mime == "multipart/form-data" {
        match ct
            .boundary
            .as_deref()
            .filter(|b| !b.is_empty() && b.len() <= 200)
        {
            Some(boundary) => {
                if parse_multipart(out, body, boundary, opts).is_err() && !out.body_truncated {
                    out.anomalies.push(Anomaly::BodyParse("multipart"));
                }
            }
            None => {
                out.anomalies.push(Anomaly::BodyParse("multipart"));
                push_text(out, body);
            }
        }
    } else if reads_as_text(body, out.body_truncated) {
        // Text, XML, and undeclared bodies that read as text. Binary
        // uploads (not UTF-8) are not inspected, also when cut.
        // Limitation: XML is inspected as one text value, not per element
        // (an XML parser with entity expansion off would lift it).
        push_text(out, body);
    }
}

/// True if `body` is UTF-8; a cut body may also end inside a character.
fn reads_as_text(body: &[u8], truncated: bool) -> bool {
    match std::str::from_utf8(body) {
        Ok(_) => true,
        Err(e) => truncated && e.error_len().is_none(),
    }
}

fn push_text(out: &mut Extracted, body: &[u8]) {
    push(
        out,
        Location::BodyText,
        "body".into(),
        normalize(body, Source::Decoded),
    );
}

fn walk_json(out: &mut Extracted, v: &serde_json::Value, key: &str) {
    use serde_json::Value;
    match v {
        Value::String(s) => push(
            out,
            Location::Json,
            key.to_owned(),
            normalize(s.as_bytes(), Source::Decoded),
        ),
        Value::Array(items) => items.iter().for_each(|i| walk_json(out, i, key)),
        Value::Object(map) => {
            for (k, v) in map {
                let n = normalize(k.as_bytes(), Source::Decoded);
                if !n.is_plain() {
                    push(out, Location::JsonKey, k.clone(), n);
                }
                walk_json(out, v, k);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A multipart body that does not follow RFC 7578 framing.
#[derive(Debug)]
struct MultipartError;

fn parse_multipart(
    out: &mut Extracted,
    body: &[u8],
    boundary: &str,
    opts: &ExtractOptions<'_>,
) -> Result<(), MultipartError> {
    let delim = format!("--{boundary}");
    let finder = memmem::Finder::new(delim.as_bytes());
    let first = finder.find(body).ok_or(MultipartError)?;
    let mut rest = &body[first + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Ok(());
        }
        rest = rest.strip_prefix(b"\r\n").ok_or(MultipartError)?;
        let end = finder.find(rest).ok_or(MultipartError)?;
        let part = &rest[..end];
        let part = part.strip_suffix(b"\r\n").ok_or(MultipartError)?;
        let header_end = memmem::find(part, b"\r\n\r\n").ok_or(MultipartError)?;
        let (headers, content) = (&part[..header_end], &part[header_end + 4..]);
        let (name, filename) = disposition(headers).ok_or(MultipartError)?;
        match filename {
            Some(f) => {
                push(
                    out,
                    Location::FileName,
                    name.clone(),
                    normalize(f.as_bytes(), Source::Decoded),
                );
                if opts.inspect_file_contents && std::str::from_utf8(content).is_ok() {
                    push(
                        out,
                        Location::Body,
                        name,
                        normalize(content, Source::Decoded),
                    );
                }
            }
            None => {
                let n = normalize(name.as_bytes(), Source::Decoded);
                if !n.is_plain() {
                    push(out, Location::BodyName, name.clone(), n);
                }
                push(
                    out,
                    Location::Body,
                    name,
                    normalize(content, Source::Decoded),
                );
            }
        }
        rest = &rest[end + delim.len()..];
    }
}

/// The `name` and optional `filename` of a part's Content-Disposition.
fn disposition(headers: &[u8]) -> Option<(String, Option<String>)> {
    let text = String::from_utf8_lossy(headers);
    let line = text
        .split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    let mut name = None;
    let mut filename = None;
    for p in line.split(';').skip(1) {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        match k.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(v.to_owned()),
            "filename" => filename = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((name?, filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Extracted {
        let req = RequestView {
            method: "POST",
            target,
            headers,
            body,
        };
        let opts = ExtractOptions {
            body_cap: 1024,
            extra_headers: &[],
            inspect_file_contents: false,
        };
        extract(&req, &opts)
    }

    fn find<'a>(e: &'a Extracted, loc: Location, name: &str) -> Option<&'a str> {
        e.targets
            .iter()
            .find(|t| t.location == loc && t.name == name)
            .map(|t| t.value.text.as_str())
    }

    #[test]
    fn query_arguments_are_split_and_decoded() {
        let e = run("/s?q=a+b&x=%27", &[], b"");
        assert_eq!(find(&e, Location::Query, "q"), Some("a b"));
        assert_eq!(find(&e, Location::Query, "x"), Some("'"));
        assert_eq!(find(&e, Location::Path, ""), Some("/s"));
    }

    #[test]
    fn encoded_question_mark_in_path_exposes_the_hidden_query() {
        let e = run("/index.php%3Fid=1%27%20or%201=1", &[], b"");
        assert!(e.anomalies.contains(&Anomaly::QueryInPath));
        assert_eq!(find(&e, Location::Query, "id"), Some("1' or 1=1"));
    }

    #[test]
    fn fragment_in_target_is_an_anomaly_and_inspected() {
        let e = run("/a#x=<script>", &[], b"");
        assert!(e.anomalies.contains(&Anomaly::FragmentInTarget));
        assert_eq!(find(&e, Location::Query, "x"), Some("<script>"));
    }

    #[test]
    fn cookies_and_selected_headers_are_targets() {
        let e = run(
            "/",
            &[
                ("Cookie", b"sid=abc; pref=a%3Cb"),
                ("User-Agent", b"curl/8"),
            ],
            b"",
        );
        assert_eq!(find(&e, Location::Cookie, "pref"), Some("a<b"));
        assert_eq!(find(&e, Location::Header, "user-agent"), Some("curl/8"));
    }

    #[test]
    fn urlencoded_body_fields_are_targets() {
        let ct: &[u8] = b"application/x-www-form-urlencoded";
        let e = run("/", &[("Content-Type", ct)], b"a=1+2&b=%3Cx");
        assert_eq!(find(&e, Location::Body, "a"), Some("1 2"));
        assert_eq!(find(&e, Location::Body, "b"), Some("<x"));
    }

    #[test]
    fn json_strings_and_keys_are_targets_with_escapes_decoded() {
        let ct: &[u8] = b"application/json";
        let e = run(
            "/",
            &[("Content-Type", ct)],
            br#"{"a":{"b c":["\u0027 or 1=1", 5]}}"#,
        );
        assert_eq!(find(&e, Location::Json, "b c"), Some("' or 1=1"));
        assert_eq!(find(&e, Location::JsonKey, "b c"), Some("b c"));
    }

    #[test]
    fn malformed_json_is_an_anomaly_and_inspected_as_text() {
        let ct: &[u8] = b"application/json";
        let e = run("/", &[("Content-Type", ct)], b"{\"a\": '1' or 1=1");
        assert!(e.anomalies.contains(&Anomaly::BodyParse("json")));
        assert!(find(&e, Location::BodyText, "body").is_some());
    }

    #[test]
    fn multipart_fields_and_file_names_are_targets_but_not_file_contents() {
        let ct: &[u8] = b"multipart/form-data; boundary=XyZ";
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"up\"; filename=\"../x.php\"\r\n\
Content-Type: text/plain\r\n\r\n<?php system($_GET[1]);\r\n--XyZ--\r\n";
        let e = run("/", &[("Content-Type", ct)], body);
        assert!(e.anomalies.is_empty(), "{:?}", e.anomalies);
        assert_eq!(find(&e, Location::Body, "note"), Some("hello"));
        assert_eq!(find(&e, Location::FileName, "up"), Some("../x.php"));
        assert!(find(&e, Location::Body, "up").is_none());
    }

    #[test]
    fn broken_multipart_is_an_anomaly() {
        let ct: &[u8] = b"multipart/form-data; boundary=XyZ";
        let e = run("/", &[("Content-Type", ct)], b"--XyZ\r\nno headers here");
        assert!(e.anomalies.contains(&Anomaly::BodyParse("multipart")));
    }

    #[test]
    fn unreadable_charset_is_an_anomaly() {
        let ct: &[u8] = b"application/x-www-form-urlencoded; charset=utf-7";
        let e = run("/", &[("Content-Type", ct)], b"a=+ADw-script+AD4-");
        assert_eq!(e.anomalies, vec![Anomaly::Charset("utf-7".into())]);
    }

    #[test]
    fn a_cut_binary_body_is_not_text_but_a_cut_character_is() {
        let mut binary = vec![0u8, 0xff, 0xfe, b'a'];
        binary.resize(2000, 0);
        let e = run("/", &[], &binary);
        assert!(e.body_truncated);
        assert!(find(&e, Location::BodyText, "body").is_none());
        // 1023 ASCII bytes, then a two-byte character cut by the cap.
        let mut text = vec![b'a'; 1023];
        text.extend_from_slice("é".repeat(500).as_bytes());
        let e = run("/", &[], &text);
        assert!(find(&e, Location::BodyText, "body").is_some());
    }

    #[test]
    fn body_past_the_cap_is_cut_and_reported() {
        let body = vec![b'a'; 2000];
        let e = run("/", &[("Content-Type", b"text/plain")], &body);
        assert!(e.body_truncated);
        assert_eq!(
            find(&e, Location::BodyText, "body").map(str::len),
            Some(1024)
        );
    }

    #[test]
    fn repeated_arguments_are_also_inspected_joined() {
        let e = run("/?id=1+union/*&id=*/select+1", &[], b"");
        assert_eq!(
            find(&e, Location::Joined, "id"),
            Some("1 union/*,*/select 1")
        );
    }
}
