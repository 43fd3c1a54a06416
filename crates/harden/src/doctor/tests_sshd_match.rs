//! sshd `Match` blocks in the parsed-file path: the global value decides
//! a check, a block that weakens it for some connections turns a pass
//! into a warning naming the block, `Match all` counts for everyone, and
//! a block ends at the next `Match` or the end of its file.

use super::tests::{context, good_tree, write};
use super::*;

const SSH_IDS: [&str; 5] = [
    "ssh.root_login",
    "ssh.password_auth",
    "ssh.max_auth_tries",
    "ssh.idle_timeout",
    "ssh.allow_list",
];

/// The fixture host with this main sshd_config (its hardening include
/// stays in sshd_config.d).
async fn with_main_config(text: &str) -> (tempfile::TempDir, Report) {
    let tree = good_tree();
    write(tree.path(), "/etc/ssh/sshd_config", text);
    let report = run(&context(tree.path())).await;
    (tree, report)
}

fn check<'a>(report: &'a Report, id: &str) -> &'a Check {
    report.get(id).unwrap_or_else(|| panic!("no {id}"))
}

#[tokio::test]
async fn a_block_that_weakens_each_setting_warns_and_names_itself() {
    let (_tree, report) = with_main_config(
        "Include sshd_config.d/*.conf\nMatch Address 10.0.0.0/8\n  PermitRootLogin yes\n  MaxAuthTries 10\n  ClientAliveInterval 0\n  AllowUsers backup\n",
    )
    .await;
    let root = check(&report, "ssh.root_login");
    assert_eq!(root.status, Status::Warn, "{root:?}");
    // The global value first, then the block and where it is.
    assert!(
        root.detail.starts_with("PermitRootLogin no ("),
        "{}",
        root.detail
    );
    assert!(
        root.detail.contains("; Match Address 10.0.0.0/8 (")
            && root
                .detail
                .contains("sshd_config:2) sets PermitRootLogin yes"),
        "{}",
        root.detail
    );
    assert!(root.fix.contains("every Match block"), "{}", root.fix);
    let tries = check(&report, "ssh.max_auth_tries");
    assert_eq!(tries.status, Status::Warn, "{tries:?}");
    assert!(
        tries.detail.starts_with("MaxAuthTries 3;")
            && tries.detail.contains("sets MaxAuthTries 10"),
        "{}",
        tries.detail
    );
    let idle = check(&report, "ssh.idle_timeout");
    assert_eq!(idle.status, Status::Warn, "{idle:?}");
    assert!(
        idle.detail.contains("sets ClientAliveInterval 0"),
        "{}",
        idle.detail
    );
    let allow = check(&report, "ssh.allow_list");
    assert_eq!(allow.status, Status::Warn, "{allow:?}");
    assert!(
        allow.detail.starts_with("AllowGroups sshusers;")
            && allow.detail.contains("sets AllowUsers backup"),
        "{}",
        allow.detail
    );
    // Untouched by the block.
    assert_eq!(check(&report, "ssh.password_auth").status, Status::Pass);
}

#[tokio::test]
async fn a_block_that_tightens_settings_changes_nothing() {
    let (_tree, report) = with_main_config(
        "Include sshd_config.d/*.conf\nMatch User admin\n  PermitRootLogin no\n  PasswordAuthentication no\n  MaxAuthTries 2\n  ClientAliveInterval 60\n  AllowGroups sshusers\n",
    )
    .await;
    for id in SSH_IDS {
        let c = check(&report, id);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(!c.detail.contains("Match"), "{c:?}");
    }
}

#[tokio::test]
async fn match_all_values_hold_for_every_connection() {
    // The hardening include says PermitRootLogin no first, but a
    // `Match all` block overrides it for everyone, as sshd applies
    // matching blocks over the global settings.
    let (_tree, report) = with_main_config(
        "Include sshd_config.d/*.conf\nMatch User deploy\n  PasswordAuthentication yes\nMatch all\n  PermitRootLogin yes\n  MaxAuthTries 2\n",
    )
    .await;
    let root = check(&report, "ssh.root_login");
    assert_eq!(root.status, Status::Fail, "{root:?}");
    assert!(
        root.detail.starts_with("PermitRootLogin yes"),
        "{}",
        root.detail
    );
    let tries = check(&report, "ssh.max_auth_tries");
    assert_eq!(tries.status, Status::Pass, "{tries:?}");
    assert_eq!(tries.detail, "MaxAuthTries 2");
    // `Match all` ended the deploy block: only it weakens passwords.
    let password = check(&report, "ssh.password_auth");
    assert_eq!(password.status, Status::Warn, "{password:?}");
    assert!(
        password.detail.contains("Match User deploy")
            && password.detail.contains("sets PasswordAuthentication yes")
            && !password.detail.contains("Match all"),
        "{}",
        password.detail
    );
}

#[tokio::test]
async fn a_block_in_an_included_file_ends_with_that_file() {
    let tree = good_tree();
    write(
        tree.path(),
        "/etc/ssh/sshd_config.d/10-hardening.conf",
        "PermitRootLogin no\nPasswordAuthentication no\nClientAliveInterval 5m\nClientAliveCountMax 2\nAllowGroups sshusers\n",
    );
    write(
        tree.path(),
        "/etc/ssh/sshd_config.d/20-sftp.conf",
        "Match Group sftp\n  ForceCommand internal-sftp\n  PasswordAuthentication yes\n",
    );
    // MaxAuthTries after the include is global again.
    write(
        tree.path(),
        "/etc/ssh/sshd_config",
        "Include sshd_config.d/*.conf\nMaxAuthTries 2\n",
    );
    let report = run(&context(tree.path())).await;
    let tries = check(&report, "ssh.max_auth_tries");
    assert_eq!(tries.status, Status::Pass, "{tries:?}");
    assert_eq!(tries.detail, "MaxAuthTries 2");
    let password = check(&report, "ssh.password_auth");
    assert_eq!(password.status, Status::Warn, "{password:?}");
    assert!(
        password.detail.contains("Match Group sftp (")
            && password.detail.contains("20-sftp.conf:1)"),
        "{}",
        password.detail
    );
}

#[tokio::test]
async fn an_include_inside_a_block_is_conditional() {
    let tree = good_tree();
    write(tree.path(), "/etc/ssh/ci.conf", "PermitRootLogin yes\n");
    write(
        tree.path(),
        "/etc/ssh/sshd_config",
        "Include sshd_config.d/*.conf\nMatch User ci\n  Include /etc/ssh/ci.conf\n",
    );
    let report = run(&context(tree.path())).await;
    let root = check(&report, "ssh.root_login");
    assert_eq!(root.status, Status::Warn, "{root:?}");
    assert!(
        root.detail.contains("Match User ci (") && root.detail.contains("sets PermitRootLogin yes"),
        "{}",
        root.detail
    );
}

#[tokio::test]
async fn keyboard_interactive_in_a_block_counts_as_password_login() {
    let (_tree, report) = with_main_config(
        "Include sshd_config.d/*.conf\nUsePAM yes\nKbdInteractiveAuthentication no\nMatch User legacy\n  KbdInteractiveAuthentication yes\n",
    )
    .await;
    let password = check(&report, "ssh.password_auth");
    assert_eq!(password.status, Status::Warn, "{password:?}");
    assert!(
        password.detail.contains("Match User legacy (")
            && password
                .detail
                .contains("KbdInteractiveAuthentication yes (with UsePAM yes)"),
        "{}",
        password.detail
    );
}

#[tokio::test]
async fn match_all_with_other_criteria_could_not_be_checked() {
    let (_tree, report) =
        with_main_config("Include sshd_config.d/*.conf\nMatch all User x\n  PermitRootLogin yes\n")
            .await;
    for id in SSH_IDS {
        let c = check(&report, id);
        assert_eq!(c.status, Status::Unknown, "{c:?}");
        assert!(
            c.detail
                .contains("sshd_config:2: `Match all` cannot be combined"),
            "{c:?}"
        );
    }
}
