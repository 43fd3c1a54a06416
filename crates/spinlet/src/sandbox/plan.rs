//! What the sandbox helper is told: the program, its identity, its view of
//! the file system and its limits. The spawner writes one plan to the
//! helper's stdin as JSON; nothing in it comes from the app itself except
//! what the manifest already says (command and environment).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// File descriptor number at which the helper finds the app's network
/// namespace.
pub(crate) const NETNS_FD: i32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The site; becomes the hostname (UTS namespace).
    pub site: String,
    /// The program as seen inside the sandbox (`/app/...` or `/usr/...`).
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// An empty host folder the new root is mounted on (in the helper's
    /// private mount namespace only).
    pub root_mount: PathBuf,
    /// The release folder on the host; read-only at `/app`.
    pub release: PathBuf,
    /// The site's data folder on the host; writable at `/data`.
    pub data: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Size cap of the `/tmp` and `/dev/shm` tmpfs (bytes).
    pub tmp_bytes: u64,
    /// RLIMIT_NOFILE, soft and hard.
    pub open_files: u64,
    /// Cgroup folders the helper joins before it forks (one per v1
    /// controller, or one v2 folder).
    pub cgroups: Vec<PathBuf>,
    /// True iff the helper finds a network namespace at [`NETNS_FD`].
    pub netns: bool,
    /// Landlock as a second file-system layer.
    pub landlock: bool,
    /// The seccomp allowlist.
    pub seccomp: bool,
    /// The site's own seccomp profile (Docker's JSON format, checked by
    /// the hub), installed on the app after the allowlist.
    #[serde(default)]
    pub seccomp_profile: Option<serde_json::Value>,
    /// The site has outbound internet: /etc/resolv.conf names the host's
    /// resolvers.
    #[serde(default)]
    pub outbound: bool,
    /// Keep going (with a warning in the app log) when a layer fails at
    /// run time, instead of refusing to start.
    pub allow_degraded: bool,
    /// The helper's pid on the host; filled in by the helper itself.
    #[serde(default)]
    pub helper_pid: u32,
    /// Set for a warm helper (`warm.rs`): it first runs itself again with
    /// the app's command line, working folder and tag, so it looks like,
    /// and is recognised as, a cold start's helper.
    #[serde(default)]
    pub reexec: bool,
}
