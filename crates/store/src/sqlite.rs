//! The embedded SQLite backend: one file in the data directory, WAL
//! journal, foreign keys on, every multi-row change in a transaction.

use crate::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::path::Path;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "spinforge.db";

pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and applies
    /// pending migrations.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL survives a killed process; only a power loss
            // can drop the last commits, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Privacy: deleted rows are overwritten, not left in free
            // space, so an erased address is gone from the file.
            .pragma("secure_delete", "on")
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn conflict_on_unique(err: sqlx::Error, field: &'static str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(field),
        _ => StoreError::Backend(err),
    }
}

pub(crate) fn user_from_row(row: &SqliteRow) -> Result<User> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(row.try_get::<&str, _>("role")?),
        customer: row
            .try_get::<Option<i64>, _>("customer_id")?
            .map(CustomerId),
        display_name: row.try_get("display_name")?,
        disabled: row.try_get("disabled")?,
        totp_secret: row.try_get("totp_secret")?,
        created_at: row.try_get("created_at")?,
    })
}

fn route_from_row(r: &SqliteRow) -> Result<RouteRecord> {
    Ok(RouteRecord {
        domain: r.try_get("domain")?,
        site_id: SiteId(r.try_get("site_id")?),
        kind: SiteKind::parse(r.try_get::<&str, _>("kind")?),
        release_id: r.try_get::<Option<String>, _>("release_id")?.map(ReleaseId),
        upstream: r.try_get("upstream")?,
        balancer: balancer_from(r)?,
        spa: r.try_get("spa")?,
    })
}

fn balancer_from(row: &SqliteRow) -> Result<Option<BalancerConfig>> {
    let text: Option<String> = row.try_get("balancer")?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn balancer_json(config: Option<&BalancerConfig>) -> Result<Option<String>> {
    config
        .map(|c| serde_json::to_string(c).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

pub(crate) fn site_from_row(row: &SqliteRow) -> Result<Site> {
    Ok(Site {
        id: SiteId(row.try_get("id")?),
        domain: row.try_get("domain")?,
        kind: SiteKind::parse(row.try_get::<&str, _>("kind")?),
        owner: row.try_get::<Option<i64>, _>("owner_id")?.map(UserId),
        customer: row
            .try_get::<Option<i64>, _>("customer_id")?
            .map(CustomerId),
        upstream: row.try_get("upstream")?,
        balancer: balancer_from(row)?,
        spa: row.try_get("spa")?,
        active_release: row
            .try_get::<Option<String>, _>("active_release")?
            .map(ReleaseId),
        created_at: row.try_get("created_at")?,
    })
}

fn release_from_row(row: &SqliteRow) -> Result<Release> {
    Ok(Release {
        id: ReleaseId(row.try_get("id")?),
        site_id: SiteId(row.try_get("site_id")?),
        sha256: row.try_get("sha256")?,
        size_bytes: row.try_get("size_bytes")?,
        file_count: row.try_get("file_count")?,
        created_by: row.try_get::<Option<i64>, _>("created_by")?.map(UserId),
        created_at: row.try_get("created_at")?,
    })
}

/// The columns [`site_from_row`] reads, as a literal so queries stay static.
macro_rules! site_columns {
    () => {
        concat!(
            "id, domain, kind, owner_id, customer_id, upstream, balancer, spa, ",
            "active_release, created_at"
        )
    };
}

async fn site_in_tx(tx: &mut Transaction<'_, Sqlite>, domain: &str) -> Result<Site> {
    let sql = concat!("SELECT ", site_columns!(), " FROM sites WHERE domain = ?");
    let row = sqlx::query(sql)
        .bind(domain)
        .fetch_optional(&mut **tx)
        .await?;
    site_from_row(&row.ok_or(StoreError::NotFound)?)
}

/// Writes the route row that matches the site's current state: a proxy
/// routes to its upstream, a static site to its active release, and a
/// static site with no release has no route.
async fn sync_route(tx: &mut Transaction<'_, Sqlite>, site: &Site) -> Result<()> {
    sqlx::query("DELETE FROM routes WHERE site_id = ?")
        .bind(site.id.0)
        .execute(&mut **tx)
        .await?;
    let routable = match site.kind {
        SiteKind::Proxy => site.upstream.is_some(),
        SiteKind::Balancer => site.balancer.is_some(),
        SiteKind::Static | SiteKind::Process => site.active_release.is_some(),
    };
    if routable {
        sqlx::query(
            "INSERT INTO routes (domain, site_id, kind, release_id, upstream, balancer, spa)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&site.domain)
        .bind(site.id.0)
        .bind(site.kind.as_str())
        .bind(site.active_release.as_ref().map(|r| r.0.as_str()))
        .bind(site.upstream.as_deref())
        .bind(balancer_json(site.balancer.as_ref())?)
        .bind(site.spa)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn count_users(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn create_user(&self, user: NewUser) -> Result<User> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, password_hash, role, customer_id, display_name,
                                created_at)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.customer.map(|c| c.0))
        .bind(user.display_name.as_deref())
        .bind(user.created_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_on_unique(e, "email"))?;
        Ok(User {
            id: UserId(id),
            email: user.email,
            password_hash: user.password_hash,
            role: user.role,
            customer: user.customer,
            display_name: user.display_name,
            disabled: false,
            totp_secret: None,
            created_at: user.created_at,
        })
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT * FROM users WHERE email = ?")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn insert_token(&self, token: TokenRecord) -> Result<()> {
        insert_token(&self.pool, &token).await
    }

    async fn find_token(
        &self,
        hash: &str,
        kind: TokenKind,
        now: i64,
    ) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT user_id, family, expires_at, used FROM tokens
             WHERE token_hash = ? AND kind = ? AND expires_at > ?",
        )
        .bind(hash)
        .bind(kind.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TokenRecord {
            hash: hash.to_owned(),
            user_id: UserId(row.try_get("user_id")?),
            kind,
            family: row.try_get("family")?,
            expires_at: row.try_get("expires_at")?,
            used: row.try_get("used")?,
        }))
    }

    async fn rotate_refresh(
        &self,
        old_refresh: &str,
        now: i64,
        refresh: TokenRecord,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "UPDATE tokens SET used = 1
             WHERE token_hash = ? AND kind = 'refresh' AND used = 0 AND expires_at > ?",
        )
        .bind(old_refresh)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() != 1 {
            return Err(StoreError::NotFound);
        }
        insert_token(&mut *tx, &refresh).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_family(&self, family: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM tokens WHERE family = ?")
            .bind(family)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(family)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_site(&self, site: NewSite) -> Result<Site> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sites (domain, kind, owner_id, customer_id, upstream, balancer, spa,
                                created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&site.domain)
        .bind(site.kind.as_str())
        .bind(site.owner.map(|o| o.0))
        .bind(site.customer.map(|c| c.0))
        .bind(site.upstream.as_deref())
        .bind(balancer_json(site.balancer.as_ref())?)
        .bind(site.spa)
        .bind(site.created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "domain"))?;
        let created = Site {
            id: SiteId(id),
            domain: site.domain,
            kind: site.kind,
            owner: site.owner,
            customer: site.customer,
            upstream: site.upstream,
            balancer: site.balancer,
            spa: site.spa,
            active_release: None,
            created_at: site.created_at,
        };
        sync_route(&mut tx, &created).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn site_by_domain(&self, domain: &str) -> Result<Option<Site>> {
        let sql = concat!("SELECT ", site_columns!(), " FROM sites WHERE domain = ?");
        let row = sqlx::query(sql)
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(site_from_row).transpose()
    }

    async fn list_sites(&self) -> Result<Vec<Site>> {
        let sql = concat!("SELECT ", site_columns!(), " FROM sites ORDER BY domain");
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(site_from_row).collect()
    }

    async fn update_site(&self, domain: &str, change: SiteChange) -> Result<Site> {
        let mut tx = self.pool.begin().await?;
        let mut site = site_in_tx(&mut tx, domain).await?;
        if let Some(upstream) = change.upstream {
            site.upstream = Some(upstream);
        }
        if let Some(balancer) = change.balancer {
            site.balancer = Some(balancer);
        }
        if let Some(spa) = change.spa {
            site.spa = spa;
        }
        sqlx::query("UPDATE sites SET upstream = ?, balancer = ?, spa = ? WHERE id = ?")
            .bind(site.upstream.as_deref())
            .bind(balancer_json(site.balancer.as_ref())?)
            .bind(site.spa)
            .bind(site.id.0)
            .execute(&mut *tx)
            .await?;
        sync_route(&mut tx, &site).await?;
        tx.commit().await?;
        Ok(site)
    }

    async fn delete_site(&self, domain: &str) -> Result<Site> {
        let mut tx = self.pool.begin().await?;
        let site = site_in_tx(&mut tx, domain).await?;
        // Foreign keys cascade to releases and routes.
        sqlx::query("DELETE FROM sites WHERE id = ?")
            .bind(site.id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(site)
    }

    async fn insert_release(&self, release: &Release) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO releases (id, site_id, sha256, size_bytes, file_count, created_by,
                                   created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&release.id.0)
        .bind(release.site_id.0)
        .bind(&release.sha256)
        .bind(release.size_bytes)
        .bind(release.file_count)
        .bind(release.created_by.map(|c| c.0))
        .bind(release.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "release"))?;
        let site = set_active(&mut tx, release.site_id, &release.id).await?;
        sync_route(&mut tx, &site).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn activate_release(&self, site: SiteId, release: &ReleaseId) -> Result<Site> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM releases WHERE id = ? AND site_id = ?")
                .bind(&release.0)
                .bind(site.0)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let site = set_active(&mut tx, site, release).await?;
        sync_route(&mut tx, &site).await?;
        tx.commit().await?;
        Ok(site)
    }

    async fn list_releases(&self, site: SiteId) -> Result<Vec<Release>> {
        let rows = sqlx::query("SELECT * FROM releases WHERE site_id = ? ORDER BY id DESC")
            .bind(site.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(release_from_row).collect()
    }

    async fn all_release_ids(&self) -> Result<Vec<(SiteId, ReleaseId)>> {
        let rows = sqlx::query("SELECT site_id, id FROM releases")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((SiteId(r.try_get("site_id")?), ReleaseId(r.try_get("id")?))))
            .collect()
    }

    async fn delete_releases(&self, site: SiteId, ids: &[ReleaseId]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query(
                "DELETE FROM releases WHERE id = ? AND site_id = ?
                 AND id NOT IN (SELECT active_release FROM sites
                                WHERE id = ? AND active_release IS NOT NULL)",
            )
            .bind(&id.0)
            .bind(site.0)
            .bind(site.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_routes(&self) -> Result<Vec<RouteRecord>> {
        let rows = sqlx::query("SELECT * FROM routes ORDER BY domain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(route_from_row).collect()
    }

    async fn route(&self, domain: &str) -> Result<Option<RouteRecord>> {
        let row = sqlx::query("SELECT * FROM routes WHERE domain = ?")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(route_from_row).transpose()
    }

    async fn integrity_check(&self) -> Result<(), String> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        let fk: Vec<SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        if rows != ["ok"] {
            return Err(rows.join("; "));
        }
        if !fk.is_empty() {
            return Err(format!("{} rows break foreign keys", fk.len()));
        }
        Ok(())
    }
}

async fn set_active(
    tx: &mut Transaction<'_, Sqlite>,
    site: SiteId,
    release: &ReleaseId,
) -> Result<Site> {
    let sql = concat!(
        "UPDATE sites SET active_release = ? WHERE id = ? RETURNING ",
        site_columns!()
    );
    let row = sqlx::query(sql)
        .bind(&release.0)
        .bind(site.0)
        .fetch_optional(&mut **tx)
        .await?;
    site_from_row(&row.ok_or(StoreError::NotFound)?)
}

pub(crate) async fn insert_token<'e, E>(executor: E, token: &TokenRecord) -> Result<()>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query(
        "INSERT INTO tokens (token_hash, user_id, kind, family, expires_at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&token.hash)
    .bind(token.user_id.0)
    .bind(token.kind.as_str())
    .bind(&token.family)
    .bind(token.expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fixture() -> (tempfile::TempDir, SqliteStore, User) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let user = store
            .create_user(NewUser {
                email: "a@example.com".into(),
                password_hash: "x".into(),
                role: Role::Admin,
                customer: None,
                display_name: None,
                created_at: 1,
            })
            .await
            .expect("user");
        (dir, store, user)
    }

    fn static_site(owner: UserId, domain: &str) -> NewSite {
        NewSite {
            domain: domain.into(),
            kind: SiteKind::Static,
            owner: Some(owner),
            customer: None,
            upstream: None,
            balancer: None,
            spa: false,
            created_at: 1,
        }
    }

    fn release(site: SiteId, id: &str, by: UserId) -> Release {
        Release {
            id: ReleaseId(id.into()),
            site_id: site,
            sha256: "00".into(),
            size_bytes: 1,
            file_count: 1,
            created_by: Some(by),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn duplicate_email_and_domain_are_conflicts() {
        let (_d, store, user) = fixture().await;
        let again = store
            .create_user(NewUser {
                email: "A@example.com".into(),
                password_hash: "y".into(),
                role: Role::Viewer,
                customer: None,
                display_name: None,
                created_at: 2,
            })
            .await;
        assert!(matches!(again, Err(StoreError::Conflict("email"))));
        store
            .create_site(static_site(user.id, "a.test"))
            .await
            .expect("site");
        let dup = store.create_site(static_site(user.id, "a.test")).await;
        assert!(matches!(dup, Err(StoreError::Conflict("domain"))));
    }

    #[tokio::test]
    async fn static_site_gets_a_route_only_with_a_release() {
        let (_d, store, user) = fixture().await;
        let site = store
            .create_site(static_site(user.id, "a.test"))
            .await
            .expect("site");
        assert!(store.list_routes().await.expect("routes").is_empty());

        store
            .insert_release(&release(site.id, "r1", user.id))
            .await
            .expect("r1");
        store
            .insert_release(&release(site.id, "r2", user.id))
            .await
            .expect("r2");
        let routes = store.list_routes().await.expect("routes");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].release_id, Some(ReleaseId("r2".into())));

        store
            .activate_release(site.id, &ReleaseId("r1".into()))
            .await
            .expect("rollback");
        let routes = store.list_routes().await.expect("routes");
        assert_eq!(routes[0].release_id, Some(ReleaseId("r1".into())));
        let one = store
            .route("a.test")
            .await
            .expect("route")
            .expect("present");
        assert_eq!(one, routes[0]);
        assert!(store.route("b.test").await.expect("route").is_none());
    }

    #[tokio::test]
    async fn the_active_release_is_never_pruned() {
        let (_d, store, user) = fixture().await;
        let site = store
            .create_site(static_site(user.id, "a.test"))
            .await
            .expect("site");
        store
            .insert_release(&release(site.id, "r1", user.id))
            .await
            .expect("r1");
        store
            .insert_release(&release(site.id, "r2", user.id))
            .await
            .expect("r2");
        let both = [ReleaseId("r1".into()), ReleaseId("r2".into())];
        store.delete_releases(site.id, &both).await.expect("delete");
        let left = store.list_releases(site.id).await.expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id.0, "r2");
    }

    #[tokio::test]
    async fn deleting_a_site_removes_its_releases_and_route() {
        let (_d, store, user) = fixture().await;
        let site = store
            .create_site(static_site(user.id, "a.test"))
            .await
            .expect("site");
        store
            .insert_release(&release(site.id, "r1", user.id))
            .await
            .expect("r1");
        store.delete_site("a.test").await.expect("delete");
        assert!(store.list_routes().await.expect("routes").is_empty());
        assert!(store.all_release_ids().await.expect("ids").is_empty());
        assert!(matches!(
            store.delete_site("a.test").await,
            Err(StoreError::NotFound)
        ));
        store.integrity_check().await.expect("integrity");
    }

    #[tokio::test]
    async fn a_refresh_token_rotates_once() {
        let (_d, store, user) = fixture().await;
        let token = |hash: &str| TokenRecord {
            hash: hash.into(),
            user_id: user.id,
            kind: TokenKind::Refresh,
            family: "f".into(),
            expires_at: 100,
            used: false,
        };
        store.insert_token(token("r0")).await.expect("insert");
        store
            .rotate_refresh("r0", 10, token("r1"))
            .await
            .expect("first rotation");
        let again = store.rotate_refresh("r0", 10, token("r2")).await;
        assert!(matches!(again, Err(StoreError::NotFound)));
        let spent = store
            .find_token("r0", TokenKind::Refresh, 10)
            .await
            .expect("find")
            .expect("kept, marked used");
        assert!(spent.used);
        assert!(store
            .find_token("r1", TokenKind::Refresh, 100)
            .await
            .expect("find")
            .is_none());
    }
}
