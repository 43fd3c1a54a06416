//! Who a failed login counts against, so that naming someone's e-mail
//! cannot lock them out.
//!
//! Two counters per account, both in the store (they survive a restart):
//! - per account *and source network* (IPv4 /24, IPv6 /48): the hard lock
//!   (`max_failures` per window). A stranger elsewhere fills their own
//!   counter, never the owner's;
//! - per account, all networks together: a higher ceiling
//!   ([`account_ceiling`]). Past it the account is guarded: a login is
//!   refused unless it shows a *device proof*, the `sf_device` cookie the
//!   hub sets after a successful password login on that device. So brute
//!   force from many networks stays bounded, and the owner on a device
//!   that has logged in before still gets in.
//!
//! A device proof is an HMAC of the account and its issue time under a
//! key made at start; it holds no session and grants nothing by itself.

use aws_lc_rs::hmac;
use base64::Engine;
use std::net::IpAddr;
use std::time::Duration;

/// How long a device proof is honoured after the login that earned it.
pub const DEVICE_PROOF_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The cookie that carries it.
pub const DEVICE_COOKIE: &str = "sf_device";

/// The account-wide failure ceiling for a per-network limit of `max`:
/// four networks' worth, and never below 20.
pub fn account_ceiling(max: u32) -> u32 {
    max.saturating_mul(4).max(20)
}

/// The network a failure counts under: IPv4 by /24, IPv6 by /48 (a site's
/// usual allocation), `unknown` without an address.
pub(crate) fn source_net(ip: Option<IpAddr>) -> String {
    let ip = ip.map(crate::throttle::client_key);
    match ip {
        Some(IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        None => "unknown".to_owned(),
    }
}

/// The store key of `subject`'s failures from `net`. The separator is one
/// the store's unlock and erasure match as a prefix.
pub(crate) fn network_subject(subject: &str, net: &str) -> String {
    format!("{subject}\u{1f}{net}")
}

/// A device proof as the client sent it. No `Debug` of the value.
#[derive(Clone)]
pub struct DeviceProof(String);

impl DeviceProof {
    /// At most 128 characters are considered; longer values are no proof.
    pub fn new(value: &str) -> Option<DeviceProof> {
        (!value.is_empty() && value.len() <= 128).then(|| DeviceProof(value.to_owned()))
    }
}

impl std::fmt::Debug for DeviceProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceProof(..)")
    }
}

/// Issues and checks device proofs.
pub(crate) struct DeviceKey(hmac::Key);

impl DeviceKey {
    /// A fresh random key.
    // Limitation: the key lives in memory only, so proofs die with a
    // restart (keep it sealed in the store, or under the secrets master
    // key, to lift).
    pub(crate) fn generate() -> DeviceKey {
        DeviceKey(hmac::Key::new(hmac::HMAC_SHA256, &rand_bytes()))
    }

    fn tag(&self, subject: &str, issued: i64) -> String {
        let message = format!("spinforge-device\0{subject}\0{issued}");
        let tag = hmac::sign(&self.0, message.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// A proof that this device logged in to `subject` at `now`.
    pub(crate) fn issue(&self, subject: &str, now: i64) -> String {
        format!("{now}.{}", self.tag(subject, now))
    }

    /// True if and only if `proof` was issued for `subject` by this key
    /// within [`DEVICE_PROOF_TTL`] before `now`.
    pub(crate) fn verify(&self, proof: &DeviceProof, subject: &str, now: i64) -> bool {
        let Some((issued, tag)) = proof.0.split_once('.') else {
            return false;
        };
        let Ok(issued) = issued.parse::<i64>() else {
            return false;
        };
        let age = now - issued;
        if !(0..=DEVICE_PROOF_TTL.as_secs() as i64).contains(&age) {
            return false;
        }
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        let message = format!("spinforge-device\0{subject}\0{issued}");
        hmac::verify(&self.0, message.as_bytes(), &tag).is_ok()
    }
}

fn rand_bytes() -> [u8; 32] {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_per_slash_24_and_slash_48() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(source_net(ip("127.0.1.7")), "127.0.1.0/24");
        assert_eq!(source_net(ip("127.0.1.200")), "127.0.1.0/24");
        assert_eq!(source_net(ip("::ffff:10.1.2.3")), "10.1.2.0/24");
        assert_eq!(source_net(ip("2001:db8:7:1::1")), "2001:db8:7::/48");
        assert_eq!(source_net(None), "unknown");
        assert_eq!(
            network_subject("a@example.com", "127.0.1.0/24"),
            "a@example.com\u{1f}127.0.1.0/24"
        );
    }

    #[test]
    fn device_proofs_are_bound_to_account_key_and_age() {
        let key = DeviceKey::generate();
        let proof = DeviceProof::new(&key.issue("a@example.com", 1_000)).expect("proof");
        assert!(key.verify(&proof, "a@example.com", 1_000 + 3600));
        assert!(!key.verify(&proof, "b@example.com", 1_000 + 3600));
        assert!(!key.verify(&proof, "a@example.com", 1_000 + 31 * 24 * 3600));
        assert!(
            !key.verify(&proof, "a@example.com", 999),
            "issued in the future"
        );
        assert!(!DeviceKey::generate().verify(&proof, "a@example.com", 1_000));
        let forged = DeviceProof::new("2000.AAAA").expect("shape");
        assert!(!key.verify(&forged, "a@example.com", 2_000));
        assert!(DeviceProof::new(&"x".repeat(129)).is_none());
        assert_eq!(format!("{proof:?}"), "DeviceProof(..)");
    }

    #[test]
    fn the_account_ceiling_is_four_networks_and_at_least_twenty() {
        assert_eq!(account_ceiling(5), 20);
        assert_eq!(account_ceiling(10), 40);
        assert_eq!(account_ceiling(1), 20);
    }
}
