//! The command line's side of a single sign-on login (RFC 8252 with PKCE,
//! RFC 7636): what binds a login to the CLI that started it.
//!
//! The CLI keeps a random verifier and sends only its S256 challenge when
//! it starts a login. After the provider's callback the hub gives the
//! browser a one-time code, either by redirecting it to the CLI's loopback
//! listener ([`LoopbackRedirect`]) or by showing it for the user to paste;
//! only code and verifier together buy a token pair. This module checks the
//! shapes; the hub keeps the codes and issues the tokens.

use base64::Engine;
use sha2::{Digest, Sha256};
use url::Url;

/// Length of an S256 challenge: base64url (no padding) of 32 bytes.
pub const CHALLENGE_LEN: usize = 43;

/// The S256 challenge of `verifier`: base64url of its SHA-256.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// True if and only if `verifier` has RFC 7636's shape: 43 to 128
/// characters of `A-Z a-z 0-9 - . _ ~`.
pub fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// True if and only if `challenge` can be an S256 challenge.
pub fn is_valid_challenge(challenge: &str) -> bool {
    challenge.len() == CHALLENGE_LEN
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Where the hub may send a CLI login's code: a listener of the CLI on the
/// user's own machine, `http://127.0.0.1:<port>/...` or
/// `http://[::1]:<port>/...` (RFC 8252 section 7.3). Host names, even
/// `localhost`, are refused: they resolve through files and DNS that an
/// attacker may influence, and a code must never leave the machine.
#[derive(Debug, Clone)]
pub struct LoopbackRedirect(Url);

impl LoopbackRedirect {
    /// Checks `raw`; the error says which rule it breaks.
    pub fn parse(raw: &str) -> Result<LoopbackRedirect, &'static str> {
        if raw.len() > 512 {
            return Err("must be at most 512 characters");
        }
        let url = Url::parse(raw).map_err(|_| "must be an absolute URL")?;
        if url.scheme() != "http" {
            return Err("must use http (a loopback listener has no certificate)");
        }
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
            Some(url::Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
            _ => false,
        };
        if !loopback {
            return Err("host must be the literal 127.0.0.1 or [::1]");
        }
        if url.port().is_none() {
            return Err("must name the port the CLI listens on");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must have no query or fragment");
        }
        Ok(LoopbackRedirect(url))
    }

    /// The URL with `pairs` as its query.
    pub fn with_query(&self, pairs: &[(&str, &str)]) -> String {
        let mut url = self.0.clone();
        url.query_pairs_mut().extend_pairs(pairs);
        url.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_base64url_of_the_sha256_of_the_verifier() {
        // Expected value from Python's hashlib and base64.urlsafe_b64encode.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mJ92K1uWQ2f1p_gDgRDqvJZbKx1gTk"),
            "Tj9e5VIeGs2pYE85YGxB28k1qXzd5E_g5ZgC0QtOD1Q"
        );
        assert!(is_valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!is_valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c"
        ));
        assert!(!is_valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"
        ));
    }

    #[test]
    fn verifiers_follow_the_rfc_alphabet_and_length() {
        assert!(is_valid_verifier(&"a".repeat(43)));
        assert!(is_valid_verifier(&"a-._~".repeat(20)));
        assert!(!is_valid_verifier(&"a".repeat(42)));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}/", "a".repeat(43))));
    }

    #[test]
    fn only_literal_loopback_listeners_may_receive_a_code() {
        for good in ["http://127.0.0.1:4711/callback", "http://[::1]:8080/"] {
            assert!(LoopbackRedirect::parse(good).is_ok(), "{good}");
        }
        for (bad, rule) in [
            ("https://127.0.0.1:4711/", "http"),
            ("http://localhost:4711/", "literal"),
            ("http://127.0.0.2:4711/", "literal"),
            ("http://attacker.example:4711/", "literal"),
            ("http://127.0.0.1/", "port"),
            // The scheme's default port is no listener's random one.
            ("http://127.0.0.1:80/", "port"),
            ("http://u:p@127.0.0.1:1/", "user"),
            ("http://127.0.0.1:1/?x=1", "query"),
            ("127.0.0.1:1", "absolute"),
        ] {
            let err = LoopbackRedirect::parse(bad).expect_err(bad);
            assert!(err.contains(rule), "{bad}: {err}");
        }
        let to = LoopbackRedirect::parse("http://127.0.0.1:9/cb").expect("ok");
        assert_eq!(
            to.with_query(&[("code", "a b")]),
            "http://127.0.0.1:9/cb?code=a+b"
        );
    }
}
