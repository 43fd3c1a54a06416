//! API keys for CI and automation: `sf_` plus 256 random bits, shown once,
//! stored as a SHA-256 hash, scoped to a subset of the owner's permissions
//! and optionally to some sites, with an expiry and a last-used time.

use crate::{
    now, principal_of, random_token, token_hash, AuthMethod, Identity, IdentityError, Permission,
    PermissionSet, Principal,
};
use std::time::Duration;
use store::{ApiKeyRecord, UserId};

/// Every API key starts with this, so scanners and humans recognise one.
pub const API_KEY_PREFIX: &str = "sf_";

/// What a caller asks for when creating a key.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    /// Permission names; must be a subset of the creator's.
    pub permissions: Vec<String>,
    /// Site domains; `None` for every site the owner may use. The caller
    /// has checked that the creator may use each of them.
    pub sites: Option<Vec<String>>,
    pub ttl: Duration,
}

/// A created key: the secret, shown once, and what is stored.
pub struct ApiKeyGrant {
    pub key: String,
    pub record: ApiKeyRecord,
}

impl Identity {
    /// Creates an API key for `creator`. A key can never hold more than its
    /// creator: permissions outside the creator's set, or sites outside an
    /// API key's own site list, are refused.
    pub async fn create_api_key(
        &self,
        creator: &Principal,
        request: NewApiKey,
    ) -> Result<ApiKeyGrant, IdentityError> {
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(IdentityError::Invalid {
                field: "name",
                rule: "must be 1 to 64 characters without control characters".into(),
            });
        }
        if creator.method == AuthMethod::ApiKey {
            // A leaked key must not be able to outlive its own revocation.
            return Err(IdentityError::Escalation(
                "API keys cannot create API keys; log in to create one".into(),
            ));
        }
        if request.permissions.is_empty() {
            return Err(IdentityError::Invalid {
                field: "permissions",
                rule: "must name at least one permission".into(),
            });
        }
        let mut wanted = PermissionSet::EMPTY;
        for name in &request.permissions {
            let permission = Permission::from_name(name).ok_or_else(|| IdentityError::Invalid {
                field: "permissions",
                rule: format!("unknown permission {name:?}"),
            })?;
            if request.sites.is_some() && !permission.is_site_scoped() {
                return Err(IdentityError::Invalid {
                    field: "permissions",
                    rule: format!(
                        "{name} is platform-wide and cannot go on a key limited to sites"
                    ),
                });
            }
            wanted = wanted.with(permission);
        }
        if !creator.permissions.covers(wanted) {
            let missing: Vec<_> = wanted
                .iter()
                .filter(|p| !creator.permissions.contains(*p))
                .map(Permission::name)
                .collect();
            return Err(IdentityError::Escalation(format!(
                "permissions: a key cannot hold what its creator lacks ({})",
                missing.join(", ")
            )));
        }
        if let (Some(limit), requested) = (&creator.sites, &request.sites) {
            let within = requested
                .as_ref()
                .is_some_and(|sites| sites.iter().all(|s| limit.contains(s)));
            if !within {
                return Err(IdentityError::Escalation(
                    "sites: a key cannot reach sites outside its creator's key".into(),
                ));
            }
        }
        if request.ttl.is_zero() || request.ttl > self.inner.config.api_key_max_ttl {
            return Err(IdentityError::Invalid {
                field: "expires_in_days",
                rule: format!(
                    "must be between 1 and {} days",
                    self.inner.config.api_key_max_ttl.as_secs() / 86_400
                ),
            });
        }

        let key = format!("{API_KEY_PREFIX}{}", random_token());
        let at = now();
        let record = ApiKeyRecord {
            id: format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            key_hash: token_hash(&key),
            user_id: creator.user_id,
            name: name.to_owned(),
            permissions: wanted.names().into_iter().map(str::to_owned).collect(),
            sites: request.sites,
            created_at: at,
            expires_at: at + request.ttl.as_secs() as i64,
            last_used_at: None,
            revoked_at: None,
        };
        self.store().insert_api_key(record.clone()).await?;
        tracing::info!(
            target: "spinforge::audit", event = "apikey.created", user = %creator.user_id,
            key = %record.id, permissions = ?record.permissions, "API key created"
        );
        Ok(ApiKeyGrant { key, record })
    }

    /// Keys of one user, or of everyone with `None`.
    pub async fn api_keys(&self, user: Option<UserId>) -> Result<Vec<ApiKeyRecord>, IdentityError> {
        Ok(self.store().list_api_keys(user).await?)
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, IdentityError> {
        Ok(self.store().api_key_by_id(id).await?)
    }

    /// Revokes a key by id; the caller has checked ownership.
    pub async fn revoke_api_key(&self, id: &str) -> Result<(), IdentityError> {
        if !self.store().revoke_api_key(id, now()).await? {
            return Err(IdentityError::NotFound("api key"));
        }
        Ok(())
    }

    /// Revokes every key of a user (containment).
    pub async fn revoke_all_api_keys(&self, user: UserId) -> Result<u64, IdentityError> {
        Ok(self.store().revoke_user_api_keys(user, now()).await?)
    }

    pub(crate) async fn authenticate_api_key(&self, key: &str) -> Result<Principal, IdentityError> {
        if key.len() > 128 {
            return Err(IdentityError::BadToken);
        }
        // Looked up by hash: comparing never touches the secret itself.
        let record = self
            .store()
            .api_key_by_hash(&token_hash(key))
            .await?
            .ok_or(IdentityError::BadToken)?;
        let at = now();
        if record.revoked_at.is_some() || record.expires_at <= at {
            return Err(IdentityError::BadToken);
        }
        let user = self
            .store()
            .user_by_id(record.user_id)
            .await?
            .ok_or(IdentityError::BadToken)?;
        if user.disabled {
            return Err(IdentityError::BadToken);
        }
        let scope = PermissionSet::of(
            &record
                .permissions
                .iter()
                .filter_map(|p| Permission::from_name(p))
                .collect::<Vec<_>>(),
        );
        if record.last_used_at.is_none_or(|last| at - last >= 60) {
            self.store().touch_api_key(&record.id, at).await?;
        }
        let mut principal = principal_of(&user, None, AuthMethod::ApiKey);
        // The role as it is now bounds the key: a demoted owner's keys
        // shrink with it.
        principal.permissions = principal.permissions.intersect(scope);
        principal.api_key = Some(record.id);
        principal.sites = record.sites;
        Ok(principal)
    }
}
