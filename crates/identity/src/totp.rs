//! The TOTP second factor (RFC 6238) and its recovery codes.
//!
//! This module owns the secret, the `otpauth://` enrolment URL, code checks
//! with a ±1 step window and replay protection, and single-use recovery
//! codes stored only as hashes. It keeps no state: the caller stores the
//! secret (encrypted), the last accepted time step and the recovery code
//! hashes with the user, and records the audit events (it knows the user
//! and the client IP).
//!
//! ```text
//! enrol:  let secret = TotpSecret::generate();
//!         show secret.enrolment_url(email)? as a QR code, then require one
//!         good code (verify) before turning TOTP on
//!         let (codes, plain) = RecoveryCodes::generate(); show `plain` once
//! login:  let step = secret.verify(code, SystemTime::now(), user.last_step)?;
//!         store `step` as the user's last accepted step (same transaction)
//! lost:   let index = codes.consume(input)?; store `codes` again
//! ```

use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

/// The issuer shown in authenticator apps.
pub const TOTP_ISSUER: &str = "SpinForge";
/// Length of one time step (RFC 6238's recommended 30 s).
pub const TOTP_STEP: Duration = Duration::from_secs(30);
/// Digits in a code; what every authenticator app shows by default.
pub const TOTP_DIGITS: usize = 6;
/// Bytes of a generated secret: 160 bits, as RFC 4226 recommends.
pub const TOTP_SECRET_LEN: usize = 20;
/// How many recovery codes [`RecoveryCodes::generate`] makes.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Crockford's base32 alphabet: no i, l, o or u to misread.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of a recovery code: 16 × 5 = 80 random bits.
const RECOVERY_CODE_CHARS: usize = 16;
const RECOVERY_HASH_DOMAIN: &[u8] = b"spinforge recovery code v1\0";

/// Why a TOTP or recovery code check failed, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpError {
    /// The client: the input is not a code at all (wrong length or
    /// characters). Names the field.
    #[error("{field}: {rule}")]
    Malformed {
        field: &'static str,
        rule: &'static str,
    },
    /// The client: a well-formed code that is wrong (or too old/new).
    #[error("invalid code")]
    Rejected,
    /// The client: a right code for a time step that was already used.
    #[error("this code was already used; wait for the next one")]
    Replayed,
    /// The client: no recovery code matches, or it was used before.
    #[error("invalid or already used recovery code")]
    RecoveryCodeRejected,
    /// The caller: a stored secret or hash is not usable (wrong length,
    /// bad encoding). Untrusted input never causes this.
    #[error("stored {what} is invalid")]
    BadStoredValue { what: &'static str },
    /// The caller: the account name cannot go into an enrolment URL.
    #[error("account: {rule}")]
    BadAccount { rule: &'static str },
}

/// A user's TOTP secret. `Debug` shows nothing of it; it is wiped on drop.
pub struct TotpSecret {
    bytes: SecretSlice<u8>,
}

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

impl TotpSecret {
    /// A new random 160-bit secret from the operating system's CSPRNG.
    pub fn generate() -> TotpSecret {
        let mut bytes = vec![0u8; TOTP_SECRET_LEN];
        OsRng.fill_bytes(&mut bytes);
        TotpSecret {
            bytes: bytes.into(),
        }
    }

    /// A stored secret: 16 to 64 bytes (RFC 4226 asks for at least 128 bits).
    pub fn from_bytes(bytes: &[u8]) -> Result<TotpSecret, TotpError> {
        if !(16..=64).contains(&bytes.len()) {
            return Err(TotpError::BadStoredValue {
                what: "TOTP secret",
            });
        }
        Ok(TotpSecret {
            bytes: bytes.to_vec().into(),
        })
    }

    /// A secret in RFC 4648 base32 (as in `otpauth://` URLs).
    pub fn from_base32(encoded: &str) -> Result<TotpSecret, TotpError> {
        let bytes = Secret::Encoded(encoded.trim().to_ascii_uppercase())
            .to_bytes()
            .map_err(|_| TotpError::BadStoredValue {
                what: "TOTP secret",
            })?;
        let secret = TotpSecret::from_bytes(&bytes);
        secrecy::zeroize::Zeroize::zeroize(&mut { bytes });
        secret
    }

    /// The raw bytes, to encrypt and store.
    pub fn expose_bytes(&self) -> &[u8] {
        self.bytes.expose_secret()
    }

    /// The secret in base32, for users who type it in instead of scanning.
    pub fn to_base32(&self) -> SecretString {
        SecretString::from(self.totp(String::new()).get_secret_base32())
    }

    /// The `otpauth://totp/SpinForge:{email}?secret=..&issuer=SpinForge`
    /// URL an authenticator app enrols from (usually shown as a QR code).
    /// It contains the secret, hence the type.
    pub fn enrolment_url(&self, account_email: &str) -> Result<SecretString, TotpError> {
        let account = account_email.trim();
        if account.is_empty() {
            return Err(TotpError::BadAccount {
                rule: "must not be empty",
            });
        }
        if account.contains(':') {
            return Err(TotpError::BadAccount {
                rule: "must not contain ':'",
            });
        }
        Ok(SecretString::from(self.totp(account.to_owned()).get_url()))
    }

    /// Checks `code` at `now`, allowing one step of clock drift either way.
    /// Returns the time step the code belongs to; store it and pass it as
    /// `last_accepted_step` next time: a code for that step or an earlier
    /// one is then [`TotpError::Replayed`], so each code works once.
    pub fn verify(
        &self,
        code: &str,
        now: SystemTime,
        last_accepted_step: Option<u64>,
    ) -> Result<u64, TotpError> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TotpError::Malformed {
                field: "totp",
                rule: "must be 6 digits",
            });
        }
        let step_secs = TOTP_STEP.as_secs();
        let current = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / step_secs)
            .unwrap_or(0);

        // Compare against every step of the window, in constant time, and
        // decide afterwards.
        let totp = self.totp(String::new());
        let mut matched = None;
        for step in [
            current.saturating_sub(1),
            current,
            current.saturating_add(1),
        ] {
            let expected = totp.generate(step.saturating_mul(step_secs));
            let equal: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
            if equal && matched.is_none() {
                matched = Some(step);
            }
        }

        match matched {
            None => Err(TotpError::Rejected),
            Some(step) if last_accepted_step.is_some_and(|last| step <= last) => {
                Err(TotpError::Replayed)
            }
            Some(step) => Ok(step),
        }
    }

    fn totp(&self, account: String) -> TOTP {
        TOTP::new_unchecked(
            Algorithm::SHA1,
            TOTP_DIGITS,
            1,
            TOTP_STEP.as_secs(),
            self.bytes.expose_secret().to_vec(),
            Some(TOTP_ISSUER.to_owned()),
            account,
        )
    }
}

/// The SHA-256 of one recovery code.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCodeHash([u8; 32]);

impl std::fmt::Debug for RecoveryCodeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCodeHash(..)")
    }
}

impl RecoveryCodeHash {
    /// The hash of a code as the user typed it (case, spaces, dashes and
    /// look-alikes forgiven), to find it among stored hashes.
    pub fn of_input(input: &str) -> Result<RecoveryCodeHash, TotpError> {
        Ok(RecoveryCodeHash::of(&normalise_recovery_code(input)?))
    }

    fn of(normalised: &str) -> RecoveryCodeHash {
        let mut hasher = Sha256::new();
        hasher.update(RECOVERY_HASH_DOMAIN);
        hasher.update(normalised.as_bytes());
        RecoveryCodeHash(hasher.finalize().into())
    }

    /// Lower-case hex, for storage.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads what [`RecoveryCodeHash::to_hex`] wrote.
    pub fn from_hex(text: &str) -> Result<RecoveryCodeHash, TotpError> {
        let bad = TotpError::BadStoredValue {
            what: "recovery code hash",
        };
        let bytes = hex::decode(text).map_err(|_| bad.clone())?;
        Ok(RecoveryCodeHash(bytes.try_into().map_err(|_| bad)?))
    }
}

/// A user's recovery codes as stored: one slot per code, `None` once used.
///
/// The codes are 80-bit random values, so a fast hash is enough: a leaked
/// hash cannot be brute-forced back into its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryCodes {
    slots: Vec<Option<RecoveryCodeHash>>,
}

impl RecoveryCodes {
    /// [`RECOVERY_CODE_COUNT`] new codes: the set to store, and the codes in
    /// plain text (`xxxx-xxxx-xxxx-xxxx`) to show the user once.
    pub fn generate() -> (RecoveryCodes, Vec<SecretString>) {
        let mut slots = Vec::with_capacity(RECOVERY_CODE_COUNT);
        let mut plain = Vec::with_capacity(RECOVERY_CODE_COUNT);
        for _ in 0..RECOVERY_CODE_COUNT {
            let mut random = [0u8; RECOVERY_CODE_CHARS];
            OsRng.fill_bytes(&mut random);
            // 32 symbols: masking a byte to 5 bits keeps it uniform.
            let code: String = random
                .iter()
                .map(|b| RECOVERY_ALPHABET[usize::from(b & 31)] as char)
                .collect();
            slots.push(Some(RecoveryCodeHash::of(&code)));
            let shown = format!(
                "{}-{}-{}-{}",
                &code[0..4],
                &code[4..8],
                &code[8..12],
                &code[12..16]
            );
            plain.push(SecretString::from(shown));
        }
        (RecoveryCodes { slots }, plain)
    }

    /// Uses up the code the user typed. Case, spaces and dashes do not
    /// matter, and `i`/`l` read as `1`, `o` as `0`. Returns the index of the
    /// consumed slot (now `None`); store the set again before answering.
    pub fn consume(&mut self, input: &str) -> Result<usize, TotpError> {
        let normalised = normalise_recovery_code(input)?;
        let hash = RecoveryCodeHash::of(&normalised);

        // Look at every slot, so the time taken does not depend on which
        // one (if any) matches.
        let mut found = None;
        for (index, slot) in self.slots.iter().enumerate() {
            let equal: bool = match slot {
                Some(stored) => stored.0.ct_eq(&hash.0).into(),
                None => false,
            };
            if equal && found.is_none() {
                found = Some(index);
            }
        }

        let index = found.ok_or(TotpError::RecoveryCodeRejected)?;
        self.slots[index] = None;
        Ok(index)
    }

    /// How many codes are still unused.
    pub fn remaining(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// The slots as hex hashes (`None` for used codes), for storage.
    pub fn to_stored(&self) -> Vec<Option<String>> {
        self.slots
            .iter()
            .map(|s| s.as_ref().map(RecoveryCodeHash::to_hex))
            .collect()
    }

    /// Reads what [`RecoveryCodes::to_stored`] wrote.
    pub fn from_stored(stored: &[Option<String>]) -> Result<RecoveryCodes, TotpError> {
        let slots = stored
            .iter()
            .map(|s| s.as_deref().map(RecoveryCodeHash::from_hex).transpose())
            .collect::<Result<_, _>>()?;
        Ok(RecoveryCodes { slots })
    }
}

fn normalise_recovery_code(input: &str) -> Result<String, TotpError> {
    let mut out = String::with_capacity(RECOVERY_CODE_CHARS);
    for c in input.chars() {
        let c = match c.to_ascii_lowercase() {
            '-' | ' ' | '\t' => continue,
            'i' | 'l' => '1',
            'o' => '0',
            c => c,
        };
        if !c.is_ascii() || !RECOVERY_ALPHABET.contains(&(c as u8)) {
            return Err(TotpError::Malformed {
                field: "recovery_code",
                rule: "must be 16 letters and digits (dashes optional)",
            });
        }
        out.push(c);
    }
    if out.len() != RECOVERY_CODE_CHARS {
        return Err(TotpError::Malformed {
            field: "recovery_code",
            rule: "must be 16 letters and digits (dashes optional)",
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SHA1_SECRET: &[u8] = b"12345678901234567890";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn code(secret: &[u8], algorithm: Algorithm, digits: usize, secs: u64) -> String {
        TOTP::new_unchecked(
            algorithm,
            digits,
            1,
            30,
            secret.to_vec(),
            None,
            String::new(),
        )
        .generate(secs)
    }

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(RFC_SHA1_SECRET).expect("20 bytes")
    }

    /// RFC 6238, Appendix B: 8-digit codes for three algorithms and secrets.
    #[test]
    fn rfc6238_test_vectors() {
        let sha256 = b"12345678901234567890123456789012";
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234";
        let table: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (secs, want1, want256, want512) in table {
            assert_eq!(code(RFC_SHA1_SECRET, Algorithm::SHA1, 8, secs), want1);
            assert_eq!(code(sha256, Algorithm::SHA256, 8, secs), want256);
            assert_eq!(code(sha512, Algorithm::SHA512, 8, secs), want512);
        }
    }

    /// The 6-digit code is the RFC's 8-digit one modulo 10^6.
    #[test]
    fn verify_accepts_rfc_codes_and_returns_their_step() {
        let secret = rfc_secret();
        assert_eq!(secret.verify("287082", at(59), None), Ok(1));
        assert_eq!(secret.verify("081804", at(1111111109), None), Ok(37037036));
        assert_eq!(secret.verify("050471", at(1111111111), None), Ok(37037037));
        assert_eq!(secret.verify("005924", at(1234567890), None), Ok(41152263));
        // Spaces as apps show them ("287 082") are fine.
        assert_eq!(secret.verify("287 082", at(59), None), Ok(1));
    }

    #[test]
    fn one_step_of_drift_either_way_is_allowed_two_are_not() {
        let secret = rfc_secret();
        let step = 1_000_000u64;
        let code_at = |s: u64| code(RFC_SHA1_SECRET, Algorithm::SHA1, 6, s * 30);
        let now = at(step * 30 + 10);

        assert_eq!(secret.verify(&code_at(step - 1), now, None), Ok(step - 1));
        assert_eq!(secret.verify(&code_at(step), now, None), Ok(step));
        assert_eq!(secret.verify(&code_at(step + 1), now, None), Ok(step + 1));
        assert_eq!(
            secret.verify(&code_at(step - 2), now, None),
            Err(TotpError::Rejected)
        );
        assert_eq!(
            secret.verify(&code_at(step + 2), now, None),
            Err(TotpError::Rejected)
        );
    }

    #[test]
    fn a_code_works_once_and_older_steps_are_refused_after_it() {
        let secret = rfc_secret();
        let step = 2_000_000u64;
        let code_at = |s: u64| code(RFC_SHA1_SECRET, Algorithm::SHA1, 6, s * 30);
        let now = at(step * 30);

        let accepted = secret.verify(&code_at(step), now, None).expect("first use");
        assert_eq!(accepted, step);
        assert_eq!(
            secret.verify(&code_at(step), now, Some(accepted)),
            Err(TotpError::Replayed)
        );
        // The previous step is inside the window but older than the last
        // accepted one: also a replay.
        assert_eq!(
            secret.verify(&code_at(step - 1), now, Some(accepted)),
            Err(TotpError::Replayed)
        );
        assert_eq!(
            secret.verify(&code_at(step + 1), now, Some(accepted)),
            Ok(step + 1)
        );
    }

    #[test]
    fn malformed_codes_name_the_field_and_wrong_ones_are_rejected() {
        let secret = rfc_secret();
        for bad in ["", "12345", "1234567", "12345a", "２８７０８２"] {
            assert!(
                matches!(
                    secret.verify(bad, at(59), None),
                    Err(TotpError::Malformed { field: "totp", .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            secret.verify("287083", at(59), None),
            Err(TotpError::Rejected)
        );
    }

    #[test]
    fn generated_secrets_are_160_bit_random_and_round_trip() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_eq!(a.expose_bytes().len(), 20);
        assert_ne!(a.expose_bytes(), b.expose_bytes());

        let again = TotpSecret::from_base32(a.to_base32().expose_secret()).expect("base32");
        assert_eq!(again.expose_bytes(), a.expose_bytes());
        let again = TotpSecret::from_bytes(a.expose_bytes()).expect("bytes");
        assert_eq!(again.expose_bytes(), a.expose_bytes());

        assert!(TotpSecret::from_bytes(&[0; 15]).is_err());
        assert!(TotpSecret::from_base32("not base32!").is_err());
        assert_eq!(format!("{a:?}"), "TotpSecret([redacted])");
    }

    #[test]
    fn enrolment_url_names_spinforge_and_the_account_and_carries_the_secret() {
        let secret = rfc_secret();
        let url = secret
            .enrolment_url("alice@example.com")
            .expect("valid account");
        let url = url::Url::parse(url.expose_secret()).expect("a URL");

        assert_eq!(url.scheme(), "otpauth");
        assert_eq!(url.host_str(), Some("totp"));
        let label = percent_decode(url.path());
        assert_eq!(label, "/SpinForge:alice@example.com");
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        // RFC 4648 base32 of "12345678901234567890".
        assert_eq!(query["secret"], "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(query["issuer"], "SpinForge");
        // Defaults (SHA1, 6 digits, 30 s) are left out, as apps expect.
        assert!(!query.contains_key("digits") && !query.contains_key("period"));

        assert!(matches!(
            secret.enrolment_url("a:b@example.com"),
            Err(TotpError::BadAccount { .. })
        ));
        assert!(matches!(
            secret.enrolment_url("  "),
            Err(TotpError::BadAccount { .. })
        ));
    }

    fn percent_decode(s: &str) -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn ten_recovery_codes_each_work_exactly_once() {
        let (mut codes, plain) = RecoveryCodes::generate();
        assert_eq!(plain.len(), 10);
        assert_eq!(codes.remaining(), 10);
        let unique: std::collections::HashSet<_> =
            plain.iter().map(|c| c.expose_secret().to_owned()).collect();
        assert_eq!(unique.len(), 10);

        for (i, code) in plain.iter().enumerate().rev() {
            let shown = code.expose_secret();
            assert_eq!(shown.len(), 19, "{shown}");
            assert_eq!(codes.consume(shown), Ok(i));
            assert_eq!(codes.consume(shown), Err(TotpError::RecoveryCodeRejected));
        }
        assert_eq!(codes.remaining(), 0);
    }

    #[test]
    fn recovery_codes_forgive_case_dashes_and_lookalikes() {
        let (mut codes, plain) = RecoveryCodes::generate();
        let typed = plain[3]
            .expose_secret()
            .replace('-', " ")
            .to_uppercase()
            .replace('1', "l")
            .replace('0', "O");
        assert_eq!(codes.consume(&typed), Ok(3));
    }

    #[test]
    fn wrong_and_malformed_recovery_codes_consume_nothing() {
        let (mut codes, _plain) = RecoveryCodes::generate();
        assert_eq!(
            codes.consume("0000-0000-0000-0000"),
            Err(TotpError::RecoveryCodeRejected)
        );
        for bad in [
            "",
            "0000-0000-0000",
            "0000-0000-0000-0000-0",
            "uuuu-uuuu-uuuu-uuuu",
        ] {
            assert!(matches!(
                codes.consume(bad),
                Err(TotpError::Malformed {
                    field: "recovery_code",
                    ..
                })
            ));
        }
        assert_eq!(codes.remaining(), 10);
    }

    #[test]
    fn stored_recovery_codes_round_trip_and_hold_no_plain_code() {
        let (mut codes, plain) = RecoveryCodes::generate();
        codes.consume(plain[0].expose_secret()).expect("valid");
        let stored = codes.to_stored();
        assert_eq!(stored[0], None);
        let joined = format!("{stored:?}");
        for code in &plain {
            let bare = code.expose_secret().replace('-', "");
            assert!(!joined.contains(&bare));
        }

        let mut loaded = RecoveryCodes::from_stored(&stored).expect("valid");
        assert_eq!(loaded, codes);
        assert_eq!(loaded.consume(plain[5].expose_secret()), Ok(5));
        assert!(RecoveryCodes::from_stored(&[Some("zz".to_owned())]).is_err());
    }
}
