//! Hostile and malformed input, end to end: bad bundles, bad domains, bad
//! JSON, path tricks through the edge and dead credentials. Each one gets a
//! precise 4xx that names the rule it broke, and none of them changes
//! anything: the active release, the release list, the release folders on
//! disk and `tmp/` are exactly as they were before.

mod common;

use common::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tar::{EntryType, Header};

const DOMAIN: &str = "site.localhost";
const V1_INDEX: &[u8] = b"<h1>v1</h1>";
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The one message every 401 carries, whatever was wrong with the caller.
const AUTH_RULE: &str = "authentication required";

// ---- bundles ---------------------------------------------------------------

/// One tar entry. Names and link targets are written byte for byte, so
/// `..` and absolute paths survive (`Header::set_path` refuses them).
#[derive(Clone, Copy)]
enum Item<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// A device, FIFO or other entry with no content.
    Special(&'a str, EntryType),
}

fn raw_header(name: &str, kind: EntryType, size: u64, link: &str) -> Header {
    let mut header = Header::new_gnu();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_mtime(0);
    header.set_cksum();
    header
}

fn tar(items: &[Item]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let (header, data): (Header, &[u8]) = match *item {
            Item::File(name, data) => (
                raw_header(name, EntryType::Regular, data.len() as u64, ""),
                data,
            ),
            Item::Dir(name) => (raw_header(name, EntryType::Directory, 0, ""), b""),
            Item::Symlink(name, target) => (raw_header(name, EntryType::Symlink, 0, target), b""),
            Item::HardLink(name, target) => (raw_header(name, EntryType::Link, 0, target), b""),
            Item::Special(name, kind) => (raw_header(name, kind, 0, ""), b""),
        };
        builder.append(&header, data).expect("append entry");
    }
    builder.into_inner().expect("finish tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("finish gzip")
}

fn bundle(items: &[Item]) -> Vec<u8> {
    gzip(&tar(items))
}

/// A tar.gz holding one file of `len` zero bytes, built without holding the
/// zeros in memory: a few dozen KiB that expand a thousandfold.
fn zero_bomb(len: usize) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    let header = raw_header("zeros.bin", EntryType::Regular, len as u64, "");
    encoder.write_all(header.as_bytes()).expect("header");
    let block = vec![0u8; MIB];
    for _ in 0..len / MIB {
        encoder.write_all(&block).expect("zeros");
    }
    // Padding to the 512-byte block is unneeded (len is whole MiB); then
    // the two zero blocks that end an archive.
    encoder.write_all(&[0u8; 1024]).expect("trailer");
    encoder.finish().expect("finish gzip")
}

// ---- API helpers -----------------------------------------------------------

/// Status and JSON body of a response (the raw text as a JSON string when
/// the body is not JSON, so a failing assertion still shows it).
async fn api_get(server: &Server, token: &str, path: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{}{path}", server.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    status_and_json(response).await
}

async fn create_site(server: &Server, token: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("create site");
    status_and_json(response).await
}

async fn login(server: &Server, email: &str, password: &str) -> (u16, Value) {
    let response = http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login");
    status_and_json(response).await
}

async fn refresh(server: &Server, refresh_token: &str) -> (u16, Value) {
    let response = http()
        .post(format!("{}/api/v1/auth/refresh", server.api_url()))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .expect("refresh");
    status_and_json(response).await
}

/// Asserts an API error: exact status, `code`, `field` (when given), and a
/// message that names the rule.
#[track_caller]
fn assert_error(
    case: &str,
    got: &(u16, Value),
    status: u16,
    code: &str,
    field: Option<&str>,
    rule: &str,
) {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "{case}: {body}");
    assert_eq!(body["error"]["code"], code, "{case}: {body}");
    match field {
        Some(field) => assert_eq!(body["error"]["field"], field, "{case}: {body}"),
        None => assert!(body["error"]["field"].is_null(), "{case}: {body}"),
    }
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(rule),
        "{case}: message {message:?} should name the rule {rule:?}"
    );
}

/// Asserts the one 401 every dead or missing credential gets.
#[track_caller]
fn assert_unauthorized(case: &str, got: &(u16, Value)) {
    assert_error(case, got, 401, "unauthorized", None, AUTH_RULE);
}

// ---- the fixture -----------------------------------------------------------

/// A server with one static site whose first release is active, and a
/// snapshot of everything a refused request must leave alone.
struct Fixture {
    server: Server,
    token: String,
    site_id: i64,
    site: Value,
    releases: Value,
    dirs: Vec<String>,
}

impl Fixture {
    async fn start(config: &str) -> Fixture {
        Fixture::with_v1(config, &[Item::File("index.html", V1_INDEX)]).await
    }

    async fn with_v1(config: &str, v1: &[Item<'_>]) -> Fixture {
        let server = Server::start_with(config);
        let token = server.admin_token().await;
        let created = create_site(
            &server,
            &token,
            json!({ "domain": DOMAIN, "type": "static" }),
        )
        .await;
        assert_eq!(created.0, 201, "{}", created.1);
        let deployed = upload(&server, &token, DOMAIN, bundle(v1)).await;
        assert_eq!(deployed.0, 201, "{}", deployed.1);

        let site_id = only_site_id(&server);
        let (_, site) = api_get(&server, &token, &format!("/api/v1/sites/{DOMAIN}")).await;
        let (_, releases) =
            api_get(&server, &token, &format!("/api/v1/sites/{DOMAIN}/releases")).await;
        assert_eq!(releases.as_array().map(Vec::len), Some(1), "{releases}");
        assert_eq!(site["active_release"], releases[0]["id"]);
        let dirs = server.release_dirs(site_id);
        assert_eq!(dirs.len(), 1);
        let fixture = Fixture {
            server,
            token,
            site_id,
            site,
            releases,
            dirs,
        };
        fixture.assert_unchanged("after the first deploy").await;
        fixture
    }

    /// The site still serves release one and nothing on disk moved.
    async fn assert_unchanged(&self, case: &str) {
        let server = &self.server;
        let response = server.get(DOMAIN, "/").await;
        assert_eq!(response.status(), 200, "{case}");
        assert_eq!(
            response.bytes().await.expect("body").as_ref(),
            V1_INDEX,
            "{case}"
        );

        let site = api_get(server, &self.token, &format!("/api/v1/sites/{DOMAIN}")).await;
        assert_eq!(site, (200, self.site.clone()), "{case}: the site changed");
        let releases = api_get(
            server,
            &self.token,
            &format!("/api/v1/sites/{DOMAIN}/releases"),
        )
        .await;
        assert_eq!(
            releases,
            (200, self.releases.clone()),
            "{case}: the releases changed"
        );
        assert_eq!(
            server.release_dirs(self.site_id),
            self.dirs,
            "{case}: release folders changed"
        );
        assert_eq!(server.tmp_entries(), 0, "{case}: tmp/ is not empty");
    }

    /// Uploads `bundle`, expects the refusal described, then checks that
    /// nothing changed.
    async fn refuse(&self, case: &str, bundle: Vec<u8>, status: u16, code: &str, rule: &str) {
        let got = upload(&self.server, &self.token, DOMAIN, bundle).await;
        assert_error(case, &got, status, code, Some("bundle"), rule);
        self.assert_unchanged(case).await;
    }

    /// A 400 `bad_bundle` refusal that names `rule`.
    async fn bad_bundle(&self, case: &str, bundle: Vec<u8>, rule: &str) {
        self.refuse(case, bundle, 400, "bad_bundle", rule).await;
    }

    /// A 413 `too_large` refusal that names `rule`.
    async fn too_large(&self, case: &str, bundle: Vec<u8>, rule: &str) {
        self.refuse(case, bundle, 413, "too_large", rule).await;
    }
}

/// The id of the one site folder in the data directory.
fn only_site_id(server: &Server) -> i64 {
    let ids: Vec<i64> = std::fs::read_dir(server.data_dir.join("sites"))
        .expect("sites folder")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0]
}

// ---- bundles ---------------------------------------------------------------

#[tokio::test]
async fn bundles_that_are_not_a_tar_gz_are_refused_without_a_trace() {
    let f = Fixture::start(LOOPBACK_UPSTREAMS).await;
    let good = bundle(&[
        Item::File("index.html", b"<h1>v2</h1>"),
        Item::File("noise.bin", &pseudo_random(256 * KIB, 7)),
    ]);

    f.bad_bundle("not gzip", b"this is not a bundle at all".to_vec(), "gzip")
        .await;
    f.bad_bundle(
        "tar without gzip",
        tar(&[Item::File("index.html", b"x")]),
        "gzip",
    )
    .await;
    f.bad_bundle(
        "gzip but not tar",
        gzip(b"plain text, no tar header here"),
        "not a tar",
    )
    .await;
    f.bad_bundle("truncated", good[..good.len() / 2].to_vec(), "truncated")
        .await;
    f.bad_bundle("empty body", Vec::new(), "empty").await;
    f.bad_bundle(
        "only directories",
        bundle(&[Item::Dir("a/"), Item::Dir("a/b/"), Item::Dir("c/")]),
        "no files",
    )
    .await;
}

#[tokio::test]
async fn bundle_entries_that_leave_the_release_or_are_not_files_are_refused() {
    let f = Fixture::start(LOOPBACK_UPSTREAMS).await;
    let cases: [(&str, Item, &str); 12] = [
        (
            "absolute path",
            Item::File("/tmp/spinforge-evil.html", b"x"),
            "absolute path",
        ),
        ("dot-dot first", Item::File("../evil.html", b"x"), "escapes"),
        (
            "dot-dot deep",
            Item::File("a/b/../../../evil.html", b"x"),
            "escapes",
        ),
        ("dot-dot directory", Item::Dir("../../evil/"), "escapes"),
        (
            "symlink climbing out",
            Item::Symlink("passwd", "../../etc/passwd"),
            "escapes",
        ),
        (
            "symlink to an absolute path",
            Item::Symlink("passwd", "/etc/passwd"),
            "absolute target",
        ),
        (
            "hard link climbing out",
            Item::HardLink("passwd", "../../etc/passwd"),
            "escapes",
        ),
        (
            "hard link to an absolute path",
            Item::HardLink("passwd", "/etc/passwd"),
            "absolute target",
        ),
        (
            "hard link to a host file",
            Item::HardLink("passwd", "etc/passwd"),
            "hard link",
        ),
        (
            "character device",
            Item::Special("null", EntryType::Char),
            "character device",
        ),
        (
            "block device",
            Item::Special("sda", EntryType::Block),
            "block device",
        ),
        ("FIFO", Item::Special("pipe", EntryType::Fifo), "FIFO"),
    ];
    for (case, bad, rule) in cases {
        f.bad_bundle(case, bundle(&[bad]), rule).await;
        // After a good file too, so a partial unpack has something to leave.
        let after_good = bundle(&[Item::File("index.html", b"<h1>evil</h1>"), bad]);
        f.bad_bundle(&format!("{case}, after a good file"), after_good, rule)
            .await;
    }

    // Nothing was written outside the data directory either.
    assert!(!std::path::Path::new("/tmp/spinforge-evil.html").exists());
    assert!(!f.server.data_dir.join("evil").exists());
}

#[tokio::test]
async fn bundles_over_the_configured_caps_are_refused_with_413() {
    let config = format!(
        "[limits]\nmax_upload_bytes = {}\nmax_unpacked_bytes = {}\nmax_files = 3\n\n{}",
        256 * KIB,
        64 * KIB,
        LOOPBACK_UPSTREAMS
    );
    let f = Fixture::start(&config).await;

    // Incompressible, so neither the upload cap nor the ratio rule fires.
    let large = pseudo_random(100 * KIB, 1);
    f.too_large(
        "over max_unpacked_bytes",
        bundle(&[
            Item::File("index.html", b"x"),
            Item::File("large.bin", &large),
        ]),
        "unpacks to more than 65536 bytes",
    )
    .await;

    let files: Vec<String> = (0..5).map(|i| format!("f{i}.txt")).collect();
    let items: Vec<Item> = files.iter().map(|name| Item::File(name, b"x")).collect();
    f.too_large("over max_files", bundle(&items), "more than 3 files")
        .await;

    let huge = bundle(&[Item::File("huge.bin", &pseudo_random(400 * KIB, 2))]);
    assert!(huge.len() > 256 * KIB);
    f.too_large("over max_upload_bytes", huge, "larger than 262144 bytes")
        .await;
}

#[tokio::test]
async fn a_compression_bomb_is_refused_by_the_ratio_rule() {
    let f = Fixture::start(LOOPBACK_UPSTREAMS).await;
    let bomb = zero_bomb(40 * MIB);
    assert!(
        bomb.len() < 200 * KIB,
        "the bomb is small: {} bytes",
        bomb.len()
    );
    f.too_large("40 MiB of zeros", bomb, "compression bomb")
        .await;
}

// ---- domains and JSON bodies -----------------------------------------------

#[tokio::test]
async fn bad_domains_are_refused_by_rule_and_create_nothing() {
    let server = Server::start();
    let token = server.admin_token().await;
    let taken = create_site(&server, &token, json!({ "domain": "taken.example.com" })).await;
    assert_eq!(taken.0, 201, "{}", taken.1);
    let before = api_get(&server, &token, "/api/v1/sites").await;
    let folders = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(server.data_dir.join("sites"))
            .expect("sites folder")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let folders_before = folders();

    let too_long = format!("{}.com", "a.".repeat(130));
    assert!(too_long.len() > 253);
    let long_label = format!("{}.example.com", "a".repeat(64));
    let cases: Vec<(&str, &str)> = vec![
        ("bad_char.example.com", "may contain only"),
        ("a b.example.com", "may contain only"),
        ("bücher.example.com", "may contain only"),
        ("evil.com/path", "may contain only"),
        ("", "must not be empty"),
        (&too_long, "at most 253 characters"),
        (&long_label, "1 to 63 characters"),
        ("127.0.0.1", "not an IP address"),
        ("127.1", "not an IP address"),
        // Brackets are not DNS characters, so the character rule fires first.
        ("[::1]", "may contain only"),
        ("::1", "may contain only"),
        ("-lead.example.com", "must not start or end with `-`"),
        ("intranet", "at least two labels"),
    ];
    for (domain, rule) in cases {
        let got = create_site(
            &server,
            &token,
            json!({ "domain": domain, "type": "static" }),
        )
        .await;
        assert_error(
            &format!("domain {domain:?}"),
            &got,
            400,
            "invalid",
            Some("domain"),
            rule,
        );
    }

    for domain in ["taken.example.com", "TAKEN.example.com."] {
        let got = create_site(&server, &token, json!({ "domain": domain })).await;
        assert_error(
            &format!("domain {domain:?}"),
            &got,
            409,
            "conflict",
            Some("domain"),
            "already taken",
        );
    }

    assert_eq!(api_get(&server, &token, "/api/v1/sites").await, before);
    assert_eq!(folders(), folders_before);
    assert_eq!(server.tmp_entries(), 0);
}

#[tokio::test]
async fn localhost_domains_are_refused_when_not_allowed() {
    let server = Server::start_with(&format!("allow_localhost = false\n{LOOPBACK_UPSTREAMS}"));
    let token = server.admin_token().await;
    for domain in ["localhost", "app.localhost", "App.LocalHost."] {
        let got = create_site(&server, &token, json!({ "domain": domain })).await;
        assert_error(
            &format!("domain {domain:?}"),
            &got,
            400,
            "invalid",
            Some("domain"),
            "localhost",
        );
    }
    assert_eq!(
        api_get(&server, &token, "/api/v1/sites").await,
        (200, json!([]))
    );
}

/// POSTs `body` verbatim as JSON to `path`.
async fn post_raw_json(server: &Server, token: &str, path: &str, body: String) -> (u16, Value) {
    let response = http()
        .post(format!("{}{path}", server.api_url()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    status_and_json(response).await
}

#[tokio::test]
async fn malformed_json_bodies_are_refused() {
    let server = Server::start();
    let token = server.admin_token().await;

    // (case, body, field, what the message names)
    let cases = [
        (
            "unknown field",
            r#"{"domain":"a.example.com","colour":"red"}"#,
            "body",
            "colour",
        ),
        ("missing field", r#"{"type":"static"}"#, "body", "domain"),
        (
            "unknown type",
            r#"{"domain":"a.example.com","type":"nope"}"#,
            "type",
            "must be one of",
        ),
        ("wrong JSON type", r#"{"domain":42}"#, "body", "domain"),
        ("cut-off JSON", r#"{"domain": "#, "body", "JSON"),
        ("not an object", r#"["a.example.com"]"#, "body", "JSON"),
    ];
    for (case, body, field, rule) in cases {
        let got = post_raw_json(&server, &token, "/api/v1/sites", body.to_owned()).await;
        assert_error(case, &got, 400, "invalid", Some(field), rule);
    }

    // Over the 64 KiB JSON limit: refused before parsing, in the API's
    // error shape, on every route that takes a JSON body. The rollback
    // route checks the caller's right to the site before it reads a body,
    // so that site exists.
    let (status, _) = create_site(&server, &token, json!({ "domain": "b.example.com" })).await;
    assert_eq!(status, 201);
    let padding = "x".repeat(70 * KIB);
    for path in ["/api/v1/sites", "/api/v1/sites/b.example.com/rollback"] {
        let body = json!({ "domain": "a.example.com", "release": padding }).to_string();
        let got = post_raw_json(&server, &token, path, body).await;
        assert_error(path, &got, 413, "too_large", Some("body"), "too large");
    }

    let sites = api_get(&server, &token, "/api/v1/sites").await;
    assert_eq!(sites.0, 200);
    let domains: Vec<&str> = sites
        .1
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["domain"].as_str())
        .collect();
    assert_eq!(domains, ["b.example.com"]);
    assert_eq!(server.tmp_entries(), 0);
}

// ---- path tricks through the edge ------------------------------------------

/// Sends one request with `target` exactly as given (reqwest would
/// normalise it) and returns the status and the body bytes.
async fn raw_get(edge: SocketAddr, host: &str, target: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(edge).await.expect("connect");
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{target}: no answer within 10 s"));
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{target}: no header end in {:?}",
                String::from_utf8_lossy(&response)
            )
        });
    let status_line = String::from_utf8_lossy(&response[..head_end]);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{target}: bad status line in {status_line:?}"));
    (status, response[head_end + 4..].to_vec())
}

#[tokio::test]
async fn path_tricks_never_leave_the_release() {
    const GIT_SECRET: &str = "GIT-CONFIG-SECRET-b8e1";
    const DATA_SECRET: &str = "DATA-DIR-SECRET-4f2a";
    let git_config = format!("[remote \"origin\"]\n\turl = {GIT_SECRET}\n");
    let f = Fixture::with_v1(
        LOOPBACK_UPSTREAMS,
        &[
            Item::File("index.html", V1_INDEX),
            Item::File(".git/config", git_config.as_bytes()),
            Item::File(".env", GIT_SECRET.as_bytes()),
        ],
    )
    .await;
    // Secrets next to the store and in the site's folder, both outside the
    // release the edge serves.
    // The edge's own path rules are under test here, not the WAF's.
    f.server.waf_off(&f.token, DOMAIN).await;
    let site_dir = f.server.data_dir.join("sites").join(f.site_id.to_string());
    std::fs::write(f.server.data_dir.join("secret.txt"), DATA_SECRET).expect("secret");
    std::fs::write(site_dir.join("secret.txt"), DATA_SECRET).expect("secret");
    let edge = f.server.edge;

    let (status, body) = raw_get(edge, DOMAIN, "/").await;
    assert_eq!(
        (status, body.as_slice()),
        (200, V1_INDEX),
        "the raw client works"
    );

    let absolute_form = format!("http://{DOMAIN}/../../../secret.txt");
    let targets = [
        "/../",
        "/%2e%2e/",
        "/%252e%252e/",
        "/..%5c..%5cspinforge.db",
        "/%00",
        "/index.html%00.txt",
        "/%c0%ae%c0%ae/",
        "/%c0%ae%c0%ae/%c0%ae%c0%ae/spinforge.db",
        "/.git/config",
        "/.git/",
        "/%2egit/config",
        "/.env",
        "//etc/passwd",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/spinforge.db",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/spinforge.db",
        "/.%2e/.%2e/.%2e/.%2e/secret.txt",
        "/../secret.txt",
        "/../../secret.txt",
        "/../../../../secret.txt",
        "/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%2f..%2f..%2f..%2fspinforge.db",
        "/%2e%2e%5c%2e%2e%5c%2e%2e%5c%2e%2e%5csecret.txt",
        "/index.html/../../../../secret.txt",
        &absolute_form,
    ];
    for target in targets {
        let (status, body) = raw_get(edge, DOMAIN, target).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            status == 400 || status == 404,
            "{target}: got {status}: {text}"
        );
        for leak in [DATA_SECRET, GIT_SECRET, "root:", "SQLite format", "[remote"] {
            assert!(
                !text.contains(leak),
                "{target}: the body holds {leak:?}: {text}"
            );
        }
    }
    f.assert_unchanged("after the path tricks").await;
}

// ---- credentials -----------------------------------------------------------

#[tokio::test]
async fn requests_without_a_live_token_are_401_and_change_nothing() {
    let f = Fixture::start(LOOPBACK_UPSTREAMS).await;
    let url = |path: &str| format!("{}{path}", f.server.api_url());
    let v2 = bundle(&[Item::File("index.html", b"<h1>v2</h1>")]);

    let no_token = http()
        .post(url(&format!("/api/v1/sites/{DOMAIN}/releases")))
        .body(v2.clone())
        .send()
        .await
        .expect("upload");
    assert_unauthorized("upload without a token", &status_and_json(no_token).await);

    for (case, value) in [
        ("garbage token", "Bearer sfa_garbage0000000000000000"),
        ("empty token", "Bearer "),
        ("not a bearer", "Basic YWRtaW5AZXhhbXBsZS5jb206cGFzcw=="),
        ("scheme without a token", "Bearer"),
    ] {
        let response = http()
            .post(url(&format!("/api/v1/sites/{DOMAIN}/releases")))
            .header("authorization", value)
            .body(v2.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{case}"
        );
        assert_unauthorized(case, &status_and_json(response).await);

        let response = http()
            .get(url("/api/v1/sites"))
            .header("authorization", value)
            .send()
            .await
            .expect("list");
        assert_unauthorized(case, &status_and_json(response).await);
    }
    f.assert_unchanged("after the unauthenticated uploads")
        .await;

    // A wrong password and an unknown email look the same from outside.
    let wrong_password = login(&f.server, ADMIN_EMAIL, "not the password at all").await;
    let unknown_email = login(&f.server, "nobody@example.com", ADMIN_PASSWORD).await;
    assert_unauthorized("wrong password", &wrong_password);
    assert_unauthorized("unknown email", &unknown_email);
    assert_eq!(wrong_password.1, unknown_email.1);
}

#[tokio::test]
async fn reusing_a_refresh_token_ends_the_whole_session() {
    let server = Server::start();
    server.create_admin_and_login();
    let (status, first) = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{first}");
    let first_refresh = first["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();

    let (status, second) = refresh(&server, &first_refresh).await;
    assert_eq!(status, 200, "{second}");
    let second_access = second["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let second_refresh = second["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    assert_eq!(
        api_get(&server, &second_access, "/api/v1/sites").await.0,
        200
    );

    // The used refresh token comes back: someone holds a copy.
    let reused = refresh(&server, &first_refresh).await;
    assert_unauthorized("refresh token reuse", &reused);

    let after = api_get(&server, &second_access, "/api/v1/sites").await;
    assert_unauthorized("access token of the ended session", &after);
    let first_access = first["access_token"].as_str().expect("access token");
    let after = api_get(&server, first_access, "/api/v1/sites").await;
    assert_unauthorized("first access token of the ended session", &after);
    let next = refresh(&server, &second_refresh).await;
    assert_unauthorized("newest refresh token of the ended session", &next);

    // The account is not locked: a fresh login starts a new session.
    let (status, fresh) = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{fresh}");
    let fresh_access = fresh["access_token"].as_str().expect("access token");
    assert_eq!(api_get(&server, fresh_access, "/api/v1/sites").await.0, 200);
}
