//! [`IdentityStore`] on SQLite: customers, users, sessions, API keys,
//! signing keys and failed-login counters.

use crate::sqlite::{conflict_on_unique, insert_token, user_from_row};
use crate::*;
use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

fn customer_from_row(row: &SqliteRow) -> Result<Customer> {
    Ok(Customer {
        id: CustomerId(row.try_get("id")?),
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<Session> {
    Ok(Session {
        id: row.try_get("id")?,
        user_id: UserId(row.try_get("user_id")?),
        kind: SessionKind::parse(row.try_get::<&str, _>("kind")?),
        secret_hash: row.try_get("secret_hash")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        client_ip: row.try_get("client_ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

fn json_list(row: &SqliteRow, column: &str) -> Result<Option<Vec<String>>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn to_json(list: &[String]) -> Result<String> {
    serde_json::to_string(list).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        key_hash: row.try_get("key_hash")?,
        user_id: UserId(row.try_get("user_id")?),
        name: row.try_get("name")?,
        permissions: json_list(row, "permissions")?.unwrap_or_default(),
        sites: json_list(row, "sites")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn signing_key_from_row(row: &SqliteRow) -> Result<SigningKeyRecord> {
    let kid: String = row.try_get("kid")?;
    Ok(SigningKeyRecord {
        private_key: crate::sealed::sealed_from_row(row, &format!("token signing key {kid}"))?,
        kid,
        public_key: row.try_get("public_key")?,
        created_at: row.try_get("created_at")?,
        active: row.try_get("active")?,
        retired_at: row.try_get("retired_at")?,
    })
}

/// Columns of a session joined with its user, user columns prefixed so
/// the two `id`s and `created_at`s do not clash.
macro_rules! session_user_select {
    () => {
        concat!(
            "SELECT s.*, u.id AS u_id, u.email AS u_email, ",
            "u.password_hash AS u_password_hash, u.role AS u_role, ",
            "u.customer_id AS u_customer_id, u.display_name AS u_display_name, ",
            "u.disabled AS u_disabled, u.totp_secret AS u_totp_secret, ",
            "u.created_at AS u_created_at ",
            "FROM sessions s JOIN users u ON u.id = s.user_id "
        )
    };
}

fn session_user_from_row(row: &SqliteRow) -> Result<(Session, User)> {
    let user = User {
        id: UserId(row.try_get("u_id")?),
        email: row.try_get("u_email")?,
        password_hash: row.try_get("u_password_hash")?,
        role: Role::parse(row.try_get::<&str, _>("u_role")?),
        customer: row
            .try_get::<Option<i64>, _>("u_customer_id")?
            .map(CustomerId),
        display_name: row.try_get("u_display_name")?,
        disabled: row.try_get("u_disabled")?,
        totp_secret: row.try_get("u_totp_secret")?,
        created_at: row.try_get("u_created_at")?,
    };
    Ok((session_from_row(row)?, user))
}

async fn end_sessions_of(tx: &mut Transaction<'_, Sqlite>, user: UserId) -> Result<u64> {
    sqlx::query("DELETE FROM tokens WHERE user_id = ?")
        .bind(user.0)
        .execute(&mut **tx)
        .await?;
    let done = sqlx::query("DELETE FROM sessions WHERE user_id = ?")
        .bind(user.0)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn customer_by_name_or_create(&self, name: &str, now: i64) -> Result<Customer> {
        // INSERT OR IGNORE then SELECT: two racing first uses both end up
        // with the one row.
        sqlx::query("INSERT OR IGNORE INTO customers (name, created_at) VALUES (?, ?)")
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT * FROM customers WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        customer_from_row(&row)
    }

    async fn customer_by_id(&self, id: CustomerId) -> Result<Option<Customer>> {
        let row = sqlx::query("SELECT * FROM customers WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(customer_from_row).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(&self, id: UserId, change: UserChange) -> Result<User> {
        // IMMEDIATE: the read below must not be upgraded to a write later,
        // which SQLite refuses at once when another writer is active.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
        let mut user = user_from_row(&row.ok_or(StoreError::NotFound)?)?;
        let before = (user.role, user.customer, user.disabled);
        let password_changed = change.password_hash.is_some();
        if let Some(email) = change.email {
            user.email = email;
        }
        if let Some(hash) = change.password_hash {
            user.password_hash = hash;
        }
        if let Some(role) = change.role {
            user.role = role;
        }
        if let Some(customer) = change.customer {
            user.customer = customer;
        }
        if let Some(name) = change.display_name {
            user.display_name = name;
        }
        if let Some(disabled) = change.disabled {
            user.disabled = disabled;
        }
        sqlx::query(
            "UPDATE users SET email = ?, password_hash = ?, role = ?, customer_id = ?,
                              display_name = ?, disabled = ?
             WHERE id = ?",
        )
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.customer.map(|c| c.0))
        .bind(user.display_name.as_deref())
        .bind(user.disabled)
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "email"))?;
        // What a session was granted for no longer holds: end them all.
        if before != (user.role, user.customer, user.disabled) || password_changed {
            end_sessions_of(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    async fn delete_user(&self, id: UserId) -> Result<User> {
        let row = sqlx::query("DELETE FROM users WHERE id = ? RETURNING *")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        user_from_row(&row.ok_or(StoreError::NotFound)?)
    }

    async fn set_totp(&self, id: UserId, totp: Option<(String, Vec<String>)>) -> Result<()> {
        let (secret, codes) = match totp {
            Some((secret, codes)) => (Some(secret), Some(to_json(&codes)?)),
            None => (None, None),
        };
        let done = sqlx::query(
            "UPDATE users SET totp_secret = ?, recovery_codes = ?, totp_pending = NULL,
                              totp_last_step = NULL
             WHERE id = ?",
        )
        .bind(secret)
        .bind(codes)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_totp_pending(&self, id: UserId, secret: Option<String>) -> Result<()> {
        sqlx::query("UPDATE users SET totp_pending = ? WHERE id = ?")
            .bind(secret)
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn totp_pending(&self, id: UserId) -> Result<Option<String>> {
        let pending: Option<Option<String>> =
            sqlx::query_scalar("SELECT totp_pending FROM users WHERE id = ?")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(pending.flatten())
    }

    async fn advance_totp_step(&self, id: UserId, step: i64) -> Result<bool> {
        // One conditional UPDATE: two logins racing with the same code
        // cannot both see the step as new.
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = ?
             WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)",
        )
        .bind(step)
        .bind(id.0)
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn take_recovery_code(&self, id: UserId, code_hash: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT recovery_codes FROM users WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(false) };
        let mut codes = json_list(&row, "recovery_codes")?.unwrap_or_default();
        let before = codes.len();
        codes.retain(|c| c != code_hash);
        if codes.len() == before {
            return Ok(false);
        }
        sqlx::query("UPDATE users SET recovery_codes = ? WHERE id = ?")
            .bind(to_json(&codes)?)
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_session(&self, session: Session, refresh: Option<TokenRecord>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, kind, secret_hash, created_at, last_seen_at,
                                   expires_at, client_ip, user_agent)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&session.id)
        .bind(session.user_id.0)
        .bind(session.kind.as_str())
        .bind(session.secret_hash.as_deref())
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.expires_at)
        .bind(session.client_ip.as_deref())
        .bind(session.user_agent.as_deref())
        .execute(&mut *tx)
        .await?;
        if let Some(token) = refresh {
            insert_token(&mut *tx, &token).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id: &str, user: UserId, now: i64) -> Result<Option<(Session, User)>> {
        let sql = concat!(
            session_user_select!(),
            "WHERE s.id = ? AND s.user_id = ? AND s.expires_at > ?"
        );
        let row = sqlx::query(sql)
            .bind(id)
            .bind(user.0)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_user_from_row).transpose()
    }

    async fn browser_session(
        &self,
        secret_hash: &str,
        now: i64,
    ) -> Result<Option<(Session, User)>> {
        let sql = concat!(
            session_user_select!(),
            "WHERE s.secret_hash = ? AND s.kind = 'browser' AND s.expires_at > ?"
        );
        let row = sqlx::query(sql)
            .bind(secret_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_user_from_row).transpose()
    }

    async fn touch_session(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_sessions(&self, user: UserId, now: i64) -> Result<Vec<Session>> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE user_id = ? AND expires_at > ?
             ORDER BY created_at DESC",
        )
        .bind(user.0)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn revoke_session(&self, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM tokens WHERE family = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_user_sessions(&self, user: UserId) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let count = end_sessions_of(&mut tx, user).await?;
        tx.commit().await?;
        Ok(count)
    }

    async fn insert_api_key(&self, key: ApiKeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, key_hash, user_id, name, permissions, sites, created_at,
                                   expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.key_hash)
        .bind(key.user_id.0)
        .bind(&key.name)
        .bind(to_json(&key.permissions)?)
        .bind(key.sites.as_deref().map(to_json).transpose()?)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_on_unique(e, "api key"))?;
        Ok(())
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = ?")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn api_key_by_id(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self, user: Option<UserId>) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE (?1 IS NULL OR user_id = ?1)
             ORDER BY created_at DESC, id",
        )
        .bind(user.map(|u| u.0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_user_api_keys(&self, user: UserId, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn touch_api_key(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn signing_keys(&self, now: i64) -> Result<Vec<SigningKeyRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM signing_keys WHERE active = 1 OR retired_at > ?
             ORDER BY active DESC, created_at DESC",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(signing_key_from_row).collect()
    }

    async fn rotate_signing_key(&self, key: SigningKeyRecord, retire_at: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET active = 0, retired_at = ? WHERE active = 1")
            .bind(retire_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys
             (kid, kek_id, wrapped_key, ciphertext, public_key, created_at, active)
             VALUES (?, ?, ?, ?, ?, ?, 1)",
        )
        .bind(&key.kid)
        .bind(&key.private_key.kek_id)
        .bind(&key.private_key.wrapped_key)
        .bind(&key.private_key.ciphertext)
        .bind(&key.public_key)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        // Keys past their retirement verify nothing any more.
        sqlx::query("DELETE FROM signing_keys WHERE active = 0 AND retired_at <= ?")
            .bind(key.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_login_failure(
        &self,
        subject: &str,
        now: i64,
        window: i64,
        max: i64,
        lock: i64,
    ) -> Result<LoginFailures> {
        // One statement: concurrent failures cannot lose a count.
        let row = sqlx::query(
            "INSERT INTO login_failures (subject, failures, window_start, locked_until)
             VALUES (?1, 1, ?2, CASE WHEN ?4 <= 1 THEN ?2 + ?5 END)
             ON CONFLICT (subject) DO UPDATE SET
               failures = CASE WHEN window_start <= ?2 - ?3 THEN 1 ELSE failures + 1 END,
               window_start = CASE WHEN window_start <= ?2 - ?3 THEN ?2 ELSE window_start END,
               locked_until = CASE
                 WHEN (CASE WHEN window_start <= ?2 - ?3 THEN 1 ELSE failures + 1 END) >= ?4
                   THEN ?2 + ?5
                 ELSE locked_until END
             RETURNING failures, locked_until",
        )
        .bind(subject)
        .bind(now)
        .bind(window)
        .bind(max)
        .bind(lock)
        .fetch_one(&self.pool)
        .await?;
        let locked_until: Option<i64> = row.try_get("locked_until")?;
        Ok(LoginFailures {
            failures: row.try_get("failures")?,
            locked_until: locked_until.filter(|until| *until > now),
        })
    }

    async fn login_failures(&self, subject: &str, now: i64, window: i64) -> Result<LoginFailures> {
        let row = sqlx::query(
            "SELECT failures, window_start, locked_until FROM login_failures WHERE subject = ?",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(LoginFailures {
                failures: 0,
                locked_until: None,
            });
        };
        let window_start: i64 = row.try_get("window_start")?;
        let locked_until: Option<i64> = row.try_get("locked_until")?;
        let failures = if window_start <= now - window {
            0
        } else {
            row.try_get("failures")?
        };
        Ok(LoginFailures {
            failures,
            locked_until: locked_until.filter(|until| *until > now),
        })
    }

    async fn clear_login_failures(&self, subject: &str, now: i64) -> Result<()> {
        sqlx::query(
            "DELETE FROM login_failures
             WHERE subject = ? AND (locked_until IS NULL OR locked_until <= ?)",
        )
        .bind(subject)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forgive_login_attempt(&self, subject: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE login_failures SET failures = failures - 1
             WHERE subject = ? AND failures > 0
               AND (locked_until IS NULL OR locked_until <= ?)",
        )
        .bind(subject)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unlock_login(&self, subject: &str) -> Result<()> {
        // The subject's own count and its per-network counts (`subject` +
        // U+001F + network, see identity's lockout module).
        sqlx::query(
            "DELETE FROM login_failures WHERE subject = ?1
               OR substr(subject, 1, length(?1) + 1) = ?1 || char(31)",
        )
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fixture() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn the_fifth_failure_in_the_window_locks_and_an_old_window_starts_over() {
        let (_d, store) = fixture().await;
        for n in 1..=4 {
            let f = store
                .record_login_failure("a@x.io", 1000 + n, 300, 5, 900)
                .await
                .expect("record");
            assert_eq!(f.failures, n);
            assert_eq!(f.locked_until, None);
        }
        let fifth = store
            .record_login_failure("a@x.io", 1010, 300, 5, 900)
            .await
            .expect("record");
        assert_eq!(fifth.failures, 5);
        assert_eq!(fifth.locked_until, Some(1910));
        // The lock holds after the window and ends at its time.
        let later = store
            .login_failures("a@x.io", 1909, 300)
            .await
            .expect("read");
        assert_eq!(later.locked_until, Some(1910));
        let after = store
            .login_failures("a@x.io", 1910, 300)
            .await
            .expect("read");
        assert_eq!(after.locked_until, None);
        // A failure after the window counts from one again.
        let fresh = store
            .record_login_failure("a@x.io", 2000, 300, 5, 900)
            .await
            .expect("record");
        assert_eq!(fresh.failures, 1);
        assert_eq!(fresh.locked_until, None);
    }

    #[tokio::test]
    async fn a_customer_is_created_once_by_name() {
        let (_d, store) = fixture().await;
        let a = store
            .customer_by_name_or_create("Acme", 1)
            .await
            .expect("create");
        let b = store
            .customer_by_name_or_create("acme", 2)
            .await
            .expect("again");
        assert_eq!(a.id, b.id);
        assert_eq!(b.name, "Acme");
    }
}
