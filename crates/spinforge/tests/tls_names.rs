//! Which names a TLS connection may speak for, black box: the real binary
//! with `--dev-tls`, Debian's `curl` and `openssl`. A request whose Host
//! names another site than the connection's SNI gets 421 (HTTP/1.1 and
//! HTTP/2); the development CA is name-constrained to `localhost`, lives a
//! year, signs short-lived leaves, and replaces a stale CA at start.

mod common;

use common::{assert_ok, write_tree, Server, LOOPBACK_UPSTREAMS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A server with an HTTPS listener and the development CA.
fn dev_tls_server() -> Server {
    let config = format!("tls_listen = \"127.0.0.1:0\"\n{LOOPBACK_UPSTREAMS}");
    Server::start_with_flags(&config, &["--dev-tls"])
}

fn ca_path(server: &Server) -> PathBuf {
    server.data_dir.join("dev-ca").join("ca.pem")
}

/// Deploys a static site at `domain` whose page is its own name.
fn deploy_named(server: &Server, domain: &str) {
    let dir = tempfile::tempdir().expect("site");
    write_tree(dir.path(), &[("index.html", domain.as_bytes())]);
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

/// Runs a bounded command and returns its output.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} (apt package): {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One HTTPS request with curl: the connection is made for `sni` and the
/// request names `host`. Verifies the certificate against `ca`, unless
/// `sni` is None (then curl dials the IP, which sends no SNI). Returns
/// (status, HTTP version, body).
fn curl(
    tls: SocketAddr,
    sni: Option<&str>,
    host: &str,
    http2: bool,
    ca: &Path,
) -> (u16, String, String) {
    let port = tls.port();
    let version = if http2 { "--http2" } else { "--http1.1" };
    let host_header = format!("Host: {host}");
    let mut args = vec![
        "-sS",
        version,
        "-H",
        &host_header,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    let resolve;
    let url;
    let ca = ca.to_str().expect("utf-8");
    match sni {
        Some(name) => {
            resolve = format!("{name}:{port}:127.0.0.1");
            url = format!("https://{name}:{port}/");
            args.extend(["--cacert", ca, "--resolve", &resolve, &url]);
        }
        None => {
            url = format!("https://127.0.0.1:{port}/");
            args.extend(["-k", &url]);
        }
    }
    let out = run("curl", &args);
    assert!(out.status.success(), "curl {args:?}: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').expect("status line");
    let (status, version) = last.split_once(' ').expect("status and version");
    (
        status.parse().expect("status"),
        version.to_owned(),
        body.to_owned(),
    )
}

#[test]
fn a_host_of_another_site_than_the_sni_gets_421_over_h1_and_h2() {
    let server = dev_tls_server();
    server.create_admin_and_login();
    for domain in [
        "a.localhost",
        "b.localhost",
        "*.wild.localhost",
        "exact.wild.localhost",
    ] {
        deploy_named(&server, domain);
    }
    let tls = server.tls.expect("HTTPS listener");
    let ca = ca_path(&server);

    for http2 in [false, true] {
        let want_version = if http2 { "2" } else { "1.1" };
        // (SNI, Host, status, body): the attack of the report first.
        let cases: &[(Option<&str>, &str, u16, &str)] = &[
            (Some("b.localhost"), "a.localhost", 421, ""),
            (Some("a.localhost"), "b.localhost", 421, ""),
            (Some("nosite.localhost"), "a.localhost", 421, ""),
            (Some("x.wild.localhost"), "exact.wild.localhost", 421, ""),
            (Some("exact.wild.localhost"), "y.wild.localhost", 421, ""),
            (Some("a.localhost"), "a.localhost", 200, "a.localhost"),
            (Some("a.localhost"), "A.LocalHost:443", 200, "a.localhost"),
            // Two names under one wildcard site are the same site.
            (
                Some("x.wild.localhost"),
                "y.wild.localhost",
                200,
                "*.wild.localhost",
            ),
            // No SNI: the Host decides, as before.
            (None, "a.localhost", 200, "a.localhost"),
        ];
        for (sni, host, status, body) in cases {
            let (got, version, page) = curl(tls, *sni, host, http2, &ca);
            let case = format!("SNI {sni:?} Host {host} h2={http2}");
            assert_eq!(got, *status, "{case}: {page}");
            assert_eq!(version, want_version, "{case}");
            if *status == 421 {
                assert!(page.starts_with("421"), "{case}: {page}");
                assert!(!page.contains("localhost"), "{case}: {page}");
            } else {
                assert_eq!(page, *body, "{case}");
            }
        }
    }
}

/// `openssl x509 -checkend SECONDS`: true iff the certificate is still
/// valid that many seconds from now.
fn valid_for(cert: &Path, days: u64) -> bool {
    let seconds = (days * 86_400).to_string();
    let path = cert.to_str().expect("utf-8");
    run(
        "openssl",
        &["x509", "-in", path, "-noout", "-checkend", &seconds],
    )
    .status
    .success()
}

/// Signs a leaf for `san` (`DNS:name` or `IP:addr`) with the CA's key,
/// as anyone holding that key could, and returns `openssl verify`'s
/// output and whether it succeeded.
fn verify_foreign_leaf(dir: &Path, ca: &Path, ca_key: &Path, san: &str) -> (bool, String) {
    let stem = san.replace([':', '.'], "_");
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    let leaf = dir.join(format!("{stem}.pem"));
    let p = |path: &Path| path.to_str().expect("utf-8").to_owned();
    let ext = format!("subjectAltName={san}");
    let out = run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=leaf",
            "-addext",
            &ext,
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let serial = dir.join("ca.srl");
    let out = run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(ca),
            "-CAkey",
            &p(ca_key),
            "-CAserial",
            &p(&serial),
            "-CAcreateserial",
            "-days",
            "1",
            "-copy_extensions",
            "copy",
            "-out",
            &p(&leaf),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run("openssl", &["verify", "-CAfile", &p(ca), &p(&leaf)]);
    (out.status.success(), text(&out))
}

#[test]
fn the_dev_ca_is_constrained_to_localhost_and_lives_a_year() {
    let server = dev_tls_server();
    let ca = ca_path(&server);
    let ca_key = server.data_dir.join("dev-ca").join("ca.key");

    let out = run(
        "openssl",
        &[
            "x509",
            "-in",
            ca.to_str().expect("utf-8"),
            "-noout",
            "-text",
        ],
    );
    let dump = text(&out);
    assert!(out.status.success(), "{dump}");
    for needle in [
        "X509v3 Name Constraints: critical",
        "Permitted:",
        "DNS:localhost",
        "IP:127.0.0.0/255.0.0.0",
        "CA:TRUE, pathlen:0",
    ] {
        assert!(dump.contains(needle), "{needle} missing in:\n{dump}");
    }
    assert!(valid_for(&ca, 360), "the CA lives about a year");
    assert!(!valid_for(&ca, 367), "the CA lives no longer than a year");

    // A leaf for a real name or a non-loopback address, signed with the
    // CA's own key, does not verify; localhost names and loopback do.
    let dir = tempfile::tempdir().expect("tmp");
    for (san, ok) in [
        ("DNS:example.com", false),
        ("DNS:localhost.example.com", false),
        ("IP:10.1.2.3", false),
        ("DNS:app.localhost", true),
        ("DNS:localhost", true),
        ("IP:127.0.0.1", true),
    ] {
        let (verified, output) = verify_foreign_leaf(dir.path(), &ca, &ca_key, san);
        assert_eq!(verified, ok, "{san}: {output}");
        if !ok {
            assert!(output.contains("subtree violation"), "{san}: {output}");
        }
    }

    // The leaf the edge serves verifies against the CA and is short-lived.
    let tls = server.tls.expect("HTTPS listener");
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &tls.to_string(),
            "-servername",
            "app.localhost",
            "-CAfile",
            ca.to_str().expect("utf-8"),
            "-verify_return_error",
        ],
    );
    let shown = text(&out);
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");
    let begin = shown.find("-----BEGIN CERTIFICATE-----").expect("leaf");
    let end = shown.find("-----END CERTIFICATE-----").expect("leaf end");
    let leaf = dir.path().join("served.pem");
    let pem = format!("{}-----END CERTIFICATE-----\n", &shown[begin..end]);
    std::fs::write(&leaf, pem).expect("write leaf");
    assert!(valid_for(&leaf, 25), "a leaf lives about 30 days");
    assert!(!valid_for(&leaf, 31), "a leaf lives no more than 30 days");
}

/// Replaces the stored CA with one made by openssl: `days` long, with or
/// without a localhost name constraint.
fn plant_ca(server: &Server, days: &str, constrained: bool) -> String {
    let dir = server.data_dir.join("dev-ca");
    let cert = dir.join("ca.pem");
    let key = dir.join("ca.key");
    let p = |path: &Path| path.to_str().expect("utf-8").to_owned();
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=SpinForge development CA",
        "-days",
        days,
    ];
    if constrained {
        args.extend([
            "-addext",
            "nameConstraints=critical,permitted;DNS:localhost",
        ]);
    }
    let (key_path, cert_path) = (p(&key), p(&cert));
    args.extend(["-keyout", &key_path, "-out", &cert_path]);
    let out = run("openssl", &args);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(&cert).expect("planted CA")
}

#[test]
fn a_stale_or_unconstrained_dev_ca_is_replaced_at_start() {
    let mut server = dev_tls_server();
    for (days, constrained, said) in [
        ("3650", false, "predates the localhost-only name constraint"),
        ("5", true, "expires within 30 days"),
    ] {
        server.stop();
        let planted = plant_ca(&server, days, constrained);
        server = server.restart();
        assert!(server.log().contains(said), "{said}:\n{}", server.log());
        let ca = ca_path(&server);
        let now = std::fs::read_to_string(&ca).expect("CA");
        assert_ne!(now, planted, "the stale CA was replaced");
        assert!(valid_for(&ca, 360) && !valid_for(&ca, 367));
        let dump = text(&run(
            "openssl",
            &[
                "x509",
                "-in",
                ca.to_str().expect("utf-8"),
                "-noout",
                "-text",
            ],
        ));
        assert!(dump.contains("DNS:localhost"), "{dump}");
    }
    // A current CA is kept across restarts.
    let before = std::fs::read_to_string(ca_path(&server)).expect("CA");
    let server = server.restart();
    assert_eq!(
        std::fs::read_to_string(ca_path(&server)).expect("CA"),
        before
    );
    assert!(
        !server.log().contains("generating a new one"),
        "{}",
        server.log()
    );
}
