//! The deploy pipeline: a streamed bundle becomes an immutable release.
//!
//! upload → `tmp/` (hashed, size-capped) → safe unpack in `tmp/` → rename
//! into `sites/ID/releases/` → one store transaction activates it → the
//! edge's route swaps. A crash at any step leaves either the old release
//! active or the new one complete; the start-up sweep removes the rest.

use crate::bundle::{self, BundleError};
use crate::error::ApiError;
use crate::{apps, layout, now, DeployLabels, Hub};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use store::{Release, ReleaseId, SiteKind, UserId};
use tokio::io::AsyncWriteExt;

/// Removes a temporary path when dropped, unless disarmed.
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = layout::remove_any(&path);
        }
    }
}

impl Hub {
    /// Turns an uploaded bundle into the site's active release.
    pub async fn deploy(
        &self,
        domain: &str,
        creator: Option<UserId>,
        body: axum::body::Body,
    ) -> Result<Release, ApiError> {
        let result = self.deploy_inner(domain, creator, body).await;
        let label = DeployLabels {
            result: if result.is_ok() { "ok" } else { "failed" },
        };
        self.inner.deploys.get_or_create(&label).inc();
        result
    }

    async fn deploy_inner(
        &self,
        domain: &str,
        creator: Option<UserId>,
        body: axum::body::Body,
    ) -> Result<Release, ApiError> {
        let site = self.site(domain).await?;
        self.refuse_if_isolated(&site.domain)?;
        if !matches!(site.kind, SiteKind::Static | SiteKind::Process) {
            return Err(ApiError::invalid(
                "type",
                "only static and process sites take a bundle",
            ));
        }
        let id = ReleaseId(uuid::Uuid::now_v7().to_string());
        let tmp = self.inner.layout.tmp_dir();

        let upload_path = tmp.join(format!("upload-{id}.tar.gz"));
        let _upload_guard = TempPath(Some(upload_path.clone()));
        let (sha256, compressed) = self.receive(&upload_path, body).await?;

        let unpack_dir = tmp.join(format!("release-{id}"));
        let mut unpack_guard = TempPath(Some(unpack_dir.clone()));
        let limits = self.inner.config.bundle.clone();
        let unpacked = {
            let (archive, dest) = (upload_path.clone(), unpack_dir.clone());
            tokio::fs::create_dir(&dest)
                .await
                .map_err(ApiError::internal)?;
            tokio::task::spawn_blocking(move || bundle::unpack(&archive, &dest, &limits))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| bundle_error(e, compressed))?
        };
        // An app's manifest is checked before anything else changes.
        let app_spec = match site.kind {
            SiteKind::Process => Some(apps::load_spec(&id, unpack_dir.clone()).await?),
            _ => None,
        };
        self.refuse_vulnerable(&site.domain, &id, creator, &unpack_dir)
            .await?;

        let _site_guard = self.site_lock(&site.domain).await;
        // The upload took a while: the site may have been deleted, or
        // deleted and created again, meanwhile. Go on only with the same one.
        let current = self.inner.store.site_by_domain(&site.domain).await?;
        if current.as_ref().map(|c| (c.id, c.kind)) != Some((site.id, site.kind)) {
            return Err(ApiError::NotFound("site"));
        }
        let release_dir = self.inner.layout.release_dir(site.id, &id);
        let releases_dir = self.inner.layout.releases_dir(site.id);
        tokio::fs::create_dir_all(&releases_dir)
            .await
            .map_err(ApiError::internal)?;
        tokio::fs::rename(&unpack_dir, &release_dir)
            .await
            .map_err(ApiError::internal)?;
        unpack_guard.disarm();
        let mut release_guard = TempPath(Some(release_dir.clone()));

        // A new app release starts beside the old one and must be healthy
        // before anything is recorded; on failure the old one keeps serving.
        let candidate = match app_spec {
            Some(mut spec) => {
                spec.dir = release_dir;
                let prepared = self.inner.supervisor.prepare(&site.domain, spec).await;
                Some(prepared.map_err(apps::start_failed)?)
            }
            None => None,
        };

        let release = Release {
            id: id.clone(),
            site_id: site.id,
            sha256,
            size_bytes: unpacked.size_bytes as i64,
            file_count: unpacked.file_count as i64,
            created_by: creator,
            created_at: now(),
        };
        let inserted = self.inner.store.insert_release(&release).await;
        let candidate = match (inserted.is_err(), candidate) {
            (true, Some(candidate)) => {
                self.inner.supervisor.discard(candidate).await;
                None
            }
            (_, candidate) => candidate,
        };
        match inserted {
            Ok(()) => release_guard.disarm(),
            Err(store::StoreError::Backend(sqlx_error))
                if sqlx_error
                    .as_database_error()
                    .is_some_and(|d| d.is_foreign_key_violation()) =>
            {
                // The site was deleted while the bundle was uploading.
                return Err(ApiError::NotFound("site"));
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(candidate) = candidate {
            self.inner.supervisor.promote(candidate);
        }
        self.sync_edge(&site.domain).await?;
        tracing::info!(
            site = %site.domain, release = %id, files = unpacked.file_count,
            bytes = unpacked.size_bytes, "release activated"
        );

        self.prune(&site).await;
        Ok(release)
    }

    /// Streams the request body to `path`, hashing it and enforcing the
    /// upload cap as bytes arrive. Returns the hex SHA-256 and the size.
    async fn receive(
        &self,
        path: &PathBuf,
        body: axum::body::Body,
    ) -> Result<(String, u64), ApiError> {
        let cap = self.inner.config.max_upload_bytes;
        let mut file = tokio::fs::File::create_new(path)
            .await
            .map_err(ApiError::internal)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadBundle(format!("upload was interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > cap {
                return Err(ApiError::TooLarge(format!(
                    "bundle is larger than {cap} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        file.flush().await.map_err(ApiError::internal)?;
        if size == 0 {
            return Err(ApiError::BadBundle("bundle is empty".into()));
        }
        Ok((hex::encode(hasher.finalize()), size))
    }

    /// Deletes the oldest releases beyond the configured count. The active
    /// release is never deleted, whatever its age. Failures are logged:
    /// the deploy itself already succeeded.
    async fn prune(&self, site: &store::Site) {
        let keep = self.inner.config.keep_releases.max(1);
        let releases = match self.inner.store.list_releases(site.id).await {
            Ok(releases) => releases,
            Err(e) => {
                tracing::warn!(site = %site.domain, error = %e, "could not list releases to prune");
                return;
            }
        };
        let store_site = self
            .inner
            .store
            .site_by_domain(&site.domain)
            .await
            .ok()
            .flatten();
        let active = store_site.and_then(|s| s.active_release);
        let doomed: Vec<ReleaseId> = releases
            .into_iter()
            .skip(keep)
            .map(|r| r.id)
            .filter(|id| Some(id) != active.as_ref())
            .collect();
        if doomed.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.delete_releases(site.id, &doomed).await {
            tracing::warn!(site = %site.domain, error = %e, "could not prune releases");
            return;
        }
        for id in &doomed {
            let dir = self.inner.layout.release_dir(site.id, id);
            if let Err(e) = layout::remove_any(&dir) {
                tracing::warn!(site = %site.domain, release = %id, error = %e, "prune left a folder");
            }
        }
        tracing::info!(site = %site.domain, pruned = doomed.len(), "old releases pruned");
    }
}

// ---- supply chain (issue #11) ----

impl Hub {
    /// Scans an unpacked bundle when the deploy policy covers the site, and
    /// refuses it (audited as `deploy.refused_vulnerable`) when a finding
    /// reaches the policy's severity. Fails closed: with the policy on and
    /// no advisories imported, nothing deploys.
    async fn refuse_vulnerable(
        &self,
        domain: &str,
        release: &ReleaseId,
        creator: Option<UserId>,
        dir: &std::path::Path,
    ) -> Result<(), ApiError> {
        let Some(policy) = self.inner.config.supply_chain.clone() else {
            return Ok(());
        };
        if !policy.applies_to(domain) {
            return Ok(());
        }
        let (site, dir) = (domain.to_owned(), dir.to_path_buf());
        let verdict = tokio::task::spawn_blocking(move || policy.check(&site, &dir))
            .await
            .map_err(ApiError::internal)?;
        let findings = match verdict {
            Ok(None) => return Ok(()),
            Ok(Some(findings)) => findings,
            // A lockfile in the bundle is malformed: the client's fault.
            Err(e @ harden::HardenError::Parse { .. }) => {
                return Err(ApiError::BadBundle(e.to_string()))
            }
            Err(harden::HardenError::Invalid(message)) => {
                return Err(ApiError::Unavailable(message))
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        // At most 20 named, so one bundle cannot flood the audit log.
        let mut ids: Vec<String> = findings
            .iter()
            .take(20)
            .map(|f| {
                format!(
                    "{}@{} {} ({})",
                    f.package.name, f.package.version, f.id, f.severity
                )
            })
            .collect();
        if findings.len() > ids.len() {
            ids.push(format!("and {} more", findings.len() - ids.len()));
        }
        tracing::warn!(
            target: "spinforge::audit",
            event = "deploy.refused_vulnerable",
            result = "denied",
            user = creator.map(|u| u.0),
            site = %domain,
            release = %release,
            findings = findings.len(),
            advisories = %ids.join(", "),
            "deploy refused: the bundle pins vulnerable dependencies"
        );
        Err(ApiError::Vulnerable(format!(
            "the bundle pins {} vulnerable dependency version(s): {}",
            findings.len(),
            ids.join("; ")
        )))
    }
}

fn bundle_error(error: BundleError, compressed: u64) -> ApiError {
    if !error.is_client_fault() {
        return ApiError::internal(error);
    }
    let message = error.to_string();
    tracing::debug!(error = %message, compressed, "bundle refused");
    match error {
        BundleError::TooLarge { .. }
        | BundleError::TooManyFiles { .. }
        | BundleError::TooManyDirectories { .. }
        | BundleError::CompressionBomb { .. } => ApiError::TooLarge(message),
        _ => ApiError::BadBundle(message),
    }
}
