//! `spinforge scan`: finds the lockfiles of a bundle, reads the package
//! versions they pin and matches each against the local OSV database.
//! Also the deploy policy that refuses bundles with findings at or above
//! a severity. Scanning never runs code from the bundle.

pub mod lockfiles;
pub mod version;

use crate::vulndb::{Severity, VulnDb};
use crate::HardenError;
use lockfiles::Package;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Folders never searched for lockfiles: installed dependencies carry
/// lockfiles of their own that do not describe the bundle.
const SKIPPED_DIRS: &[&str] = &["node_modules", ".git", "target", ".venv", "venv", "vendor"];
/// How deep below the bundle root lockfiles are looked for.
const MAX_DEPTH: usize = 8;
/// Directory entries looked at, at most, per scan.
const MAX_ENTRIES: usize = 100_000;
/// Largest lockfile read (bytes).
const MAX_LOCKFILE_BYTES: u64 = 64 * 1024 * 1024;

/// One vulnerable package version.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub package: Package,
    pub id: String,
    pub aliases: Vec<String>,
    pub severity: Severity,
    pub summary: String,
    /// Versions that fix it; empty if none is known.
    pub fixed: Vec<String>,
}

/// What a scan found.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    /// Lockfiles read, relative to the scanned folder.
    pub lockfiles: Vec<String>,
    /// Package versions checked.
    pub packages: usize,
    /// Advisories in the database used.
    pub advisories: usize,
    /// Worst first.
    pub findings: Vec<Finding>,
    /// Entries that could not be checked, and why.
    pub notes: Vec<String>,
}

impl ScanReport {
    /// The findings at `threshold` or worse.
    pub fn at_least(&self, threshold: Severity) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity >= threshold)
            .collect()
    }
}

/// Lockfiles under `dir`, sorted, skipping dependency folders.
fn find_lockfiles(dir: &Path) -> Result<Vec<PathBuf>, HardenError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((d, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| HardenError::io(&d, e))? {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(HardenError::Invalid(format!(
                    "{}: more than {MAX_ENTRIES} entries; scan a smaller folder",
                    dir.display()
                )));
            }
            let entry = entry.map_err(|e| HardenError::io(&d, e))?;
            // Symlinks are not followed: a bundle must not point the scan
            // at the host's files.
            let kind = entry.file_type().map_err(|e| HardenError::io(&d, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                if depth < MAX_DEPTH && !SKIPPED_DIRS.contains(&name.as_ref()) {
                    stack.push((entry.path(), depth + 1));
                }
            } else if kind.is_file() && lockfiles::kind_of(&name).is_some() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Scans the bundle folder `dir` against `db`.
pub fn scan_dir(dir: &Path, db: &VulnDb) -> Result<ScanReport, HardenError> {
    let meta = std::fs::metadata(dir).map_err(|e| HardenError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(HardenError::Invalid(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    let mut report = ScanReport {
        lockfiles: Vec::new(),
        packages: 0,
        advisories: db.len(),
        findings: Vec::new(),
        notes: Vec::new(),
    };
    for path in find_lockfiles(dir)? {
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(reader) = name.as_deref().and_then(lockfiles::kind_of) else {
            continue;
        };
        let size = std::fs::metadata(&path)
            .map_err(|e| HardenError::io(&path, e))?
            .len();
        // Errors name the lockfile relative to the scanned folder: the
        // folder may be a server-side temporary path.
        let shown = Path::new(&rel);
        if size > MAX_LOCKFILE_BYTES {
            return Err(HardenError::parse(
                shown,
                0,
                "lockfile is larger than 64 MiB",
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| HardenError::io(&path, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| HardenError::parse(shown, 0, format!("not UTF-8: {e}")))?;
        let parsed = reader(shown, &rel, &text)?;
        report.lockfiles.push(rel);
        report.notes.extend(parsed.notes);
        report.packages += parsed.packages.len();
        for package in parsed.packages {
            for hit in db.lookup(package.ecosystem, &package.name, &package.version) {
                report.findings.push(Finding {
                    package: package.clone(),
                    id: hit.advisory.id.clone(),
                    aliases: hit.advisory.aliases.clone(),
                    severity: hit.advisory.severity,
                    summary: hit.advisory.summary.clone(),
                    fixed: hit.fixed,
                });
            }
        }
    }
    report.findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.package.name.cmp(&b.package.name))
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(report)
}

/// The folder of `domain`'s active release in `data_dir`, read from the
/// store without changing it.
pub async fn active_release_dir(data_dir: &Path, domain: &str) -> Result<PathBuf, HardenError> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Row};

    let db = data_dir.join(store::DB_FILE);
    if !db.exists() {
        return Err(HardenError::Invalid(format!(
            "{domain} is neither a folder nor a site: there is no store at {}",
            db.display()
        )));
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .read_only(true)
        .connect()
        .await
        .map_err(|e| HardenError::Invalid(format!("cannot open {}: {e}", db.display())))?;
    let row = sqlx::query("SELECT id, active_release FROM sites WHERE domain = ?")
        .bind(domain)
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| HardenError::Invalid(format!("cannot read {}: {e}", db.display())))?;
    let Some(row) = row else {
        return Err(HardenError::Invalid(format!(
            "{domain} is neither a folder nor a site of {}",
            data_dir.display()
        )));
    };
    let id: i64 = row.get(0);
    let release: Option<String> = row.get(1);
    let Some(release) = release else {
        return Err(HardenError::Invalid(format!(
            "site {domain} has no active release"
        )));
    };
    Ok(data_dir
        .join("sites")
        .join(id.to_string())
        .join("releases")
        .join(release))
}

/// Prints `report` as a table.
pub fn table(report: &ScanReport) -> String {
    use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
    let mut out = String::new();
    if !report.findings.is_empty() {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header([
            "SEVERITY",
            "PACKAGE",
            "VERSION",
            "ECOSYSTEM",
            "ADVISORY",
            "FIXED IN",
            "LOCKFILE",
        ]);
        for f in &report.findings {
            let mut ids = vec![f.id.clone()];
            ids.extend(f.aliases.iter().take(2).cloned());
            table.add_row([
                f.severity.to_string(),
                f.package.name.clone(),
                f.package.version.clone(),
                f.package.ecosystem.to_string(),
                ids.join(" "),
                if f.fixed.is_empty() {
                    "-".into()
                } else {
                    f.fixed.join(", ")
                },
                format!("{}:{}", f.package.file, f.package.line),
            ]);
        }
        out.push_str(&format!("{table}\n"));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(&format!(
        "{} vulnerable package version(s); {} packages in {} lockfile(s) checked against {} advisories\n",
        report.findings.len(),
        report.packages,
        report.lockfiles.len(),
        report.advisories
    ));
    out
}

// ---- deploy policy ---------------------------------------------------------

/// When `deploy` refuses a bundle for its dependencies.
#[derive(Debug, Clone, Default)]
pub struct DeployPolicy {
    /// Every site.
    pub global: bool,
    /// Only these sites (when not global).
    pub sites: Vec<String>,
    /// Findings at this severity or worse refuse (default HIGH).
    pub threshold: Option<Severity>,
    /// Where the OSV database lives.
    pub data_dir: PathBuf,
}

impl DeployPolicy {
    pub fn applies_to(&self, domain: &str) -> bool {
        self.global || self.sites.iter().any(|s| s.eq_ignore_ascii_case(domain))
    }

    pub fn threshold(&self) -> Severity {
        self.threshold.unwrap_or(Severity::High)
    }

    /// Scans `dir` for `domain`: `Ok(None)` when the policy does not apply
    /// or nothing reaches the threshold, else the findings that refuse.
    pub fn check(&self, domain: &str, dir: &Path) -> Result<Option<Vec<Finding>>, HardenError> {
        if !self.applies_to(domain) {
            return Ok(None);
        }
        // Limitation: the database is read from disk on every covered
        // deploy (an index cached by the file's mtime would lift it).
        let db = VulnDb::load(&self.data_dir)?;
        if db.is_empty() {
            // Fail closed: a policy that cannot match anything protects
            // nothing.
            return Err(HardenError::Invalid(
                "the deploy policy refuses vulnerable dependencies but no advisories are \
                 imported; run `spinforge vulndb import`"
                    .into(),
            ));
        }
        let report = scan_dir(dir, &db)?;
        let refusing: Vec<Finding> = report
            .at_least(self.threshold())
            .into_iter()
            .cloned()
            .collect();
        Ok((!refusing.is_empty()).then_some(refusing))
    }
}

#[cfg(test)]
mod tests;
