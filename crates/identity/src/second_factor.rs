//! The TOTP second factor of a user: enrolment (a pending secret until the
//! first code confirms it), recovery codes, the check at login, and
//! removal. Codes work once: the last accepted time step is stored.

use crate::totp::{RecoveryCodeHash, RecoveryCodes, TotpError, TotpSecret};
use crate::{audit_auth, ClientInfo, Identity, IdentityError};
use secrecy::ExposeSecret;
use std::time::SystemTime;
use store::User;

/// A started enrolment: the secret to put into an authenticator app.
pub struct TotpEnrolment {
    pub secret_base32: String,
    pub otpauth_url: String,
}

impl From<TotpError> for IdentityError {
    fn from(e: TotpError) -> IdentityError {
        match e {
            TotpError::Malformed { field, rule } => IdentityError::Invalid {
                field,
                rule: rule.to_owned(),
            },
            TotpError::BadStoredValue { .. } | TotpError::BadAccount { .. } => {
                IdentityError::Internal(e.to_string())
            }
            _ => IdentityError::SecondFactorFailed,
        }
    }
}

impl Identity {
    /// Starts (or restarts) enrolment: a new secret waits for its first
    /// code. An enrolled second factor stays in force until confirmed.
    pub async fn totp_begin(&self, user: &User) -> Result<TotpEnrolment, IdentityError> {
        let secret = TotpSecret::generate();
        let url = secret.enrolment_url(&user.email)?;
        let base32 = secret.to_base32().expose_secret().to_owned();
        self.store()
            .set_totp_pending(user.id, Some(base32.clone()))
            .await?;
        Ok(TotpEnrolment {
            secret_base32: base32,
            otpauth_url: url.expose_secret().to_owned(),
        })
    }

    /// Confirms enrolment with a first code; returns the recovery codes,
    /// shown once.
    pub async fn totp_confirm(
        &self,
        user: &User,
        code: &str,
    ) -> Result<Vec<String>, IdentityError> {
        let pending = self
            .store()
            .totp_pending(user.id)
            .await?
            .ok_or(IdentityError::Invalid {
                field: "code",
                rule: "no enrolment is pending; start one first".into(),
            })?;
        let secret = TotpSecret::from_base32(&pending)?;
        let step = secret.verify(code, SystemTime::now(), None)?;
        let (codes, plain) = RecoveryCodes::generate();
        let hashes = codes.to_stored().into_iter().flatten().collect();
        self.store()
            .set_totp(user.id, Some((pending, hashes)))
            .await?;
        self.store().advance_totp_step(user.id, step as i64).await?;
        tracing::info!(target: "spinforge::audit", event = "auth.totp_enrolled", user = %user.id,
            "second factor enrolled");
        Ok(plain.iter().map(|c| c.expose_secret().to_owned()).collect())
    }

    /// Removes a user's second factor (its owner with a current code, or
    /// an admin).
    pub async fn totp_remove(&self, user: &User) -> Result<(), IdentityError> {
        self.store().set_totp(user.id, None).await?;
        tracing::info!(target: "spinforge::audit", event = "auth.totp_removed", user = %user.id,
            "second factor removed");
        Ok(())
    }

    /// Checks a TOTP code (or, failing that, a recovery code) for a user
    /// whose password was right. Each code works once.
    pub async fn check_second_factor(
        &self,
        user: &User,
        factor: Option<&SecondFactor>,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        let Some(stored) = &user.totp_secret else {
            return Ok(());
        };
        let Some(factor) = factor else {
            return Err(IdentityError::SecondFactorRequired);
        };
        let accepted = match factor {
            SecondFactor::Totp(code) => {
                let secret = TotpSecret::from_base32(stored)?;
                match secret.verify(code, SystemTime::now(), None) {
                    // The store decides replays, atomically.
                    Ok(step) => self.store().advance_totp_step(user.id, step as i64).await?,
                    Err(TotpError::Malformed { field, rule }) => {
                        return Err(IdentityError::Invalid {
                            field,
                            rule: rule.to_owned(),
                        })
                    }
                    Err(_) => false,
                }
            }
            SecondFactor::RecoveryCode(code) => match RecoveryCodeHash::of_input(code) {
                Ok(hash) => {
                    self.store()
                        .take_recovery_code(user.id, &hash.to_hex())
                        .await?
                }
                Err(_) => false,
            },
        };
        if !accepted {
            audit_auth("auth.failed", &user.email, client, "second factor refused");
            return Err(IdentityError::SecondFactorFailed);
        }
        Ok(())
    }
}

/// What a user offers as the second factor at login.
pub enum SecondFactor {
    Totp(String),
    RecoveryCode(String),
}
