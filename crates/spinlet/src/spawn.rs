//! How a spinlet process comes to life. [`Spawner`] is the one seam the
//! sandbox plugs into: the supervisor decides *when* and *what* to run; a
//! spawner decides *how* (plain process today, namespaces and seccomp
//! with the sandbox issue).

use crate::manifest::Limits;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;

/// Everything needed to start one instance of an app.
#[derive(Debug, Clone)]
pub struct Launch {
    pub site: String,
    pub release: String,
    /// The release folder; the working directory of the app.
    pub dir: PathBuf,
    /// The resolved program (absolute, or found on PATH).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The app's environment, `PORT` and `HOST` included.
    pub env: Vec<(String, String)>,
    pub port: u16,
    /// Parsed and stored now; enforced by the sandbox issue's spawner.
    pub limits: Limits,
    /// A random tag put into the environment as `SPINFORGE_SPINLET`, so a
    /// later start can recognise leftover processes as its own.
    pub tag: String,
}

pub trait Spawner: Send + Sync + 'static {
    /// Starts the process with piped stdout and stderr, in its own process
    /// group (pgid = pid) so the whole tree can be signalled.
    fn spawn(&self, launch: &Launch) -> io::Result<tokio::process::Child>;
}

/// Runs the app as a plain child process of `serve`, with a clean
/// environment and its own process group.
// Limitation: no isolation; the sandbox issue adds a namespaced spawner.
#[derive(Debug, Default)]
pub struct PlainSpawner;

/// Variables passed through from the server's own environment.
const INHERITED: [&str; 3] = ["PATH", "LANG", "TZ"];

impl Spawner for PlainSpawner {
    fn spawn(&self, launch: &Launch) -> io::Result<tokio::process::Child> {
        let mut command = tokio::process::Command::new(&launch.program);
        command
            .args(&launch.args)
            .current_dir(&launch.dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in INHERITED {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.env("HOME", &launch.dir);
        for (name, value) in &launch.env {
            command.env(name, value);
        }
        command.env("SPINFORGE_SPINLET", &launch.tag);
        command.spawn()
    }
}
