//! Escape tests for the spinlet sandbox: a real Python app
//! (tests/data/escape_app.py) is deployed through the real binary and
//! asked to break out in every way the sandbox issue lists; each answer is
//! checked for the refusal. Needs root, as `serve` with a sandbox does.

mod common;

use common::{assert_ok, Server, LOOPBACK_UPSTREAMS};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const APP: &str = include_str!("data/escape_app.py");
const EPERM: i64 = 1;
const ENOSPC: i64 = 28;
const EROFS: i64 = 30;

/// A server whose apps get an 8 MiB /tmp and a 16 MiB /data.
fn server() -> Server {
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[sandbox]\ntmp_mb = 8\ndata_mb = 16\n"
    ));
    server.create_admin_and_login();
    server
}

/// Deploys the escape app as `domain` with the given `[limits]` lines. The
/// site's WAF is switched off: its requests look like the attacks they
/// are, and this file tests the sandbox behind the WAF.
async fn deploy(server: &Server, domain: &str, limits: &str) {
    assert_ok(&try_deploy(server, domain, limits));
    let token = server.login_token().await;
    server.waf_off(&token, domain).await;
}

/// Runs `spinforge deploy` of the escape app and returns its output.
fn try_deploy(server: &Server, domain: &str, limits: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("app dir");
    std::fs::write(dir.path().join("app.py"), APP).expect("write app");
    let manifest = format!(
        "[app]\ncommand = [\"python3\", \"app.py\"]\nstart_timeout_secs = 30\n\
         stop_grace_secs = 1\n[limits]\n{limits}"
    );
    std::fs::write(dir.path().join("spinforge.toml"), manifest).expect("write manifest");
    let path = dir.path().to_str().expect("utf-8 path");
    server.cli(
        &["deploy", path, "--domain", domain, "--type", "process"],
        None,
    )
}

async fn ask(server: &Server, domain: &str, path: &str) -> Value {
    let response = server.get(domain, path).await;
    let status = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(status, 200, "{domain}{path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{domain}{path}: not JSON: {text}"))
}

/// Asks the app to attempt something and asserts that it failed with
/// one of `errnos` (any errno if empty).
async fn refused(server: &Server, domain: &str, path: &str, errnos: &[i64]) -> Value {
    let answer = ask(server, domain, path).await;
    assert_eq!(answer["ok"], false, "{path} succeeded: {answer}");
    if !errnos.is_empty() {
        let errno = answer["errno"].as_i64().unwrap_or(-1);
        assert!(
            errnos.contains(&errno),
            "{path}: errno {errno}, wanted {errnos:?}: {answer}"
        );
    }
    answer
}

fn status_of(server: &Server, domain: &str) -> Value {
    let out = server.cli(&["status", domain, "--json"], None);
    assert_ok(&out);
    let all: Value = serde_json::from_slice(&out.stdout).expect("status json");
    all["sites"][0]["spinlet"].clone()
}

/// Percent-encodes everything but ASCII letters and digits.
fn query(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_spinlet_runs_as_its_own_unprivileged_user_in_its_own_namespaces() {
    const SITE: &str = "who.localhost";
    let server = server();
    deploy(&server, SITE, "").await;
    let who = ask(&server, SITE, "/whoami").await["value"].clone();

    let uid = who["uid"].as_u64().expect("uid");
    assert!(uid >= 65_536, "a site uid outside the host's users: {who}");
    assert_eq!(who["euid"], uid);
    assert_eq!(who["gid"], uid);
    assert_eq!(
        who["groups"],
        serde_json::json!([]),
        "no supplementary groups"
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(who["caps"][set], "0000000000000000", "{set}: {who}");
    }
    assert_eq!(who["no_new_privs"], "1");
    assert_eq!(who["seccomp"], "2", "seccomp filter mode");
    assert_eq!(who["hostname"], SITE);

    // /proc is the namespace's own: the init and the app, nothing else.
    let pids = who["pids"].as_array().expect("pids");
    assert!(pids.len() <= 3, "the app sees other processes: {pids:?}");
    assert!(pids.contains(&serde_json::json!(1)), "{pids:?}");

    let root: Vec<&str> = who["root"]
        .as_array()
        .expect("root")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for absent in ["root", "home", "sys", "var", "srv", "opt", "mnt", "boot"] {
        assert!(!root.contains(&absent), "/{absent} is visible: {root:?}");
    }
    for present in ["app", "data", "tmp", "usr", "etc", "proc", "dev"] {
        assert!(root.contains(&present), "/{present} missing: {root:?}");
    }
    // Every mount point is one the sandbox made (field 5 of mountinfo).
    let mounts = who["mounts"].as_str().expect("mounts");
    for line in mounts.lines() {
        let point = line.split(' ').nth(4).expect("mount point");
        let expected = point == "/"
            || ["/usr", "/etc/", "/app", "/data", "/tmp", "/dev", "/proc"]
                .iter()
                .any(|p| point.starts_with(p));
        assert!(expected, "unexpected mount {point}: {mounts}");
    }

    // A set-uid copy runs as the app's own user, nothing more.
    let setuid = ask(&server, SITE, "/setuid").await;
    assert_eq!(setuid["ok"], true, "{setuid}");
    assert_eq!(setuid["value"], uid.to_string(), "{setuid}");
}

/// The host's time zone reaches the app as the host has it: a link into
/// /usr/share/zoneinfo to the same file when the host's /etc/localtime is
/// such a link, absolute or relative (a copy made ICU, so every Node
/// start, compare each zoneinfo file with it to learn the zone's name),
/// with the host's bytes behind it.
#[tokio::test]
async fn the_app_gets_the_hosts_time_zone_by_the_same_link() {
    const SITE: &str = "tz.localhost";
    const HOST: &str = "/etc/localtime";
    let server = server();
    deploy(&server, SITE, "").await;

    let link = ask(&server, SITE, &format!("/readlink?path={}", query(HOST))).await;
    let zone_file = std::fs::canonicalize(HOST).ok();
    let host_links_into_usr = std::fs::read_link(HOST).is_ok()
        && zone_file
            .as_ref()
            .is_some_and(|file| file.starts_with("/usr"));
    if host_links_into_usr {
        // The same file, by an absolute link into /usr (how a relative
        // link text becomes one is unit-tested in fs.rs).
        assert_eq!(link["ok"], true, "{link}");
        let inside = Path::new(link["value"].as_str().expect("text"));
        assert!(inside.starts_with("/usr"), "{link}");
        assert_eq!(std::fs::canonicalize(inside).ok(), zone_file, "{link}");
    } else {
        // Not a link into /usr on this host: a copy (or nothing) inside.
        assert_eq!(link["ok"], false, "{link}");
    }
    if let Ok(bytes) = std::fs::read(HOST) {
        let read = ask(&server, SITE, &format!("/read?path={}", query(HOST))).await;
        assert_eq!(read["ok"], true, "{read}");
        // The app reads at most 4 KiB, as latin-1 (one char per byte).
        let inside: Vec<u8> = read["value"]
            .as_str()
            .expect("text")
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
            .collect();
        assert_eq!(
            inside,
            bytes[..bytes.len().min(4096)],
            "{HOST} differs inside"
        );
    }
}

#[tokio::test]
async fn a_spinlet_cannot_read_or_write_what_is_not_its_own() {
    const SITE: &str = "files.localhost";
    const OTHER: &str = "other.localhost";
    let server = server();
    deploy(&server, SITE, "").await;
    deploy(&server, OTHER, "").await;
    // The other site writes a file to its own data folder.
    let wrote = ask(&server, OTHER, "/write?path=/data/secret").await;
    assert_eq!(wrote["ok"], true, "{wrote}");

    let data_dir = server.data_dir.clone();
    let db = std::fs::read_dir(&data_dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .expect("the SQLite file");
    let other_data = data_dir.join("spinlets/data").join(OTHER).join("secret");
    assert!(
        server.seen_by_serve(&other_data).is_file(),
        "the other site's file exists on the host"
    );
    let other_release = std::fs::read_dir(data_dir.join("sites"))
        .expect("sites")
        .filter_map(Result::ok)
        .flat_map(|site| {
            std::fs::read_dir(site.path().join("releases"))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .map(|release| release.path().join("app.py"))
        .find(|p| p.is_file())
        .expect("a release on the host");
    let host_init_environ = std::fs::read("/proc/1/environ").unwrap_or_default();

    for path in [
        Path::new("/etc/shadow"),
        db.as_path(),
        other_data.as_path(),
        other_release.as_path(),
        Path::new("/root/.bashrc"),
    ] {
        let shown = path.display().to_string();
        refused(&server, SITE, &format!("/read?path={}", query(&shown)), &[]).await;
    }
    // /proc/1 inside is the namespace's init, not the host's.
    let environ = ask(&server, SITE, "/read?path=%2Fproc%2F1%2Fenviron").await;
    if environ["ok"] == true {
        let seen = environ["value"].as_str().unwrap_or("").as_bytes().to_vec();
        assert!(
            host_init_environ.is_empty() || seen != host_init_environ,
            "the host's /proc/1/environ is readable"
        );
    }

    for path in [
        "/escape",
        "/app/escape",
        "/etc/escape",
        "/usr/escape",
        "/proc/escape",
    ] {
        refused(
            &server,
            SITE,
            &format!("/write?path={}", query(path)),
            &[EROFS, 13, 2],
        )
        .await;
    }
    // Its own folders work, and /tmp has its cap (8 MiB here).
    let data = ask(&server, SITE, "/write?path=/data/mine").await;
    assert_eq!(data["ok"], true, "{data}");
    let tmp = ask(&server, SITE, "/write?path=/tmp/small&mib=1").await;
    assert_eq!(tmp["ok"], true, "{tmp}");
    refused(&server, SITE, "/write?path=/tmp/big&mib=16", &[ENOSPC]).await;
    // The data folder on the host belongs to the site's uid.
    let mine = data_dir.join("spinlets/data").join(SITE).join("mine");
    assert!(
        server.seen_by_serve(&mine).is_file(),
        "the app's data is on the host under its site"
    );
}

#[tokio::test]
async fn the_data_folder_has_a_size_quota_and_a_full_one_harms_no_one_else() {
    const SITE: &str = "full.localhost";
    const OTHER: &str = "roomy.localhost";
    const EDQUOT: i64 = 122;
    let server = server();
    deploy(&server, SITE, "").await;
    deploy(&server, OTHER, "").await;

    let small = ask(&server, SITE, "/write?path=/data/small&mib=2").await;
    assert_eq!(small["ok"], true, "{small}");
    // 32 MiB into a 16 MiB data folder.
    refused(
        &server,
        SITE,
        "/write?path=/data/big&mib=32",
        &[ENOSPC, EDQUOT],
    )
    .await;
    refused(
        &server,
        SITE,
        "/write?path=/data/more&mib=1",
        &[ENOSPC, EDQUOT],
    )
    .await;

    // On the host, the site's data takes no more than its quota.
    let image = server
        .data_dir
        .join("spinlets/volumes")
        .join(format!("{SITE}.ext4"));
    let meta = std::fs::metadata(server.seen_by_serve(&image)).expect("the site's data image");
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 <= 16 << 20,
        "the image holds {} bytes on the host",
        meta.blocks() * 512
    );
    // Another site's data folder and the full site's /tmp still work.
    let other = ask(&server, OTHER, "/write?path=/data/fine&mib=4").await;
    assert_eq!(other["ok"], true, "{other}");
    let tmp = ask(&server, SITE, "/write?path=/tmp/fine&mib=1").await;
    assert_eq!(tmp["ok"], true, "{tmp}");

    // status shows the quota and its use.
    let sandbox = status_of(&server, SITE)["sandbox"].clone();
    assert_eq!(sandbox["limits"]["data_bytes"], 16u64 << 20, "{sandbox}");
    let used = sandbox["data_used_bytes"].as_u64().expect("data use");
    assert!(used > 12 << 20 && used <= 16 << 20, "{sandbox}");
}

#[tokio::test]
async fn a_spinlet_reaches_nothing_but_itself_on_the_network() {
    const SITE: &str = "net.localhost";
    const OTHER: &str = "peer.localhost";
    let server = server();
    deploy(&server, SITE, "").await;
    deploy(&server, OTHER, "").await;
    let own_port = status_of(&server, SITE)["port"].as_u64().expect("port");
    let other_port = status_of(&server, OTHER)["port"].as_u64().expect("port");
    // A service on the host's loopback that the app must not reach; the
    // listener proves it is up by accepting the test's own connection.
    let service = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let service_port = service.local_addr().expect("addr").port();
    std::net::TcpStream::connect(("127.0.0.1", service_port)).expect("the service is up");

    let own = ask(
        &server,
        SITE,
        &format!("/connect?host=127.0.0.1&port={own_port}"),
    )
    .await;
    assert_eq!(own["ok"], true, "the app reaches itself: {own}");
    for (host, port) in [
        ("127.0.0.1", server.api.port()),
        ("127.0.0.1", server.edge.port()),
        ("127.0.0.1", other_port as u16),
        ("127.0.0.1", service_port),
        ("169.254.169.254", 80),
    ] {
        refused(
            &server,
            SITE,
            &format!("/connect?host={host}&port={port}"),
            &[],
        )
        .await;
    }
}

#[tokio::test]
async fn dangerous_syscalls_are_denied() {
    const SITE: &str = "sys.localhost";
    let server = server();
    deploy(&server, SITE, "").await;
    for name in [
        "ptrace",
        "mount",
        "unshare",
        "setns",
        "keyctl",
        "bpf",
        "perf_event_open",
    ] {
        refused(&server, SITE, &format!("/syscall?name={name}"), &[EPERM]).await;
    }
}

#[tokio::test]
async fn a_fork_bomb_and_kill_all_are_contained_while_other_sites_keep_serving() {
    const SITE: &str = "bomb.localhost";
    const BYSTANDER: &str = "calm.localhost";
    let server = server();
    deploy(&server, SITE, "max_processes = 32\n").await;
    deploy(&server, BYSTANDER, "").await;

    let bomb = {
        let edge = server.edge;
        tokio::spawn(async move {
            common::http()
                .get(format!("http://{edge}/forkbomb?limit=400"))
                .header("host", SITE)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("fork bomb request")
                .text()
                .await
                .expect("body")
        })
    };
    // While it runs, the bystander keeps answering.
    let until = Instant::now() + Duration::from_secs(2);
    let mut served = 0;
    while Instant::now() < until {
        let answer = ask(&server, BYSTANDER, "/").await;
        assert_eq!(answer["ok"], true);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 5);
    let text = bomb.await.expect("join");
    let bomb: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        let log = server.cli(&["logs", SITE], None);
        panic!(
            "fork bomb: {text}\n{}",
            String::from_utf8_lossy(&log.stdout)
        )
    });
    let forked = bomb["value"]["forked"].as_u64().expect("forked");
    assert!(forked < 32, "the pids limit did not hold: {bomb}");
    assert_eq!(
        bomb["value"]["errno"], 11,
        "EAGAIN from the pids limit: {bomb}"
    );

    // kill -9 -1 inside hits only the sandbox: serve, the bystander and
    // this test live on.
    let before = status_of(&server, BYSTANDER)["pid"].clone();
    // ESRCH: inside there is nothing but the app and the namespace's
    // init, which kill(-1) skips.
    let killed = ask(&server, SITE, "/killall").await;
    assert!(killed["ok"] == true || killed["errno"] == 3, "{killed}");
    assert_eq!(status_of(&server, BYSTANDER)["pid"], before);
    assert_eq!(ask(&server, BYSTANDER, "/").await["ok"], true);
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed_in_its_cgroup_and_restarted() {
    const SITE: &str = "hog.localhost";
    let server = server();
    deploy(&server, SITE, "memory_mb = 64\n").await;
    let first = status_of(&server, SITE);
    let first_pid = first["pid"].clone();
    assert_eq!(
        first["sandbox"]["limits"]["memory_bytes"],
        64u64 << 20,
        "{first}"
    );

    // The request dies with the app: the edge answers 502.
    let response = server.get(SITE, "/membomb?mib=1024").await;
    assert_eq!(response.status(), 502);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = status_of(&server, SITE);
        if now["state"] == "running" && now["pid"] != first_pid {
            assert!(now["restarts"].as_u64().unwrap_or(0) >= 1, "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ask(&server, SITE, "/").await["ok"], true);
    let log = server.cli(&["logs", SITE], None);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("out-of-memory"),
        "the app log names the OOM kill:\n{log}"
    );
}

#[test]
fn sandbox_check_names_every_layer_and_this_host_supports_the_required_ones() {
    let out = std::process::Command::new(common::BIN)
        .args(["sandbox", "check", "--json"])
        .output()
        .expect("run sandbox check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["layer"].as_str()).collect();
    for layer in [
        "identity",
        "pid namespace",
        "mount namespace",
        "ipc namespace",
        "uts namespace",
        "cgroup namespace",
        "network namespace",
        "no_new_privs",
        "capabilities",
        "seccomp",
        "landlock",
        "cgroups",
        "rlimits",
        "filesystem",
    ] {
        assert!(names.contains(&layer), "{layer} missing from {names:?}");
    }
    for row in &rows {
        if row["required"] == true {
            assert_eq!(row["supported"], true, "this root test host lacks {row}");
        }
    }
}

/// The cgroup folder (pids controller) a process is in, on the host.
fn pids_cgroup(pid: u64) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = text
        .lines()
        .find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_owned()))
        .or_else(|| {
            text.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        })
        .expect("a pids or unified cgroup");
    let mount = if Path::new("/sys/fs/cgroup/pids").is_dir() {
        "/sys/fs/cgroup/pids"
    } else {
        "/sys/fs/cgroup"
    };
    Path::new(mount).join(path.trim_start_matches('/'))
}

/// The cgroup v1 folder of `controller` a process is in; `None` on a
/// host without that v1 controller.
fn v1_cgroup(pid: u64, controller: &str) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, list, path) = (fields.next()?, fields.next()?, fields.next()?);
        list.split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })?;
    let mount = Path::new("/sys/fs/cgroup").join(controller);
    mount
        .is_dir()
        .then(|| mount.join(path.trim_start_matches('/')))
}

#[tokio::test]
async fn status_shows_limits_and_use_and_a_stop_removes_the_cgroup() {
    const SITE: &str = "limits.localhost";
    let server = server();
    deploy(
        &server,
        SITE,
        "memory_mb = 96\nmax_processes = 40\nmax_open_files = 256\n",
    )
    .await;
    assert_eq!(ask(&server, SITE, "/").await["ok"], true);

    let status = status_of(&server, SITE);
    assert!(
        status["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("sandboxed")),
        "{status}"
    );
    let sandbox = &status["sandbox"];
    assert_eq!(sandbox["limits"]["memory_bytes"], 96u64 << 20, "{status}");
    assert_eq!(sandbox["limits"]["max_processes"], 40, "{status}");
    assert_eq!(sandbox["limits"]["open_files"], 256, "{status}");
    assert_eq!(sandbox["limits"]["tmp_bytes"], 8u64 << 20, "{status}");
    let used = sandbox["memory_bytes"].as_u64().expect("memory in use");
    assert!(used > 0 && used < 96 << 20, "{status}");
    let processes = sandbox["processes"].as_u64().expect("processes");
    assert!((3..=40).contains(&processes), "helper, init, app: {status}");

    // The limits really are the cgroup's.
    let pid = status["pid"].as_u64().expect("pid");
    let cgroup = pids_cgroup(pid);
    let max = std::fs::read_to_string(cgroup.join("pids.max")).expect("pids.max");
    assert_eq!(max.trim(), "42", "40 for the app, 2 for helper and init");

    let text = server.cli(&["status", SITE], None);
    assert_ok(&text);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("96 MiB"), "{text}");
    assert!(text.contains("isolation: sandboxed"), "{text}");

    // The edge reaches the app through a long-lived dialer thread in
    // serve, not a thread per connection: the dialers seen before these
    // requests are all still there after them.
    let dialers = dialer_threads(server.pid());
    assert!(!dialers.is_empty(), "no dialer thread in serve");
    for _ in 0..5 {
        assert_eq!(ask(&server, SITE, "/").await["ok"], true);
    }
    assert!(dialers.is_subset(&dialer_threads(server.pid())));

    // A stop leaves no process and no cgroup behind.
    assert_ok(&server.cli(&["restart", SITE], None));
    let deadline = Instant::now() + Duration::from_secs(15);
    while cgroup.exists() || Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "{} still exists",
            cgroup.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and its dialer thread ends with it (a warm helper's, made for
    // the next start, stays).
    let deadline = Instant::now() + Duration::from_secs(5);
    while dialers.is_subset(&dialer_threads(server.pid())) {
        assert!(
            Instant::now() < deadline,
            "the dialer thread outlived the instance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The next start takes the helper made ahead of time (see
    // sandbox/warm.rs), and the app's own limits are in force in it.
    assert_eq!(ask(&server, SITE, "/").await["ok"], true);
    let status = status_of(&server, SITE);
    let pid = status["pid"].as_u64().expect("pid");
    let cgroup = pids_cgroup(pid);
    assert!(
        cgroup
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("warm-")),
        "not a warm helper's cgroup: {}",
        cgroup.display()
    );
    let max = std::fs::read_to_string(cgroup.join("pids.max")).expect("pids.max");
    assert_eq!(max.trim(), "42", "a warm start has the app's limits too");
    // The warm cgroup was made with the server's defaults; the start
    // wrote what this app changes (memory) and kept the rest (the CPU
    // quota, default 100% of a core).
    if let Some(memory) = v1_cgroup(pid, "memory") {
        let limit = std::fs::read_to_string(memory.join("memory.limit_in_bytes")).expect("limit");
        assert_eq!(limit.trim(), (96u64 << 20).to_string(), "warm memory limit");
    }
    if let Some(cpu) = v1_cgroup(pid, "cpu") {
        for (file, value) in [
            ("cpu.cfs_quota_us", "100000"),
            ("cpu.cfs_period_us", "100000"),
        ] {
            let text = std::fs::read_to_string(cpu.join(file)).expect(file);
            assert_eq!(text.trim(), value, "warm {file}");
        }
    }
    // It ran itself again as a cold start's helper: the app's command
    // line and the instance's tag, as operators and a restarted serve
    // expect.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("__spinlet-init -- ") && cmdline.contains("python3 app.py"),
        "{cmdline}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        String::from_utf8_lossy(&environ).starts_with("SPINFORGE_SPINLET="),
        "the helper carries the instance's tag"
    );
    assert_eq!(status["sandbox"]["limits"]["memory_bytes"], 96u64 << 20);
    // Every layer is there as on a cold start.
    let who = ask(&server, SITE, "/whoami").await["value"].clone();
    assert!(who["uid"].as_u64().expect("uid") >= 65_536, "{who}");
    assert_eq!(who["caps"]["CapEff"], "0000000000000000", "{who}");
    assert_eq!(who["caps"]["CapBnd"], "0000000000000000", "{who}");
    assert_eq!(who["no_new_privs"], "1", "{who}");
    assert_eq!(who["seccomp"], "2", "{who}");
    assert_eq!(who["hostname"], SITE, "{who}");
    let pids = who["pids"].as_array().expect("pids");
    assert!(pids.len() <= 3, "the app sees other processes: {pids:?}");
}

/// A plan larger than a pipe's buffer (64 KiB): eight 30 KB variables,
/// as many large secrets would make it. Both a cold start and a warm
/// helper's (which passes the plan on to itself across an exec) take it
/// whole, and the app sees every value.
#[tokio::test]
async fn an_app_with_a_plan_larger_than_a_pipe_starts_cold_and_warm() {
    const SITE: &str = "bigplan.localhost";
    let server = server();
    let vars: Vec<(String, String)> = (0..8usize)
        .map(|i| {
            let value = (0..30_000usize)
                .map(|j| char::from(b'a' + ((i * 7 + j * 13 + j / 26) % 26) as u8))
                .collect();
            (format!("BIG_{i}"), value)
        })
        .collect();
    let env: String = vars
        .iter()
        .map(|(name, value)| format!("{name} = \"{value}\"\n"))
        .collect();
    deploy(&server, SITE, &format!("\n[env]\n{env}")).await;
    let expected: serde_json::Map<String, Value> = vars
        .iter()
        .map(|(name, value)| (name.clone(), Value::from(value.as_str())))
        .collect();
    let expected = Value::Object(expected);
    let seen = ask(&server, SITE, "/env?prefix=BIG_").await;
    assert!(
        seen["value"] == expected,
        "a cold start lost part of the plan"
    );

    // The restart stops the app; the next request starts it again with
    // the warm helper made after the first start.
    let first = status_of(&server, SITE)["pid"].as_u64().expect("pid");
    assert_ok(&server.cli(&["restart", SITE], None));
    let seen = ask(&server, SITE, "/env?prefix=BIG_").await;
    assert!(
        seen["value"] == expected,
        "a warm start lost part of the plan"
    );
    let pid = status_of(&server, SITE)["pid"].as_u64().expect("pid");
    assert_ne!(pid, first, "the app was not started again");
    let cgroup = pids_cgroup(pid);
    assert!(
        cgroup
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("warm-")),
        "not a warm start: {}",
        cgroup.display()
    );
}

/// Pids of serve's idle warm helpers (their command line says `(warm)`).
fn warm_helpers(serve: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if parent == Some(serve) && cmdline.split(|b| *b == 0).any(|a| a == b"(warm)") {
            found.push(pid);
        }
    }
    found
}

/// Once a start has settled, serve keeps two warm helpers, so two starts
/// in a row (a restart right after a start) both get one.
#[tokio::test]
async fn two_starts_in_a_row_both_take_a_warm_helper() {
    const SITE: &str = "warm.localhost";
    let server = server();
    // More memory than the default (512 MiB) the warm cgroups are made
    // with: on v1 a raise must set the memory+swap limit first, or the
    // kernel refuses it and the start falls back to a cold one.
    deploy(&server, SITE, "memory_mb = 600\n").await;
    assert_eq!(ask(&server, SITE, "/").await["ok"], true);

    let deadline = Instant::now() + Duration::from_secs(20);
    while warm_helpers(server.pid()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "serve made fewer than two warm helpers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for round in 0..2 {
        assert_ok(&server.cli(&["restart", SITE], None));
        assert_eq!(ask(&server, SITE, "/").await["ok"], true);
        let pid = status_of(&server, SITE)["pid"].as_u64().expect("pid");
        let cgroup = pids_cgroup(pid);
        assert!(
            cgroup
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("warm-")),
            "start {round} after the first was cold: {}",
            cgroup.display()
        );
        if let Some(memory) = v1_cgroup(pid, "memory") {
            for file in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
                let Ok(text) = std::fs::read_to_string(memory.join(file)) else {
                    continue; // no swap accounting on this kernel
                };
                assert_eq!(text.trim(), (600u64 << 20).to_string(), "warm {file}");
            }
        }
    }
}

/// Thread ids of serve's dialer threads (`spinlet-dialer`).
fn dialer_threads(pid: u32) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("serve's threads")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() == "spinlet-dialer")
        })
        .map(|task| task.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_layer_the_host_lacks_stops_apps_unless_degraded_runs_are_allowed() {
    const SITE: &str = "degraded.localhost";
    let pretend = "debug_pretend_missing = [\"seccomp\"]\n";

    // Strict (the default): the app does not start, and the answer names
    // the layer.
    let strict = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}[sandbox]\n{pretend}"));
    strict.create_admin_and_login();
    let out = try_deploy(&strict, SITE, "");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "deployed without seccomp: {said}");
    assert!(said.contains("`seccomp`"), "the layer is not named: {said}");
    assert!(
        strict.log_shows("spinlet.sandbox_refused").await,
        "the refusal is not audited"
    );
    let status = status_of(&strict, SITE);
    assert_ne!(status["state"], "running", "{status}");

    // allow_degraded: it starts without the layer, warns, and status
    // says so; the app really runs without a seccomp filter.
    let degraded = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[sandbox]\nallow_degraded = true\n{pretend}"
    ));
    degraded.create_admin_and_login();
    deploy(&degraded, SITE, "").await;
    assert!(
        degraded.log().lines().any(|l| l.contains("WARN")
            && l.contains("sandbox layer unavailable")
            && l.contains("seccomp")),
        "no warning names the layer: {}",
        degraded.log()
    );
    let who = ask(&degraded, SITE, "/whoami").await["value"].clone();
    assert_eq!(who["seccomp"], "0", "{who}");
    assert_eq!(who["no_new_privs"], "1", "the other layers stay: {who}");
    let status = status_of(&degraded, SITE);
    let missing = status["sandbox"]["missing_layers"]
        .as_array()
        .expect("missing layers");
    assert!(missing.contains(&Value::from("seccomp")), "{status}");
    let shown = degraded.cli(&["status", SITE], None);
    assert_ok(&shown);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("seccomp"),
        "status does not show the missing layer: {}",
        String::from_utf8_lossy(&shown.stdout)
    );
}

/// PUTs a site's sandbox settings; returns the status and the JSON body.
async fn put_sandbox(server: &Server, token: &str, domain: &str, body: Value) -> (u16, Value) {
    let response = common::http()
        .put(format!(
            "{}/api/v1/sites/{domain}/sandbox",
            server.api_url()
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sandbox settings");
    common::status_and_json(response).await
}

#[tokio::test]
async fn an_admin_gives_a_site_its_own_seccomp_profile_and_nobody_else_can() {
    const SITE: &str = "profiled.localhost";
    const OTHER: &str = "unprofiled.localhost";
    let server = server();
    deploy(&server, SITE, "").await;
    deploy(&server, OTHER, "").await;
    let admin = server.login_token().await;
    let before = ask(&server, SITE, "/uname").await;
    assert_eq!(before, serde_json::json!({"ok": true, "value": "Linux"}));

    let deny_uname = serde_json::json!({ "seccomp_profile": {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [{ "names": ["uname"], "action": "SCMP_ACT_ERRNO" }]
    }});

    // A developer may not set it: 403, audited, nothing changes.
    let (status, created) = common::status_and_json(
        common::http()
            .post(format!("{}/api/v1/users", server.api_url()))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "email": "dev@acme.test",
                "password": "developer pass phrase 1", "role": "developer", "customer": "acme" }))
            .send()
            .await
            .expect("create developer"),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, pair) = common::status_and_json(
        common::http()
            .post(format!("{}/api/v1/auth/login", server.api_url()))
            .json(&serde_json::json!({ "email": "dev@acme.test",
                "password": "developer pass phrase 1" }))
            .send()
            .await
            .expect("developer login"),
    )
    .await;
    assert_eq!(status, 200, "{pair}");
    let developer = pair["access_token"].as_str().expect("token");
    let (status, body) = put_sandbox(&server, developer, SITE, deny_uname.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(server.log_shows("permission.denied").await);

    // Malformed profiles: 400 naming the field, nothing stored.
    for (profile, field) in [
        (serde_json::json!({ "syscalls": [] }), "defaultAction"),
        (
            serde_json::json!({ "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{ "names": ["uname"], "action": "SCMP_ACT_SOMETIMES" }] }),
            "syscalls[0].action",
        ),
        (
            serde_json::json!({ "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{ "names": ["read", "write", "mount"], "action": "SCMP_ACT_ALLOW" }] }),
            "syscalls[0].names",
        ),
    ] {
        let (status, body) = put_sandbox(
            &server,
            &admin,
            SITE,
            serde_json::json!({ "seccomp_profile": profile }),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["field"], "seccomp_profile", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(field), "{field} not named: {body}");
    }
    let (status, body) =
        put_sandbox(&server, &admin, SITE, serde_json::json!({ "seccomp": 1 })).await;
    assert_eq!(status, 400, "an unknown setting: {body}");
    let stored: Value = common::http()
        .get(format!("{}/api/v1/sites/{SITE}/sandbox", server.api_url()))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        stored,
        serde_json::json!({ "outbound_internet": false, "seccomp_profile": null,
            "outbound_allow": [] })
    );

    // The admin's profile: the app's uname(2) now fails with EPERM; the
    // app otherwise serves, and the other site is untouched.
    let (status, body) = put_sandbox(&server, &admin, SITE, deny_uname.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(server.log_shows("sandbox.settings_changed").await);
    refused(&server, SITE, "/uname", &[EPERM]).await;
    assert_eq!(ask(&server, SITE, "/").await["ok"], true);
    assert_eq!(ask(&server, OTHER, "/uname").await["ok"], true);
    // Still under the built-in allowlist, which the profile cannot loosen.
    refused(&server, SITE, "/syscall?name=unshare", &[EPERM]).await;

    // Removing the profile gives uname back.
    let (status, _) = put_sandbox(
        &server,
        &admin,
        SITE,
        serde_json::json!({ "seccomp_profile": null }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ask(&server, SITE, "/uname").await["ok"], true);
}

/// Runs `ip` with `args` (in the calling thread's network namespace).
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's stand-in for the internet: a named network namespace of
/// its own behind a veth pair, with an HTTP server on 198.18.0.2:8080
/// (a benchmarking address) and a fake metadata address 169.254.169.254
/// and two LAN addresses (10.77.0.2, 192.168.77.2) on the same server,
/// routed through it, so that a packet that slipped through could only
/// ever reach this server. Removed on drop.
struct FakeInternet {
    name: String,
    server: std::process::Child,
}

impl FakeInternet {
    fn start() -> FakeInternet {
        let name = format!("sf-inet-{}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", "sfinet0", "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["addr", "add", "198.18.0.1/24", "dev", "sfinet0"]);
        ip(&["link", "set", "sfinet0", "up"]);
        for args in [
            &["addr", "add", "198.18.0.2/24", "dev", "eth0"][..],
            &["addr", "add", "169.254.169.254/32", "dev", "eth0"],
            &["addr", "add", "10.77.0.2/32", "dev", "eth0"],
            &["addr", "add", "192.168.77.2/32", "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["-n", name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        }
        for address in ["169.254.169.254/32", "10.77.0.2/32", "192.168.77.2/32"] {
            ip(&["route", "add", address, "via", "198.18.0.2"]);
        }
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "python3",
                "-m",
                "http.server",
                "8080",
            ])
            .args(["--bind", "0.0.0.0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the fake internet's server");
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect_timeout(
                &"198.18.0.2:8080".parse().expect("address"),
                Duration::from_millis(500),
            )
            .is_ok()
        });
        assert!(up, "the fake internet's server did not come up");
        FakeInternet { name, server }
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test]
async fn outbound_internet_is_off_by_default_and_when_on_still_avoids_the_host_and_metadata() {
    // This test thread, and the serve and servers it starts, live in a
    // network namespace of their own: no route leads to any real network,
    // and the rules serve loads stay in here.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("own network namespace");
    ip(&["link", "set", "lo", "up"]);
    let _internet = FakeInternet::start();
    // A service on the "host" (this namespace), on every address.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").expect("host service");
    let host_port = host_service.local_addr().expect("addr").port().to_string();

    const SITE: &str = "outbound.localhost";
    let server = server();
    deploy(&server, SITE, "").await;
    let admin = server.login_token().await;
    let to = |host: &str, port: &str| format!("/connect?host={host}&port={port}");

    // Off by default: no route out.
    refused(&server, SITE, &to("198.18.0.2", "8080"), &[]).await;

    let (status, body) = put_sandbox(
        &server,
        &admin,
        SITE,
        serde_json::json!({ "outbound_internet": true }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(server.log_shows("sandbox.settings_changed").await);

    // On: the internet answers...
    let out = ask(&server, SITE, &to("198.18.0.2", "8080")).await;
    assert_eq!(out["ok"], true, "{out}");
    // ...but the metadata address, the host (through the gateway or any
    // of its addresses), the hub API and loopback do not.
    let api_port = server.api.port().to_string();
    for (host, port) in [
        ("169.254.169.254", "8080"),
        ("100.88.0.1", host_port.as_str()),
        ("198.18.0.1", host_port.as_str()),
        ("100.88.0.1", api_port.as_str()),
        ("127.0.0.1", api_port.as_str()),
        ("127.0.0.1", host_port.as_str()),
        // Private LAN ranges, by default.
        ("10.77.0.2", "8080"),
        ("192.168.77.2", "8080"),
    ] {
        refused(&server, SITE, &to(host, port), &[]).await;
    }

    // An admin's LAN allowlist: only private ranges, clear of the
    // spinlets' own links, and only with outbound internet on. A refused
    // one changes nothing.
    for (body, rule) in [
        (
            serde_json::json!({ "outbound_internet": true, "outbound_allow": ["8.8.8.0/24"] }),
            "outbound_allow[0]: 8.8.8.0/24 is not inside a private range",
        ),
        (
            serde_json::json!({ "outbound_internet": true,
                "outbound_allow": ["10.77.0.0/24", "100.88.4.0/24"] }),
            "outbound_allow[1]: 100.88.4.0/24 overlaps 100.88.0.0/16",
        ),
        (
            serde_json::json!({ "outbound_allow": ["10.77.0.0/24"] }),
            "outbound_allow: needs outbound_internet = true",
        ),
        (
            serde_json::json!({ "outbound_internet": true, "outbound_allow": ["10.77.0.0"] }),
            "outbound_allow[0]: `10.77.0.0` is not an IPv4 network",
        ),
    ] {
        let (status, answer) = put_sandbox(&server, &admin, SITE, body.clone()).await;
        assert_eq!(status, 400, "{body} was accepted: {answer}");
        let text = answer.to_string();
        assert!(
            text.contains("outbound_allow") && text.contains(rule),
            "{body}: {text}"
        );
    }
    assert!(server.log_shows("sandbox.outbound_allow_refused").await);
    refused(&server, SITE, &to("10.77.0.2", "8080"), &[]).await;

    let (status, body) = put_sandbox(
        &server,
        &admin,
        SITE,
        serde_json::json!({ "outbound_internet": true, "outbound_allow": ["10.77.0.0/24"] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = ask(&server, SITE, &to("10.77.0.2", "8080")).await;
    assert_eq!(out["ok"], true, "the allowlisted range: {out}");
    assert!(lan_allowed().contains("10.77.0.0/24"), "{}", lan_allowed());
    // Only that range: the rest of the LAN, metadata and the host stay shut.
    for (host, port) in [
        ("192.168.77.2", "8080"),
        ("169.254.169.254", "8080"),
        ("100.88.0.1", host_port.as_str()),
    ] {
        refused(&server, SITE, &to(host, port), &[]).await;
    }

    // Off again: no way out.
    let (status, _) = put_sandbox(&server, &admin, SITE, serde_json::json!({})).await;
    assert_eq!(status, 200);
    refused(&server, SITE, &to("198.18.0.2", "8080"), &[]).await;
    // The stopped instance's allowlist entry left with its link, so a
    // later site on the same link slot does not inherit it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lan_allowed().contains("10.77.0.0/24") {
        assert!(
            Instant::now() < deadline,
            "entry left behind: {}",
            lan_allowed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The host's LAN allowlist set (serve's nftables), as `nft` lists it.
fn lan_allowed() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "set", "inet", "spinforge_outbound", "lan_allowed"])
        .output()
        .expect("nft");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
