//! Keys the store keeps sealed: a certificate's private key, an ACME
//! account's credentials and a token signing key are stored only as the
//! secrets crate's envelope, which this crate carries but cannot open.

use crate::{Result, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// Key material sealed by `secrets::Secrets::seal_key`: the material
/// under its own data key, and that data key wrapped by a master key.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The master key that wraps `wrapped_key`.
    pub kek_id: String,
    /// `nonce ‖ ciphertext ‖ tag` of the data key (or the key service's
    /// wrapping of it).
    pub wrapped_key: Vec<u8>,
    /// `nonce ‖ ciphertext ‖ tag` of the key material.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed {{ kek_id: {}, {} bytes }}",
            self.kek_id,
            self.ciphertext.len()
        )
    }
}

/// The sealed columns (`kek_id`, `wrapped_key`, `ciphertext`) of a row.
/// A row still in its plain pre-0013 form is refused: `Secrets::open`
/// seals those before anything reads them.
pub(crate) fn sealed_from_row(row: &SqliteRow, what: &str) -> Result<Sealed> {
    let kek_id: Option<String> = row.try_get("kek_id")?;
    let wrapped_key: Option<Vec<u8>> = row.try_get("wrapped_key")?;
    let ciphertext: Option<Vec<u8>> = row.try_get("ciphertext")?;
    match (kek_id, wrapped_key, ciphertext) {
        (Some(kek_id), Some(wrapped_key), Some(ciphertext)) => Ok(Sealed {
            kek_id,
            wrapped_key,
            ciphertext,
        }),
        _ => Err(StoreError::Corrupt(format!(
            "{what} is not sealed yet (the secret store seals it at start)"
        ))),
    }
}
