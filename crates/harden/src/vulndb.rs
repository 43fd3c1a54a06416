//! The local advisory database: OSV records (as OSV publishes them per
//! ecosystem, one JSON file each, in a folder or an `all.zip`) checked on
//! import, reduced to what matching needs, and kept as one JSON Lines file
//! in the data directory. Matching follows the OSV rules for `SEMVER` and
//! `ECOSYSTEM` ranges with each ecosystem's own version order; `GIT`
//! ranges name commits, which lockfiles do not hold, and are skipped.

mod cvss;
mod import;

use crate::scan::version::{Ecosystem, Version};
use crate::HardenError;
pub use cvss::{cvss3_base_score, cvss4_score};
pub use import::{import, ImportReport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

/// The database file inside the data directory.
pub const DB_FILE: &str = "vulndb/osv.jsonl";

/// How bad an advisory is, from its GHSA rating or its CVSS v3 vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// The record carries no rating we can read (e.g. CVSS v4 only).
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }

    fn from_label(label: &str) -> Option<Severity> {
        match label.to_ascii_uppercase().as_str() {
            "LOW" => Some(Severity::Low),
            "MODERATE" | "MEDIUM" => Some(Severity::Medium),
            "HIGH" => Some(Severity::High),
            "CRITICAL" => Some(Severity::Critical),
            _ => None,
        }
    }

    fn from_score(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::Unknown,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One advisory as stored: only what scanning reports and matches on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub summary: String,
    pub severity: Severity,
    #[serde(default)]
    pub modified: Option<String>,
    pub affected: Vec<Affected>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Affected {
    pub ecosystem: Ecosystem,
    pub name: String,
    /// Each range as its events in the record's order.
    #[serde(default)]
    pub ranges: Vec<Vec<Event>>,
    /// Versions listed one by one.
    #[serde(default)]
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Introduced,
    Fixed,
    LastAffected,
    Limit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// `0` for "introduced at the beginning of time".
    pub version: String,
}

// ---- reading OSV records ---------------------------------------------------

#[derive(Deserialize)]
struct OsvRecord {
    id: String,
    modified: Option<String>,
    withdrawn: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    summary: Option<String>,
    details: Option<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: Option<OsvPackage>,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    ecosystem_specific: Option<serde_json::Value>,
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    events: Vec<BTreeMap<String, String>>,
}

/// The 1-based line of the first `"needle"` in `text`, or 1.
fn line_of(text: &str, needle: &str) -> usize {
    let quoted = format!("\"{needle}\"");
    text.find(&quoted)
        .map(|at| text[..at].matches('\n').count() + 1)
        .unwrap_or(1)
}

/// Parses one OSV record; `Ok(None)` for a withdrawn record or one with
/// no package of an ecosystem we scan.
pub fn parse_record(file: &Path, text: &str) -> Result<Option<Advisory>, HardenError> {
    let record: OsvRecord = serde_json::from_str(text)
        .map_err(|e| HardenError::parse(file, e.line(), format!("not an OSV record: {e}")))?;
    if record.id.trim().is_empty() {
        return Err(HardenError::parse(
            file,
            line_of(text, "id"),
            "`id` is empty",
        ));
    }
    if record.withdrawn.is_some() {
        return Ok(None);
    }

    let mut severity = severity_of(&record.severity, record.database_specific.as_ref());
    let mut affected = Vec::new();
    for a in &record.affected {
        let Some(package) = &a.package else { continue };
        let Some(ecosystem) = Ecosystem::from_osv(&package.ecosystem) else {
            continue;
        };
        if package.name.trim().is_empty() {
            return Err(HardenError::parse(
                file,
                line_of(text, "name"),
                "affected package `name` is empty",
            ));
        }
        let own = severity_of(&a.severity, a.database_specific.as_ref())
            .max(severity_of(&[], a.ecosystem_specific.as_ref()));
        severity = severity.max(own);

        let mut ranges = Vec::new();
        for range in &a.ranges {
            match range.kind.as_str() {
                "SEMVER" | "ECOSYSTEM" => {}
                "GIT" => continue,
                other => {
                    return Err(HardenError::parse(
                        file,
                        line_of(text, other),
                        format!("range type `{other}` is not SEMVER, ECOSYSTEM or GIT"),
                    ))
                }
            }
            let mut events = Vec::new();
            for event in &range.events {
                let mut entries = event.iter();
                let (Some((key, value)), None) = (entries.next(), entries.next()) else {
                    return Err(HardenError::parse(
                        file,
                        line_of(text, "events"),
                        "each range event must have exactly one key",
                    ));
                };
                let kind = match key.as_str() {
                    "introduced" => EventKind::Introduced,
                    "fixed" => EventKind::Fixed,
                    "last_affected" => EventKind::LastAffected,
                    "limit" => EventKind::Limit,
                    other => {
                        return Err(HardenError::parse(
                            file,
                            line_of(text, other),
                            format!("unknown range event `{other}`"),
                        ))
                    }
                };
                let zero = kind == EventKind::Introduced && value == "0";
                let unbounded = kind == EventKind::Limit && value == "*";
                if !(zero || unbounded) {
                    ecosystem.parse(value).map_err(|e| {
                        HardenError::parse(
                            file,
                            line_of(text, value),
                            format!("{}: {e}", a_name(package)),
                        )
                    })?;
                }
                events.push(Event {
                    kind,
                    version: value.clone(),
                });
            }
            if !events.iter().any(|e| e.kind == EventKind::Introduced) {
                return Err(HardenError::parse(
                    file,
                    line_of(text, "events"),
                    format!("{}: a range needs an `introduced` event", a_name(package)),
                ));
            }
            ranges.push(events);
        }
        affected.push(Affected {
            ecosystem,
            name: ecosystem.normalize_name(&package.name),
            ranges,
            versions: a.versions.clone(),
        });
    }
    if affected.is_empty() {
        return Ok(None);
    }
    let summary = record
        .summary
        .or_else(|| {
            record
                .details
                .map(|d| d.lines().next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    Ok(Some(Advisory {
        id: record.id,
        aliases: record.aliases,
        summary,
        severity,
        modified: record.modified,
        affected,
    }))
}

fn a_name(package: &OsvPackage) -> String {
    format!("{} {}", package.ecosystem, package.name)
}

/// The worst of a GHSA-style `severity` label and any CVSS v3 or v4
/// vector.
fn severity_of(scores: &[OsvSeverity], specific: Option<&serde_json::Value>) -> Severity {
    let label = specific
        .and_then(|v| v.get("severity"))
        .and_then(|v| v.as_str())
        .and_then(Severity::from_label)
        .unwrap_or(Severity::Unknown);
    let vector = scores
        .iter()
        .filter_map(|s| match s.kind.as_str() {
            "CVSS_V3" => cvss3_base_score(&s.score),
            "CVSS_V4" => cvss4_score(&s.score),
            _ => None,
        })
        .map(Severity::from_score)
        .max()
        .unwrap_or(Severity::Unknown);
    label.max(vector)
}

// ---- matching ----------------------------------------------------------------

/// A range event with its version parsed; `None` is "0".
struct ParsedEvent {
    kind: EventKind,
    version: Option<Version>,
}

/// Whether `version` falls in the range given by `events`, per OSV:
/// walk the events in version order; `introduced` turns affected on,
/// `fixed` and `limit` turn it off at their version, `last_affected`
/// just after it.
fn in_range(eco: Ecosystem, events: &[Event], version: &Version) -> bool {
    let mut parsed: Vec<ParsedEvent> = events
        .iter()
        .filter_map(|e| {
            let zero = e.kind == EventKind::Introduced && e.version == "0";
            let version = if zero {
                None
            } else {
                Some(eco.parse(&e.version).ok()?)
            };
            Some(ParsedEvent {
                kind: e.kind,
                version,
            })
        })
        .collect();
    parsed.sort_by(|a, b| match (&a.version, &b.version) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, _) => std::cmp::Ordering::Less,
        (_, None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.compare(y).unwrap_or(std::cmp::Ordering::Equal),
    });
    let mut affected = false;
    for event in &parsed {
        let order = event
            .version
            .as_ref()
            .map_or(Some(std::cmp::Ordering::Greater), |e| version.compare(e));
        let Some(order) = order else { continue };
        match event.kind {
            EventKind::Introduced if order.is_ge() => affected = true,
            EventKind::Fixed | EventKind::Limit if order.is_ge() => affected = false,
            EventKind::LastAffected if order.is_gt() => affected = false,
            _ => {}
        }
    }
    affected
}

/// A package version that an advisory covers.
#[derive(Debug, Clone, Serialize)]
pub struct Hit<'a> {
    pub advisory: &'a Advisory,
    /// `fixed` versions of the ranges that matched, in version order.
    pub fixed: Vec<String>,
}

/// The database in memory, indexed by ecosystem and package name.
#[derive(Default)]
pub struct VulnDb {
    advisories: Vec<Advisory>,
    by_package: HashMap<(Ecosystem, String), Vec<(usize, usize)>>,
}

impl VulnDb {
    pub fn new(advisories: Vec<Advisory>) -> VulnDb {
        let mut by_package: HashMap<(Ecosystem, String), Vec<(usize, usize)>> = HashMap::new();
        for (i, advisory) in advisories.iter().enumerate() {
            for (j, a) in advisory.affected.iter().enumerate() {
                by_package
                    .entry((a.ecosystem, a.name.clone()))
                    .or_default()
                    .push((i, j));
            }
        }
        VulnDb {
            advisories,
            by_package,
        }
    }

    pub fn len(&self) -> usize {
        self.advisories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.advisories.is_empty()
    }

    /// Every advisory covering `name` at `version`. A version the
    /// ecosystem cannot parse matches only exact `versions` entries.
    pub fn lookup(&self, eco: Ecosystem, name: &str, version: &str) -> Vec<Hit<'_>> {
        let key = (eco, eco.normalize_name(name));
        let Some(entries) = self.by_package.get(&key) else {
            return Vec::new();
        };
        let parsed = eco.parse(version).ok();
        let mut hits: Vec<Hit<'_>> = Vec::new();
        for &(i, j) in entries {
            let affected = &self.advisories[i].affected[j];
            let listed = affected.versions.iter().any(|v| v == version);
            let mut fixed = Vec::new();
            let mut ranged = false;
            if let Some(v) = &parsed {
                for events in &affected.ranges {
                    if in_range(eco, events, v) {
                        ranged = true;
                        fixed.extend(
                            events
                                .iter()
                                .filter(|e| e.kind == EventKind::Fixed)
                                .map(|e| e.version.clone()),
                        );
                    }
                }
            }
            if !(listed || ranged) {
                continue;
            }
            fixed.sort_by(|a, b| match (eco.parse(a), eco.parse(b)) {
                (Ok(a), Ok(b)) => a.compare(&b).unwrap_or(std::cmp::Ordering::Equal),
                _ => a.cmp(b),
            });
            fixed.dedup();
            match hits
                .iter_mut()
                .find(|h| h.advisory.id == self.advisories[i].id)
            {
                Some(hit) => hit.fixed.extend(fixed),
                None => hits.push(Hit {
                    advisory: &self.advisories[i],
                    fixed,
                }),
            }
        }
        hits
    }

    /// Loads the database of `data_dir`; an empty one if none was
    /// imported yet.
    pub fn load(data_dir: &Path) -> Result<VulnDb, HardenError> {
        Ok(VulnDb::new(load_file(&data_dir.join(DB_FILE))?))
    }
}

pub(crate) fn load_file(path: &Path) -> Result<Vec<Advisory>, HardenError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HardenError::io(path, e)),
    };
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| HardenError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let advisory: Advisory = serde_json::from_str(&line)
            .map_err(|e| HardenError::parse(path, n + 1, format!("damaged database line: {e}")))?;
        out.push(advisory);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
