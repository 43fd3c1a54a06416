//! TOTP interop: an authenticator enrolled from our `otpauth://` URL makes
//! codes that `verify` accepts, in the window and once.
//!
//! The authenticator is PyPI's `pyotp` (see `oidc_python` for where the
//! python comes from and when this test skips): it parses the URL as an
//! app does and computes codes with its own RFC 6238 implementation, so a
//! mistake shared by our code and `totp-rs` cannot hide here.

mod oidc_python;

use identity::totp::{TotpError, TotpSecret};
use secrecy::ExposeSecret;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reads the URL on stdin (not argv: it holds the secret), prints the
/// issuer and account, then the code at each time given as an argument.
const AUTHENTICATOR: &str = "\
import sys, pyotp
totp = pyotp.parse_uri(sys.stdin.readline().strip())
print(totp.issuer)
print(totp.name)
for t in sys.argv[1:]:
    print(totp.at(int(t)))
";

fn authenticator(url: &str, times: &[u64]) -> Vec<String> {
    let python = oidc_python::python().expect("checked by the caller");
    let mut child = Command::new(python)
        .arg("-c")
        .arg(AUTHENTICATOR)
        .args(times.iter().map(u64::to_string))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pyotp");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{url}\n").as_bytes())
        .expect("write URL");
    let out = child.wait_with_output().expect("pyotp output");
    assert!(
        out.status.success(),
        "pyotp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn codes_from_an_authenticator_enrolled_with_our_url_verify_once() {
    if oidc_python::python().is_none() {
        return;
    }
    let secret = TotpSecret::generate();
    let url = secret
        .enrolment_url("alice@example.com")
        .expect("enrolment URL");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let step = now / 30;
    let times = [now - 60, now - 30, now, now + 30, now + 60];
    let out = authenticator(url.expose_secret(), &times);
    assert_eq!(out.len(), 2 + times.len(), "{out:?}");
    assert_eq!(out[0], "SpinForge");
    assert_eq!(out[1], "alice@example.com");
    let codes = &out[2..];
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);

    // The code of now, and one step of drift either way, are accepted and
    // name their step; two steps away are not.
    assert_eq!(secret.verify(&codes[2], at(now), None), Ok(step));
    assert_eq!(secret.verify(&codes[1], at(now), None), Ok(step - 1));
    assert_eq!(secret.verify(&codes[3], at(now), None), Ok(step + 1));
    for far in [&codes[0], &codes[4]] {
        // A 6-digit code can equal one in the window by chance (about 3 in
        // a million); only a distinct code says something.
        if !codes[1..=3].contains(far) {
            assert_eq!(secret.verify(far, at(now), None), Err(TotpError::Rejected));
        }
    }

    // Once the code of now was accepted, it and the step before are spent.
    assert_eq!(
        secret.verify(&codes[2], at(now), Some(step)),
        Err(TotpError::Replayed)
    );
    assert_eq!(
        secret.verify(&codes[1], at(now), Some(step)),
        Err(TotpError::Replayed)
    );
    assert_eq!(secret.verify(&codes[3], at(now), Some(step)), Ok(step + 1));

    // A secret typed in by hand (base32) gives the same codes.
    let typed = TotpSecret::from_base32(secret.to_base32().expose_secret()).expect("base32");
    assert_eq!(typed.verify(&codes[2], at(now), None), Ok(step));
}
