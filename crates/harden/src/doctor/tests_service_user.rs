//! The service-user check against fixture `/proc` trees: a running serve
//! is judged by its own `/proc/PID/status` (Uid, CapEff, CapBnd), not by
//! the unit file, which only says what the next start will do.

use super::tests::{context, good_tree, proc_status, write, FULL_CAPS, SUPERVISOR_CAPS_HEX};
use super::*;

const SERVE: &str = "/usr/bin/spinforge\0serve\0--config\0/etc/spinforge/spinforge.toml\0";

/// Replaces the fixture's serve process (pid 900) with one of this
/// identity; `status` is the whole status file.
fn serve_as(root: &Path, cmdline: &str, status: &str) {
    write(root, "/proc/900/comm", "spinforge\n");
    write(root, "/proc/900/cmdline", cmdline);
    write(root, "/proc/900/status", status);
}

async fn service_user(ctx: &Context) -> Check {
    run(ctx)
        .await
        .get("spinforge.service_user")
        .expect("check")
        .clone()
}

#[tokio::test]
async fn root_serve_bounded_to_the_sandbox_capabilities_passes() {
    let tree = good_tree();
    let check = service_user(&context(tree.path())).await;
    assert_eq!(check.status, Status::Pass, "{check:?}");
    assert!(
        check.detail.contains("serve (pid 900) runs as root"),
        "{}",
        check.detail
    );
    for cap in ["CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SETUID"] {
        assert!(check.detail.contains(cap), "{cap}: {}", check.detail);
    }
    assert!(!check.detail.contains("CAP_SYS_PTRACE"));
}

#[tokio::test]
async fn root_serve_with_every_capability_warns_even_if_the_unit_is_tight() {
    let tree = good_tree();
    // The unit on disk is the hardened one, but the process running now
    // was started some other way.
    serve_as(
        tree.path(),
        SERVE,
        &proc_status("spinforge", 0, FULL_CAPS, FULL_CAPS),
    );
    let check = service_user(&context(tree.path())).await;
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(
        check.detail.contains("every capability"),
        "{}",
        check.detail
    );
    assert!(check.fix.contains("install --systemd"), "{}", check.fix);
}

#[tokio::test]
async fn root_serve_with_an_extra_capability_names_it() {
    let tree = good_tree();
    // The unit's set plus CAP_SYS_PTRACE (bit 19) and CAP_SYS_MODULE (16).
    let bounding = format!(
        "{:016x}",
        u64::from_str_radix(SUPERVISOR_CAPS_HEX, 16).expect("hex") | (1 << 19) | (1 << 16)
    );
    serve_as(
        tree.path(),
        SERVE,
        &proc_status("spinforge", 0, &bounding, &bounding),
    );
    let check = service_user(&context(tree.path())).await;
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(
        check
            .detail
            .contains("also holds CAP_SYS_MODULE CAP_SYS_PTRACE,"),
        "{}",
        check.detail
    );
}

#[tokio::test]
async fn serve_as_the_service_user_passes_with_only_the_bind_capability() {
    let tree = good_tree();
    // `install --unprivileged`: uid 990, ambient CAP_NET_BIND_SERVICE (10).
    serve_as(
        tree.path(),
        SERVE,
        &proc_status("spinforge", 990, "0000000000000400", "0000000000000400"),
    );
    let mut ctx = context(tree.path());
    ctx.serve = Ok(ServeFacts {
        sandbox_enabled: false,
        ..super::tests::facts()
    });
    let check = service_user(&ctx).await;
    assert_eq!(check.status, Status::Pass, "{check:?}");
    assert!(
        check
            .detail
            .contains("runs as uid 990; effective capabilities: CAP_NET_BIND_SERVICE"),
        "{}",
        check.detail
    );

    // The same user holding CAP_SYS_ADMIN (21) is root in all but name.
    serve_as(
        tree.path(),
        SERVE,
        &proc_status("spinforge", 990, "0000000000200400", FULL_CAPS),
    );
    let check = service_user(&ctx).await;
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(
        check.detail.contains("uid 990 but holds CAP_SYS_ADMIN"),
        "{}",
        check.detail
    );
}

#[tokio::test]
async fn root_serve_without_the_sandbox_fails() {
    let tree = good_tree();
    let mut ctx = context(tree.path());
    ctx.serve = Ok(ServeFacts {
        sandbox_enabled: false,
        ..super::tests::facts()
    });
    let check = service_user(&ctx).await;
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(check.detail.contains("sandbox is off"), "{}", check.detail);
}

#[tokio::test]
async fn an_unreadable_status_could_not_be_checked_never_passes() {
    let tree = good_tree();
    serve_as(tree.path(), SERVE, "Name:\tspinforge\nUid:\t0\t0\t0\t0\n");
    let check = service_user(&context(tree.path())).await;
    assert_eq!(check.status, Status::Unknown, "{check:?}");
    assert!(
        check.detail.contains("/proc/900/status lacks"),
        "{}",
        check.detail
    );
    serve_as(
        tree.path(),
        SERVE,
        &proc_status("spinforge", 0, "zz", SUPERVISOR_CAPS_HEX),
    );
    let check = service_user(&context(tree.path())).await;
    assert_eq!(check.status, Status::Unknown, "{check:?}");
}

#[tokio::test]
async fn other_spinforge_commands_are_not_serve_and_the_unit_answers() {
    let tree = good_tree();
    // `spinforge doctor` and a look-alike program are no serve.
    serve_as(
        tree.path(),
        "/usr/bin/spinforge\0doctor\0",
        &proc_status("spinforge", 0, FULL_CAPS, FULL_CAPS),
    );
    write(tree.path(), "/proc/901/comm", "notspinforge\n");
    write(
        tree.path(),
        "/proc/901/cmdline",
        "/opt/notspinforge\0serve\0",
    );
    write(
        tree.path(),
        "/proc/901/status",
        &proc_status("notspinforge", 0, FULL_CAPS, FULL_CAPS),
    );
    let check = service_user(&context(tree.path())).await;
    assert_eq!(check.status, Status::Pass, "{check:?}");
    assert!(
        check.detail.contains("serve is not running")
            && check
                .detail
                .contains("capabilities bounded to CAP_SYS_ADMIN"),
        "{}",
        check.detail
    );

    // No serve and no unit: nothing to judge.
    std::fs::remove_file(tree.path().join("etc/systemd/system/spinforge.service")).expect("rm");
    let check = service_user(&context(tree.path())).await;
    assert_eq!(check.status, Status::Unknown, "{check:?}");
}
