//! Versions compared the way each ecosystem compares them: semver for npm
//! and crates.io, PEP 440 for PyPI (epochs, pre-, post- and dev-releases),
//! and Go module versions (semver with a `v`, pseudo-versions as
//! pre-releases, `+incompatible` ignored for order).

use std::cmp::Ordering;
use std::str::FromStr;

/// An ecosystem as OSV names it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Ecosystem {
    #[serde(rename = "npm")]
    Npm,
    #[serde(rename = "crates.io")]
    CratesIo,
    #[serde(rename = "PyPI")]
    PyPi,
    #[serde(rename = "Go")]
    Go,
}

impl Ecosystem {
    /// The OSV `ecosystem` string; `None` for ecosystems we do not scan.
    /// OSV may add a suffix such as `Debian:12`; only exact names count.
    pub fn from_osv(name: &str) -> Option<Ecosystem> {
        match name {
            "npm" => Some(Ecosystem::Npm),
            "crates.io" => Some(Ecosystem::CratesIo),
            "PyPI" => Some(Ecosystem::PyPi),
            "Go" => Some(Ecosystem::Go),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Npm => "npm",
            Ecosystem::CratesIo => "crates.io",
            Ecosystem::PyPi => "PyPI",
            Ecosystem::Go => "Go",
        }
    }

    /// The package name as the ecosystem compares it: PyPI names are
    /// case-insensitive with `-`, `_` and `.` alike (PEP 503); the others
    /// are exact.
    pub fn normalize_name(self, name: &str) -> String {
        match self {
            Ecosystem::PyPi => {
                let mut out = String::with_capacity(name.len());
                let mut dash = false;
                for c in name.trim().chars() {
                    if matches!(c, '-' | '_' | '.') {
                        dash = true;
                    } else {
                        if dash && !out.is_empty() {
                            out.push('-');
                        }
                        dash = false;
                        out.push(c.to_ascii_lowercase());
                    }
                }
                out
            }
            _ => name.to_owned(),
        }
    }

    /// Parses `text` as a version of this ecosystem.
    pub fn parse(self, text: &str) -> Result<Version, String> {
        let text = text.trim();
        match self {
            Ecosystem::Npm | Ecosystem::CratesIo => {
                // npm tolerates a leading `v` or `=`; Cargo never writes one.
                let bare = if self == Ecosystem::Npm {
                    text.trim_start_matches(['v', '='])
                } else {
                    text
                };
                semver::Version::parse(bare)
                    .map(Version::Semver)
                    .map_err(|e| format!("`{text}` is not a semver version: {e}"))
            }
            Ecosystem::Go => {
                let bare = text.strip_prefix('v').unwrap_or(text);
                let mut version = semver::Version::parse(bare)
                    .map_err(|e| format!("`{text}` is not a Go module version: {e}"))?;
                // `+incompatible` marks a v2+ module without go.mod; it
                // does not change the order.
                version.build = semver::BuildMetadata::EMPTY;
                Ok(Version::Semver(version))
            }
            Ecosystem::PyPi => pep440_rs::Version::from_str(text)
                .map(Version::Pep440)
                .map_err(|e| format!("`{text}` is not a PEP 440 version: {e}")),
        }
    }
}

impl std::fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed version; only versions of one ecosystem are ever compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Semver(semver::Version),
    Pep440(pep440_rs::Version),
}

impl Version {
    /// The order of two versions of the same ecosystem; `None` across
    /// ecosystems (a caller bug, never caused by input).
    pub fn compare(&self, other: &Version) -> Option<Ordering> {
        match (self, other) {
            (Version::Semver(a), Version::Semver(b)) => Some(a.cmp_precedence(b)),
            (Version::Pep440(a), Version::Pep440(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(eco: Ecosystem, a: &str, b: &str) -> Ordering {
        let a = eco.parse(a).expect("a");
        let b = eco.parse(b).expect("b");
        a.compare(&b).expect("same ecosystem")
    }

    #[test]
    fn semver_pre_releases_sort_before_their_release() {
        assert_eq!(cmp(Ecosystem::Npm, "1.0.0-rc.1", "1.0.0"), Ordering::Less);
        assert_eq!(
            cmp(Ecosystem::CratesIo, "1.0.0-alpha.2", "1.0.0-alpha.10"),
            Ordering::Less
        );
        assert_eq!(cmp(Ecosystem::Npm, "v2.0.0", "2.0.0"), Ordering::Equal);
    }

    #[test]
    fn python_epochs_and_post_releases_follow_pep_440() {
        assert_eq!(cmp(Ecosystem::PyPi, "1!1.0", "2024.1"), Ordering::Greater);
        assert_eq!(cmp(Ecosystem::PyPi, "1.0.post1", "1.0"), Ordering::Greater);
        assert_eq!(cmp(Ecosystem::PyPi, "1.0rc1", "1.0"), Ordering::Less);
        assert_eq!(cmp(Ecosystem::PyPi, "1.0.dev1", "1.0a1"), Ordering::Less);
        assert_eq!(cmp(Ecosystem::PyPi, "1.0", "1.0.0"), Ordering::Equal);
    }

    #[test]
    fn go_pseudo_versions_and_incompatible_compare_as_semver() {
        assert_eq!(
            cmp(
                Ecosystem::Go,
                "v0.0.0-20200101000000-abcdefabcdef",
                "v0.0.1"
            ),
            Ordering::Less
        );
        assert_eq!(
            cmp(Ecosystem::Go, "v2.0.0+incompatible", "2.0.0"),
            Ordering::Equal
        );
    }

    #[test]
    fn pypi_names_are_normalized_per_pep_503() {
        assert_eq!(Ecosystem::PyPi.normalize_name("Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(Ecosystem::PyPi.normalize_name("foo--bar"), "foo-bar");
        assert_eq!(Ecosystem::Npm.normalize_name("@Scope/X"), "@Scope/X");
    }

    #[test]
    fn garbage_versions_are_refused_with_the_text() {
        let error = Ecosystem::CratesIo.parse("1.x").expect_err("not semver");
        assert!(error.contains("1.x"), "{error}");
        assert!(Ecosystem::PyPi.parse("not a version").is_err());
    }
}
