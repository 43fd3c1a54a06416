//! Access tokens: EdDSA-signed JWTs (RFC 9068 shape) and the key ring
//! that signs and verifies them.
//!
//! The algorithm is fixed by the key (Ed25519), never read from a token.
//! Every claim that matters is required and checked: `iss`, `aud`, `exp`,
//! `nbf`, `iat`, the `typ` header and a `kid` the ring knows. This module
//! does not look at the store; the caller checks that the session is alive.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use store::UserId;
use zeroize::Zeroizing;

/// The `typ` header of an access token (RFC 9068).
pub const ACCESS_TYP: &str = "at+jwt";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 4096;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id, as a decimal string.
    pub sub: String,
    /// The session the token belongs to.
    pub sid: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
}

/// Why a token was refused. Kept apart for tests and logs; every variant
/// reaches the client as the same "invalid or expired token".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRejected {
    #[error("malformed token")]
    Malformed,
    #[error("wrong typ header")]
    WrongType,
    #[error("no kid, or a kid no key answers to")]
    UnknownKey,
    #[error("signature or claims invalid: {0}")]
    Invalid(String),
    #[error("issued in the future")]
    IssuedInFuture,
}

/// One key of the ring, as the caller opened it from the store: the
/// public half always, the private half (PKCS#8) only where it signs.
#[derive(Clone)]
pub struct RingKey {
    pub kid: String,
    /// The raw 32-byte public key.
    pub public_key: Vec<u8>,
    pub active: bool,
    /// When the key stops verifying; `None` while active.
    pub retired_at: Option<i64>,
    /// The PKCS#8 document; the ring signs only with an active key that
    /// has it.
    pub private_key: Option<Zeroizing<Vec<u8>>>,
}

/// The signing keys that are valid now: the active one signs, all verify.
pub struct KeyRing {
    active: Option<(String, EncodingKey)>,
    /// Each key with the time it stops verifying (`None` while active).
    verify: HashMap<String, (DecodingKey, Option<i64>)>,
    /// The JWKS document (RFC 7517) of every verifying key.
    jwks: serde_json::Value,
    validation: Validation,
}

impl KeyRing {
    /// Builds the ring from stored keys (the active one first).
    pub fn new(keys: &[RingKey], issuer: &str, audience: &str) -> KeyRing {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut verify = HashMap::new();
        let mut jwks = Vec::new();
        let mut active = None;
        for key in keys {
            let retires = if key.active { None } else { key.retired_at };
            verify.insert(
                key.kid.clone(),
                (DecodingKey::from_ed_der(&key.public_key), retires),
            );
            jwks.push(serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "use": "sig",
                "alg": "EdDSA",
                "kid": key.kid,
                "x": b64.encode(&key.public_key),
            }));
            if let (true, None, Some(private)) = (key.active, &active, &key.private_key) {
                active = Some((key.kid.clone(), EncodingKey::from_ed_der(private)));
            }
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.leeway = 0;
        KeyRing {
            active,
            verify,
            jwks: serde_json::json!({ "keys": jwks }),
            validation,
        }
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    pub fn has_active_key(&self) -> bool {
        self.active.is_some()
    }

    /// Signs an access token; `None` if the ring has no active key.
    pub fn sign(&self, claims: &AccessClaims) -> Option<String> {
        let (kid, key) = self.active.as_ref()?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TYP.to_owned());
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key).ok()
    }

    /// Verifies a token's header, signature and claims against the system
    /// clock (which is what `jsonwebtoken` checks `exp` and `nbf` with).
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenRejected> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenRejected::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejected::Malformed)?;
        if header.typ.as_deref() != Some(ACCESS_TYP) {
            return Err(TokenRejected::WrongType);
        }
        let now = crate::now();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verify.get(kid))
            .filter(|(_, retires)| retires.is_none_or(|at| at > now))
            .map(|(key, _)| key)
            .ok_or(TokenRejected::UnknownKey)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|e| TokenRejected::Invalid(e.to_string()))?;
        if data.claims.iat > now {
            return Err(TokenRejected::IssuedInFuture);
        }
        Ok(data.claims)
    }
}

/// A new active Ed25519 key for the ring, with a random `kid`.
pub fn generate_key() -> Result<RingKey, String> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let document = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|e| format!("key generation failed: {e}"))?;
    let pair = Ed25519KeyPair::from_pkcs8(document.as_ref())
        .map_err(|e| format!("generated key does not load: {e}"))?;
    Ok(RingKey {
        kid: format!("k{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        private_key: Some(Zeroizing::new(document.as_ref().to_vec())),
        public_key: pair.public_key().as_ref().to_vec(),
        active: true,
        retired_at: None,
    })
}

/// The claims of a new access token.
pub fn claims_for(
    user: UserId,
    session: &str,
    issuer: &str,
    audience: &str,
    now: i64,
    ttl: Duration,
) -> AccessClaims {
    AccessClaims {
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        sub: user.0.to_string(),
        sid: session.to_owned(),
        exp: now + ttl.as_secs() as i64,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().simple().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "spinforge";
    const AUD: &str = "spinforge-api";

    fn ring_with(key: &RingKey) -> KeyRing {
        KeyRing::new(std::slice::from_ref(key), ISS, AUD)
    }

    fn fixture() -> (RingKey, KeyRing) {
        let key = generate_key().expect("key");
        let ring = ring_with(&key);
        (key, ring)
    }

    /// Claims issued `age` seconds ago.
    fn claims(age: i64) -> AccessClaims {
        let issued = crate::now() - age;
        claims_for(UserId(3), "s1", ISS, AUD, issued, Duration::from_secs(900))
    }

    /// Signs arbitrary claims with the ring's key, to forge bad tokens.
    fn sign_raw(key: &RingKey, header: Header, claims: &serde_json::Value) -> String {
        let private = key.private_key.as_ref().expect("private key");
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(private)).expect("sign")
    }

    fn header(kid: &str) -> Header {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some(ACCESS_TYP.into());
        h.kid = Some(kid.into());
        h
    }

    #[test]
    fn a_fresh_token_verifies_and_carries_its_claims() {
        let (_, ring) = fixture();
        let token = ring.sign(&claims(1)).expect("sign");
        let got = ring.verify(&token).expect("verify");
        assert_eq!((got.sub.as_str(), got.sid.as_str()), ("3", "s1"));
        assert_eq!(ring.jwks()["keys"][0]["crv"], "Ed25519");
    }

    #[test]
    fn expiry_not_before_and_issued_at_are_enforced() {
        let (key, ring) = fixture();
        let expired = ring.sign(&claims(901)).expect("sign");
        assert!(ring.verify(&expired).is_err(), "expired");
        let mut early = claims(0);
        early.nbf += 600;
        let early = ring.sign(&early).expect("sign");
        assert!(ring.verify(&early).is_err(), "before nbf");

        let mut future_iat = serde_json::to_value(claims(1)).expect("json");
        future_iat["iat"] = (crate::now() + 600).into();
        let token = sign_raw(&key, header(&key.kid), &future_iat);
        assert_eq!(ring.verify(&token), Err(TokenRejected::IssuedInFuture));

        let mut string_nbf = serde_json::to_value(claims(1)).expect("json");
        string_nbf["nbf"] = (crate::now() - 1).to_string().into();
        let token = sign_raw(&key, header(&key.kid), &string_nbf);
        assert!(matches!(
            ring.verify(&token),
            Err(TokenRejected::Invalid(_))
        ));
    }

    #[test]
    fn wrong_audience_issuer_or_type_is_refused() {
        let (key, ring) = fixture();
        for (field, value) in [("aud", "other-api"), ("iss", "someone-else")] {
            let mut c = serde_json::to_value(claims(1)).expect("json");
            c[field] = value.into();
            let token = sign_raw(&key, header(&key.kid), &c);
            assert!(
                matches!(ring.verify(&token), Err(TokenRejected::Invalid(_))),
                "{field}"
            );
        }
        let mut plain_jwt = header(&key.kid);
        plain_jwt.typ = Some("JWT".into());
        let c = serde_json::to_value(claims(1)).expect("json");
        let token = sign_raw(&key, plain_jwt, &c);
        assert_eq!(ring.verify(&token), Err(TokenRejected::WrongType));
    }

    #[test]
    fn a_retired_or_unknown_key_verifies_nothing() {
        let (old, _) = fixture();
        let old_ring = ring_with(&old);
        let token = old_ring.sign(&claims(1)).expect("sign");
        let (_, new_ring) = fixture();
        assert_eq!(new_ring.verify(&token), Err(TokenRejected::UnknownKey));
        // Both keys in the ring: the old token still verifies.
        let mut new = generate_key().expect("key");
        let mut retiring = old.clone();
        retiring.active = false;
        new.active = true;
        let both = KeyRing::new(&[new, retiring], ISS, AUD);
        assert!(both.verify(&token).is_ok());
    }
}
