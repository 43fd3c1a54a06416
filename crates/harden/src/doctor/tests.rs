//! Each check against fixture trees that pass and trees that fail, all
//! through `Context::root`; nothing here reads this host.

use super::*;
use std::os::unix::fs::PermissionsExt;

pub(super) const DATA: &str = "/var/lib/spinforge";

pub(super) fn write(root: &Path, path: &str, text: &str) {
    let full = crate::under(root, path);
    std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
    std::fs::write(full, text).expect("write");
}

pub(super) fn chmod(root: &Path, path: &str, mode: u32) {
    let full = crate::under(root, path);
    std::fs::set_permissions(full, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub(super) fn facts() -> ServeFacts {
    ServeFacts {
        listen: "0.0.0.0:8080".parse().expect("addr"),
        tls_listen: "0.0.0.0:8443".parse().expect("addr"),
        api_listen: "127.0.0.1:9080".parse().expect("addr"),
        api_tls: false,
        sandbox_enabled: true,
        allow_degraded: false,
        audit_key_dir: None,
    }
}

pub(super) fn context(root: &Path) -> Context {
    Context {
        root: root.to_path_buf(),
        data_dir: PathBuf::from(DATA),
        serve: Ok(facts()),
        now: time::OffsetDateTime::now_utc(),
    }
}

const GOOD_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/conf/all/rp_filter", "1"),
    ("net/ipv4/conf/default/rp_filter", "1"),
    ("net/ipv4/conf/all/accept_redirects", "0"),
    ("net/ipv4/conf/default/accept_redirects", "0"),
    ("net/ipv6/conf/all/accept_redirects", "0"),
    ("net/ipv6/conf/default/accept_redirects", "0"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
    ("net/ipv4/conf/all/accept_source_route", "0"),
    ("net/ipv4/conf/default/accept_source_route", "0"),
    ("net/ipv6/conf/all/accept_source_route", "0"),
    ("net/ipv6/conf/default/accept_source_route", "0"),
    ("net/ipv4/conf/all/log_martians", "1"),
    ("net/ipv4/conf/default/log_martians", "1"),
    ("net/ipv4/icmp_echo_ignore_broadcasts", "1"),
    ("net/ipv4/tcp_syncookies", "1"),
    ("net/ipv4/tcp_max_syn_backlog", "4096"),
    ("net/ipv4/tcp_synack_retries", "2"),
    ("net/ipv4/tcp_rfc1337", "1"),
    ("kernel/unprivileged_bpf_disabled", "2"),
    ("kernel/kptr_restrict", "1"),
    ("kernel/yama/ptrace_scope", "1"),
];

/// Every capability Linux 6.x knows (0 to 40), as in a root shell's
/// `CapBnd`.
pub(super) const FULL_CAPS: &str = "000001ffffffffff";
/// The unit's bounding set, bit by bit from linux/capability.h: CHOWN 0,
/// DAC_OVERRIDE 1, FOWNER 3, KILL 5, SETGID 6, SETUID 7, SETPCAP 8,
/// NET_BIND_SERVICE 10, NET_ADMIN 12, SYS_ADMIN 21, SYS_RESOURCE 24.
pub(super) const SUPERVISOR_CAPS_HEX: &str = "00000000012015eb";

/// A `/proc/PID/status` as the kernel writes it (the lines doctor reads,
/// amid others it must skip).
pub(super) fn proc_status(comm: &str, uid: u32, cap_eff: &str, cap_bnd: &str) -> String {
    format!(
        "Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapInh:\t0000000000000000\nCapPrm:\t{cap_eff}\nCapEff:\t{cap_eff}\nCapBnd:\t{cap_bnd}\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n"
    )
}

/// A host that does everything right.
pub(super) fn good_tree() -> tempfile::TempDir {
    let tree = tempfile::tempdir().expect("tmp");
    let root = tree.path();
    for (key, value) in GOOD_SYSCTLS {
        write(root, &format!("/proc/sys/{key}"), &format!("{value}\n"));
    }
    for (pid, comm, cmdline, uid, caps) in [
        (1, "systemd", "/sbin/init", 0, FULL_CAPS),
        (310, "auditd", "/sbin/auditd", 0, FULL_CAPS),
        (402, "chronyd", "/usr/sbin/chronyd", 108, "0000000000000000"),
        (
            900,
            "spinforge",
            "/usr/bin/spinforge\0serve\0--config\0/etc/spinforge/spinforge.toml",
            0,
            SUPERVISOR_CAPS_HEX,
        ),
    ] {
        write(root, &format!("/proc/{pid}/comm"), &format!("{comm}\n"));
        write(
            root,
            &format!("/proc/{pid}/cmdline"),
            &format!("{cmdline}\0"),
        );
        write(
            root,
            &format!("/proc/{pid}/status"),
            &proc_status(comm, uid, caps, caps),
        );
    }
    write(
        root,
        "/etc/ssh/sshd_config",
        "# Debian default\nInclude /etc/ssh/sshd_config.d/*.conf\nPort 22\nPasswordAuthentication yes\n",
    );
    write(
        root,
        "/etc/ssh/sshd_config.d/10-hardening.conf",
        "PermitRootLogin no\nPasswordAuthentication=no\nMaxAuthTries 3\nClientAliveInterval 5m\nClientAliveCountMax 2\nAllowGroups sshusers\n",
    );
    let rules = crate::firewall::render(&crate::firewall::FirewallSpec {
        ssh_from: vec!["192.0.2.0/24".into()],
        web_ports: vec![80, 443, 8080, 8443],
        ban_sets: true,
        ..crate::firewall::FirewallSpec::default()
    })
    .expect("render");
    write(root, "/etc/nftables.conf", &rules);
    write(
        root,
        "/etc/apt/apt.conf.d/20auto-upgrades",
        "APT::Periodic::Update-Package-Lists \"1\";\nAPT::Periodic::Unattended-Upgrade \"1\";\n",
    );
    write(root, "/usr/bin/unattended-upgrade", "#!/usr/bin/python3\n");
    write(
        root,
        "/etc/audit/rules.d/50-identity.rules",
        "-w /etc/passwd -p wa -k identity\n-w /etc/group -p wa -k identity\n-w /etc/shadow -p wa -k identity\n-a always,exit -F path=/etc/sudoers -F perm=wa -k sudo\n-w /etc/ssh/ -p wa -k sshd\n",
    );
    let unit = crate::install::unit(&crate::install::InstallSpec::default()).expect("unit");
    write(root, "/etc/systemd/system/spinforge.service", &unit);
    write(root, &format!("{DATA}/secrets/master.key"), "k");
    chmod(root, &format!("{DATA}/secrets/master.key"), 0o600);
    chmod(root, &format!("{DATA}/secrets"), 0o700);
    chmod(root, DATA, 0o700);
    let time = (time::OffsetDateTime::now_utc() - time::Duration::hours(3))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    write(root, "/var/backups/spinforge-1.tar.gz", "x");
    write(
        root,
        &format!("{DATA}/backups.jsonl"),
        &format!("{{\"time\":\"2020-01-01T00:00:00Z\",\"file\":\"/old\",\"sha256\":\"00\"}}\n{{\"time\":\"{time}\",\"file\":\"/var/backups/spinforge-1.tar.gz\",\"sha256\":\"ab\"}}\n"),
    );
    tree
}

pub(super) async fn report(root: &Path) -> Report {
    run(&context(root)).await
}

pub(super) fn status(report: &Report, id: &str) -> Status {
    report
        .get(id)
        .unwrap_or_else(|| panic!("no check {id}"))
        .status
}

#[tokio::test]
async fn a_hardened_tree_passes_every_host_check() {
    let tree = good_tree();
    let report = report(tree.path()).await;
    for check in &report.checks {
        // Store-backed checks need a real store (the binary's tests have
        // one); the sandbox probe needs the live kernel.
        let needs_store = [
            "spinforge.certificates",
            "spinforge.degraded_sites",
            "spinforge.audit_chain",
            "spinforge.sandbox",
        ];
        if needs_store.contains(&check.id) {
            assert_eq!(check.status, Status::Unknown, "{check:?}");
            continue;
        }
        assert_eq!(check.status, Status::Pass, "{check:?}");
        assert!(check.fix.is_empty());
        assert!(!check.why.is_empty());
    }
    assert!(!report.failed());
    assert_eq!(report.summary.fail, 0);
    assert!(
        report.score >= 80 && report.score < 100,
        "score {}",
        report.score
    );
}

#[tokio::test]
async fn a_soft_tree_fails_with_the_exact_fix() {
    let tree = good_tree();
    let root = tree.path();
    write(root, "/proc/sys/net/ipv4/conf/default/rp_filter", "0\n");
    write(root, "/proc/sys/net/ipv4/tcp_syncookies", "0\n");
    write(root, "/proc/sys/kernel/kptr_restrict", "0\n");
    write(
        root,
        "/etc/ssh/sshd_config.d/10-hardening.conf",
        "PermitRootLogin yes\nMaxAuthTries 6\n",
    );
    write(root, "/etc/nftables.conf", "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n");
    std::fs::remove_file(root.join("usr/bin/unattended-upgrade")).expect("rm");
    std::fs::remove_file(root.join("proc/310/comm")).expect("rm");
    write(
        root,
        "/etc/audit/rules.d/50-identity.rules",
        "-w /etc/passwd -p wa\n# -w /etc/shadow -p wa\n",
    );
    chmod(root, &format!("{DATA}/secrets/master.key"), 0o644);
    chmod(root, DATA, 0o755);
    write(
        root,
        &format!("{DATA}/backups.jsonl"),
        "{\"time\":\"2020-01-01T00:00:00Z\",\"file\":\"/old\",\"sha256\":\"00\"}\n",
    );
    let mut ctx = context(root);
    ctx.serve = Ok(ServeFacts {
        api_listen: "0.0.0.0:9080".parse().expect("addr"),
        ..facts()
    });
    let report = run(&ctx).await;
    for id in [
        "kernel.rp_filter",
        "kernel.tcp_syncookies",
        "kernel.kptr_restrict",
        "ssh.root_login",
        "ssh.password_auth",
        "firewall.default_deny",
        "firewall.open_ports",
        "host.unattended_upgrades",
        "host.auditd",
        "host.audit_watches",
        "spinforge.api_exposure",
        "spinforge.master_key",
        "spinforge.data_dir",
        "spinforge.backup",
    ] {
        let check = report.get(id).expect(id);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(!check.fix.is_empty(), "{id} has no fix");
    }
    assert_eq!(status(&report, "ssh.max_auth_tries"), Status::Warn);
    let rp = report.get("kernel.rp_filter").expect("rp");
    assert!(
        rp.fix.contains("net.ipv4.conf.default.rp_filter=1"),
        "{}",
        rp.fix
    );
    assert!(report
        .get("host.audit_watches")
        .expect("w")
        .detail
        .contains("/etc/shadow"));
    assert!(report.failed());
    assert!(report.score < 50, "score {}", report.score);
}

#[tokio::test]
async fn missing_and_garbled_inputs_could_not_be_checked_never_pass() {
    let empty = tempfile::tempdir().expect("tmp");
    let mut ctx = context(empty.path());
    ctx.serve = Err("config file /etc/spinforge/spinforge.toml is invalid: unknown key".into());
    let report = run(&ctx).await;
    for check in &report.checks {
        assert_ne!(check.status, Status::Pass, "{check:?}");
    }
    assert_eq!(status(&report, "kernel.tcp_syncookies"), Status::Unknown);
    assert_eq!(status(&report, "ssh.root_login"), Status::Unknown);
    assert_eq!(status(&report, "spinforge.api_exposure"), Status::Unknown);
    assert!(report
        .get("spinforge.api_exposure")
        .expect("api")
        .detail
        .contains("unknown key"));
    assert_eq!(report.score, 0);

    let tree = good_tree();
    write(
        tree.path(),
        "/proc/sys/net/ipv4/tcp_syncookies",
        "yes please\n",
    );
    write(
        tree.path(),
        &format!("{DATA}/backups.jsonl"),
        "{\"time\": 5}\n{not json\n",
    );
    let report = report_of(tree.path()).await;
    assert_eq!(status(&report, "kernel.tcp_syncookies"), Status::Unknown);
    let backup = report.get("spinforge.backup").expect("backup");
    assert_eq!(backup.status, Status::Unknown);
    assert!(
        backup.detail.contains("backups.jsonl:2"),
        "{}",
        backup.detail
    );
}

async fn report_of(root: &Path) -> Report {
    report(root).await
}

#[tokio::test]
async fn exotic_sshd_syntax_is_could_not_check_with_the_place() {
    for (text, needle) in [
        (
            "PermitRootLogin \"no\nPasswordAuthentication no\n",
            "sshd_config:1: unbalanced",
        ),
        (
            "PermitRootLogin no\nMaxAuthTries\n",
            "sshd_config:2: `maxauthtries` has no value",
        ),
        ("Include /etc/ssh/loop.conf\n", "deeper than"),
        ("Include /etc/ssh/[.conf\n", "bad Include pattern"),
    ] {
        let tree = good_tree();
        write(tree.path(), "/etc/ssh/sshd_config", text);
        write(
            tree.path(),
            "/etc/ssh/loop.conf",
            "Include /etc/ssh/loop.conf\n",
        );
        let report = report(tree.path()).await;
        for id in [
            "ssh.root_login",
            "ssh.password_auth",
            "ssh.max_auth_tries",
            "ssh.idle_timeout",
            "ssh.allow_list",
        ] {
            let check = report.get(id).expect(id);
            assert_eq!(check.status, Status::Unknown, "{text}: {check:?}");
            assert!(check.detail.contains(needle), "{text}: {}", check.detail);
        }
    }
}

#[tokio::test]
async fn sshd_first_value_wins_and_match_blocks_are_reported() {
    let tree = good_tree();
    write(
        tree.path(),
        "/etc/ssh/sshd_config",
        "Include sshd_config.d/*.conf\nPermitRootLogin yes\nMatch User deploy\n  PasswordAuthentication yes\n",
    );
    let report = report(tree.path()).await;
    assert_eq!(
        status(&report, "ssh.root_login"),
        Status::Pass,
        "include came first"
    );
    // The block applies to one user: a warning, not a failure (see
    // tests_sshd_match for the rest of Match).
    let password = report.get("ssh.password_auth").expect("pw");
    assert_eq!(password.status, Status::Warn);
    assert!(
        password.detail.contains("Match User deploy"),
        "{}",
        password.detail
    );
}

#[tokio::test]
async fn keyboard_interactive_with_pam_counts_as_password_login() {
    let tree = good_tree();
    write(
        tree.path(),
        "/etc/ssh/sshd_config",
        "Include sshd_config.d/*.conf\nUsePAM yes\nKbdInteractiveAuthentication yes\n",
    );
    let password = report(tree.path()).await;
    let password = password.get("ssh.password_auth").expect("pw");
    assert_eq!(password.status, Status::Fail);
    assert!(
        password.detail.contains("KbdInteractiveAuthentication yes"),
        "{}",
        password.detail
    );

    write(
        tree.path(),
        "/etc/ssh/sshd_config",
        "Include sshd_config.d/*.conf\nUsePAM yes\nKbdInteractiveAuthentication no\n",
    );
    assert_eq!(
        status(&report(tree.path()).await, "ssh.password_auth"),
        Status::Pass
    );
}

#[tokio::test]
async fn iptables_rules_and_unexpected_ports_are_read() {
    let tree = good_tree();
    std::fs::remove_file(tree.path().join("etc/nftables.conf")).expect("rm");
    write(
        tree.path(),
        "/etc/iptables/rules.v4",
        "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n-A INPUT -p tcp -m multiport --dports 80,443,5432 -j ACCEPT\nCOMMIT\n",
    );
    write(
        tree.path(),
        "/etc/iptables/rules.v6",
        "*filter\n:INPUT DROP [0:0]\nCOMMIT\n",
    );
    let report = report(tree.path()).await;
    assert_eq!(status(&report, "firewall.default_deny"), Status::Pass);
    let ports = report.get("firewall.open_ports").expect("ports");
    assert_eq!(ports.status, Status::Warn);
    assert!(
        ports.detail.contains("not expected: 5432"),
        "{}",
        ports.detail
    );

    write(
        tree.path(),
        "/etc/iptables/rules.v4",
        "*filter\n:INPUT DROP [0:0]\n-A INPUT -s 10.0.0.0/8 -j ACCEPT\nCOMMIT\n",
    );
    let report = report_of(tree.path()).await;
    assert_eq!(status(&report, "firewall.open_ports"), Status::Fail);
}

#[test]
fn the_score_weighs_warnings_half() {
    let check = |status| verdict("x.y", "t", "w", status, "d", "f");
    let report = Report::new(vec![
        check(Status::Pass),
        check(Status::Warn),
        check(Status::Fail),
        check(Status::Unknown),
    ]);
    assert_eq!(report.score, 38);
    assert!(report.failed());
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["checks"][3]["status"], "could-not-check");
    assert_eq!(json["summary"]["could_not_check"], 1);
    assert!(report.table().contains("score 38/100"));
}
