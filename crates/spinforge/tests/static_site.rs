//! Static sites through the real edge: file bytes, ranges, types,
//! validators, compression, directories, dotfiles, SPA fallback, host
//! matching, HTTP/2 cleartext and content swaps under load.
//!
//! Each test deploys a small site built in the test with the real CLI and
//! reads it back over real HTTP; nothing here looks inside the server.

mod common;

use common::*;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of the large binary asset (bytes).
const BIG: usize = 5 * 1024 * 1024;

const UNICODE_FILE: &str = "docs/ünïcödé/résumé.txt";

/// A stylesheet well over the edge's 1 KiB compression threshold.
fn big_css() -> String {
    (0..200)
        .map(|i| format!(".rule-{i} {{ color: #123456; margin: {i}px; }}\n"))
        .collect()
}

/// The everyday site: nested folders, a unicode name, one file of each
/// common type, a folder without an index, and dotfiles.
fn write_everyday_site(dir: &Path) {
    let css = big_css();
    write_tree(
        dir,
        &[
            ("index.html", b"<!doctype html><h1>home</h1>"),
            ("style.css", css.as_bytes()),
            ("app.js", b"console.log('hi');\n"),
            ("logo.svg", b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
            ("data.json", b"{\"ok\":true}"),
            ("pixel.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            ("docs/index.html", b"<h1>docs</h1>"),
            (UNICODE_FILE, "curriculum vitæ".as_bytes()),
            ("docs/with space/deeper/leaf.txt", b"leaf"),
            ("assets/logo-2.svg", b"<svg/>"),
            (".env", b"SECRET=hunter2"),
            ("docs/.private/notes.txt", b"hidden"),
        ],
    );
}

fn deploy(server: &Server, dir: &Path, domain: &str, extra: &[&str]) {
    let mut args = vec![
        "deploy",
        dir.to_str().expect("utf-8 path"),
        "--domain",
        domain,
    ];
    args.extend_from_slice(extra);
    assert_ok(&server.cli(&args, None));
}

/// Starts a server with the everyday site deployed at `everyday.localhost`.
fn everyday_server() -> (Server, tempfile::TempDir) {
    let server = Server::start();
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    write_everyday_site(site.path());
    deploy(&server, site.path(), "everyday.localhost", &[]);
    (server, site)
}

/// Starts a server with a 5 MB pseudo-random asset at `big.localhost`.
fn big_asset_server() -> (Server, Vec<u8>) {
    let server = Server::start();
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    let blob = pseudo_random(BIG, 7);
    write_tree(
        site.path(),
        &[("index.html", b"big"), ("assets/big.bin", &blob)],
    );
    deploy(&server, site.path(), "big.localhost", &[]);
    (server, blob)
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode_path(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn get_with(
    server: &Server,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http().get(server.edge_url(path)).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("edge request")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing: {:?}", response.headers()))
        .to_str()
        .expect("ascii header")
}

async fn body(response: reqwest::Response) -> Vec<u8> {
    response.bytes().await.expect("body").to_vec()
}

#[tokio::test]
async fn nested_and_unicode_paths_are_served_byte_for_byte() {
    let (server, _site) = everyday_server();
    let host = "everyday.localhost";

    for (path, expected) in [
        ("/", &b"<!doctype html><h1>home</h1>"[..]),
        ("/docs/", b"<h1>docs</h1>"),
        ("/docs/with%20space/deeper/leaf.txt", b"leaf"),
    ] {
        let response = server.get(host, path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(body(response).await, expected, "{path}");
    }

    let encoded = format!("/{}", encode_path(UNICODE_FILE));
    assert!(encoded.contains("%C3%BC"), "{encoded}");
    let response = server.get(host, &encoded).await;
    assert_eq!(response.status(), 200, "{encoded}");
    assert_eq!(
        header(&response, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(body(response).await, "curriculum vitæ".as_bytes());

    // A unicode folder without its slash redirects to the encoded form.
    let folder = format!("/{}", encode_path("docs/ünïcödé"));
    let response = server.get(host, &folder).await;
    assert_eq!(response.status(), 308);
    assert_eq!(header(&response, "location"), format!("{folder}/"));
}

#[tokio::test]
async fn a_large_asset_arrives_intact() {
    let (server, blob) = big_asset_server();
    let response = server.get("big.localhost", "/assets/big.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-length"), BIG.to_string());
    assert_eq!(
        header(&response, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(header(&response, "accept-ranges"), "bytes");
    let got = body(response).await;
    assert_eq!(got.len(), BIG);
    assert_eq!(sha256_hex(&got), sha256_hex(&blob));
}

#[tokio::test]
async fn byte_ranges_of_a_large_asset_are_exact() {
    let (server, blob) = big_asset_server();
    let ranged = |range: &'static str| {
        let server = &server;
        async move {
            get_with(
                server,
                "big.localhost",
                "/assets/big.bin",
                &[("range", range)],
            )
            .await
        }
    };

    let response = ranged("bytes=1000-1999").await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes 1000-1999/{BIG}")
    );
    assert_eq!(header(&response, "content-length"), "1000");
    assert_eq!(body(response).await, blob[1000..2000]);

    let response = ranged("bytes=-100").await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes {}-{}/{BIG}", BIG - 100, BIG - 1)
    );
    assert_eq!(body(response).await, blob[BIG - 100..]);

    for unsatisfiable in ["bytes=6000000-", "bytes=5242880-5242990"] {
        let response = ranged(unsatisfiable).await;
        assert_eq!(response.status(), 416, "{unsatisfiable}");
        assert_eq!(
            header(&response, "content-range"),
            format!("bytes */{BIG}"),
            "{unsatisfiable}"
        );
    }
}

#[tokio::test]
async fn each_file_type_gets_its_content_type() {
    let (server, _site) = everyday_server();
    for (path, expected) in [
        ("/index.html", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/logo.svg", "image/svg+xml"),
        ("/data.json", "application/json"),
        ("/pixel.png", "image/png"),
    ] {
        let response = server.get("everyday.localhost", path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), expected, "{path}");
        assert_eq!(
            header(&response, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
    }
}

#[tokio::test]
async fn validators_turn_repeat_requests_into_304() {
    let (server, _site) = everyday_server();
    let host = "everyday.localhost";
    let first = server.get(host, "/data.json").await;
    assert_eq!(first.status(), 200);
    let etag = header(&first, "etag").to_owned();
    let modified = header(&first, "last-modified").to_owned();

    let response = get_with(&server, host, "/data.json", &[("if-none-match", &etag)]).await;
    assert_eq!(response.status(), 304);
    assert_eq!(header(&response, "etag"), etag);
    assert!(body(response).await.is_empty());

    let response = get_with(
        &server,
        host,
        "/data.json",
        &[("if-modified-since", &modified)],
    )
    .await;
    assert_eq!(response.status(), 304);
    assert!(body(response).await.is_empty());

    // A stale validator gets the whole file again.
    let response = get_with(
        &server,
        host,
        "/data.json",
        &[("if-none-match", "\"stale\"")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(response).await, b"{\"ok\":true}");
    let response = get_with(
        &server,
        host,
        "/data.json",
        &[("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")],
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn text_is_compressed_only_when_the_client_accepts_it() {
    use tokio::io::AsyncReadExt;

    let (server, _site) = everyday_server();
    let host = "everyday.localhost";
    let css = big_css();

    let response = get_with(&server, host, "/style.css", &[("accept-encoding", "gzip")]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-encoding"), "gzip");
    assert_eq!(header(&response, "vary"), "accept-encoding");
    let packed = body(response).await;
    assert!(packed.len() < css.len(), "gzip made it no smaller");
    let mut unpacked = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&packed[..]),
        &mut unpacked,
    )
    .expect("valid gzip");
    assert_eq!(unpacked, css);

    for accept in ["br", "gzip, deflate, br"] {
        let response = get_with(&server, host, "/style.css", &[("accept-encoding", accept)]).await;
        assert_eq!(header(&response, "content-encoding"), "br", "{accept}");
        let packed = body(response).await;
        let mut decoder = async_compression::tokio::bufread::BrotliDecoder::new(&packed[..]);
        let mut unpacked = String::new();
        decoder
            .read_to_string(&mut unpacked)
            .await
            .expect("valid brotli");
        assert_eq!(unpacked, css, "{accept}");
    }

    // Nothing accepted, or only something we do not make: the plain bytes.
    for accept in [None, Some("identity"), Some("gzip;q=0, br;q=0")] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let response = get_with(&server, host, "/style.css", &headers).await;
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{accept:?}"
        );
        assert_eq!(
            header(&response, "content-length"),
            css.len().to_string(),
            "{accept:?}"
        );
        assert_eq!(body(response).await, css.as_bytes(), "{accept:?}");
    }

    // Binary files are never compressed.
    let response = get_with(
        &server,
        host,
        "/pixel.png",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert!(response.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn directories_serve_their_index_redirect_and_are_never_listed() {
    let (server, _site) = everyday_server();
    let host = "everyday.localhost";

    let response = server.get(host, "/docs/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(response).await, b"<h1>docs</h1>");

    let response = server.get(host, "/docs").await;
    assert_eq!(response.status(), 308);
    assert_eq!(header(&response, "location"), "/docs/");

    // `assets` holds files but no index.html.
    let response = server.get(host, "/assets/").await;
    assert_eq!(response.status(), 404);
    let text = String::from_utf8(body(response).await).expect("utf-8");
    assert!(!text.contains("logo-2.svg"), "a listing leaked: {text}");
    assert_eq!(server.get(host, "/nope.html").await.status(), 404);
}

#[tokio::test]
async fn dotfiles_are_not_found() {
    let (server, _site) = everyday_server();
    // The static server's own rule is under test, not the WAF's.
    let token = server.login_token().await;
    server.waf_off(&token, "everyday.localhost").await;
    for path in [
        "/.env",
        "/%2eenv",
        "/docs/.private/notes.txt",
        "/docs/.private/",
        "/docs/%2Eprivate/notes.txt",
    ] {
        let response = server.get("everyday.localhost", path).await;
        assert_eq!(response.status(), 404, "{path}");
        let text = String::from_utf8(body(response).await).expect("utf-8");
        assert!(
            !text.contains("hunter2") && !text.contains("hidden"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn spa_sites_fall_back_to_the_index_for_routes_but_not_for_assets() {
    let server = Server::start();
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    write_tree(
        site.path(),
        &[
            ("index.html", b"<div id=app></div>"),
            ("main.js", b"boot()"),
        ],
    );
    deploy(&server, site.path(), "spa.localhost", &["--spa"]);
    let out = server.cli(&["sites", "show", "spa.localhost", "--json"], None);
    assert_ok(&out);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["spa"], true, "{shown}");

    for path in ["/settings", "/users/42/profile", "/deep/route/"] {
        let response = server.get("spa.localhost", path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(body(response).await, b"<div id=app></div>", "{path}");
    }
    let response = server.get("spa.localhost", "/main.js").await;
    assert_eq!(body(response).await, b"boot()");
    assert_eq!(
        server.get("spa.localhost", "/missing.js").await.status(),
        404
    );

    // A site without the flag has no fallback.
    deploy(&server, site.path(), "plain.localhost", &[]);
    assert_eq!(
        server.get("plain.localhost", "/settings").await.status(),
        404
    );
}

#[tokio::test]
async fn hosts_match_with_a_port_a_trailing_dot_or_any_case() {
    let server = Server::start();
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    write_tree(site.path(), &[("index.html", b"hello")]);
    deploy(&server, site.path(), "hello.localhost", &[]);

    for host in [
        "hello.localhost",
        "hello.localhost:8080",
        "hello.localhost.",
        "hello.localhost.:8080",
        "HELLO.LocalHost",
    ] {
        let response = server.get(host, "/").await;
        assert_eq!(response.status(), 200, "{host}");
        assert_eq!(body(response).await, b"hello", "{host}");
    }
}

#[tokio::test]
async fn an_unknown_host_gets_a_404_that_names_no_site() {
    let server = Server::start();
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    write_tree(site.path(), &[("index.html", b"hello")]);
    deploy(&server, site.path(), "hello.localhost", &[]);

    for host in [
        "nobody.localhost",
        "hello.localhost.evil",
        "127.0.0.1",
        "ello.localhost",
    ] {
        let response = server.get(host, "/").await;
        assert_eq!(response.status(), 404, "{host}");
        let text = String::from_utf8(body(response).await).expect("utf-8");
        assert!(!text.contains("hello"), "{host}: {text}");
        assert!(!text.contains("localhost"), "{host}: {text}");
    }
}

#[tokio::test]
async fn a_wildcard_site_matches_subdomains_and_an_exact_site_wins() {
    let server = Server::start();
    server.create_admin_and_login();
    let wild = tempfile::tempdir().expect("site dir");
    write_tree(wild.path(), &[("index.html", b"wildcard")]);
    deploy(&server, wild.path(), "*.wild.localhost", &[]);
    let exact = tempfile::tempdir().expect("site dir");
    write_tree(exact.path(), &[("index.html", b"exact")]);
    deploy(&server, exact.path(), "exact.wild.localhost", &[]);

    for (host, expected) in [
        ("a.wild.localhost", "wildcard"),
        ("b.c.wild.localhost", "wildcard"),
        ("A.Wild.Localhost:8080", "wildcard"),
        ("exact.wild.localhost", "exact"),
        ("EXACT.wild.localhost.", "exact"),
        ("x.exact.wild.localhost", "wildcard"),
    ] {
        let response = server.get(host, "/").await;
        assert_eq!(response.status(), 200, "{host}");
        assert_eq!(body(response).await, expected.as_bytes(), "{host}");
    }
    // The wildcard covers names under the suffix, not the suffix itself.
    assert_eq!(server.get("wild.localhost", "/").await.status(), 404);
}

#[tokio::test]
async fn http2_cleartext_serves_the_same_bytes() {
    let (server, _site) = everyday_server();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("everyday.localhost", server.edge)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("h2 client");
    let port = server.edge.port();

    for path in ["/", "/style.css", "/docs/", "/pixel.png"] {
        let over_h1 = body(server.get("everyday.localhost", path).await).await;
        let url = format!("http://everyday.localhost:{port}{path}");
        let response = h2.get(&url).send().await.expect("h2 request");
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "{path}");
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().contains_key("x-request-id"), "{path}");
        assert_eq!(body(response).await, over_h1, "{path}");
    }
    let url = format!("http://everyday.localhost:{port}/style.css");
    let response = h2
        .get(&url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .expect("h2 range");
    assert_eq!(response.status(), 206);
    assert_eq!(body(response).await, big_css().as_bytes()[..10]);
}

/// Longest the load loop runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(20);

/// Most requests one load loop sends.
const LOAD_MAX_REQUESTS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploys_swap_content_without_dropping_requests() {
    let server = Server::start();
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    let page = |n: u64| format!("<h1>release {n}</h1>");
    let blob = |n: u64| pseudo_random(256 * 1024, n);
    let write_release = |n: u64| {
        write_tree(
            site.path(),
            &[("index.html", page(n).as_bytes()), ("data.bin", &blob(n))],
        );
    };
    write_release(1);
    deploy(&server, site.path(), "swap.localhost", &[]);

    let pages: HashSet<Vec<u8>> = (1..=4).map(|n| page(n).into_bytes()).collect();
    let blobs: HashSet<String> = (1..=4).map(|n| sha256_hex(&blob(n))).collect();
    let pages = Arc::new(pages);
    let blobs = Arc::new(blobs);
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // Each loop returns (requests sent, distinct bodies seen, failures).
    let loops: Vec<_> = (0..4)
        .map(|worker| {
            let (pages, blobs, done) = (pages.clone(), blobs.clone(), done.clone());
            let url_page = server.edge_url("/");
            let url_blob = server.edge_url("/data.bin");
            tokio::spawn(async move {
                let client = http();
                let mut seen = HashSet::new();
                let mut failures = Vec::new();
                let mut sent = 0;
                while !done.load(Ordering::Relaxed)
                    && started.elapsed() < LOAD_LIMIT
                    && sent < LOAD_MAX_REQUESTS
                {
                    sent += 1;
                    let wants_blob = (sent + worker) % 2 == 0;
                    let url = if wants_blob { &url_blob } else { &url_page };
                    let reply = client.get(url).header("host", "swap.localhost").send();
                    let response = match reply.await {
                        Ok(response) => response,
                        Err(e) => {
                            failures.push(format!("request error: {e}"));
                            continue;
                        }
                    };
                    let status = response.status();
                    let bytes = match response.bytes().await {
                        Ok(bytes) => bytes.to_vec(),
                        Err(e) => {
                            failures.push(format!("body error: {e}"));
                            continue;
                        }
                    };
                    let known = if wants_blob {
                        let hash = sha256_hex(&bytes);
                        let known = blobs.contains(&hash);
                        seen.insert(hash);
                        known
                    } else {
                        let known = pages.contains(&bytes);
                        seen.insert(String::from_utf8_lossy(&bytes).into_owned());
                        known
                    };
                    if status != 200 || !known {
                        failures.push(format!("{status} with {} unknown bytes", bytes.len()));
                    }
                }
                (sent, seen.len(), failures)
            })
        })
        .collect();

    for n in 2..=4 {
        write_release(n);
        tokio::task::block_in_place(|| deploy(&server, site.path(), "swap.localhost", &[]));
    }
    done.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut most_seen = 0;
    for handle in loops {
        let (sent, seen, failures) = handle.await.expect("load loop");
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            failures
        );
        total += sent;
        most_seen = most_seen.max(seen);
    }
    assert!(total > 0, "no request ran during the deploys");
    assert!(
        most_seen > 1,
        "the load never saw a swap ({total} requests)"
    );
    let response = server.get("swap.localhost", "/").await;
    assert_eq!(body(response).await, page(4).as_bytes());
}
