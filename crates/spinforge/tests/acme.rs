//! ACME issuance, black box, against Debian's `pebble` (apt package
//! `pebble`) with its `pebble-challtestsrv` as the DNS server that points
//! every test domain at loopback. Pebble validates for real: it fetches
//! the HTTP-01 answer from the edge's HTTP port and makes a TLS-ALPN-01
//! handshake with its TLS port. Everything listens on 127.0.0.1 only.

mod common;
mod keys_support;

use common::{assert_ok, free_port, free_udp_port, write_tree, Server};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// pebble and its challenge test server (used as DNS only), killed on drop.
struct Pebble {
    pebble: Child,
    challtestsrv: Child,
    /// The ACME directory URL.
    directory: String,
    /// The CA that signed pebble's own HTTPS certificate.
    ca_file: PathBuf,
    management: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.challtestsrv] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pebble {
    /// Starts both on free loopback ports; pebble validates against the
    /// edge at `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01), and
    /// issues certificates valid for `validity_secs`.
    fn start(http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        let dir = tempfile::tempdir().expect("tmp");
        let dns = free_udp_port();
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &management.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt package pebble)");

        // Pebble's own HTTPS certificate, from a CA made here.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = params.signed_by(&key, &issuer).expect("leaf cert");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("ca file");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("cert");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("key");

        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = serde_json::json!({ "pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": format!("127.0.0.1:{}", free_port()),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("config");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random validation delays; no deliberately refused nonces
            // (both are pebble's chaos settings for client authors).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates again instead of reusing an authz.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (apt package pebble)");

        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(listen).is_err() || TcpStream::connect(management).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Pebble {
            pebble,
            challtestsrv,
            directory: format!("https://{listen}/dir"),
            ca_file,
            management,
            _dir: dir,
        }
    }

    /// Points `host` at `ip` in the test DNS.
    async fn dns_a(&self, host: &str, ip: &str) {
        let response = reqwest::Client::new()
            .post(format!("http://{}/add-a", self.management))
            .json(&serde_json::json!({ "host": host, "addresses": [ip] }))
            .send()
            .await
            .expect("challtestsrv management");
        assert!(response.status().is_success());
    }
}

/// A server with ACME on against `pebble`, its edge on `http_port` and
/// `tls_port`, and `extra` lines in `[acme]`.
fn acme_server(pebble: &Pebble, http_port: u16, tls_port: u16, extra: &str) -> Server {
    let config = format!(
        "tls_listen = \"127.0.0.1:{tls_port}\"\n\
         [acme]\nenabled = true\ndirectory = \"{}\"\nca_bundle = \"{}\"\n\
         contact = [\"mailto:ops@example.test\"]\n{extra}",
        pebble.directory,
        pebble.ca_file.display()
    );
    let listen = format!("127.0.0.1:{http_port}");
    let server = Server::start_with_flags(&config, &["--listen", &listen]);
    server.create_admin_and_login();
    server
}

fn deploy_static(server: &Server, domain: &str) {
    let dir = tempfile::tempdir().expect("site");
    write_tree(dir.path(), &[("index.html", b"<h1>acme</h1>")]);
    let dir = dir.path().to_str().expect("utf-8").to_owned();
    assert_ok(&server.cli(&["deploy", &dir, "--domain", domain], None));
}

/// The certificate `certs list --json` shows for `domain`, if any.
fn listed(server: &Server, domain: &str) -> Option<serde_json::Value> {
    let out = server.cli(&["certs", "list", "--json"], None);
    assert_ok(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    list.as_array()?
        .iter()
        .find(|c| c["domain"] == domain)
        .cloned()
}

/// Waits up to `secs` for `check` to hold.
async fn eventually(secs: u64, what: &str, server: &Server, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The PEM of the leaf certificate the edge serves for `name`.
fn served_leaf(tls: SocketAddr, name: &str) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &tls.to_string()])
        .args(["-servername", name])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text
        .find("-----END CERTIFICATE-----")
        .expect("a certificate end");
    let pem = text[start..end].to_owned();
    let issuer = text
        .lines()
        .find(|l| l.starts_with("issuer="))
        .unwrap_or("")
        .to_owned();
    format!("{issuer}\n{pem}")
}

/// Lines of the log that record an order placed for `domain`.
fn orders_for(server: &Server, domain: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains("ACME order placed") && l.contains(domain))
        .count()
}

#[tokio::test]
async fn http_01_issues_for_a_site_and_a_restart_reuses_the_certificate() {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 90 * 24 * 3600);
    let server = acme_server(
        &pebble,
        http_port,
        tls_port,
        "challenge = \"http-01\"\ncheck_interval_secs = 1\n",
    );
    let tls = server.tls.expect("HTTPS listener");
    deploy_static(&server, "shop.test");

    eventually(60, "issuance over HTTP-01", &server, || {
        listed(&server, "shop.test").is_some()
    })
    .await;
    let cert = listed(&server, "shop.test").expect("listed");
    assert_eq!(cert["source"], "acme");
    assert!(
        cert["issuer"].as_str().unwrap_or("").contains("Pebble"),
        "{cert}"
    );
    let served = served_leaf(tls, "shop.test");
    assert!(served.contains("Pebble"), "{served}");
    assert_eq!(orders_for(&server, "shop.test"), 1);
    assert!(server.log().contains("cert.issued"));

    // An unknown name gets the default certificate and never an order.
    let unknown = served_leaf(tls, "nosuch.test");
    assert!(
        unknown.contains("SpinForge default certificate"),
        "{unknown}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(orders_for(&server, "nosuch.test"), 0);

    // A restart serves the stored certificate and orders nothing.
    let server = server.restart();
    let tls = server.tls.expect("HTTPS listener after restart");
    assert_eq!(served_leaf(tls, "shop.test"), served);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        orders_for(&server, "shop.test"),
        0,
        "re-ordered after restart:\n{}",
        server.log()
    );
}

#[tokio::test]
async fn tls_alpn_01_issues_once_for_many_parallel_first_hits() {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 90 * 24 * 3600);
    // The periodic check is an hour away: only the hello orders.
    let server = acme_server(
        &pebble,
        http_port,
        tls_port,
        "challenge = \"tls-alpn-01\"\ncheck_interval_secs = 3600\n",
    );
    let tls = server.tls.expect("HTTPS listener");
    deploy_static(&server, "parallel.test");
    assert_eq!(orders_for(&server, "parallel.test"), 0);

    let hits: Vec<_> = (0..16)
        .map(|_| std::thread::spawn(move || served_leaf(tls, "parallel.test")))
        .collect();
    for hit in hits {
        // The first hits get the default certificate while the order runs.
        hit.join().expect("hit");
    }
    eventually(60, "issuance over TLS-ALPN-01", &server, || {
        listed(&server, "parallel.test").is_some()
    })
    .await;
    assert!(served_leaf(tls, "parallel.test").contains("Pebble"));
    assert_eq!(orders_for(&server, "parallel.test"), 1, "{}", server.log());
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_before_it_expires() {
    let (http_port, tls_port) = (free_port(), free_port());
    // Valid 40 s; renewal starts 30 s (minus up to 3 s of jitter) before
    // the end, so about 10 s after issuance.
    let pebble = Pebble::start(http_port, tls_port, 40);
    let server = acme_server(
        &pebble,
        http_port,
        tls_port,
        "check_interval_secs = 1\nrenew_before_secs = 30\n",
    );
    let tls = server.tls.expect("HTTPS listener");
    deploy_static(&server, "short.test");
    eventually(60, "first issuance", &server, || {
        listed(&server, "short.test").is_some()
    })
    .await;
    let first = listed(&server, "short.test").expect("listed");
    let first_served = served_leaf(tls, "short.test");

    eventually(60, "renewal", &server, || {
        listed(&server, "short.test").is_some_and(|c| c["not_after"] != first["not_after"])
    })
    .await;
    assert!(orders_for(&server, "short.test") >= 2);
    let renewed = served_leaf(tls, "short.test");
    assert_ne!(renewed, first_served, "the renewed certificate is served");
}

#[tokio::test]
async fn failing_validation_backs_off_exponentially_and_is_audited() {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 90 * 24 * 3600);
    // The test DNS sends pebble to an address where nothing listens.
    pebble.dns_a("broken.test", "127.0.0.9").await;
    let server = acme_server(
        &pebble,
        http_port,
        tls_port,
        "check_interval_secs = 1\nbackoff_initial_secs = 1\nalert_after_failures = 3\n",
    );
    deploy_static(&server, "broken.test");

    let failures = |server: &Server| -> Vec<String> {
        server
            .log()
            .lines()
            .filter(|l| l.contains("ACME order failed") && l.contains("broken.test"))
            .map(str::to_owned)
            .collect()
    };
    eventually(90, "three failures", &server, || {
        failures(&server).len() >= 3
    })
    .await;
    let lines = failures(&server);
    for (i, delay) in [1000, 2000, 4000].iter().enumerate() {
        assert!(
            lines[i].contains(&format!("failures={}", i + 1))
                && lines[i].contains(&format!("retry_in_ms={delay}")),
            "failure {i}: {}",
            lines[i]
        );
    }
    // The backoff holds: one order per failure, no storm in between.
    assert_eq!(orders_for(&server, "broken.test"), lines.len());
    let alert = server
        .log()
        .lines()
        .find(|l| l.contains("cert.renew_failed"))
        .map(str::to_owned)
        .expect("cert.renew_failed audit event");
    assert!(alert.contains("broken.test"), "{alert}");
    assert!(listed(&server, "broken.test").is_none());
}

#[tokio::test]
async fn the_account_and_issued_keys_are_sealed_and_a_restart_reuses_the_account() {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 90 * 24 * 3600);
    let server = acme_server(
        &pebble,
        http_port,
        tls_port,
        "challenge = \"http-01\"\ncheck_interval_secs = 1\n",
    );
    deploy_static(&server, "sealed.test");
    eventually(60, "issuance", &server, || {
        listed(&server, "sealed.test").is_some()
    })
    .await;
    assert_eq!(server.log().matches("ACME account created").count(), 1);

    // Opened as an attacker holding the master key would: the account's
    // credentials and the issued key are real, and only sealed on disk.
    use secrets::KeyKind;
    let data = server.data_dir.clone();
    let credentials =
        keys_support::open_stored(&data, KeyKind::AcmeAccount, &pebble.directory).await;
    let credentials: serde_json::Value = serde_json::from_slice(&credentials).expect("json");
    let account_key = credentials["key_pkcs8"]
        .as_str()
        .expect("key_pkcs8")
        .to_owned();
    let account_der = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&account_key)
            .expect("base64url")
    };
    let cert_key = keys_support::open_stored(&data, KeyKind::CertificateKey, "sealed.test").await;
    let cert_key = String::from_utf8(cert_key).expect("PEM");
    let mut needles = keys_support::pem_needles("certificate key", &cert_key);
    needles.extend(keys_support::der_needles("account key", &account_der));
    keys_support::assert_absent(&data, &needles);

    // After a restart the sealed account is opened and used again.
    let server = server.restart();
    // The CLI keeps its login per API address, which a restart changes.
    let login = server.cli(
        &["login", "--email", common::ADMIN_EMAIL, "--password-stdin"],
        Some(common::ADMIN_PASSWORD),
    );
    assert_ok(&login);
    deploy_static(&server, "second.test");
    eventually(60, "issuance after restart", &server, || {
        listed(&server, "second.test").is_some()
    })
    .await;
    assert!(
        !server.log().contains("ACME account created"),
        "{}",
        server.log()
    );
    keys_support::assert_absent(&server.data_dir, &needles);
}

#[tokio::test]
async fn a_restart_waits_out_the_stored_backoff_instead_of_ordering_again() {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 90 * 24 * 3600);
    pebble.dns_a("stormy.test", "127.0.0.9").await;
    // Checked every second, so anything but the stored hour-long backoff
    // would order again within the wait below.
    let server = acme_server(
        &pebble,
        http_port,
        tls_port,
        "check_interval_secs = 1\nbackoff_initial_secs = 3600\n",
    );
    deploy_static(&server, "stormy.test");
    let failed = |server: &Server| {
        server
            .log()
            .lines()
            .any(|l| l.contains("ACME order failed") && l.contains("stormy.test"))
    };
    eventually(90, "a failed order", &server, || failed(&server)).await;
    assert_eq!(orders_for(&server, "stormy.test"), 1);

    let server = server.restart();
    eventually(30, "the backoff restored", &server, || {
        server.log().lines().any(|l| {
            l.contains("ACME backoff restored")
                && l.contains("stormy.test")
                && l.contains("failures=1")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        orders_for(&server, "stormy.test"),
        0,
        "ordered again right after a restart:\n{}",
        server.log()
    );
    assert!(server.log().contains("ACME certificates enabled"));
}
