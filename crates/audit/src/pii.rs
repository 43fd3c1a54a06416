//! Personal fields of the log, encrypted per subject so they can be
//! erased without touching the chain (crypto-shredding).
//!
//! Each personal field is sealed under the key of the person it belongs
//! to (decided in [`crate::owners`]): `user:ID` for a known user, else
//! `email:HMAC` for an address with no user. The client IP, the user
//! agent and personal metadata values (addresses, names) are stored as
//! `pii:v1:SUBJECT:BASE64` (AES-256-GCM; a value naming several people
//! is sealed once per person, outermost last), and the chain MAC covers
//! that ciphertext. Subject keys live wrapped in `audit_pii_keys`, under
//! a master key kept as a file beside the chain key; deleting a
//! subject's row destroys what its fields said, and the chain still
//! verifies.

use crate::chain::Row;
use crate::keys;
use crate::owners::{Plan, MAX_LAYERS};
use crate::AuditError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::Value;
use sqlx::{Row as _, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// File name of the key that wraps subject keys, in the key folder.
pub const PII_KEY_FILE: &str = "pii.key";

/// Prefix of an encrypted field value.
const SEALED: &str = "pii:v1:";

/// What a reader sees in place of a field whose key was destroyed.
pub const ERASED: &str = "[erased]";

/// What an export shows in place of another person's field.
pub const WITHHELD: &str = "[withheld]";

/// Metadata keys whose string values are personal: addresses and names.
const PERSONAL_META: &[&str] = &[
    "subject",
    "email",
    "user_email",
    "target_email",
    "name",
    "display_name",
    "full_name",
    "target_name",
];

/// True iff a metadata value under `key` is personal data.
pub fn is_personal_key(key: &str) -> bool {
    PERSONAL_META.contains(&key)
}

/// `alice@example.com` → `a***@example.com`: the first character of the
/// local part and the whole domain stay. Text without an `@` is kept.
pub fn mask_email(text: &str) -> String {
    match text.split_once('@') {
        Some((local, domain)) if !local.is_empty() => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        _ => text.to_owned(),
    }
}

/// How a log field is shown when personal data is masked: `None` keeps
/// it as it is, `Some(None)` leaves it out (user agents), `Some(text)`
/// replaces it (addresses anonymised, e-mail addresses masked). `text`
/// is the field as written, quotes and all.
pub fn mask_log_value(field: &str, text: &str) -> Option<Option<String>> {
    let bare = text.trim_matches('"');
    match field {
        "user_agent" => Some(None),
        "client_ip" | "ip" | "peer" | "client" => {
            // `Some(1.2.3.4)` from Option fields, or a socket address.
            let inner = bare
                .strip_prefix("Some(")
                .and_then(|t| t.strip_suffix(')'))
                .unwrap_or(bare);
            let ip = inner
                .parse::<std::net::IpAddr>()
                .ok()
                .or_else(|| inner.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
            // Not an address we can cut: left out.
            Some(ip.map(|ip| crate::anonymise_ip(ip).to_string()))
        }
        _ if bare.contains('@') && (is_personal_key(field) || bare.contains('.')) => {
            Some(Some(mask_email(bare)))
        }
        _ => None,
    }
}

/// The subject keys and the key that wraps them; shared by the writer
/// and every reader of one log.
pub struct Vault {
    master: LessSafeKey,
    index: hmac::Key,
    keys: Mutex<HashMap<String, Arc<LessSafeKey>>>,
}

impl Vault {
    /// Loads the master key from `dir`, creating it when `create` is set.
    pub(crate) fn load(dir: &Path, create: bool) -> Result<Vault, AuditError> {
        let path = dir.join(PII_KEY_FILE);
        let bytes = keys::read_or_make(&path, create, || {
            let mut bytes = vec![0u8; 32];
            aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "cannot read random bytes".to_owned())?;
            Ok(bytes)
        })?;
        Vault::from_bytes(&bytes.0).map_err(|e| AuditError::key(&path, e))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Vault, String> {
        if bytes.len() != 32 {
            return Err("must be exactly 32 bytes".into());
        }
        let master = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| "not an AES-256 key")?;
        // The address index uses a key derived from the master key, so
        // the master key itself is used for one purpose only.
        let index = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"spinforge-audit-pii-index/v1",
        );
        Ok(Vault {
            master: LessSafeKey::new(master),
            index: hmac::Key::new(hmac::HMAC_SHA256, index.as_ref()),
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// The subject of an e-mail address (compared lower-cased).
    pub fn email_subject(&self, email: &str) -> String {
        let tag = hmac::sign(&self.index, email.trim().to_lowercase().as_bytes());
        format!("email:{}", hex::encode(&tag.as_ref()[..16]))
    }

    /// Every subject whose key holds personal fields of this user.
    pub fn subjects_of(&self, user: i64, email: &str) -> Vec<String> {
        vec![format!("user:{user}"), self.email_subject(email)]
    }

    /// Drops cached keys after their rows were deleted; later events of
    /// the subject get a fresh key.
    pub fn forget(&self, subjects: &[String]) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for subject in subjects {
            keys.remove(subject);
        }
    }

    /// Keys for `subjects`, from the cache or the table; subjects that
    /// have none get a fresh key, returned wrapped in the second list so
    /// the caller stores it with the rows it protects.
    pub(crate) async fn keys_for_writing(
        &self,
        pool: &SqlitePool,
        subjects: impl IntoIterator<Item = String>,
    ) -> Result<(HashMap<String, Arc<LessSafeKey>>, Vec<(String, Vec<u8>)>), AuditError> {
        let mut found = HashMap::new();
        let mut fresh = Vec::new();
        for subject in subjects {
            if found.contains_key(&subject) {
                continue;
            }
            if let Some(key) = self.load_key(pool, &subject).await? {
                found.insert(subject, key);
                continue;
            }
            let mut bytes = [0u8; 32];
            aws_lc_rs::rand::fill(&mut bytes)
                .map_err(|_| AuditError::Unavailable("cannot read random bytes".into()))?;
            let wrapped = self.wrap(&subject, &bytes)?;
            let key = Arc::new(subject_key(&bytes)?);
            bytes.fill(0);
            found.insert(subject.clone(), key);
            fresh.push((subject, wrapped));
        }
        Ok((found, fresh))
    }

    /// Remembers keys whose rows are now committed.
    pub(crate) fn remember(&self, keys: HashMap<String, Arc<LessSafeKey>>) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys);
    }

    /// The cached or stored key of `subject`; `None` if it has none (never
    /// had one, or it was erased).
    async fn load_key(
        &self,
        pool: &SqlitePool,
        subject: &str,
    ) -> Result<Option<Arc<LessSafeKey>>, AuditError> {
        if let Some(key) = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
        {
            return Ok(Some(key.clone()));
        }
        let row = sqlx::query("SELECT wrapped FROM audit_pii_keys WHERE subject = ?")
            .bind(subject)
            .fetch_optional(pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let wrapped: Vec<u8> = row.try_get("wrapped")?;
        let mut bytes = self.unwrap(subject, wrapped)?;
        let key = Arc::new(subject_key(&bytes)?);
        bytes.fill(0);
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject.to_owned(), key.clone());
        Ok(Some(key))
    }

    fn wrap(&self, subject: &str, key: &[u8]) -> Result<Vec<u8>, AuditError> {
        seal(&self.master, subject.as_bytes(), key)
    }

    fn unwrap(&self, subject: &str, wrapped: Vec<u8>) -> Result<Vec<u8>, AuditError> {
        open(&self.master, subject.as_bytes(), wrapped).ok_or_else(|| {
            AuditError::Unavailable(format!("the audit key of {subject} does not unwrap"))
        })
    }

    /// Encrypts the personal fields of `row` as `plan` says, each under
    /// the key of the person it belongs to; `keys` holds every subject of
    /// the plan.
    pub(crate) fn seal_row(
        &self,
        row: &mut Row,
        plan: &Plan,
        keys: &HashMap<String, Arc<LessSafeKey>>,
    ) -> Result<(), AuditError> {
        let seal_text = |subject: &str, field: &str, text: &mut String| {
            let key = keys
                .get(subject)
                .ok_or_else(|| AuditError::Unavailable(format!("no audit key for {subject}")))?;
            let aad = format!("{subject}|{field}");
            let sealed = seal(key, aad.as_bytes(), text.as_bytes())?;
            *text = format!("{SEALED}{subject}:{}", B64.encode(sealed));
            Ok::<(), AuditError>(())
        };
        if let Some(actor) = &plan.actor {
            if let Some(ip) = row.client_ip.as_mut() {
                seal_text(actor, "client_ip", ip)?;
            }
            if let Some(agent) = row.user_agent.as_mut().filter(|a| !a.is_empty()) {
                seal_text(actor, "user_agent", agent)?;
            }
        }
        if plan.fields.is_empty() {
            return Ok(());
        }
        let mut meta: serde_json::Map<String, Value> =
            serde_json::from_str(&row.metadata).unwrap_or_default();
        for (name, subjects) in &plan.fields {
            if let Some(Value::String(text)) = meta.get_mut(name) {
                let field = format!("metadata.{name}");
                for subject in subjects {
                    seal_text(subject, &field, text)?;
                }
            }
        }
        row.metadata = Value::Object(meta).to_string();
        Ok(())
    }

    /// Decrypts the personal fields of `rows` in place, every layer of
    /// them. A field whose key is gone reads [`ERASED`]; with `only`, a
    /// field sealed for anyone else reads [`WITHHELD`] (an export shows
    /// its subject their own data, not other people's).
    pub(crate) async fn open_rows(
        &self,
        pool: &SqlitePool,
        rows: &mut [Row],
        only: Option<&[String]>,
    ) -> Result<(), AuditError> {
        let mut keys: HashMap<String, Option<Arc<LessSafeKey>>> = HashMap::new();
        // One layer per round: a value sealed for several people is
        // opened from the outside in.
        for _ in 0..=MAX_LAYERS {
            let mut wanted = Vec::new();
            for row in rows.iter_mut() {
                for_each_field(row, |_, text| {
                    if let Some((subject, _)) = split_sealed(text) {
                        wanted.push(subject.to_owned());
                    }
                });
            }
            if wanted.is_empty() {
                break;
            }
            for subject in wanted {
                let allowed = only.is_none_or(|o| o.contains(&subject));
                if allowed && !keys.contains_key(&subject) {
                    let key = self.load_key(pool, &subject).await?;
                    keys.insert(subject, key);
                }
            }
            for row in rows.iter_mut() {
                for_each_field(row, |field, text| {
                    if let Some(plain) = open_sealed(&keys, only, field, text) {
                        *text = plain;
                    }
                });
            }
        }
        Ok(())
    }
}

/// Calls `f` with the name and text of every field of `row` that may be
/// sealed; the metadata is parsed and written back only if it holds a
/// sealed value.
fn for_each_field(row: &mut Row, mut f: impl FnMut(&str, &mut String)) {
    if let Some(ip) = row.client_ip.as_mut() {
        f("client_ip", ip);
    }
    if let Some(agent) = row.user_agent.as_mut() {
        f("user_agent", agent);
    }
    if !row.metadata.contains(SEALED) {
        return;
    }
    let Ok(Value::Object(mut meta)) = serde_json::from_str::<Value>(&row.metadata) else {
        return;
    };
    for (name, value) in meta.iter_mut() {
        if let Value::String(text) = value {
            f(&format!("metadata.{name}"), text);
        }
    }
    row.metadata = Value::Object(meta).to_string();
}

/// `pii:v1:SUBJECT:DATA` → (SUBJECT, DATA). Subjects contain one colon.
fn split_sealed(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(SEALED)?;
    let (kind, rest) = rest.split_once(':')?;
    let (id, data) = rest.split_once(':')?;
    let subject = &text[SEALED.len()..SEALED.len() + kind.len() + 1 + id.len()];
    Some((subject, data))
}

/// One layer of a sealed `text` opened: the plaintext (which may be
/// sealed again), [`WITHHELD`] when its subject is not in `only`, or
/// [`ERASED`] when its key is gone or the ciphertext does not open;
/// `None` for text that is not sealed.
fn open_sealed(
    keys: &HashMap<String, Option<Arc<LessSafeKey>>>,
    only: Option<&[String]>,
    field: &str,
    text: &str,
) -> Option<String> {
    let (subject, data) = split_sealed(text)?;
    if only.is_some_and(|o| !o.iter().any(|s| s == subject)) {
        return Some(WITHHELD.to_owned());
    }
    let Some(Some(key)) = keys.get(subject) else {
        return Some(ERASED.to_owned());
    };
    let aad = format!("{subject}|{field}");
    let plain = B64
        .decode(data)
        .ok()
        .and_then(|sealed| open(key, aad.as_bytes(), sealed))
        .and_then(|plain| String::from_utf8(plain).ok());
    Some(plain.unwrap_or_else(|| ERASED.to_owned()))
}

fn subject_key(bytes: &[u8]) -> Result<LessSafeKey, AuditError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| AuditError::Unavailable("cannot make an AES-256 key".into()))
}

/// nonce ‖ ciphertext ‖ tag, with a random nonce.
fn seal(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, AuditError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| AuditError::Unavailable("cannot read random bytes".into()))?;
    let mut out = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut out,
    )
    .map_err(|_| AuditError::Unavailable("encryption failed".into()))?;
    let mut sealed = nonce.to_vec();
    sealed.append(&mut out);
    Ok(sealed)
}

fn open(key: &LessSafeKey, aad: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let mut body = sealed.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&sealed).ok()?;
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .ok()?
        .len();
    body.truncate(len);
    Some(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::from_bytes(&[7; 32]).unwrap()
    }

    #[test]
    fn emails_are_masked_to_first_letter_and_domain() {
        assert_eq!(mask_email("alice@example.com"), "a***@example.com");
        assert_eq!(mask_email("not-an-address"), "not-an-address");
        assert_eq!(mask_email("@example.com"), "@example.com");
    }

    #[test]
    fn masked_logs_cut_addresses_and_drop_user_agents() {
        assert_eq!(
            mask_log_value("client_ip", "203.0.113.9"),
            Some(Some("203.0.113.0".into()))
        );
        assert_eq!(
            mask_log_value("client_ip", "Some(2001:db8:1:2::9)"),
            Some(Some("2001:db8:1::".into()))
        );
        assert_eq!(mask_log_value("user_agent", "\"curl/8\""), Some(None));
        assert_eq!(
            mask_log_value("subject", "\"bob@example.com\""),
            Some(Some("b***@example.com".into()))
        );
        assert_eq!(mask_log_value("site", "shop.example.com"), None);
    }

    #[test]
    fn the_email_subject_ignores_case_and_hides_the_address() {
        let v = vault();
        let a = v.email_subject("Alice@Example.com");
        assert_eq!(a, v.email_subject("alice@example.com"));
        assert!(!a.contains("alice"));
        assert_ne!(a, v.email_subject("bob@example.com"));
    }

    #[test]
    fn sealed_values_open_only_under_their_key_and_field() {
        let key = subject_key(&[1; 32]).unwrap();
        let sealed = seal(&key, b"user:1|client_ip", b"10.0.0.0").unwrap();
        assert_eq!(
            open(&key, b"user:1|client_ip", sealed.clone()).unwrap(),
            b"10.0.0.0"
        );
        assert!(open(&key, b"user:1|user_agent", sealed.clone()).is_none());
        let other = subject_key(&[2; 32]).unwrap();
        assert!(open(&other, b"user:1|client_ip", sealed).is_none());
    }

    #[test]
    fn a_sealed_value_names_its_subject() {
        let text = "pii:v1:email:ab12:AAAA";
        assert_eq!(split_sealed(text), Some(("email:ab12", "AAAA")));
        assert_eq!(split_sealed("10.0.0.0"), None);
    }
}
