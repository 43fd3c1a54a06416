//! The cryptography of the log: the HMAC-SHA256 chain over rows and the
//! Ed25519 signatures over checkpoints. Pure functions over bytes; where
//! the keys live and how rows are stored is elsewhere.

use aws_lc_rs::{digest, hmac, signature};
use serde::Serialize;

/// Length of a MAC, in bytes.
pub const MAC_LEN: usize = 32;

/// The MAC that the first row chains over.
pub const GENESIS: [u8; MAC_LEN] = [0; MAC_LEN];

/// A stored row in the form the chain covers. Every column except `seq`
/// and `mac` goes into the MAC; a row's place in the chain is fixed by
/// `prev_mac`, so renumbering rows breaks the chain as surely as editing
/// them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub seq: i64,
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    pub kind: String,
    pub actor_user: Option<i64>,
    pub actor_role: Option<String>,
    pub actor_key: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub resource: Option<String>,
    pub action: Option<String>,
    pub result: String,
    pub request_id: Option<String>,
    pub session_id: Option<String>,
    pub customer: Option<String>,
    /// A JSON object, exactly as stored.
    pub metadata: String,
    #[serde(skip)]
    pub prev_mac: Vec<u8>,
    #[serde(skip)]
    pub mac: Vec<u8>,
}

/// The secret key of the MAC chain.
pub struct ChainKey(hmac::Key);

impl ChainKey {
    pub fn new(bytes: &[u8]) -> ChainKey {
        ChainKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The MAC of `row` chained over `prev`. Each column is written with a
    /// presence tag and a length prefix, so no two different rows encode
    /// to the same bytes.
    pub fn mac(&self, prev: &[u8], row: &Row) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"spinforge-audit-row/v1");
        put_bytes(&mut ctx, Some(prev));
        ctx.update(&row.time_us.to_be_bytes());
        put_str(&mut ctx, Some(&row.kind));
        put_int(&mut ctx, row.actor_user);
        put_str(&mut ctx, row.actor_role.as_deref());
        put_str(&mut ctx, row.actor_key.as_deref());
        put_str(&mut ctx, row.client_ip.as_deref());
        put_str(&mut ctx, row.user_agent.as_deref());
        put_str(&mut ctx, row.resource.as_deref());
        put_str(&mut ctx, row.action.as_deref());
        put_str(&mut ctx, Some(&row.result));
        put_str(&mut ctx, row.request_id.as_deref());
        put_str(&mut ctx, row.session_id.as_deref());
        put_str(&mut ctx, row.customer.as_deref());
        put_str(&mut ctx, Some(&row.metadata));
        let tag = ctx.sign();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

fn put_bytes(ctx: &mut hmac::Context, value: Option<&[u8]>) {
    match value {
        None => ctx.update(&[0]),
        Some(bytes) => {
            ctx.update(&[1]);
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        }
    }
}

fn put_str(ctx: &mut hmac::Context, value: Option<&str>) {
    put_bytes(ctx, value.map(str::as_bytes));
}

fn put_int(ctx: &mut hmac::Context, value: Option<i64>) {
    match value {
        None => ctx.update(&[0]),
        Some(n) => {
            ctx.update(&[1]);
            ctx.update(&n.to_be_bytes());
        }
    }
}

/// A signed statement that the row `seq` has MAC `mac`, made at `time_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub mac: Vec<u8>,
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The bytes the signature covers.
    pub fn message(seq: i64, mac: &[u8], time_us: i64) -> Vec<u8> {
        let mut out = b"spinforge-audit-checkpoint/v1".to_vec();
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(mac.len() as u64).to_be_bytes());
        out.extend_from_slice(mac);
        out.extend_from_slice(&time_us.to_be_bytes());
        out
    }

    /// True iff the signature is valid under `public_key`.
    pub fn verify(&self, public_key: &[u8]) -> bool {
        let message = Checkpoint::message(self.seq, &self.mac, self.time_us);
        signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&message, &self.signature)
            .is_ok()
    }
}

/// The checkpoint signing key.
pub struct SigningKey {
    pair: signature::Ed25519KeyPair,
}

impl SigningKey {
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, String> {
        signature::Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| SigningKey { pair })
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
    }

    /// A fresh key pair as PKCS#8 bytes.
    pub fn generate_pkcs8() -> Result<Vec<u8>, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| "cannot generate an Ed25519 key".to_owned())
    }

    pub fn public_key(&self) -> Vec<u8> {
        use signature::KeyPair;
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn key_id(&self) -> String {
        key_id(&self.public_key())
    }

    pub fn sign(&self, seq: i64, mac: &[u8], time_us: i64) -> Checkpoint {
        let message = Checkpoint::message(seq, mac, time_us);
        Checkpoint {
            seq,
            mac: mac.to_vec(),
            time_us,
            key_id: self.key_id(),
            signature: self.pair.sign(&message).as_ref().to_vec(),
        }
    }
}

/// Hex of the first 8 bytes of SHA-256 over a public key.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = digest::digest(&digest::SHA256, public_key);
    hex::encode(&digest.as_ref()[..8])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(kind: &str) -> Row {
        Row {
            seq: 1,
            time_us: 1_700_000_000_000_000,
            kind: kind.into(),
            actor_user: Some(3),
            actor_role: None,
            actor_key: None,
            client_ip: Some("127.0.0.0".into()),
            user_agent: None,
            resource: None,
            action: None,
            result: "success".into(),
            request_id: None,
            session_id: None,
            customer: None,
            metadata: "{}".into(),
            prev_mac: GENESIS.to_vec(),
            mac: Vec::new(),
        }
    }

    #[test]
    fn any_column_change_changes_the_mac() {
        let key = ChainKey::new(b"k");
        let base = key.mac(&GENESIS, &row("auth.failed"));
        assert_ne!(base, key.mac(&GENESIS, &row("auth.login")));
        let mut moved = row("auth.failed");
        moved.actor_user = None;
        moved.actor_role = Some("3".into());
        assert_ne!(base, key.mac(&GENESIS, &moved));
        assert_ne!(base, key.mac(&[1; 32], &row("auth.failed")));
        assert_ne!(
            base,
            ChainKey::new(b"other").mac(&GENESIS, &row("auth.failed"))
        );
    }

    #[test]
    fn the_row_number_is_not_in_the_mac() {
        let key = ChainKey::new(b"k");
        let mut other = row("auth.failed");
        other.seq = 9;
        assert_eq!(
            key.mac(&GENESIS, &row("auth.failed")),
            key.mac(&GENESIS, &other)
        );
    }

    #[test]
    fn checkpoints_verify_only_under_their_own_key() {
        let a = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let b = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let checkpoint = a.sign(7, &[5; 32], 42);
        assert!(checkpoint.verify(&a.public_key()));
        assert!(!checkpoint.verify(&b.public_key()));
        let mut forged = checkpoint.clone();
        forged.seq = 6;
        assert!(!forged.verify(&a.public_key()));
    }
}
