//! TLS termination, black box: the real binary with an HTTPS listener,
//! certificates uploaded with the real CLI, and Debian's `openssl
//! s_client` (plus a hand-built ClientHello for suites OpenSSL 3 no
//! longer offers) checking what the edge negotiates.

mod common;

use common::{assert_ok, write_tree, Server, LOOPBACK_UPSTREAMS};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The harness config plus an HTTPS listener on a free loopback port.
fn tls_config() -> String {
    format!("tls_listen = \"127.0.0.1:0\"\n{LOOPBACK_UPSTREAMS}")
}

/// A test CA that signs ECDSA P-256 leaf certificates.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "TLS test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (chain PEM, key PEM) for `name`, valid from `from` to `until`
    /// (days relative to now).
    fn leaf(&self, name: &str, from: i64, until: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(until);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (format!("{}{}", cert.pem(), self.pem), key.serialize_pem())
    }
}

/// Writes a chain and key to files and returns their paths.
fn pem_files(dir: &Path, name: &str, pair: &(String, String)) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pair.0).expect("write cert");
    std::fs::write(&key, &pair.1).expect("write key");
    (cert, key)
}

fn upload(server: &Server, domain: &str, files: &(PathBuf, PathBuf)) -> std::process::Output {
    server.cli(
        &[
            "certs",
            "upload",
            domain,
            "--cert",
            files.0.to_str().expect("utf-8"),
            "--key",
            files.1.to_str().expect("utf-8"),
        ],
        None,
    )
}

fn deploy_static(server: &Server, domain: &str) {
    let dir = tempfile::tempdir().expect("site");
    write_tree(dir.path(), &[("index.html", b"<h1>secure</h1>")]);
    let out = server.cli(
        &[
            "deploy",
            dir.path().to_str().expect("utf-8"),
            "--domain",
            domain,
        ],
        None,
    );
    assert_ok(&out);
}

/// Runs `openssl s_client` against `addr` with `args`; returns what it
/// printed (both streams) and whether it exited 0.
fn s_client(addr: SocketAddr, args: &[&str]) -> (String, bool) {
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (apt package openssl)");
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

/// The `subject=` line of the certificate the server sent.
fn served_subject(addr: SocketAddr, args: &[&str]) -> String {
    let (text, _) = s_client(addr, args);
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no certificate in:\n{text}"))
        .to_owned()
}

fn https_client(ca_pem: &str, domain: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .resolve(domain, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Uploads a leaf certificate from `ca` for `domain` (files in `dir`).
fn certify(server: &Server, ca: &TestCa, dir: &Path, domain: &str) {
    let pair = ca.leaf(domain, -1, 30);
    assert_ok(&upload(server, domain, &pem_files(dir, domain, &pair)));
}

/// A server with `alpha.test` and `beta.test` deployed and given
/// certificates from `ca`.
fn two_sites(ca: &TestCa, files: &Path) -> Server {
    let server = Server::start_with(&tls_config());
    server.create_admin_and_login();
    for domain in ["alpha.test", "beta.test"] {
        deploy_static(&server, domain);
        certify(&server, ca, files, domain);
    }
    server
}

#[test]
fn each_sni_gets_its_own_certificate_and_unknown_names_the_default() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");

    let alpha = served_subject(tls, &["-servername", "alpha.test"]);
    assert!(alpha.contains("CN = alpha.test"), "{alpha}");
    let beta = served_subject(tls, &["-servername", "beta.test"]);
    assert!(beta.contains("CN = beta.test"), "{beta}");

    // An unknown name and no name at all: the default, which names no
    // customer domain.
    for args in [&["-servername", "unknown.test"][..], &["-noservername"][..]] {
        let subject = served_subject(tls, args);
        assert!(
            subject.contains("SpinForge default certificate"),
            "{args:?}: {subject}"
        );
        assert!(!subject.contains("alpha") && !subject.contains("beta"));
    }
}

#[test]
fn tls_1_0_and_1_1_are_refused_and_1_2_and_1_3_accepted() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");
    let base = ["-servername", "alpha.test"];

    // SECLEVEL=0 lets OpenSSL 3 offer the old versions at all, so the
    // refusal seen is the server's.
    for version in ["-tls1", "-tls1_1"] {
        let (text, ok) = s_client(
            tls,
            &[&base[..], &[version, "-cipher", "DEFAULT@SECLEVEL=0"]].concat(),
        );
        assert!(!ok, "{version} was accepted:\n{text}");
        // rustls answers a hello without 1.2 or 1.3 with a fatal alert
        // (handshake_failure); nothing is negotiated.
        assert!(
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "{version}: {text}"
        );
        assert!(text.contains("Cipher is (NONE)"), "{version}: {text}");
        assert!(!text.contains("subject="), "{version} got a certificate");
    }
    for (version, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (text, ok) = s_client(tls, &[&base[..], &[version]].concat());
        assert!(ok, "{version} refused:\n{text}");
        assert!(
            text.contains(&format!("New, {protocol}, Cipher is")),
            "{text}"
        );
    }
}

#[test]
fn cbc_suites_are_refused_and_aead_suites_accepted() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");
    let base = ["-servername", "alpha.test", "-tls1_2"];

    for cbc in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-ECDSA-AES128-SHA256",
    ] {
        let (text, ok) = s_client(tls, &[&base[..], &["-cipher", cbc]].concat());
        assert!(!ok, "{cbc} was accepted:\n{text}");
        assert!(text.contains("handshake failure"), "{cbc}: {text}");
    }
    for aead in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let (text, ok) = s_client(tls, &[&base[..], &["-cipher", aead]].concat());
        assert!(ok, "{aead} refused:\n{text}");
        assert!(text.contains(&format!("Cipher is {aead}")), "{text}");
    }
}

/// A TLS 1.2 ClientHello offering only `suites`, for `name`.
fn client_hello(name: &str, suites: &[u16]) -> Vec<u8> {
    fn u16be(v: usize) -> [u8; 2] {
        (v as u16).to_be_bytes()
    }
    let mut ext = Vec::new();
    // server_name
    let mut sni = vec![0u8];
    sni.extend(u16be(name.len()));
    sni.extend(name.as_bytes());
    ext.extend([0, 0]);
    ext.extend(u16be(sni.len() + 2));
    ext.extend(u16be(sni.len()));
    ext.extend(&sni);
    // supported_groups: x25519, secp256r1
    ext.extend([0, 10, 0, 6, 0, 4, 0, 29, 0, 23]);
    // ec_point_formats: uncompressed
    ext.extend([0, 11, 0, 2, 1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256,
    // rsa_pkcs1_sha256
    ext.extend([0, 13, 0, 8, 0, 6, 4, 3, 8, 4, 4, 1]);

    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // client random
    body.push(0); // no session id
    body.extend(u16be(suites.len() * 2));
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // null compression only
    body.extend(u16be(ext.len()));
    body.extend(ext);

    let mut handshake = vec![1, 0];
    handshake.extend(u16be(body.len()));
    handshake.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend(u16be(handshake.len()));
    record.extend(handshake);
    record
}

/// The first record the server answers `hello` with: (type, first byte
/// after the header).
fn first_answer(addr: SocketAddr, hello: &[u8]) -> (u8, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(hello).expect("send hello");
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).expect("answer header");
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut body = vec![0u8; len.min(16)];
    stream.read_exact(&mut body).expect("answer body");
    (header[0], body)
}

#[test]
fn rc4_suites_are_refused_with_a_handshake_failure() {
    // Debian's OpenSSL 3 cannot offer RC4 any more, so the hello is
    // built by hand: RC4 suites only, then the same hello with one AEAD
    // suite as the control.
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");

    // TLS_RSA_WITH_RC4_128_MD5, _SHA, TLS_ECDHE_ECDSA_WITH_RC4_128_SHA,
    // TLS_ECDHE_RSA_WITH_RC4_128_SHA.
    let rc4 = client_hello("alpha.test", &[0x0004, 0x0005, 0xc007, 0xc011]);
    let (kind, body) = first_answer(tls, &rc4);
    assert_eq!(kind, 21, "an alert record");
    assert_eq!(body, vec![2, 40], "fatal handshake_failure");

    // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    let aead = client_hello("alpha.test", &[0xc02b]);
    let (kind, body) = first_answer(tls, &aead);
    assert_eq!(kind, 22, "a handshake record");
    assert_eq!(body[0], 2, "ServerHello");
}

#[test]
fn h2_is_negotiated_over_alpn() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");
    let (text, ok) = s_client(tls, &["-servername", "alpha.test", "-alpn", "h2,http/1.1"]);
    assert!(ok, "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    let (text, _) = s_client(tls, &["-servername", "alpha.test", "-alpn", "http/1.1"]);
    assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
}

#[tokio::test]
async fn http_redirects_by_default_and_hsts_is_sent_only_over_https() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");
    let https = https_client(&ca.pem, "alpha.test", tls);
    let url = format!("https://alpha.test:{}/", tls.port());

    // Plain HTTP: a permanent redirect to the same path over HTTPS.
    let plain = server.get("alpha.test", "/index.html?x=1").await;
    assert_eq!(plain.status(), 308);
    assert_eq!(
        plain.headers()["location"],
        format!("https://alpha.test:{}/index.html?x=1", tls.port()).as_str()
    );
    assert!(plain.headers().get("strict-transport-security").is_none());

    // HTTPS: the page, with HSTS, no subdomains or preload by default.
    let secure = https.get(&url).send().await.expect("https");
    assert_eq!(secure.status(), 200);
    assert_eq!(
        secure.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert_eq!(secure.text().await.expect("body"), "<h1>secure</h1>");

    // Both: plain HTTP serves the page, still without HSTS.
    assert_ok(&server.cli(&["certs", "https", "alpha.test", "--mode", "both"], None));
    let plain = server.get("alpha.test", "/").await;
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("strict-transport-security").is_none());

    // Opt-in extras appear over HTTPS only.
    let out = server.cli(
        &[
            "certs",
            "https",
            "alpha.test",
            "--mode",
            "both",
            "--hsts-include-subdomains",
            "--hsts-preload",
        ],
        None,
    );
    assert_ok(&out);
    let secure = https.get(&url).send().await.expect("https");
    assert_eq!(
        secure.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains; preload"
    );
    let plain = server.get("alpha.test", "/").await;
    assert!(plain.headers().get("strict-transport-security").is_none());
    // The other site keeps the default.
    let beta = https_client(&ca.pem, "beta.test", tls)
        .get(format!("https://beta.test:{}/", tls.port()))
        .send()
        .await
        .expect("beta");
    assert_eq!(
        beta.headers()["strict-transport-security"],
        "max-age=31536000"
    );

    // HTTPS only: plain HTTP is refused.
    assert_ok(&server.cli(
        &["certs", "https", "alpha.test", "--mode", "https-only"],
        None,
    ));
    let plain = server.get("alpha.test", "/").await;
    assert_eq!(plain.status(), 403);
    assert_eq!(https.get(&url).send().await.expect("https").status(), 200);

    // Preload without subdomains is refused with the field named.
    let out = server.cli(&["certs", "https", "alpha.test", "--hsts-preload"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs hsts_include_subdomains"), "{err}");
}

#[tokio::test]
async fn bad_uploads_get_clear_errors_and_change_nothing() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");
    let list = || {
        let out = server.cli(&["certs", "list", "--json"], None);
        assert_ok(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let before = list();
    let served_before = s_client(tls, &["-servername", "alpha.test", "-showcerts"]).0;
    let serial = |text: &str| {
        text.split("-----BEGIN CERTIFICATE-----")
            .nth(1)
            .map(str::to_owned)
            .expect("a certificate")
    };

    let good = ca.leaf("alpha.test", -1, 60);
    let other = ca.leaf("alpha.test", -1, 60);
    let dir = files.path();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("junk");
    let cases: Vec<((PathBuf, PathBuf), &str)> = vec![
        (
            (junk.clone(), pem_files(dir, "g1", &good).1),
            "the certificate is not a PEM certificate chain",
        ),
        (
            (pem_files(dir, "g2", &good).0, junk.clone()),
            "the private key is not a PEM private key",
        ),
        (
            // The key of another certificate.
            (pem_files(dir, "g3", &good).0, pem_files(dir, "o", &other).1),
            "the private key does not match the certificate",
        ),
        (
            pem_files(dir, "expired", &ca.leaf("alpha.test", -30, -1)),
            "the certificate expired on",
        ),
        (
            pem_files(dir, "future", &ca.leaf("alpha.test", 2, 30)),
            "the certificate is not valid before",
        ),
        (
            pem_files(dir, "wrong", &ca.leaf("gamma.test", -1, 30)),
            "the certificate does not cover alpha.test",
        ),
    ];
    for (paths, message) in cases {
        let out = upload(&server, "alpha.test", &paths);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{message}: {err}");
        assert!(err.contains(message), "want {message:?}, got {err}");
        assert!(err.contains("HTTP 400"), "{err}");
    }

    // Nothing changed: the same list and the same certificate served.
    assert_eq!(list(), before);
    let served_after = s_client(tls, &["-servername", "alpha.test", "-showcerts"]).0;
    assert_eq!(serial(&served_after), serial(&served_before));

    // The list names issuer, expiry and source of each.
    let entries = before.as_array().expect("array");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["domain"], "alpha.test");
    assert_eq!(entries[0]["source"], "upload");
    assert_eq!(entries[0]["issuer"], "CN=TLS test CA");
    let not_after = entries[0]["not_after"].as_str().expect("not_after");
    let parsed =
        time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    let days = (parsed - time::OffsetDateTime::now_utc()).whole_days();
    assert!((29..=30).contains(&days), "{not_after}");

    // A good replacement is served at once, without a restart.
    assert_ok(&upload(
        &server,
        "alpha.test",
        &pem_files(dir, "new", &good),
    ));
    let served_new = s_client(tls, &["-servername", "alpha.test", "-showcerts"]).0;
    assert_ne!(serial(&served_new), serial(&served_before));

    // An upload for a domain that is not a site is refused.
    let out = upload(
        &server,
        "nosite.test",
        &pem_files(dir, "ns", &ca.leaf("nosite.test", -1, 9)),
    );
    assert_eq!(out.status.code(), Some(1));

    // Successes and refusals are audit events.
    assert!(server.log_shows("cert.upload").await);
}

#[test]
fn a_deleted_sites_certificate_is_neither_served_nor_listed() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");
    assert_ok(&server.cli(&["sites", "delete", "beta.test"], None));

    // A later site of that name may be another customer's: the old key
    // must not serve it, now or after a restart.
    let subject = served_subject(tls, &["-servername", "beta.test"]);
    assert!(
        subject.contains("SpinForge default certificate"),
        "{subject}"
    );
    let alpha = served_subject(tls, &["-servername", "alpha.test"]);
    assert!(alpha.contains("CN = alpha.test"), "{alpha}");
    let listed = server.cli(&["certs", "list", "--json"], None);
    assert_ok(&listed);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(!listed.contains("beta.test"), "{listed}");
    assert!(listed.contains("alpha.test"), "{listed}");

    let server = server.restart();
    let tls = server.tls.expect("HTTPS listener after restart");
    let subject = served_subject(tls, &["-servername", "beta.test"]);
    assert!(
        subject.contains("SpinForge default certificate"),
        "{subject}"
    );
}

/// Sends `request` over TLS with `openssl s_client` and returns what came
/// back; `-ign_eof` waits for the server to answer and close.
fn raw_https(addr: SocketAddr, name: &str, request: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-quiet", "-ign_eof"])
        .args(["-connect", &addr.to_string(), "-servername", name])
        .args(["-alpn", "http/1.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (apt package openssl)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("write request");
    let out = child.wait_with_output().expect("s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn smuggling_shapes_are_refused_over_https_too() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");

    let good = raw_https(
        tls,
        "alpha.test",
        "GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
    );
    assert!(good.starts_with("HTTP/1.1 200"), "{good}");
    for (shape, request) in [
        (
            "CL+TE",
            "POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "duplicate CL",
            "POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ),
    ] {
        let answer = raw_https(tls, "alpha.test", request);
        assert!(answer.starts_with("HTTP/1.1 400"), "{shape}: {answer}");
    }
}

#[test]
fn certificates_survive_a_restart() {
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = two_sites(&ca, files.path());
    let tls = server.tls.expect("HTTPS listener");
    let before = served_subject(tls, &["-servername", "beta.test"]);
    let server = server.restart();
    let tls = server.tls.expect("HTTPS listener after restart");
    assert_eq!(served_subject(tls, &["-servername", "beta.test"]), before);
}

#[tokio::test]
async fn dev_tls_serves_localhost_names_from_a_local_ca() {
    let root = tempfile::tempdir().expect("tmp");
    let mut server = Server::start_in_workspace(&["--dev-tls", "--tls-listen", "127.0.0.1:0"]);
    let tls = server.tls.expect("HTTPS listener");
    assert!(server.log().contains("development CA"));
    let ca_path = server.data_dir.join("dev-ca").join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_path).expect("the CA certificate");
    let client = https_client(&ca_pem, "app.localhost", tls);
    let response = client
        .get(format!("https://app.localhost:{}/", tls.port()))
        .send()
        .await
        .expect("verified against the dev CA");
    assert_eq!(
        response.status(),
        404,
        "no such site, but a verified handshake"
    );
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    // The CA key never leaves its 0600 file.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.data_dir.join("dev-ca").join("ca.key"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    server.stop();
    drop(root);
}

// ---- https:// upstreams -------------------------------------------------------

/// A real HTTPS server (Python's http.server wrapped by its ssl module) on
/// loopback, with a certificate from `ca`; with `client_ca`, it demands a
/// client certificate signed by that CA. Killed on drop.
struct PythonHttps {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for PythonHttps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
cert, key, client_ca = sys.argv[1], sys.argv[2], sys.argv[3]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.connection.getpeercert()
        who = "anonymous"
        if peer:
            who = dict(x[0] for x in peer["subject"])["commonName"]
        body = ("hello over tls, client " + who).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if client_ca != "-":
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl PythonHttps {
    fn start(ca: &TestCa, client_ca: Option<&str>) -> PythonHttps {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = pem_files(dir.path(), "upstream", &ca.leaf("127.0.0.1", -1, 30));
        let client_ca_arg = match client_ca {
            Some(pem) => {
                let path = dir.path().join("client-ca.pem");
                std::fs::write(&path, pem).expect("client ca");
                path.to_str().expect("utf-8").to_owned()
            }
            None => "-".to_owned(),
        };
        let mut child = Command::new("python3")
            .args(["-c", HTTPS_SERVER])
            .arg(&cert)
            .arg(&key)
            .arg(&client_ca_arg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port = line.trim().parse().expect("port");
        PythonHttps {
            child,
            port,
            _dir: dir,
        }
    }
}

async fn create_proxy_site(server: &Server, domain: &str, upstream: &str) {
    let token = server.login_token().await;
    let response = common::http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "domain": domain, "type": "proxy", "upstream": upstream }))
        .send()
        .await
        .expect("create site");
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn https_upstreams_are_verified_and_can_get_a_client_certificate() {
    let upstream_ca = TestCa::new();
    let client_ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let dir = files.path();
    std::fs::write(dir.join("upstream-ca.pem"), &upstream_ca.pem).expect("ca");
    let client = pem_files(dir, "client", &client_ca.leaf("edge.client.test", -1, 30));

    // Verification is on by default: an upstream from a private CA the
    // edge was not told about answers 502.
    let plain = PythonHttps::start(&upstream_ca, None);
    let server = Server::start();
    server.create_admin_and_login();
    let url = format!("https://127.0.0.1:{}", plain.port);
    create_proxy_site(&server, "unverified.test", &url).await;
    let response = server.get("unverified.test", "/").await;
    assert_eq!(response.status(), 502);
    drop(server);

    // With the CA configured it is reached; a server that demands a
    // client certificate gets the configured one.
    let mtls = PythonHttps::start(&upstream_ca, Some(&client_ca.pem));
    let config = format!(
        "{LOOPBACK_UPSTREAMS}upstream_ca_file = \"{}\"\n\
         upstream_client_cert = \"{}\"\nupstream_client_key = \"{}\"\n",
        dir.join("upstream-ca.pem").display(),
        client.0.display(),
        client.1.display()
    );
    let server = Server::start_with(&config);
    server.create_admin_and_login();
    create_proxy_site(&server, "verified.test", &url).await;
    let response = server.get("verified.test", "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "hello over tls, client anonymous"
    );
    let mtls_url = format!("https://127.0.0.1:{}", mtls.port);
    create_proxy_site(&server, "mutual.test", &mtls_url).await;
    let response = server.get("mutual.test", "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "hello over tls, client edge.client.test"
    );
    drop(server);

    // Without the client certificate, the mutual-TLS upstream refuses.
    let config = format!(
        "{LOOPBACK_UPSTREAMS}upstream_ca_file = \"{}\"\n",
        dir.join("upstream-ca.pem").display()
    );
    let server = Server::start_with(&config);
    server.create_admin_and_login();
    create_proxy_site(&server, "mutual.test", &mtls_url).await;
    assert_eq!(server.get("mutual.test", "/").await.status(), 502);
}

/// An upstream on loopback that takes `n` connections, tells `arrived`
/// when each has sent its request head, and answers each a second later.
fn slow_upstream(n: usize, arrived: std::sync::mpsc::Sender<()>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let arrived = arrived.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let _ = arrived.send(());
                std::thread::sleep(Duration::from_secs(1));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow",
                );
            });
        }
    });
    addr
}

// Two workers: this test blocks one on the upstream's channel while the
// requests run on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_when_serve_stops() {
    // Over TLS one over HTTP/1.1 and one over HTTP/2 (ALPN picks the
    // protocol), and one over plain HTTP/1.1 to a site without a
    // certificate (a site with one is redirected to HTTPS).
    let (arrived, arrivals) = std::sync::mpsc::channel();
    let upstream = slow_upstream(3, arrived);
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let mut server = Server::start_with(&tls_config());
    server.create_admin_and_login();
    create_proxy_site(&server, "slow.test", &format!("http://{upstream}")).await;
    create_proxy_site(&server, "plain.test", &format!("http://{upstream}")).await;
    certify(&server, &ca, files.path(), "slow.test");
    let tls = server.tls.expect("HTTPS listener");

    let mut pending = Vec::new();
    for (version, client, url) in [
        (
            reqwest::Version::HTTP_11,
            reqwest::Client::builder().http1_only(),
            "https://slow.test/",
        ),
        (
            reqwest::Version::HTTP_2,
            reqwest::Client::builder().http2_prior_knowledge(),
            "https://slow.test/",
        ),
        (
            reqwest::Version::HTTP_11,
            reqwest::Client::builder().http1_only(),
            "http://plain.test/",
        ),
    ] {
        let client = client
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("ca")])
            .resolve("slow.test", tls)
            .resolve("plain.test", server.edge)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        pending.push(tokio::spawn(async move {
            let response = client.get(url).send().await.expect("an answer");
            let answered = response.version();
            let status = response.status();
            let closing = response.headers().get("connection").cloned();
            let body = response.text().await.expect("body");
            (version, answered, status, closing, body)
        }));
    }
    for _ in 0..3 {
        arrivals
            .recv_timeout(Duration::from_secs(10))
            .expect("all requests reached the upstream");
    }

    // Connections that send nothing: one chose h2 and owes its preface,
    // one HTTP/1.1, one has not even begun its TLS handshake.
    let mut silent = Vec::new();
    for alpn in [Some("h2"), Some("http/1.1")] {
        let stream = tls_connect(&ca, "slow.test", tls, alpn).await;
        silent.push(tokio::spawn(until_closed(stream)));
    }
    let bare = tokio::net::TcpStream::connect(tls).await.expect("connect");
    silent.push(tokio::spawn(until_closed(bare)));

    // SIGTERM while all wait for their upstream.
    let pid = server.pid();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(status.expect("kill").success());
    // The listeners close at once; the requests are still waiting.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(tls).is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the HTTPS listener still takes connections");
    for request in pending {
        let (version, answered, status, closing, body) = request.await.expect("request task");
        assert_eq!(answered, version);
        assert_eq!(status, 200, "{version:?}");
        assert_eq!(body, "slow", "{version:?}");
        // HTTP/1.1 is told the connection ends (HTTP/2 gets a GOAWAY).
        if version == reqwest::Version::HTTP_11 {
            assert_eq!(closing.as_ref().map(|v| v.as_bytes()), Some(&b"close"[..]));
        }
    }
    assert!(TcpStream::connect(server.edge).is_err(), "still listening");
    // The silent connections are closed without waiting out the shutdown
    // grace (10 s), and serve exits.
    for connection in silent {
        tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .expect("a silent connection held the shutdown")
            .expect("reader");
    }
    let stat = format!("/proc/{pid}/stat");
    let mut exited = false;
    for _ in 0..100 {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited, "serve still runs 5 s after its last request");
    server.stop();
}

#[tokio::test]
async fn a_dribbled_http2_preface_gets_the_header_read_timeout() {
    // Over TLS, ALPN picks the protocol. Without it the connection is
    // HTTP/1.1 and the header-read timeout (1 s here) counts from the
    // first byte; with h2 the preface is read under the same timeout. The
    // preface sent a byte every 250 ms would take 6 s; sniffed for, it was
    // waited for byte by byte.
    let ca = TestCa::new();
    let files = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(&format!(
        "{}[edge]\nheader_read_timeout_secs = 1\n",
        tls_config()
    ));
    server.create_admin_and_login();
    deploy_static(&server, "alpha.test");
    certify(&server, &ca, files.path(), "alpha.test");
    let tls = server.tls.expect("HTTPS listener");

    for alpn in [None, Some("h2")] {
        let stream = tls_connect(&ca, "alpha.test", tls, alpn).await;
        let (reader, mut writer) = tokio::io::split(stream);
        let closed = tokio::spawn(until_closed(reader));
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut sent = 0;
        for byte in preface {
            if closed.is_finished() || writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Cut by the timeout after about 4 bytes; at 16 the request line
        // would be complete (and rejected as HTTP/2.0 on HTTP/1.1).
        assert!(
            sent < 16,
            "{alpn:?}: the server read {sent} bytes of a dribbled preface"
        );
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the server closed the connection")
            .expect("reader");
    }
}

/// A TLS connection to `addr` for `name`, trusting `ca`, offering `alpn`.
async fn tls_connect(
    ca: &TestCa,
    name: &str,
    addr: SocketAddr,
    alpn: Option<&str>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.pem.as_bytes());
    roots.add(ca_der.expect("ca der")).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    let agreed = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(agreed, alpn.map(|p| p.as_bytes().to_vec()));
    stream
}

/// Reads from `reader` until the connection ends.
async fn until_closed(mut reader: impl tokio::io::AsyncRead + Unpin) {
    let mut buf = [0u8; 1024];
    while let Ok(1..) = reader.read(&mut buf).await {}
}
