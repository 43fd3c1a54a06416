//! A python with the PyPI packages the identity tests run against:
//! `oidc-provider-mock` (a real OpenID provider) and `pyotp` (what many
//! authenticator tools use to compute TOTP codes).
//!
//! The python comes from `SPINFORGE_TEST_PYTHON` (what `.ci/run` sets), else
//! from a venv made under the target dir with pip. Tests are skipped,
//! loudly, only when there is no python3 with venv support, and never when
//! `CI` is set.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Exact versions, also pinned in `.ci/run` (a copy of
/// crates/identity/tests/oidc_python: test crates cannot share modules).
pub const PACKAGES: [&str; 2] = ["oidc-provider-mock==0.3.4", "pyotp==2.9.0"];

/// The python to run, or `None` to skip (after saying so loudly).
pub fn python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON.get_or_init(find_or_install).clone()
}

fn find_or_install() -> Option<PathBuf> {
    if let Ok(python) = std::env::var("SPINFORGE_TEST_PYTHON") {
        let python = PathBuf::from(python);
        assert!(
            python.is_file(),
            "SPINFORGE_TEST_PYTHON={python:?} is no file"
        );
        return Some(python);
    }
    let name = format!("identity-venv-{}", PACKAGES.join("-").replace("==", "-"));
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
    let python = venv.join("bin").join("python");
    if python.is_file() {
        return Some(python);
    }

    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_venv {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide {PACKAGES:?} (see .ci/run)"
        );
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !! SKIPPED: this test needs python3 with venv and pip to install\n\
             !! {PACKAGES:?}; there is none here.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return None;
    }

    // Build it beside, then rename: a crashed install leaves no half venv.
    // (The venv's python works from its new place; its scripts would not.)
    let partial = venv.with_file_name(format!("{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("python3").args(["-m", "venv"]).arg(&partial));
    run(Command::new(partial.join("bin").join("python"))
        .args(["-m", "pip", "install", "-q"])
        .args(PACKAGES));
    if std::fs::rename(&partial, &venv).is_err() {
        // Another test process won the race; use theirs.
        let _ = std::fs::remove_dir_all(&partial);
    }
    assert!(python.is_file(), "{python:?} missing after install");
    Some(python)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run python3");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
