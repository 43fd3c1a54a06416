//! The envelope: AES-256-GCM with a 96-bit random nonce, for both layers.
//! A value is sealed under its own data key; the data key is sealed
//! (wrapped) under a master key. Each sealed blob is `nonce ‖ ciphertext ‖
//! tag`, and the associated data names the row it belongs to, so a blob
//! copied to another row does not open.

use crate::SecretsError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;

/// 256 bits of key material, wiped from memory when dropped.
#[derive(Clone)]
pub struct KeyBytes(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes([redacted])")
    }
}

impl KeyBytes {
    /// A fresh key from the operating system's random source.
    pub fn random() -> Result<KeyBytes, SecretsError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&mut key[..])?;
        Ok(KeyBytes(key))
    }

    /// Takes exactly [`KEY_LEN`] bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<KeyBytes> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(KeyBytes(Zeroizing::new(array)))
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey, SecretsError> {
        let unbound = UnboundKey::new(&AES_256_GCM, &self.0[..])
            .map_err(|_| SecretsError::Crypto("AES-256-GCM key setup failed".into()))?;
        Ok(LessSafeKey::new(unbound))
    }
}

pub fn fill_random(out: &mut [u8]) -> Result<(), SecretsError> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| SecretsError::Crypto("the system random source failed".into()))
}

/// Encrypts `plaintext` under `key` with a fresh random nonce.
pub fn seal(key: &KeyBytes, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.aead()?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| SecretsError::Crypto("AES-256-GCM seal failed".into()))?;
    out.extend_from_slice(&body);
    body.iter_mut().for_each(|b| *b = 0);
    Ok(out)
}

/// Decrypts a blob made by [`seal`]. `None` if the key, the associated
/// data or any byte of the blob is not what sealed it: the caller names
/// the row in its error, never returning garbage.
pub fn open(key: &KeyBytes, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = Zeroizing::new(body.to_vec());
    let len = key
        .aead()
        .ok()?
        .open_in_place(nonce, Aad::from(aad), &mut buffer[..])
        .ok()?
        .len();
    buffer.truncate(len);
    Some(buffer)
}

/// Where a secret value sits: its site, name and version. Both the value
/// and its wrapped data key are bound to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowId {
    pub site_id: i64,
    pub name: String,
    pub version: i64,
}

impl RowId {
    /// Associated data of the value's ciphertext.
    pub fn value_aad(&self) -> Vec<u8> {
        format!(
            "spinforge-secret-value:v1\0{}\0{}\0{}",
            self.site_id, self.name, self.version
        )
        .into_bytes()
    }

    /// Associated data of the data key wrapped by master key `kek_id`.
    pub fn key_aad(&self, kek_id: &str) -> Vec<u8> {
        format!(
            "spinforge-secret-key:v1\0{kek_id}\0{}\0{}\0{}",
            self.site_id, self.name, self.version
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_aad() {
        let key = KeyBytes::random().expect("key");
        let sealed = seal(&key, b"row 1", b"hunter2").expect("seal");
        assert_eq!(
            &open(&key, b"row 1", &sealed).expect("open")[..],
            b"hunter2"
        );
        assert!(open(&key, b"row 2", &sealed).is_none());
        let other = KeyBytes::random().expect("key");
        assert!(open(&other, b"row 1", &sealed).is_none());
    }

    #[test]
    fn any_flipped_or_missing_byte_fails_to_open() {
        let key = KeyBytes::random().expect("key");
        let sealed = seal(&key, b"aad", b"some secret value").expect("seal");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open(&key, b"aad", &bad).is_none(), "flip at {i}");
        }
        assert!(open(&key, b"aad", &sealed[..sealed.len() - 1]).is_none());
        assert!(open(&key, b"aad", &sealed[..5]).is_none());
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let key = KeyBytes::random().expect("key");
        let a = seal(&key, b"", b"same").expect("seal");
        let b = seal(&key, b"", b"same").expect("seal");
        assert_ne!(a, b, "nonces must be fresh");
    }

    #[test]
    fn row_ids_give_distinct_aad() {
        let a = RowId {
            site_id: 1,
            name: "A".into(),
            version: 1,
        };
        let mut b = a.clone();
        b.version = 2;
        assert_ne!(a.value_aad(), b.value_aad());
        assert_ne!(a.key_aad("mk-1"), a.key_aad("mk-2"));
    }
}
