//! Lockfile readers: each turns one file into the exact package versions
//! it pins. A malformed file is an error naming the file and the line; an
//! entry that pins nothing matchable (a git or path dependency, an
//! unpinned requirement) becomes a note instead of a guess.

use super::version::Ecosystem;
use crate::HardenError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// One pinned package version found in a lockfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub ecosystem: Ecosystem,
    pub name: String,
    pub version: String,
    /// The lockfile, relative to the scanned folder.
    pub file: String,
    /// 1-based line of the entry in that file.
    pub line: usize,
}

/// What one lockfile yielded.
#[derive(Debug, Default)]
pub struct Parsed {
    pub packages: Vec<Package>,
    /// Entries that could not be matched, and why.
    pub notes: Vec<String>,
}

/// A lockfile reader: (path for errors, path for reports, text).
pub type Reader = fn(&Path, &str, &str) -> Result<Parsed, HardenError>;

/// The reader for a file name, if it is a lockfile we know.
pub fn kind_of(file_name: &str) -> Option<Reader> {
    match file_name {
        "package-lock.json" | "npm-shrinkwrap.json" => Some(npm_lock),
        "yarn.lock" => Some(yarn_lock),
        "poetry.lock" => Some(poetry_lock),
        "Cargo.lock" => Some(cargo_lock),
        "go.sum" => Some(go_sum),
        name if name.starts_with("requirements") && name.ends_with(".txt") => Some(requirements),
        _ => None,
    }
}

fn package(ecosystem: Ecosystem, name: &str, version: &str, file: &str, line: usize) -> Package {
    Package {
        ecosystem,
        name: name.to_owned(),
        version: version.to_owned(),
        file: file.to_owned(),
        line,
    }
}

/// Lines where each `"key": {` of a pretty-printed JSON object opens.
fn json_key_lines(text: &str) -> HashMap<&str, usize> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('"') {
            if let Some((key, tail)) = rest.split_once('"') {
                if tail.trim_start().starts_with(':') {
                    out.entry(key).or_insert(n + 1);
                }
            }
        }
    }
    out
}

/// package-lock.json and npm-shrinkwrap.json, lockfile versions 1 to 3.
pub fn npm_lock(path: &Path, rel: &str, text: &str) -> Result<Parsed, HardenError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| HardenError::parse(path, e.line(), format!("not valid JSON: {e}")))?;
    let Some(root) = value.as_object() else {
        return Err(HardenError::parse(
            path,
            1,
            "the top level must be an object",
        ));
    };
    let lines = json_key_lines(text);
    let mut out = Parsed::default();
    let add = |name: &str, version: &str, key: &str, out: &mut Parsed| {
        let line = lines.get(key).copied().unwrap_or(1);
        if Ecosystem::Npm.parse(version).is_ok() {
            out.packages
                .push(package(Ecosystem::Npm, name, version, rel, line));
        } else {
            out.notes.push(format!(
                "{rel}:{line}: {name} `{version}` is not a registry version; not checked"
            ));
        }
    };

    if let Some(packages) = root.get("packages").and_then(|p| p.as_object()) {
        // Lockfile v2/v3: keys are install paths.
        for (key, entry) in packages {
            if key.is_empty() || entry.get("link").and_then(|l| l.as_bool()) == Some(true) {
                continue;
            }
            let Some(at) = key.rfind("node_modules/") else {
                continue; // a workspace folder, not an installed package
            };
            let name = entry
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or(&key[at + "node_modules/".len()..]);
            match entry.get("version").and_then(|v| v.as_str()) {
                Some(version) => add(name, version, key, &mut out),
                None => {
                    let line = lines.get(key.as_str()).copied().unwrap_or(1);
                    return Err(HardenError::parse(
                        path,
                        line,
                        format!("`{key}` has no version"),
                    ));
                }
            }
        }
    } else if let Some(deps) = root.get("dependencies").and_then(|d| d.as_object()) {
        // Lockfile v1: nested `dependencies` by name.
        let mut stack: Vec<&serde_json::Map<String, serde_json::Value>> = vec![deps];
        while let Some(level) = stack.pop() {
            for (name, entry) in level {
                let Some(version) = entry.get("version").and_then(|v| v.as_str()) else {
                    let line = lines.get(name.as_str()).copied().unwrap_or(1);
                    return Err(HardenError::parse(
                        path,
                        line,
                        format!("`{name}` has no version"),
                    ));
                };
                add(name, version, name, &mut out);
                if let Some(nested) = entry.get("dependencies").and_then(|d| d.as_object()) {
                    stack.push(nested);
                }
            }
        }
    } else {
        return Err(HardenError::parse(
            path,
            1,
            "neither `packages` nor `dependencies`: not an npm lockfile",
        ));
    }
    Ok(out)
}

/// yarn.lock, classic (v1) and Berry (YAML) formats.
pub fn yarn_lock(path: &Path, rel: &str, text: &str) -> Result<Parsed, HardenError> {
    let mut out = Parsed::default();
    // (name, header line) of the entry being read.
    let mut current: Option<(String, usize)> = None;
    let finish = |current: &mut Option<(String, usize)>| -> Result<(), HardenError> {
        match current.take() {
            Some((name, line)) => Err(HardenError::parse(
                path,
                line,
                format!("entry `{name}` has no version"),
            )),
            None => Ok(()),
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        if !raw.starts_with(' ') {
            finish(&mut current)?;
            let Some(header) = raw.trim_end().strip_suffix(':') else {
                return Err(HardenError::parse(
                    path,
                    line,
                    "expected `pattern:` starting an entry",
                ));
            };
            let first = header
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"');
            if first == "__metadata" {
                continue;
            }
            let at = first
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == '@')
                .map(|(i, _)| i);
            let Some(at) = at else {
                return Err(HardenError::parse(
                    path,
                    line,
                    format!("`{first}` is not NAME@RANGE"),
                ));
            };
            current = Some((first[..at].to_owned(), line));
            continue;
        }
        let t = raw.trim();
        let version = t
            .strip_prefix("version ")
            .or_else(|| t.strip_prefix("version:"))
            .map(|v| v.trim().trim_matches('"'));
        if let (Some(version), true) = (version, raw.starts_with("  ") && !raw.starts_with("   ")) {
            let Some((name, header)) = current.take() else {
                continue; // __metadata's version
            };
            if version.ends_with("-use.local") {
                continue; // a workspace package
            }
            if Ecosystem::Npm.parse(version).is_ok() {
                out.packages
                    .push(package(Ecosystem::Npm, &name, version, rel, header));
            } else {
                return Err(HardenError::parse(
                    path,
                    line,
                    format!("`{version}` is not a version"),
                ));
            }
        }
    }
    finish(&mut current)?;
    Ok(out)
}

fn valid_python_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// requirements*.txt: `name[extras]==version` lines (markers and hashes
/// allowed). Unpinned requirements and options become notes.
pub fn requirements(path: &Path, rel: &str, text: &str) -> Result<Parsed, HardenError> {
    let mut out = Parsed::default();
    let mut logical = String::new();
    let mut start = 0;
    for (n, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start = n + 1;
        }
        // A comment starts at `#` at the line start or after whitespace.
        let without_comment = match raw.find(" #").or_else(|| raw.starts_with('#').then_some(0)) {
            Some(at) => &raw[..at],
            None => raw,
        };
        if let Some(continued) = without_comment.trim_end().strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(without_comment);
        let entry = std::mem::take(&mut logical);
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        // Limitation: `-r`/`-c` includes are noted, not followed (reading
        // them relative to this file, once each, would lift it).
        if entry.starts_with('-') || entry.contains("://") {
            out.notes.push(format!(
                "{rel}:{start}: `{}` is an option or URL; not followed",
                entry.split_whitespace().next().unwrap_or(entry)
            ));
            continue;
        }
        let spec = entry.split(';').next().unwrap_or("");
        let spec = spec.split(" --").next().unwrap_or("");
        let spec: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
        let name_end = spec
            .find(['[', '=', '<', '>', '!', '~', '@'])
            .unwrap_or(spec.len());
        let name = &spec[..name_end];
        if !valid_python_name(name) {
            return Err(HardenError::parse(
                path,
                start,
                format!("`{entry}` is not a requirement (NAME==VERSION)"),
            ));
        }
        let rest = &spec[name_end..];
        let rest = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((_, after)) => after,
                None => {
                    return Err(HardenError::parse(path, start, "unclosed `[` of extras"));
                }
            },
            None => rest,
        };
        let pinned = rest
            .strip_prefix("===")
            .or_else(|| rest.strip_prefix("=="))
            .filter(|v| !v.contains([',', '*', '<', '>', '~', '=']));
        match pinned {
            Some(version) => {
                if Ecosystem::PyPi.parse(version).is_err() {
                    return Err(HardenError::parse(
                        path,
                        start,
                        format!("`{version}` is not a PEP 440 version"),
                    ));
                }
                out.packages
                    .push(package(Ecosystem::PyPi, name, version, rel, start));
            }
            None => out.notes.push(format!(
                "{rel}:{start}: {name} is not pinned with ==; not checked"
            )),
        }
    }
    Ok(out)
}

/// The 1-based line of a TOML error.
fn toml_error(path: &Path, text: &str, e: toml::de::Error) -> HardenError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(1);
    HardenError::parse(path, line, e.message().to_owned())
}

/// Lines of each `name = "X"` inside `[[package]]` tables, in order.
fn toml_package_lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim() == "[[package]]" {
            out.push(n + 1);
        }
    }
    out
}

#[derive(Deserialize)]
struct TomlLock {
    #[serde(default)]
    package: Vec<TomlPackage>,
}

#[derive(Deserialize)]
struct TomlPackage {
    name: String,
    version: String,
    /// Cargo: `registry+...` or `git+...`; poetry: a table.
    source: Option<toml::Value>,
}

fn toml_lock(
    path: &Path,
    rel: &str,
    text: &str,
    eco: Ecosystem,
    from_registry: fn(&Option<toml::Value>) -> bool,
) -> Result<Parsed, HardenError> {
    let lock: TomlLock = toml::from_str(text).map_err(|e| toml_error(path, text, e))?;
    let lines = toml_package_lines(text);
    let mut out = Parsed::default();
    for (i, p) in lock.package.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(1);
        if !from_registry(&p.source) {
            out.notes.push(format!(
                "{rel}:{line}: {} is not from the registry; not checked",
                p.name
            ));
            continue;
        }
        if let Err(e) = eco.parse(&p.version) {
            return Err(HardenError::parse(path, line, format!("{}: {e}", p.name)));
        }
        out.packages
            .push(package(eco, &p.name, &p.version, rel, line));
    }
    Ok(out)
}

/// Cargo.lock: registry packages (workspace and git crates are skipped).
pub fn cargo_lock(path: &Path, rel: &str, text: &str) -> Result<Parsed, HardenError> {
    toml_lock(path, rel, text, Ecosystem::CratesIo, |source| {
        source
            .as_ref()
            .and_then(|s| s.as_str())
            .is_some_and(|s| s.starts_with("registry+") || s.starts_with("sparse+"))
    })
}

/// poetry.lock: packages from PyPI or a mirror (not git, path or URL).
pub fn poetry_lock(path: &Path, rel: &str, text: &str) -> Result<Parsed, HardenError> {
    toml_lock(path, rel, text, Ecosystem::PyPi, |source| {
        let kind = source
            .as_ref()
            .and_then(|s| s.get("type"))
            .and_then(|t| t.as_str());
        !matches!(kind, Some("git" | "directory" | "file" | "url"))
    })
}

/// go.sum: each module version whose code is hashed (a `/go.mod`-only
/// line means the module took part in resolution but was not built).
pub fn go_sum(path: &Path, rel: &str, text: &str) -> Result<Parsed, HardenError> {
    let mut out = Parsed::default();
    let mut seen = BTreeSet::new();
    for (n, raw) in text.lines().enumerate() {
        let fields: Vec<&str> = raw.split_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            [module, version, hash] if hash.starts_with("h1:") => {
                if version.ends_with("/go.mod") {
                    continue;
                }
                if let Err(e) = Ecosystem::Go.parse(version) {
                    return Err(HardenError::parse(path, n + 1, e));
                }
                if seen.insert((module.to_string(), version.to_string())) {
                    out.packages
                        .push(package(Ecosystem::Go, module, version, rel, n + 1));
                }
            }
            _ => {
                return Err(HardenError::parse(
                    path,
                    n + 1,
                    "expected `MODULE VERSION h1:HASH`",
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
