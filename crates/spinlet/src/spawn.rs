//! How a spinlet process comes to life. [`Spawner`] is the one seam the
//! sandbox plugs into: the supervisor decides *when* and *what* to run; a
//! spawner decides *how* (a plain process, or the sandbox in `sandbox`).

use crate::manifest::Limits;
use crate::sandbox::{Confinement, SiteSandbox};
use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use secrecy::{ExposeSecret, SecretString};

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
    /// The site's secrets (issue 8), added to the environment after `env`.
    /// Kept apart so that printing a `Launch` never shows a value.
    pub secret_env: Vec<(String, SecretString)>,
    pub port: u16,
    /// Enforced by the sandbox spawner; the plain spawner ignores them.
    pub limits: Limits,
    /// A random tag put into the environment as `SPINFORGE_SPINLET`, so a
    /// later start can recognise leftover processes as its own.
    pub tag: String,
}

/// A started instance: the child the supervisor waits for, and what the
/// sandbox holds for it on the host.
pub struct Spawned {
    pub child: tokio::process::Child,
    /// `None` for a plain process.
    pub confinement: Option<Confinement>,
}

pub trait Spawner: Send + Sync + 'static {
    /// Starts the process with piped stdout and stderr, in its own process
    /// group (pgid = pid) so the whole tree can be signalled.
    fn spawn(&self, launch: &Launch) -> io::Result<Spawned>;

    /// A start this spawner made is over: the app answered its health
    /// check, or the start gave up. Work a spawner keeps off a start's
    /// path (the sandbox's next warm helper) runs from here, so it does
    /// not compete with the starting app for the CPU. Never blocks.
    fn start_settled(&self) {}

    /// One line on how apps are isolated, for `status`.
    fn describe(&self) -> String {
        "none (plain process)".into()
    }

    /// The site was deleted: drop what the spawner keeps for it (its data
    /// folder).
    fn forget_site(&self, _site: &str) {}

    /// The site's own sandbox settings; `None` when apps run without the
    /// sandbox.
    fn site_sandbox(&self, _site: &str) -> io::Result<Option<SiteSandbox>> {
        Ok(None)
    }

    /// Stores the site's sandbox settings for its next start.
    fn set_site_sandbox(&self, _site: &str, _settings: &SiteSandbox) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "apps on this server run without the sandbox",
        ))
    }
}

/// Runs the app as a plain child process of `serve`, with a clean
/// environment and its own process group. No isolation: for tests of the
/// supervisor, and for `sandbox.allow_degraded` on hosts without
/// namespaces.
#[derive(Debug, Default)]
pub struct PlainSpawner;

/// Variables passed through from the server's own environment.
const INHERITED: [&str; 3] = ["PATH", "LANG", "TZ"];

impl Spawner for PlainSpawner {
    fn spawn(&self, launch: &Launch) -> io::Result<Spawned> {
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
        for (name, value) in &launch.secret_env {
            command.env(name, value.expose_secret());
        }
        command.env("SPINFORGE_SPINLET", &launch.tag);
        Ok(Spawned {
            child: command.spawn()?,
            confinement: None,
        })
    }
}
