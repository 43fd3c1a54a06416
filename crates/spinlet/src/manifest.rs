//! The app manifest: what `spinforge.toml` in a release folder may say, how a
//! start command is detected when there is no manifest, and where the program
//! it names lives.
//!
//! This module only reads and checks. Starting the process, the sandbox and
//! health checks belong to the supervisor.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The manifest's file name at the top of a release folder.
pub const MANIFEST_FILE: &str = "spinforge.toml";

const PACKAGE_JSON: &str = "package.json";

/// Manifests and package.json files larger than this are refused unparsed.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

const MAX_ARGS: usize = 64;
const MAX_ARG_BYTES: usize = 4096;
const MAX_HEALTH_PATH_CHARS: usize = 1024;
const MAX_ENV_ENTRIES: usize = 128;
const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
const RESERVED_ENV: [&str; 2] = ["PORT", "HOST"];
const RESERVED_ENV_PREFIX: &str = "SPINFORGE_";

/// How SpinForge runs one release of an app.
///
/// A value of this type has passed every check in this module: the command
/// has at least one argument and every duration is within its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The argv to start, never run through a shell. Never empty.
    pub command: Vec<String>,
    /// Path to `GET` for readiness, starting with `/`. `None` means the app is
    /// ready as soon as its port accepts connections.
    pub health_path: Option<String>,
    /// How long the app may take to become ready (1 s to 600 s, default 30 s).
    pub start_timeout: Duration,
    /// How long without requests before a scale-to-zero app is stopped
    /// (1 s to 7 days, default 300 s).
    pub idle_timeout: Duration,
    /// Time between SIGTERM and SIGKILL (0 s to 300 s, default 10 s).
    pub stop_grace: Duration,
    /// 0 scales to zero when idle (the default), 1 keeps one instance on.
    pub min_instances: u32,
    /// Extra environment variables for the app. `PORT`, `HOST` and
    /// `SPINFORGE_*` are never here: SpinForge sets those itself.
    pub env: BTreeMap<String, String>,
    /// Resource limits; `None` fields fall back to the server's defaults.
    pub limits: Limits,
    /// True if the release had no manifest and the command was detected.
    pub detected: bool,
}

/// Per-app resource limits. `None` means the server's default applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory ceiling (MiB, 16 to 65536).
    pub memory_mb: Option<u32>,
    /// CPU share (percent of one core, 1 to 10000).
    pub cpu_percent: Option<u32>,
    /// Processes and threads the app may have at once (1 to 4096).
    pub max_processes: Option<u32>,
    /// Open file descriptors (16 to 1048576).
    pub max_open_files: Option<u32>,
}

/// Why a release's manifest or start command was refused.
///
/// Every variant except [`ManifestError::Io`] is the client's fault: the
/// bundle they uploaded says something we cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Client: the manifest is not valid TOML.
    #[error("spinforge.toml line {line}: {message}")]
    Syntax { line: usize, message: String },

    /// Client: the manifest has a key this version does not know.
    #[error("spinforge.toml: unknown key `{key}`")]
    UnknownKey { key: String },

    /// Client: a required key is absent.
    #[error("spinforge.toml: `{key}` is required")]
    Missing { key: String },

    /// Client: a key has a value of the wrong type or out of range.
    #[error("spinforge.toml: `{key}` {rule}")]
    Invalid { key: String, rule: String },

    /// Client: a file we read from the bundle cannot be used at all
    /// (not a regular file, too large, not UTF-8, not valid JSON).
    #[error("{file}: {problem}")]
    BadFile { file: &'static str, problem: String },

    /// Client: there is no manifest and no rule found a start command.
    #[error(
        "no spinforge.toml, and no start command could be detected: add spinforge.toml \
         with app.command, or a package.json start script, main.py/app.py, or a single \
         executable"
    )]
    NoCommand,

    /// Client: the program is neither a file in the bundle nor on PATH.
    #[error("command `{program}` is not in the bundle and not on the server's PATH")]
    CommandNotFound { program: String },

    /// Client: the program is a file in the bundle without an execute bit.
    #[error("command `{program}` is in the bundle but not executable (chmod +x it)")]
    NotExecutable { program: String },

    /// Our side: the release folder could not be read.
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl ManifestError {
    /// The dotted manifest key at fault, e.g. `app.idle_timeout_secs`, if the
    /// error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ManifestError::UnknownKey { key }
            | ManifestError::Missing { key }
            | ManifestError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// True if and only if the bundle is at fault, so the API answers 4xx.
    ///
    /// A bare program missing from PATH counts as the client's: they chose a
    /// program this server does not have.
    pub fn is_client_fault(&self) -> bool {
        !matches!(self, ManifestError::Io { .. })
    }
}

/// Reads the manifest of the release folder `release_dir`, or detects a start
/// command if it has none, then checks that the program exists (see
/// [`resolve_program`]).
///
/// Without a manifest the first rule that matches wins: a `package.json`
/// `scripts.start` gives `npm start`; its `main`, if that file exists, gives
/// `node MAIN`; then `python3 main.py`, then `python3 app.py`; then the one
/// executable regular file at the top level (dotfiles ignored), `./NAME`.
pub fn load(release_dir: &Path) -> Result<Manifest, ManifestError> {
    let manifest = match read_bundle_file(release_dir, MANIFEST_FILE)? {
        Some(text) => parse(&text)?,
        None => Manifest {
            detected: true,
            ..Manifest::with_command(detect_command(release_dir)?)
        },
    };

    if let Some(program) = manifest.command.first() {
        resolve_program(release_dir, program)?;
    }
    Ok(manifest)
}

/// Parses and checks manifest text. The program is not looked up.
pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(MANIFEST_FILE));
    }
    let root: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;

    let mut manifest = Manifest::with_command(Vec::new());
    let mut command = None;
    for (name, value) in &root {
        match name.as_str() {
            "app" => command = parse_app(as_table("app", value)?, &mut manifest)?,
            "env" => manifest.env = parse_env(as_table("env", value)?)?,
            "limits" => manifest.limits = parse_limits(as_table("limits", value)?)?,
            _ => return Err(unknown_key(None, name)),
        }
    }

    manifest.command = command.ok_or_else(|| ManifestError::Missing {
        key: "app.command".to_owned(),
    })?;
    Ok(manifest)
}

/// Finds the file that `program` (a manifest's `argv[0]`) names.
///
/// A program with a `/` is a path inside the bundle: it must stay inside
/// `release_dir` after symlinks are followed, and be an executable regular
/// file. A bare name is looked up only in the server process's `PATH`, like a
/// shell does; the bundle's top level is not searched.
pub fn resolve_program(release_dir: &Path, program: &str) -> Result<PathBuf, ManifestError> {
    resolve_program_on(release_dir, program, std::env::var_os("PATH").as_deref())
}

impl Manifest {
    fn with_command(command: Vec<String>) -> Manifest {
        Manifest {
            command,
            health_path: None,
            start_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(10),
            min_instances: 0,
            env: BTreeMap::new(),
            limits: Limits::default(),
            detected: false,
        }
    }
}

/// Reads `[app]` into `manifest` and returns the command, if it was given.
fn parse_app(
    table: &toml::Table,
    manifest: &mut Manifest,
) -> Result<Option<Vec<String>>, ManifestError> {
    let mut command = None;
    for (name, value) in table {
        let key = dotted("app", name);
        match name.as_str() {
            "command" => command = Some(parse_command(value)?),
            "health_path" => manifest.health_path = Some(parse_health_path(value)?),
            "start_timeout_secs" => manifest.start_timeout = seconds(&key, value, 1, 600)?,
            "idle_timeout_secs" => manifest.idle_timeout = seconds(&key, value, 1, 604_800)?,
            "stop_grace_secs" => manifest.stop_grace = seconds(&key, value, 0, 300)?,
            "min_instances" => {
                manifest.min_instances = match value {
                    toml::Value::Integer(0) => 0,
                    toml::Value::Integer(1) => 1,
                    _ => return Err(invalid(&key, "must be 0 or 1")),
                }
            }
            _ => return Err(unknown_key(Some("app"), name)),
        }
    }
    Ok(command)
}

fn parse_command(value: &toml::Value) -> Result<Vec<String>, ManifestError> {
    const KEY: &str = "app.command";
    let wrong_type = || invalid(KEY, "must be a string or an array of strings");

    // A string is split on whitespace only: no quoting, no shell.
    let argv: Vec<String> = match value {
        toml::Value::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(wrong_type))
            .collect::<Result<_, _>>()?,
        _ => return Err(wrong_type()),
    };

    if argv.is_empty() || argv.len() > MAX_ARGS {
        return Err(invalid(
            KEY,
            format!("must have between 1 and {MAX_ARGS} arguments"),
        ));
    }
    for (index, arg) in argv.iter().enumerate() {
        let number = index + 1;
        if arg.len() > MAX_ARG_BYTES {
            let rule = format!("argument {number} is longer than {MAX_ARG_BYTES} bytes");
            return Err(invalid(KEY, rule));
        }
        if arg.contains('\0') {
            return Err(invalid(
                KEY,
                format!("argument {number} contains a NUL byte"),
            ));
        }
    }
    if argv.first().is_none_or(|program| program.is_empty()) {
        return Err(invalid(KEY, "must not start with an empty program name"));
    }
    Ok(argv)
}

fn parse_health_path(value: &toml::Value) -> Result<String, ManifestError> {
    const KEY: &str = "app.health_path";
    let Some(path) = value.as_str() else {
        return Err(invalid(KEY, "must be a string"));
    };
    if !path.starts_with('/') {
        return Err(invalid(KEY, "must start with `/`"));
    }
    if path.chars().count() > MAX_HEALTH_PATH_CHARS {
        let rule = format!("must be at most {MAX_HEALTH_PATH_CHARS} characters");
        return Err(invalid(KEY, rule));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            KEY,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(path.to_owned())
}

/// Reads `[env]`. Integers and booleans are accepted and turned into their
/// TOML spelling, since `WORKERS = 4` is what people write.
fn parse_env(table: &toml::Table) -> Result<BTreeMap<String, String>, ManifestError> {
    if table.len() > MAX_ENV_ENTRIES {
        let rule = format!("must have at most {MAX_ENV_ENTRIES} entries");
        return Err(invalid("env", rule));
    }

    let mut env = BTreeMap::new();
    for (name, value) in table {
        let key = dotted("env", name);
        if !is_env_name(name) {
            let rule = "is not a valid variable name (letters, digits and `_`, \
                        not starting with a digit)";
            return Err(invalid(&key, rule));
        }
        if RESERVED_ENV.contains(&name.as_str()) || name.starts_with(RESERVED_ENV_PREFIX) {
            let rule = "is reserved: SpinForge sets PORT, HOST and SPINFORGE_* itself";
            return Err(invalid(&key, rule));
        }
        let value = match value {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            _ => return Err(invalid(&key, "must be a string")),
        };
        if value.len() > MAX_ENV_VALUE_BYTES {
            let rule = format!("must be at most {MAX_ENV_VALUE_BYTES} bytes");
            return Err(invalid(&key, rule));
        }
        if value.contains('\0') {
            return Err(invalid(&key, "must not contain a NUL byte"));
        }
        env.insert(name.clone(), value);
    }
    Ok(env)
}

fn parse_limits(table: &toml::Table) -> Result<Limits, ManifestError> {
    let mut limits = Limits::default();
    for (name, value) in table {
        let key = dotted("limits", name);
        let (slot, min, max) = match name.as_str() {
            "memory_mb" => (&mut limits.memory_mb, 16, 65_536),
            "cpu_percent" => (&mut limits.cpu_percent, 1, 10_000),
            "max_processes" => (&mut limits.max_processes, 1, 4096),
            "max_open_files" => (&mut limits.max_open_files, 16, 1_048_576),
            _ => return Err(unknown_key(Some("limits"), name)),
        };
        let number = whole_number(&key, value, min, max)?;
        *slot = Some(u32::try_from(number).map_err(|_| range_error(&key, min, max))?);
    }
    Ok(limits)
}

fn seconds(key: &str, value: &toml::Value, min: u64, max: u64) -> Result<Duration, ManifestError> {
    whole_number(key, value, min, max).map(Duration::from_secs)
}

/// A TOML integer within `min..=max`. Floats, strings and negative numbers
/// are refused with the range in the message.
fn whole_number(key: &str, value: &toml::Value, min: u64, max: u64) -> Result<u64, ManifestError> {
    let toml::Value::Integer(number) = value else {
        let rule = format!("must be a whole number between {min} and {max}");
        return Err(invalid(key, rule));
    };
    u64::try_from(*number)
        .ok()
        .filter(|number| (min..=max).contains(number))
        .ok_or_else(|| range_error(key, min, max))
}

fn range_error(key: &str, min: u64, max: u64) -> ManifestError {
    invalid(key, format!("must be between {min} and {max}"))
}

fn as_table<'a>(key: &str, value: &'a toml::Value) -> Result<&'a toml::Table, ManifestError> {
    value
        .as_table()
        .ok_or_else(|| invalid(key, "must be a table"))
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The dotted key for `name` under `parent`, quoted like TOML would when it
/// is not a bare key. Long names are cut, so an error message stays short.
fn dotted(parent: &str, name: &str) -> String {
    const MAX_SHOWN: usize = 64;
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let mut shown: String = name.chars().take(MAX_SHOWN).collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    let shown = if bare {
        shown
    } else {
        format!("\"{}\"", shown.escape_debug())
    };
    if parent.is_empty() {
        shown
    } else {
        format!("{parent}.{shown}")
    }
}

fn unknown_key(parent: Option<&str>, name: &str) -> ManifestError {
    ManifestError::UnknownKey {
        key: dotted(parent.unwrap_or_default(), name),
    }
}

fn invalid(key: &str, rule: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        key: key.to_owned(),
        rule: rule.into(),
    }
}

fn too_large(file: &'static str) -> ManifestError {
    ManifestError::BadFile {
        file,
        problem: format!("is larger than {MAX_FILE_BYTES} bytes"),
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ManifestError {
    let offset = error.span().map_or(0, |span| span.start);
    let before = text.get(..offset).unwrap_or(text);
    ManifestError::Syntax {
        line: before.matches('\n').count() + 1,
        message: error.message().trim().to_owned(),
    }
}

/// Reads the bundle's top-level file `name` as text, or `None` if it does not
/// exist. Symlinks are refused, so a bundle cannot make us read (and quote
/// back in an error) a file of the server's.
fn read_bundle_file(dir: &Path, name: &'static str) -> Result<Option<String>, ManifestError> {
    let path = dir.join(name);
    let io_error = |source| ManifestError::Io {
        path: path.clone(),
        source,
    };
    let bad_file = |problem: &str| ManifestError::BadFile {
        file: name,
        problem: problem.to_owned(),
    };

    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    if !meta.is_file() {
        return Err(bad_file(
            "must be a regular file, not a symlink or directory",
        ));
    }

    let mut bytes = Vec::new();
    fs::File::open(&path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(name));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| bad_file("is not valid UTF-8"))
}

/// Picks a start command for a bundle without a manifest, by the rules in
/// the order documented on [`load`].
fn detect_command(dir: &Path) -> Result<Vec<String>, ManifestError> {
    let argv = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect();

    if let Some(text) = read_bundle_file(dir, PACKAGE_JSON)? {
        let package: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ManifestError::BadFile {
                file: PACKAGE_JSON,
                problem: format!("is not valid JSON: {e}"),
            })?;
        let start = package.pointer("/scripts/start").and_then(|v| v.as_str());
        if start.is_some_and(|script| !script.trim().is_empty()) {
            return Ok(argv(&["npm", "start"]));
        }
        let main = package.get("main").and_then(|v| v.as_str());
        if let Some(main) = main.filter(|main| is_file_inside(dir, main)) {
            return Ok(argv(&["node", main]));
        }
    }

    for script in ["main.py", "app.py"] {
        if is_file_inside(dir, script) {
            return Ok(argv(&["python3", script]));
        }
    }

    let entries = fs::read_dir(dir).map_err(|source| ManifestError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut executables = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !name.starts_with('.') && meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            executables.push(name);
        }
    }
    match executables.as_slice() {
        [only] => Ok(vec![format!("./{only}")]),
        _ => Err(ManifestError::NoCommand),
    }
}

/// True if and only if `relative` names a regular file that stays inside
/// `dir` once symlinks are followed.
fn is_file_inside(dir: &Path, relative: &str) -> bool {
    inside_bundle(dir, relative).is_some_and(|(_, meta)| meta.is_file())
}

/// The canonical path and metadata of `relative` under `dir`, if it exists and
/// does not escape `dir`. An absolute `relative` escapes unless it points back
/// in.
fn inside_bundle(dir: &Path, relative: &str) -> Option<(PathBuf, fs::Metadata)> {
    let root = dir.canonicalize().ok()?;
    let target = root.join(relative).canonicalize().ok()?;
    if !target.starts_with(&root) {
        return None;
    }
    let meta = fs::metadata(&target).ok()?;
    Some((target, meta))
}

fn resolve_program_on(
    release_dir: &Path,
    program: &str,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, ManifestError> {
    let not_found = || ManifestError::CommandNotFound {
        program: program.to_owned(),
    };
    if program.is_empty() {
        return Err(not_found());
    }

    if program.contains('/') {
        // Our own folder must be readable; a bad path in it is the client's.
        release_dir
            .canonicalize()
            .map_err(|source| ManifestError::Io {
                path: release_dir.to_owned(),
                source,
            })?;
        let (target, meta) = inside_bundle(release_dir, program).ok_or_else(not_found)?;
        if !meta.is_file() {
            return Err(not_found());
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(ManifestError::NotExecutable {
                program: program.to_owned(),
            });
        }
        return Ok(target);
    }

    // Relative PATH entries would resolve against the server's working
    // directory, which is never what a manifest means.
    std::env::split_paths(path_var.unwrap_or_default())
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release folder holding `files` (name, contents, executable).
    fn bundle(files: &[(&str, &str, bool)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, contents, executable) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create fixture dir");
            }
            fs::write(&path, contents).expect("write fixture file");
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        dir
    }

    fn parse_err(text: &str) -> ManifestError {
        parse(text).expect_err("manifest should be refused")
    }

    fn with_app(line: &str) -> String {
        format!("[app]\ncommand = \"sh\"\n{line}\n")
    }

    /// The command detected in a bundle holding `files`.
    fn detected(files: &[(&str, &str, bool)]) -> Vec<String> {
        let dir = bundle(files);
        detect_command(dir.path()).expect("a command is detected")
    }

    #[test]
    fn defaults_apply_when_only_the_command_is_given() {
        let manifest = parse("[app]\ncommand = [\"python3\", \"app.py\"]\n").expect("parse");
        assert_eq!(manifest.command, ["python3", "app.py"]);
        assert_eq!(manifest.health_path, None);
        assert_eq!(manifest.start_timeout, Duration::from_secs(30));
        assert_eq!(manifest.idle_timeout, Duration::from_secs(300));
        assert_eq!(manifest.stop_grace, Duration::from_secs(10));
        assert_eq!(manifest.min_instances, 0);
        assert!(manifest.env.is_empty());
        assert_eq!(manifest.limits, Limits::default());
        assert!(!manifest.detected);
    }

    #[test]
    fn every_documented_key_is_read() {
        let text = r#"
            [app]
            command = ["python3", "app.py"]
            health_path = "/health"
            start_timeout_secs = 5
            idle_timeout_secs = 604800
            stop_grace_secs = 0
            min_instances = 1
            [env]
            GREETING = "hi"
            WORKERS = 4
            DEBUG = false
            [limits]
            memory_mb = 256
            cpu_percent = 50
            max_processes = 64
            max_open_files = 1024
        "#;
        let manifest = parse(text).expect("parse");
        assert_eq!(manifest.health_path.as_deref(), Some("/health"));
        assert_eq!(manifest.start_timeout, Duration::from_secs(5));
        assert_eq!(manifest.idle_timeout, Duration::from_secs(604_800));
        assert_eq!(manifest.stop_grace, Duration::ZERO);
        assert_eq!(manifest.min_instances, 1);
        assert_eq!(manifest.env["GREETING"], "hi");
        assert_eq!(manifest.env["WORKERS"], "4");
        assert_eq!(manifest.env["DEBUG"], "false");
        let limits = Limits {
            memory_mb: Some(256),
            cpu_percent: Some(50),
            max_processes: Some(64),
            max_open_files: Some(1024),
        };
        assert_eq!(manifest.limits, limits);
    }

    #[test]
    fn string_command_is_split_on_whitespace_without_a_shell() {
        let manifest =
            parse("[app]\ncommand = \"  node  server.js\t'a b' $HOME \"\n").expect("parse");
        assert_eq!(manifest.command, ["node", "server.js", "'a", "b'", "$HOME"]);
    }

    #[test]
    fn array_command_keeps_spaces_inside_arguments() {
        let manifest = parse("[app]\ncommand = [\"./run\", \"a b\"]\n").expect("parse");
        assert_eq!(manifest.command, ["./run", "a b"]);
    }

    #[test]
    fn every_range_rule_names_its_key_and_bounds() {
        let cases = [
            ("start_timeout_secs = 0", "between 1 and 600"),
            ("start_timeout_secs = 601", "between 1 and 600"),
            ("start_timeout_secs = \"30\"", "whole number"),
            ("idle_timeout_secs = 0", "between 1 and 604800"),
            ("idle_timeout_secs = 604801", "between 1 and 604800"),
            ("stop_grace_secs = -1", "between 0 and 300"),
            ("stop_grace_secs = 301", "between 0 and 300"),
            ("stop_grace_secs = 1.5", "whole number"),
            ("min_instances = 2", "must be 0 or 1"),
            ("min_instances = true", "must be 0 or 1"),
        ];
        for (line, rule) in cases {
            let name = line.split(' ').next().unwrap_or_default();
            let error = parse_err(&with_app(line));
            assert_eq!(error.key(), Some(format!("app.{name}").as_str()), "{line}");
            assert!(error.to_string().contains(rule), "{line}: {error}");
            assert!(error.is_client_fault());
        }

        let limits = [
            ("memory_mb", 15, 65_537),
            ("cpu_percent", 0, 10_001),
            ("max_processes", 0, 4097),
            ("max_open_files", 15, 1_048_577),
        ];
        for (name, low, high) in limits {
            let key = format!("limits.{name}");
            let values = [low.to_string(), high.to_string(), "-5".into()];
            for value in values.iter().map(String::as_str).chain(["\"64\"", "1.0"]) {
                let text = format!("{}[limits]\n{name} = {value}\n", with_app(""));
                assert_eq!(parse_err(&text).key(), Some(key.as_str()), "{text}");
            }
            let text = format!("{}[limits]\n{name} = {}\n", with_app(""), low + 1);
            assert!(parse(&text).is_ok(), "{text}");
        }
    }

    #[test]
    fn range_errors_read_as_documented() {
        let error = parse_err(&with_app("idle_timeout_secs = 0"));
        assert_eq!(
            error.to_string(),
            "spinforge.toml: `app.idle_timeout_secs` must be between 1 and 604800"
        );
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let error = parse_err(&format!("{}[envv]\nA = \"b\"\n", with_app("")));
        assert_eq!(error.key(), Some("envv"));
        assert_eq!(error.to_string(), "spinforge.toml: unknown key `envv`");
    }

    #[test]
    fn unknown_nested_keys_are_named_with_their_table() {
        let error = parse_err("[app]\ncomand = [\"sh\"]\n");
        assert_eq!(
            error.to_string(),
            "spinforge.toml: unknown key `app.comand`"
        );

        let error = parse_err(&format!("{}[limits]\nmemroy_mb = 1\n", with_app("")));
        assert_eq!(error.key(), Some("limits.memroy_mb"));

        let error = parse_err(&with_app("\"odd key\" = 1"));
        assert_eq!(error.key(), Some("app.\"odd key\""));
    }

    #[test]
    fn missing_command_is_named() {
        let error = parse_err("[app]\nhealth_path = \"/\"\n");
        assert_eq!(error.key(), Some("app.command"));
        assert_eq!(parse_err("").key(), Some("app.command"));
    }

    #[test]
    fn a_table_given_as_a_value_is_refused() {
        assert_eq!(parse_err("app = 1\n").key(), Some("app"));
        assert_eq!(parse_err("env = \"x\"\n").key(), Some("env"));
    }

    #[test]
    fn syntax_errors_report_the_line() {
        let error = parse_err("[app]\ncommand = \"sh\"\nstop_grace_secs = = 3\n");
        assert!(
            matches!(error, ManifestError::Syntax { line: 3, .. }),
            "{error:?}"
        );
        assert!(error.to_string().starts_with("spinforge.toml line 3: "));
        assert_eq!(error.key(), None);
    }

    #[test]
    fn command_shape_rules_are_enforced() {
        let too_many = format!("[{}]", vec!["\"a\""; 65].join(","));
        let too_long = format!("[\"sh\", \"{}\"]", "x".repeat(4097));
        let cases = [
            ("[]", "between 1 and 64"),
            ("\"   \"", "between 1 and 64"),
            (too_many.as_str(), "between 1 and 64"),
            (too_long.as_str(), "argument 2 is longer than 4096 bytes"),
            ("[\"sh\", \"a\\u0000b\"]", "argument 2 contains a NUL byte"),
            ("[\"\", \"x\"]", "empty program name"),
            ("[\"sh\", 1]", "string or an array of strings"),
            ("42", "string or an array of strings"),
        ];
        for (command, rule) in cases {
            let error = parse_err(&format!("[app]\ncommand = {command}\n"));
            assert_eq!(error.key(), Some("app.command"), "{command}");
            assert!(error.to_string().contains(rule), "{command}: {error}");
        }
        let max = format!("[{}]", vec!["\"a\""; 64].join(","));
        assert!(parse(&format!("[app]\ncommand = {max}\n")).is_ok());
    }

    #[test]
    fn health_path_rules_are_enforced() {
        let long = format!("\"/{}\"", "a".repeat(1024));
        for bad in [
            "\"health\"",
            "\"\"",
            "\"/a b\"",
            "\"/a\\tb\"",
            "3",
            long.as_str(),
        ] {
            let error = parse_err(&with_app(&format!("health_path = {bad}")));
            assert_eq!(error.key(), Some("app.health_path"), "{bad}");
        }
        let manifest = parse(&with_app("health_path = \"/up?full=1\"")).expect("parse");
        assert_eq!(manifest.health_path.as_deref(), Some("/up?full=1"));
    }

    #[test]
    fn reserved_env_names_are_refused() {
        for name in ["PORT", "HOST", "SPINFORGE_TOKEN", "SPINFORGE_"] {
            let error = parse_err(&format!("{}[env]\n{name} = \"x\"\n", with_app("")));
            assert_eq!(error.key(), Some(format!("env.{name}").as_str()));
            assert!(error.to_string().contains("reserved"), "{error}");
        }
        let fine = format!("{}[env]\nport = \"1\"\nSPINFORGEX = \"1\"\n", with_app(""));
        assert_eq!(parse(&fine).expect("parse").env.len(), 2);
    }

    #[test]
    fn env_names_and_values_are_checked() {
        let long = format!("A = \"{}\"", "v".repeat(32 * 1024 + 1));
        let cases = [
            ("1ABC = \"x\"", "env.1ABC"),
            ("A-B = \"x\"", "env.A-B"),
            ("\"A B\" = \"x\"", "env.\"A B\""),
            ("A = \"x\\u0000\"", "env.A"),
            ("A = 1.5", "env.A"),
            ("A = [\"x\"]", "env.A"),
            (long.as_str(), "env.A"),
        ];
        for (line, key) in cases {
            let error = parse_err(&format!("{}[env]\n{line}\n", with_app("")));
            assert_eq!(error.key(), Some(key), "{line}");
        }

        let many: String = (0..129).map(|i| format!("V{i} = \"x\"\n")).collect();
        let error = parse_err(&format!("{}[env]\n{many}", with_app("")));
        assert_eq!(error.key(), Some("env"));
    }

    #[test]
    fn package_json_start_script_wins_over_everything() {
        let package = r#"{"scripts": {"start": "node x.js"}, "main": "x.js"}"#;
        let files = [
            ("package.json", package, false),
            ("x.js", "", false),
            ("main.py", "", false),
            ("run", "", true),
        ];
        assert_eq!(detected(&files), ["npm", "start"]);
    }

    #[test]
    fn package_json_main_is_used_only_when_the_file_exists() {
        let dir = bundle(&[("package.json", r#"{"main": "server.js"}"#, false)]);
        assert!(matches!(
            detect_command(dir.path()),
            Err(ManifestError::NoCommand)
        ));

        fs::write(dir.path().join("server.js"), "").expect("write");
        let command = detect_command(dir.path()).expect("detect");
        assert_eq!(command, ["node", "server.js"]);
    }

    #[test]
    fn package_json_main_outside_the_bundle_is_ignored() {
        let dir = bundle(&[
            ("release/package.json", r#"{"main": "../secret.js"}"#, false),
            ("secret.js", "", false),
            ("release/app.py", "", false),
        ]);
        let command = detect_command(&dir.path().join("release")).expect("detect");
        assert_eq!(command, ["python3", "app.py"]);
    }

    #[test]
    fn main_py_wins_over_app_py() {
        let files = [
            ("package.json", r#"{"name": "not node"}"#, false),
            ("app.py", "", false),
            ("main.py", "", false),
        ];
        assert_eq!(detected(&files), ["python3", "main.py"]);
    }

    #[test]
    fn app_py_wins_over_an_executable() {
        let files = [("app.py", "", false), ("run", "", true)];
        assert_eq!(detected(&files), ["python3", "app.py"]);
    }

    #[test]
    fn a_single_top_level_executable_is_detected() {
        let files = [
            ("server", "", true),
            (".hidden", "", true),
            ("README", "", false),
            ("bin/tool", "", true),
        ];
        assert_eq!(detected(&files), ["./server"]);
    }

    #[test]
    fn two_executables_or_none_mean_no_command() {
        let two = bundle(&[("a", "", true), ("b", "", true)]);
        let error = detect_command(two.path()).expect_err("ambiguous");
        assert!(matches!(error, ManifestError::NoCommand));
        assert!(error.is_client_fault());

        let none = bundle(&[("index.html", "", false)]);
        assert!(matches!(
            detect_command(none.path()),
            Err(ManifestError::NoCommand)
        ));
    }

    #[test]
    fn invalid_package_json_is_named() {
        let dir = bundle(&[("package.json", "{ nope", false), ("main.py", "", false)]);
        let error = detect_command(dir.path()).expect_err("bad json");
        let message = error.to_string();
        assert!(
            message.starts_with("package.json: is not valid JSON"),
            "{message}"
        );
        assert!(error.is_client_fault());
    }

    #[test]
    fn load_reads_the_manifest_and_marks_it_not_detected() {
        let dir = bundle(&[(MANIFEST_FILE, "[app]\ncommand = \"sh -c true\"\n", false)]);
        let manifest = load(dir.path()).expect("load");
        assert_eq!(manifest.command, ["sh", "-c", "true"]);
        assert!(!manifest.detected);
    }

    #[test]
    fn load_detects_a_command_and_marks_it_detected() {
        let dir = bundle(&[("server", "#!/bin/sh\n", true)]);
        let manifest = load(dir.path()).expect("load");
        assert_eq!(manifest.command, ["./server"]);
        assert!(manifest.detected);
    }

    #[test]
    fn load_refuses_a_symlinked_manifest() {
        let dir = bundle(&[("elsewhere.toml", "[app]\ncommand = \"sh\"\n", false)]);
        let link = dir.path().join(MANIFEST_FILE);
        std::os::unix::fs::symlink(dir.path().join("elsewhere.toml"), link).expect("symlink");
        let error = load(dir.path()).expect_err("symlink");
        assert!(matches!(
            error,
            ManifestError::BadFile {
                file: MANIFEST_FILE,
                ..
            }
        ));
    }

    #[test]
    fn command_missing_from_the_bundle_is_not_found() {
        let dir = bundle(&[(MANIFEST_FILE, "[app]\ncommand = \"./server\"\n", false)]);
        let error = load(dir.path()).expect_err("missing");
        assert_eq!(
            error.to_string(),
            "command `./server` is not in the bundle and not on the server's PATH"
        );
    }

    #[test]
    fn command_escaping_the_bundle_is_not_found() {
        let dir = bundle(&[
            ("outside.sh", "#!/bin/sh\n", true),
            ("release/x", "", false),
        ]);
        let release = dir.path().join("release");
        let error = resolve_program(&release, "../outside.sh").expect_err("escape");
        assert!(matches!(error, ManifestError::CommandNotFound { .. }));

        let outside = dir.path().join("outside.sh");
        let absolute = outside.to_str().expect("utf-8 temp path");
        let error = resolve_program(&release, absolute).expect_err("absolute");
        assert!(matches!(error, ManifestError::CommandNotFound { .. }));

        std::os::unix::fs::symlink(&outside, release.join("link")).expect("symlink");
        let error = resolve_program(&release, "./link").expect_err("symlink escape");
        assert!(matches!(error, ManifestError::CommandNotFound { .. }));
    }

    #[test]
    fn command_inside_the_bundle_resolves_and_must_be_executable() {
        let dir = bundle(&[("bin/server", "", true), ("bin/data", "", false)]);
        let path = resolve_program(dir.path(), "bin/../bin/server").expect("resolve");
        assert!(path.ends_with("bin/server"));

        let error = resolve_program(dir.path(), "./bin/data").expect_err("not executable");
        assert!(matches!(error, ManifestError::NotExecutable { .. }));
        let error = resolve_program(dir.path(), "./bin").expect_err("directory");
        assert!(matches!(error, ManifestError::CommandNotFound { .. }));
    }

    #[test]
    fn bare_commands_are_found_on_the_server_path_only() {
        let dir = bundle(&[("tool", "", true)]);
        let sh = resolve_program(dir.path(), "sh").expect("sh is on PATH");
        assert!(sh.is_absolute());

        // A bare name never means a file in the bundle, like in a shell.
        let error = resolve_program_on(dir.path(), "tool", Some(OsStr::new("/nonexistent")))
            .expect_err("bundle is not searched");
        assert!(matches!(error, ManifestError::CommandNotFound { .. }));

        let bin = bundle(&[("mytool", "", true), ("plain", "", false)]);
        let path_var = std::env::join_paths(["relative", bin.path().to_str().expect("utf-8")])
            .expect("join PATH");
        let found = resolve_program_on(dir.path(), "mytool", Some(&path_var)).expect("found");
        assert_eq!(found, bin.path().join("mytool"));
        let error = resolve_program_on(dir.path(), "plain", Some(&path_var));
        assert!(matches!(error, Err(ManifestError::CommandNotFound { .. })));
    }

    #[test]
    fn io_errors_are_our_fault() {
        let error = load(Path::new("/nonexistent/spinforge-release")).expect_err("no dir");
        assert!(matches!(error, ManifestError::Io { .. }));
        assert!(!error.is_client_fault());
    }
}
