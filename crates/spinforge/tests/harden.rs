//! Host hardening and supply chain (issue #11) through the real binary:
//! `doctor` on a real data directory (its audit chain verified, then
//! tampered with), `install --systemd` into a root prefix, `firewall
//! render` checked by Debian's `nft -c` in a namespace this test creates,
//! and `scan`, `vulndb import` and a deploy policy that refuses a bundle
//! with a known-vulnerable dependency. Nothing here reads or changes this
//! host's /etc; every server is on loopback.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

/// Runs the CLI without a server.
fn spinforge(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SPINFORGE_DATA_DIR")
        .env_remove("SPINFORGE_CONFIG")
        .output()
        .expect("run spinforge")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// OSV records in the shape OSV publishes: an npm advisory for lodash
/// below 4.17.21 (HIGH) and a LOW one for a second package.
fn write_osv(dir: &Path) {
    let records = [
        json!({
            "schema_version": "1.6.0",
            "id": "GHSA-test-lodash",
            "modified": "2026-03-01T00:00:00Z",
            "aliases": ["CVE-2026-0001"],
            "summary": "Prototype pollution in lodash (test fixture)",
            "affected": [{
                "package": {"ecosystem": "npm", "name": "lodash"},
                "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "4.17.21"}]}],
            }],
            "database_specific": {"severity": "HIGH"},
        }),
        json!({
            "id": "GHSA-test-tiny",
            "modified": "2026-03-01T00:00:00Z",
            "affected": [{
                "package": {"ecosystem": "npm", "name": "tiny"},
                "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "2.0.0"}]}],
            }],
            "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}],
        }),
    ];
    std::fs::create_dir_all(dir).expect("mkdir");
    for record in records {
        let name = format!("{}.json", record["id"].as_str().expect("id"));
        std::fs::write(
            dir.join(name),
            serde_json::to_string_pretty(&record).expect("json"),
        )
        .expect("write");
    }
}

/// A static bundle whose package-lock.json pins `lodash_version`.
fn bundle(dir: &Path, lodash_version: &str) {
    let lock = json!({
        "name": "shop",
        "lockfileVersion": 3,
        "packages": {
            "": {"name": "shop", "version": "1.0.0"},
            "node_modules/lodash": {"version": lodash_version},
            "node_modules/tiny": {"version": "1.0.0"},
        }
    });
    write_tree(
        dir,
        &[
            ("index.html", b"<h1>shop</h1>"),
            (
                "package-lock.json",
                serde_json::to_string_pretty(&lock)
                    .expect("json")
                    .as_bytes(),
            ),
        ],
    );
}

#[tokio::test]
async fn deploy_refuses_vulnerable_bundles_where_the_policy_applies_and_audits_it() {
    let config = format!(
        "{LOOPBACK_UPSTREAMS}\n[supply_chain]\nrefuse_vulnerable_sites = [\"shop.localhost\"]\n"
    );
    let server = Server::start_with(&config);
    server.create_admin_and_login();
    let data = path(&server.data_dir).to_owned();

    // With the policy on and no advisories imported, deploys fail closed.
    let scratch = tempfile::tempdir().expect("tmp");
    let vulnerable = scratch.path().join("vulnerable");
    bundle(&vulnerable, "4.17.20");
    let out = server.cli(
        &["deploy", path(&vulnerable), "--domain", "shop.localhost"],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("vulndb import"), "{}", stderr(&out));

    let osv = scratch.path().join("osv");
    write_osv(&osv);
    let out = spinforge(&["vulndb", "import", path(&osv), "--data-dir", &data]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("imported 2 of 2 records"),
        "{}",
        stdout(&out)
    );

    let out = server.cli(
        &["deploy", path(&vulnerable), "--domain", "shop.localhost"],
        None,
    );
    assert!(!out.status.success(), "a vulnerable bundle was deployed");
    let message = stderr(&out);
    assert!(
        message.contains("lodash@4.17.20 GHSA-test-lodash (HIGH)"),
        "{message}"
    );
    assert!(
        !message.contains("GHSA-test-tiny"),
        "LOW is below the threshold: {message}"
    );
    let status = server.cli(&["status", "shop.localhost", "--json"], None);
    assert!(
        !stdout(&status).contains("\"active_release\":\"0"),
        "nothing was activated"
    );

    let out = server.cli(
        &[
            "audit",
            "list",
            "--type",
            "deploy.refused_vulnerable",
            "--json",
        ],
        None,
    );
    assert_ok(&out);
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["result"], "denied", "{}", events[0]);
    assert!(events[0]["actor"]["user_id"].is_i64(), "{}", events[0]);
    assert!(
        events[0].to_string().contains("GHSA-test-lodash"),
        "{}",
        events[0]
    );

    // A site the policy does not name deploys the same bundle.
    let out = server.cli(
        &["deploy", path(&vulnerable), "--domain", "blog.localhost"],
        None,
    );
    assert_ok(&out);
    // The fixed version deploys to the covered site.
    let fixed = scratch.path().join("fixed");
    bundle(&fixed, "4.17.21");
    assert_ok(&server.cli(
        &["deploy", path(&fixed), "--domain", "shop.localhost"],
        None,
    ));
    let page = server.get("shop.localhost", "/").await;
    assert_eq!(page.status(), 200);

    // `scan DOMAIN` reads the active release of a site.
    let out = spinforge(&["scan", "blog.localhost", "--data-dir", &data, "--json"]);
    assert_eq!(out.status.code(), Some(1), "HIGH finding: {}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec!["GHSA-test-lodash", "GHSA-test-tiny"]);
    assert_eq!(report["findings"][0]["fixed"], json!(["4.17.21"]));
    assert_eq!(report["findings"][1]["severity"], "LOW");
    let out = spinforge(&["scan", "shop.localhost", "--data-dir", &data]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "only LOW left: {}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("GHSA-test-tiny"), "{}", stdout(&out));
    let out = spinforge(&[
        "scan",
        "shop.localhost",
        "--data-dir",
        &data,
        "--fail-on",
        "low",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = spinforge(&["scan", "nosuch.localhost", "--data-dir", &data]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("neither a folder nor a site"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn malformed_lockfiles_and_osv_records_name_the_file_and_line() {
    let scratch = tempfile::tempdir().expect("tmp");
    let osv = scratch.path().join("osv");
    std::fs::create_dir_all(&osv).expect("mkdir");
    std::fs::write(
        osv.join("bad.json"),
        "{\n  \"id\": \"X\",\n  \"affected\": [,]\n}\n",
    )
    .expect("write");
    let data = scratch.path().join("data");
    let out = spinforge(&["vulndb", "import", path(&osv), "--data-dir", path(&data)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.json:3:"), "{}", stderr(&out));
    assert!(
        !data.join("vulndb").exists(),
        "a failed import wrote nothing"
    );

    let app = scratch.path().join("app");
    write_tree(
        &app,
        &[(
            "yarn.lock",
            b"left-pad@1:\n  version \"1.3.0\"\n\nbroken entry\n",
        )],
    );
    // Without advisories a scan is refused rather than reported clean.
    let out = spinforge(&["scan", path(&app), "--data-dir", path(&data)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no advisories"), "{}", stderr(&out));

    let good = scratch.path().join("good-osv");
    write_osv(&good);
    assert_ok(&spinforge(&[
        "vulndb",
        "import",
        path(&good),
        "--data-dir",
        path(&data),
    ]));
    let out = spinforge(&["scan", path(&app), "--data-dir", path(&data)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("yarn.lock:4:"), "{}", stderr(&out));
}

#[test]
fn install_dry_run_writes_nothing_and_a_rooted_install_matches_the_package() {
    let root = tempfile::tempdir().expect("tmp");
    let out = spinforge(&[
        "install",
        "--systemd",
        "--dry-run",
        "--root",
        path(root.path()),
    ]);
    assert_ok(&out);
    let plan = stdout(&out);
    for needle in [
        "useradd --system",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "/etc/logrotate.d/spinforge",
        "mode 0700",
    ] {
        assert!(plan.contains(needle), "{needle} missing from the dry run");
    }
    assert_eq!(
        std::fs::read_dir(root.path()).expect("ls").count(),
        0,
        "dry run wrote"
    );

    // The user exists in the tree, so nothing runs useradd on this host.
    write_tree(root.path(), &[("etc/passwd", b"root:x:0:0::/root:/bin/sh\nspinforge:x:990:990::/var/lib/spinforge:/usr/sbin/nologin\n")]);
    let out = spinforge(&["install", "--systemd", "--root", path(root.path())]);
    assert_ok(&out);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.path().join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("var/lib/spinforge"), 0o700);
    assert_eq!(mode("var/lib/spinforge/secrets"), 0o700);
    assert_eq!(mode("etc/spinforge/spinforge.toml"), 0o640);
    let packaged = workspace_root().join("crates/spinforge/debian");
    for (installed, asset) in [
        ("etc/systemd/system/spinforge.service", "spinforge.service"),
        ("etc/spinforge/spinforge.toml", "spinforge.toml"),
        ("etc/logrotate.d/spinforge", "logrotate"),
    ] {
        assert_eq!(
            std::fs::read_to_string(root.path().join(installed)).expect(installed),
            std::fs::read_to_string(packaged.join(asset)).expect(asset),
            "{asset} in crates/spinforge/debian differs from what install writes"
        );
    }
    // An operator's config is kept on a second install.
    std::fs::write(
        root.path().join("etc/spinforge/spinforge.toml"),
        "listen = \"0.0.0.0:8080\"\n",
    )
    .expect("write");
    assert_ok(&spinforge(&[
        "install",
        "--systemd",
        "--root",
        path(root.path()),
    ]));
    let kept =
        std::fs::read_to_string(root.path().join("etc/spinforge/spinforge.toml")).expect("config");
    assert_eq!(kept, "listen = \"0.0.0.0:8080\"\n");

    // Unprivileged: the service user owns the data; the config is
    // readable through its group.
    let other = tempfile::tempdir().expect("tmp");
    write_tree(
        other.path(),
        &[(
            "etc/passwd",
            b"spinforge:x:990:991::/var/lib/spinforge:/usr/sbin/nologin\n",
        )],
    );
    assert_ok(&spinforge(&[
        "install",
        "--systemd",
        "--unprivileged",
        "--root",
        path(other.path()),
    ]));
    use std::os::unix::fs::MetadataExt;
    let data = std::fs::metadata(other.path().join("var/lib/spinforge")).expect("data");
    assert_eq!((data.uid(), data.gid()), (990, 991));
    let config =
        std::fs::metadata(other.path().join("etc/spinforge/spinforge.toml")).expect("config");
    assert_eq!((config.uid(), config.gid()), (0, 991));

    let out = spinforge(&[
        "install",
        "--systemd",
        "--dry-run",
        "--data-dir",
        "/var/lib/a b",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--data-dir"), "{}", stderr(&out));
}

/// `nft -c -f` on `rules` inside a new network namespace.
fn nft_check(rules: &str) -> Output {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("spinforge.nft");
    std::fs::write(&file, rules).expect("write");
    Command::new("unshare")
        .args(["-n", "nft", "-c", "-f"])
        .arg(&file)
        .output()
        .expect("unshare and nft (apt nftables) must be installed")
}

#[test]
fn firewall_render_passes_nft_check_and_refuses_bad_networks() {
    let scratch = tempfile::tempdir().expect("tmp");
    let config = scratch.path().join("spinforge.toml");
    std::fs::write(
        &config,
        "listen = \"0.0.0.0:8080\"\ntls_listen = \"[::]:8443\"\n",
    )
    .expect("write");
    let out = spinforge(&[
        "firewall",
        "render",
        "--ssh-from",
        "192.0.2.0/24",
        "--ssh-from",
        "2001:db8::/48",
        "--config",
        path(&config),
        "--ban-sets",
        "--port",
        "8000",
    ]);
    assert_ok(&out);
    let rules = stdout(&out);
    assert!(
        rules.contains("elements = { 80, 443, 8000, 8080, 8443 }"),
        "{rules}"
    );
    assert!(
        rules.contains("ip saddr { 192.0.2.0/24 } tcp dport 22 accept"),
        "{rules}"
    );
    assert!(rules.contains("set banned4"), "{rules}");
    let check = nft_check(&rules);
    assert!(
        check.status.success(),
        "nft -c: {}\n{rules}",
        stderr(&check)
    );

    let out = spinforge(&["firewall", "render", "--ssh-from", "192.0.2.0/24 accept"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--ssh-from"), "{}", stderr(&out));
}

#[tokio::test]
async fn doctor_verifies_a_real_audit_chain_and_fails_when_it_is_edited() {
    let mut server = Server::start();
    server.create_admin_and_login();
    server.stop();
    // The server's temporary root is the tree; its data dir is /data in it.
    let root = server.root.path().to_owned();
    let doctor = |extra: &[&str]| {
        let mut args = vec![
            "doctor",
            "--root",
            path(&root),
            "--data-dir",
            "/data",
            "--json",
        ];
        args.extend_from_slice(extra);
        spinforge(&args)
    };
    let out = doctor(&[]);
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json report");
    let check = |report: &Value, id: &str| -> Value {
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id}"))
    };
    assert_eq!(
        check(&report, "spinforge.audit_chain")["status"],
        "pass",
        "{report}"
    );
    assert_eq!(check(&report, "spinforge.degraded_sites")["status"], "pass");
    // No backups.jsonl: a fail, so the exit code says so.
    assert_eq!(check(&report, "spinforge.backup")["status"], "fail");
    assert_eq!(out.status.code(), Some(1));
    // Nothing under the tree's /proc/sys: could not check, never pass.
    assert_eq!(
        check(&report, "kernel.tcp_syncookies")["status"],
        "could-not-check"
    );
    assert!(report["score"].as_u64().expect("score") < 50);

    // Edit one stored audit event the way an intruder would: drop the
    // append-only trigger, then change the row.
    let db = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(server.data_dir.join("spinforge.db")),
    )
    .await
    .expect("open db");
    for sql in [
        "DROP TRIGGER audit_events_no_update",
        "UPDATE audit_events SET result = 'denied' WHERE seq = 1",
    ] {
        sqlx::query(sql).execute(&db).await.expect(sql);
    }
    db.close().await;
    let report: Value = serde_json::from_str(&stdout(&doctor(&[]))).expect("json");
    let chain = check(&report, "spinforge.audit_chain");
    assert_eq!(chain["status"], "fail", "{chain}");
    assert!(
        chain["detail"].as_str().expect("detail").contains("seq 1"),
        "{chain}"
    );

    // An unreadable config leaves SpinForge's config checks unchecked.
    std::fs::write(
        root.join("bad.toml"),
        "api_listen = \"0.0.0.0:9080\"\nnot_a_key = 1\n",
    )
    .expect("write");
    let report: Value =
        serde_json::from_str(&stdout(&doctor(&["--config", "/bad.toml"]))).expect("json");
    let api = check(&report, "spinforge.api_exposure");
    assert_eq!(api["status"], "could-not-check", "{api}");
    assert!(
        api["detail"].as_str().expect("detail").contains("bad.toml"),
        "{api}"
    );

    // A table is the default output and ends with the score.
    let out = spinforge(&["doctor", "--root", path(&root), "--data-dir", "/data"]);
    assert!(stdout(&out).contains("score "), "{}", stdout(&out));
}

/// The pid of the `spinforge serve` whose data directory is `data_dir`.
fn serve_pid(data_dir: &Path) -> u32 {
    let wanted = path(data_dir);
    for entry in std::fs::read_dir("/proc").expect("ls /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "serve") && args.iter().any(|a| a == wanted) {
            return pid;
        }
    }
    panic!("no serve process for {wanted}");
}

#[test]
fn doctor_judges_the_running_serve_by_its_own_proc_status() {
    let server = Server::start();
    let pid = serve_pid(&server.data_dir);
    // A tree whose /proc is this host's, so doctor sees the real process
    // (and no unit file, so the process is all it can go by).
    let tree = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::symlink("/proc", tree.path().join("proc")).expect("symlink");
    let out = spinforge(&["doctor", "--root", path(tree.path()), "--json"]);
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json report");
    let check = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["id"] == "spinforge.service_user")
        .cloned()
        .expect("service_user");
    let detail = check["detail"].as_str().expect("detail");
    // Other tests' servers may run too; find this one's verdict.
    let ours = detail
        .split("; ")
        .find(|d| d.starts_with(&format!("serve (pid {pid}) ")))
        .unwrap_or_else(|| panic!("pid {pid} not judged: {detail}"));

    // What the kernel says about that process, read here independently.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .expect(key)
            .to_owned()
    };
    let uid: u32 = field("Uid:")
        .split_whitespace()
        .nth(1)
        .expect("euid")
        .parse()
        .expect("uid");
    let bounding = u64::from_str_radix(&field("CapBnd:"), 16).expect("CapBnd");
    let every = (1u64 << 38) - 1;
    if uid == 0 && bounding & every == every {
        // A test server started by root keeps every capability: not the
        // hardened unit, and doctor says so.
        assert_eq!(
            ours,
            format!(
                "serve (pid {pid}) runs as root with every capability (CapBnd {bounding:016x})"
            )
        );
        assert_eq!(check["status"], "warn", "{check}");
    } else if uid == 0 {
        assert!(ours.contains("runs as root"), "{ours}");
    } else {
        assert!(ours.contains(&format!("runs as uid {uid}")), "{ours}");
    }
}
