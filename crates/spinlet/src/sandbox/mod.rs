//! The spinlet sandbox: a [`Spawner`] that starts each app isolated from
//! the host, from SpinForge and from other sites, with resource limits.
//!
//! This side (inside `serve`) checks what the host supports, gives each
//! site its own uid and data folder, makes the app's network namespace and
//! cgroup, and starts the helper (`init.rs`) with a plan. The helper builds
//! the rest inside the new namespaces. All `unsafe` lives in `sys.rs`.

mod cgroup;
mod fs;
mod init;
mod net;
mod plan;
mod profile;
mod quota;
mod seccomp;
mod sys;
mod warm;

pub use cgroup::Version as CgroupVersion;
pub use init::helper_main;
pub use net::Dialer;
pub use profile::{Profile as SeccompProfile, ProfileError};
pub use quota::private_mounts;

use crate::spawn::{Launch, PlainSpawner, Spawned, Spawner};
use cgroup::{Cgroup, CgroupHost, CgroupLimits};
use plan::{Plan, NETNS_FD};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The argument that makes `spinforge` run as the sandbox helper.
pub const HELPER_ARG: &str = "__spinlet-init";

/// The operator's sandbox settings (`[sandbox]` in the config file).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// False (the default): a layer this host cannot apply stops apps
    /// from starting. True: apps run without it, with a warning.
    pub allow_degraded: bool,
    /// The `spinforge` binary, started as the helper.
    pub helper: PathBuf,
    /// `DATA/spinlets`: uid table, data folders, the mount point.
    pub state_dir: PathBuf,
    /// Site uids (and gids) are taken from `uid_base..uid_base+uid_count`.
    pub uid_base: u32,
    pub uid_count: u32,
    /// Defaults for what an app's manifest does not set.
    pub memory_mb: u32,
    pub max_processes: u32,
    pub cpu_percent: u32,
    pub open_files: u32,
    /// Size caps of /tmp (and /dev/shm), in MiB.
    pub tmp_mb: u32,
    /// Size of each site's persistent data folder, in MiB.
    pub data_mb: u32,
    /// Block I/O weight (10 to 1000) where the kernel offers one.
    pub io_weight: u16,
    /// Layers treated as missing although the host has them: a test knob
    /// (`sandbox.debug_pretend_missing`, read by debug builds only).
    pub pretend_missing: Vec<String>,
}

impl SandboxConfig {
    /// The limits of an app whose manifest sets none.
    fn defaults(&self) -> LimitsInForce {
        LimitsInForce {
            memory_bytes: u64::from(self.memory_mb) << 20,
            max_processes: u64::from(self.max_processes),
            cpu_percent: self.cpu_percent,
            open_files: u64::from(self.open_files),
            tmp_bytes: u64::from(self.tmp_mb) << 20,
            data_bytes: Some(u64::from(self.data_mb) << 20),
        }
    }

    pub fn new(data_dir: &Path, helper: PathBuf) -> SandboxConfig {
        SandboxConfig {
            allow_degraded: false,
            helper,
            state_dir: data_dir.join("spinlets"),
            uid_base: 200_000,
            uid_count: 65_536,
            memory_mb: 512,
            max_processes: 256,
            cpu_percent: 100,
            open_files: 1024,
            tmp_mb: 64,
            data_mb: 1024,
            io_weight: 100,
            pretend_missing: Vec::new(),
        }
    }
}

/// A site's own sandbox settings, which only an admin may change (see
/// the hub's `sandbox_api`). Kept in `DATA/spinlets/sites/SITE.json`;
/// they take effect at the app's next start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSandbox {
    /// The app may open connections to the internet (never to the host,
    /// loopback, link-local or metadata addresses, or other spinlets; see
    /// `net.rs`). Off by default.
    #[serde(default)]
    pub outbound_internet: bool,
    /// A seccomp profile in Docker's JSON format, applied on top of the
    /// built-in allowlist (see `profile.rs`: it can only take away).
    #[serde(default)]
    pub seccomp_profile: Option<serde_json::Value>,
    /// Private (LAN) ranges the app may reach despite outbound internet
    /// refusing them; see [`check_outbound_allow`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound_allow: Vec<ipnet::Ipv4Net>,
}

/// Checks an admin's LAN allowlist: only with outbound internet on, and
/// each entry inside one of the private ranges outbound internet refuses
/// ([`net::LAN`]) and clear of the spinlets' own link pool, so no entry can
/// open the host, loopback, link-local, metadata or another spinlet.
/// The error names the entry (`outbound_allow[1]`) and the rule.
pub fn check_outbound_allow(settings: &SiteSandbox) -> Result<(), (String, String)> {
    if !settings.outbound_allow.is_empty() && !settings.outbound_internet {
        return Err((
            "outbound_allow".into(),
            "needs outbound_internet = true".into(),
        ));
    }
    let pool = net::pool();
    for (i, allowed) in settings.outbound_allow.iter().enumerate() {
        let field = format!("outbound_allow[{i}]");
        if !net::LAN.iter().any(|lan| lan.contains(allowed)) {
            return Err((
                field,
                format!(
                    "{allowed} is not inside a private range outbound internet refuses ({})",
                    net::LAN.map(|n| n.to_string()).join(", ")
                ),
            ));
        }
        if allowed.contains(&pool) || pool.contains(allowed) {
            return Err((
                field,
                format!("{allowed} overlaps {pool}, the spinlets' own links"),
            ));
        }
    }
    Ok(())
}

/// One row of `spinforge sandbox check`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerCheck {
    pub layer: &'static str,
    pub supported: bool,
    /// False for layers applied only where the host has them (Landlock,
    /// block I/O weight): their absence is shown, never a refusal.
    pub required: bool,
    pub detail: String,
}

/// What this host supports, layer by layer.
pub fn check() -> Vec<LayerCheck> {
    let root = nix::unistd::geteuid().is_root();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has = |ns: &str| Path::new("/proc/self/ns").join(ns).exists();
    let mut rows = Vec::new();
    let mut row = |layer, supported, required, detail: String| {
        rows.push(LayerCheck {
            layer,
            supported,
            required,
            detail,
        })
    };
    let need_root = |what: &str| format!("{what} needs serve to run as root");

    row(
        "identity",
        root,
        true,
        if root {
            "own uid and gid per site, no supplementary groups".into()
        } else {
            need_root("switching to a site uid")
        },
    );
    for (layer, ns) in [
        ("pid namespace", "pid"),
        ("mount namespace", "mnt"),
        ("ipc namespace", "ipc"),
        ("uts namespace", "uts"),
        ("cgroup namespace", "cgroup"),
    ] {
        let ok = root && has(ns);
        let detail = match (has(ns), root) {
            (false, _) => "the kernel has no such namespace".into(),
            (true, false) => need_root("making namespaces"),
            (true, true) => "yes".into(),
        };
        row(layer, ok, true, detail);
    }
    let network = if root && has("net") {
        net::new_namespace().map(drop)
    } else {
        Err(io::Error::other(need_root("a network namespace")))
    };
    row(
        "network namespace",
        network.is_ok(),
        true,
        match network {
            Ok(()) => "loopback only; the edge connects from inside".into(),
            Err(e) => e.to_string(),
        },
    );
    row(
        "no_new_privs",
        status.contains("NoNewPrivs:"),
        true,
        "set before the app starts".into(),
    );
    let caps_ok = caps::read(None, caps::CapSet::Bounding).is_ok();
    row(
        "capabilities",
        caps_ok && root,
        true,
        "all five sets emptied".into(),
    );
    let seccomp_ok = status.contains("Seccomp:") && seccomp::filters().is_ok();
    row(
        "seccomp",
        seccomp_ok,
        true,
        match seccomp::filters() {
            Ok(_) => format!("allowlist for {}, EPERM otherwise", std::env::consts::ARCH),
            Err(e) => e,
        },
    );
    let landlock = sys::landlock_abi();
    row(
        "landlock",
        landlock.is_some(),
        false,
        match landlock {
            Some(v) => format!("ABI v{v}"),
            None => "not enabled in this kernel (second layer only)".into(),
        },
    );
    match CgroupHost::detect(None) {
        Ok(host) if root => {
            row(
                "cgroups",
                true,
                true,
                format!("{}: memory, pids, cpu", host.version.name()),
            );
            row(
                "block I/O weight",
                host.io_weight,
                false,
                if host.io_weight {
                    "proportional weight".into()
                } else {
                    "no proportional I/O scheduler on this host".into()
                },
            );
        }
        Ok(_) => row("cgroups", false, true, need_root("creating cgroups")),
        Err(e) => row("cgroups", false, true, e),
    }
    row("rlimits", true, true, "open files, core dumps off".into());
    let outbound = net::outbound_supported();
    row(
        "outbound internet",
        outbound.is_ok(),
        false,
        match outbound {
            Ok(()) => "per site, admin only: veth + NAT, never host, loopback or metadata".into(),
            Err(e) => format!("{e}; sites with it on do not start"),
        },
    );
    let quota = if root {
        quota::supported()
    } else {
        Err(need_root("mounting a data image"))
    };
    row(
        "data quota",
        quota.is_ok(),
        true,
        match quota {
            Ok(()) => "each site's /data is a loop-mounted ext4 image of fixed size".into(),
            Err(e) => e,
        },
    );
    row(
        "filesystem",
        root,
        true,
        if root {
            "read-only root, /app read-only, /data, capped /tmp, minimal /dev".into()
        } else {
            need_root("mounting")
        },
    );
    rows
}

/// The limits an instance runs with.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsInForce {
    pub memory_bytes: u64,
    pub max_processes: u64,
    pub cpu_percent: u32,
    pub open_files: u64,
    pub tmp_bytes: u64,
    /// Size of the persistent /data (none when the host has no quota and
    /// runs degraded).
    pub data_bytes: Option<u64>,
}

/// Current use, read from the instance's cgroup.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxUsage {
    pub limits: LimitsInForce,
    pub memory_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub oom_kills: Option<u64>,
    /// Bytes in use on /data's file system (its metadata included).
    pub data_used_bytes: Option<u64>,
    /// Layers this instance runs without (only with `allow_degraded`).
    pub missing_layers: Vec<String>,
}

/// What a sandboxed instance holds on the host: its network namespace and
/// its cgroup. Released when the instance has exited.
#[derive(Debug)]
pub struct Confinement {
    netns: Option<Arc<OwnedFd>>,
    /// Opens the edge's and the probe's connections inside `netns`.
    dialer: Option<Arc<net::Dialer>>,
    cgroup: Option<Cgroup>,
    limits: LimitsInForce,
    missing: Vec<String>,
    /// The site's data folder when it is a quota'd mount.
    data_mount: Option<PathBuf>,
    /// The link to the host of a site with outbound internet.
    link: Option<(net::Link, Arc<net::Slots>)>,
}

impl Confinement {
    pub fn usage(&self) -> SandboxUsage {
        SandboxUsage {
            limits: self.limits.clone(),
            memory_bytes: self.cgroup.as_ref().and_then(Cgroup::memory_bytes),
            processes: self.cgroup.as_ref().and_then(Cgroup::pids),
            oom_kills: self.cgroup.as_ref().and_then(Cgroup::oom_kills),
            data_used_bytes: self.data_mount.as_deref().and_then(quota::used_bytes),
            missing_layers: self.missing.clone(),
        }
    }

    /// True iff the kernel's OOM killer has killed a process of this
    /// instance.
    pub fn oom_killed(&self) -> bool {
        self.cgroup
            .as_ref()
            .and_then(Cgroup::oom_kills)
            .is_some_and(|n| n > 0)
    }

    pub fn memory_limit(&self) -> u64 {
        self.limits.memory_bytes
    }

    /// Kills anything left of the instance and removes its cgroup.
    /// Blocking (it waits for the kernel); call off the async threads.
    pub fn release(&self) {
        if let Some(dialer) = &self.dialer {
            dialer.stop();
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
            cgroup.remove();
        }
        if let Some((link, slots)) = &self.link {
            if link.remove() {
                slots.give_back(link);
            }
        }
    }

    /// The connector into the instance's network namespace, or `None`
    /// when the instance shares the host's network. It stops working
    /// once the instance is released.
    pub fn dialer(&self) -> Option<Arc<Dialer>> {
        self.dialer.clone()
    }
}

/// Connects to an app instance: inside its namespace when it has one.
pub async fn connect(
    dialer: Option<&Dialer>,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    match dialer {
        Some(dialer) => dialer.connect(addr, timeout).await,
        None => {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// An instance's network namespace and its dialer (none without the
/// layer).
type NamespaceParts = (Option<Arc<OwnedFd>>, Option<Arc<net::Dialer>>);

/// Starts apps in the sandbox.
pub struct SandboxSpawner {
    config: SandboxConfig,
    layers: Vec<LayerCheck>,
    cgroups: Option<CgroupHost>,
    uids: UidTable,
    /// Held while a site's data image is made or mounted.
    volumes: Mutex<()>,
    /// Outbound links in use, and whether the host's rules are loaded.
    links: Arc<net::Slots>,
    host_ready: Mutex<bool>,
    /// `allow_degraded` on a host that cannot make namespaces at all.
    plain: Option<PlainSpawner>,
    /// The next start's helper, made ahead of time (see `warm.rs`); none
    /// on a host without the network or cgroup layer.
    warm: Option<Arc<warm::WarmPool>>,
}

impl SandboxSpawner {
    /// Checks the host and prepares the state folder. Never fails for a
    /// missing layer: apps then refuse to start (or run degraded) and
    /// say which layer is missing.
    pub fn new(config: SandboxConfig) -> io::Result<SandboxSpawner> {
        std::fs::create_dir_all(config.state_dir.join("data"))?;
        let root = config.state_dir.join("root");
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        let mut layers = check();
        for layer in layers.iter_mut() {
            if layer.layer == "data quota" && layer.supported && !quota::in_private_namespace() {
                layer.supported = false;
                layer.detail = "serve has no mount namespace of its own for the data images".into();
            }
        }
        for name in &config.pretend_missing {
            let layer = layers.iter_mut().find(|l| l.layer == name).ok_or_else(|| {
                io::Error::other(format!(
                    "sandbox.debug_pretend_missing: no layer is called `{name}`"
                ))
            })?;
            layer.supported = false;
            layer.detail = "treated as missing (sandbox.debug_pretend_missing)".into();
        }
        let scope = cgroup::scope_of(&config.state_dir);
        let cgroups = CgroupHost::detect(Some(&scope)).ok();
        if let Some(host) = &cgroups {
            host.sweep();
        }
        for missing in layers.iter().filter(|l| !l.supported) {
            if missing.required && !config.allow_degraded {
                tracing::error!(layer = missing.layer, detail = %missing.detail,
                    "sandbox layer unavailable: apps will refuse to start");
            } else {
                tracing::warn!(layer = missing.layer, detail = %missing.detail,
                    "sandbox layer unavailable: apps run without it");
            }
        }
        let no_namespaces = layers
            .iter()
            .any(|l| l.layer == "pid namespace" && !l.supported);
        let plain = (no_namespaces && config.allow_degraded).then_some(PlainSpawner);
        let warm_possible = plain.is_none()
            && layers
                .iter()
                .all(|l| l.supported || !["network namespace", "cgroups"].contains(&l.layer));
        let defaults = cgroup_limits(&config.defaults(), config.io_weight);
        let warm = match &cgroups {
            Some(host) if warm_possible => Some(Arc::new(warm::WarmPool::new(
                config.helper.clone(),
                config.state_dir.clone(),
                host.clone(),
                defaults,
            ))),
            _ => None,
        };
        Ok(SandboxSpawner {
            uids: UidTable::open(
                config.state_dir.join("uids.json"),
                config.uid_base,
                config.uid_count,
            )?,
            config,
            layers,
            cgroups,
            volumes: Mutex::new(()),
            links: Arc::new(net::Slots::default()),
            host_ready: Mutex::new(false),
            plain,
            warm,
        })
    }

    /// Layers this host lacks, optional ones included.
    fn missing(&self) -> Vec<&LayerCheck> {
        self.layers.iter().filter(|l| !l.supported).collect()
    }

    /// Required layers this host lacks.
    fn missing_required(&self) -> Vec<&'static str> {
        self.missing()
            .iter()
            .filter(|l| l.required)
            .map(|l| l.layer)
            .collect()
    }

    fn limits(&self, launch: &Launch) -> LimitsInForce {
        let l = &launch.limits;
        let c = &self.config;
        let defaults = c.defaults();
        LimitsInForce {
            memory_bytes: l
                .memory_mb
                .map_or(defaults.memory_bytes, |mb| u64::from(mb) << 20),
            max_processes: l.max_processes.map_or(defaults.max_processes, u64::from),
            cpu_percent: l.cpu_percent.unwrap_or(defaults.cpu_percent),
            open_files: l.max_open_files.map_or(defaults.open_files, u64::from),
            ..defaults
        }
    }

    fn data_dir(&self, site: &str) -> PathBuf {
        self.config.state_dir.join("data").join(site)
    }

    /// A link for a site with outbound internet; loads the host's rules
    /// on first use.
    fn outbound_link(&self) -> io::Result<net::Link> {
        net::outbound_supported().map_err(|e| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("outbound internet is on for this site, but {e}"),
            )
        })?;
        let mut ready = self.host_ready.lock().unwrap_or_else(|p| p.into_inner());
        if !*ready {
            net::prepare_host().map_err(|e| io::Error::other(format!("outbound internet: {e}")))?;
            tracing::info!(
                "outbound internet: forwarding on, spinforge_outbound and spinforge_nat rules loaded"
            );
            *ready = true;
        }
        drop(ready);
        self.links.take()
    }

    fn settings_file(&self, site: &str) -> PathBuf {
        self.config
            .state_dir
            .join("sites")
            .join(format!("{site}.json"))
    }

    fn read_settings(&self, site: &str) -> io::Result<SiteSandbox> {
        match std::fs::read(self.settings_file(site)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SiteSandbox::default()),
            Err(e) => Err(e),
        }
    }

    fn data_image(&self, site: &str) -> PathBuf {
        self.config
            .state_dir
            .join("volumes")
            .join(format!("{site}.ext4"))
    }

    /// A new network namespace (with the site's link to the host, if it
    /// has one) and its dialer, made on the start's path; none when the
    /// host lacks the layer.
    fn cold_namespace(
        &self,
        link: Option<&net::Link>,
        skipped: bool,
    ) -> io::Result<NamespaceParts> {
        if skipped {
            return Ok((None, None));
        }
        let (netns, dialer) = net::new_namespace_with(link)
            .and_then(|made| {
                if let Some(link) = link {
                    link.set_up_host()?;
                }
                Ok(made)
            })
            .inspect_err(|_| {
                if let Some(link) = link {
                    if link.remove() {
                        self.links.give_back(link);
                    }
                }
            })?;
        Ok((Some(Arc::new(netns)), Some(Arc::new(dialer))))
    }

    /// Starts the helper for `plan` (a cold start).
    fn spawn_helper(
        &self,
        launch: &Launch,
        plan: &Plan,
        confinement: &Confinement,
    ) -> io::Result<tokio::process::Child> {
        let mut command = tokio::process::Command::new(&self.config.helper);
        // The app's command line follows, for `ps` and operators only (the
        // helper reads its plan from stdin); the helper's working folder is
        // the release, as a plain app's would be.
        command
            .arg(HELPER_ARG)
            .arg("--")
            .arg(&plan.program)
            .args(&plan.args)
            .current_dir(&launch.dir)
            .env_clear()
            // Lets a restarted serve recognise the helper as ours.
            .env("SPINFORGE_SPINLET", &launch.tag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(netns) = &confinement.netns {
            sys::pass_fd(&mut command, netns.as_raw_fd(), NETNS_FD);
        }
        command.spawn()
    }
}

/// The cgroup's share of an instance's limits.
fn cgroup_limits(limits: &LimitsInForce, io_weight: u16) -> CgroupLimits {
    CgroupLimits {
        memory_bytes: limits.memory_bytes,
        // The helper and the namespace init count too.
        pids: limits.max_processes + 2,
        cpu_percent: limits.cpu_percent,
        io_weight,
    }
}

/// Folders where a program named on the command line is looked for
/// inside the sandbox (the host's PATH may name folders it cannot see).
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The program's path as the app sees it.
fn program_inside(launch: &Launch) -> io::Result<String> {
    if let Ok(rel) = launch.program.strip_prefix(&launch.dir) {
        return Ok(Path::new("/app").join(rel).to_string_lossy().into_owned());
    }
    let name = launch
        .program
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the program has no name"))?;
    SANDBOX_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "`{}` is not installed under {SANDBOX_PATH}, which is all a sandboxed app sees",
                    name.to_string_lossy()
                ),
            )
        })
}

impl Spawner for SandboxSpawner {
    fn spawn(&self, launch: &Launch) -> io::Result<Spawned> {
        if let Some(plain) = &self.plain {
            return plain.spawn(launch);
        }
        let missing = self.missing();
        if let Some(refused) = missing
            .iter()
            .find(|l| l.required && !self.config.allow_degraded)
        {
            tracing::warn!(target: "spinforge::audit", event = "spinlet.sandbox_refused",
                site = %launch.site, layer = refused.layer, "app not started: sandbox layer missing");
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the sandbox layer `{}` is not available on this host ({}); apps do not start \
                 without it unless sandbox.allow_degraded = true",
                    refused.layer, refused.detail
                ),
            ));
        }
        let skipped = |layer: &str| missing.iter().any(|l| l.layer == layer);
        let mut limits = self.limits(launch);
        let uid = self.uids.uid_for(&launch.site)?;

        let data = self.data_dir(&launch.site);
        let quota = !skipped("data quota");
        if quota {
            let _one_at_a_time = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
            let bytes = limits
                .data_bytes
                .unwrap_or(u64::from(self.config.data_mb) << 20);
            quota::ensure_mounted(&self.data_image(&launch.site), &data, bytes, uid)
                .map_err(|e| io::Error::other(format!("the `data quota` layer: {e}")))?;
        } else {
            limits.data_bytes = None;
            std::fs::create_dir_all(&data)?;
        }
        nix::unistd::chown(
            &data,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
        )?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;

        let settings = self.read_settings(&launch.site)?;
        // Written through the hub, which checks it; checked again so a
        // hand-edited file cannot open more than the API would.
        check_outbound_allow(&settings).map_err(|(field, message)| {
            io::Error::other(format!("site sandbox settings: {field}: {message}"))
        })?;
        let link = if settings.outbound_internet && !skipped("network namespace") {
            let mut link = self.outbound_link()?;
            link.allow = settings.outbound_allow.clone();
            Some(link)
        } else {
            None
        };
        let cgroup_limits = cgroup_limits(&limits, self.config.io_weight);
        // A warm helper fits any site without a link to the host.
        let warm_pool = self
            .warm
            .as_ref()
            .filter(|_| link.is_none() && !skipped("network namespace") && !skipped("cgroups"));
        let warm = warm_pool.and_then(|pool| pool.take()).and_then(|warm| {
            // The app's limits are in force before the helper has its plan,
            // so before anything of the app runs.
            let host = self.cgroups.as_ref()?;
            match host.limit(&warm.cgroup, &cgroup_limits) {
                Ok(()) => Some(warm),
                Err(e) => {
                    tracing::warn!(error = %e, "warm sandbox helper not used");
                    warm.discard();
                    None
                }
            }
        });
        let (netns, dialer, cgroup, warm_child) = match warm {
            Some(warm) => (
                Some(Arc::new(warm.netns)),
                Some(Arc::new(warm.dialer)),
                Some(warm.cgroup),
                Some(warm.child),
            ),
            None => {
                let (netns, dialer) =
                    self.cold_namespace(link.as_ref(), skipped("network namespace"))?;
                let cgroup = match (&self.cgroups, skipped("cgroups")) {
                    (Some(host), false) => {
                        let name = format!(
                            "{}-{}",
                            launch.site,
                            &launch.tag[..12.min(launch.tag.len())]
                        );
                        Some(host.create(&name, &cgroup_limits).inspect_err(|_| {
                            if let Some(dialer) = &dialer {
                                dialer.stop();
                            }
                            if let Some(link) = &link {
                                if link.remove() {
                                    self.links.give_back(link);
                                }
                            }
                        })?)
                    }
                    _ => None,
                };
                (netns, dialer, cgroup, None)
            }
        };
        let confinement = Confinement {
            netns,
            dialer,
            cgroup,
            limits: limits.clone(),
            missing: missing.iter().map(|l| l.layer.to_owned()).collect(),
            data_mount: quota.then(|| data.clone()),
            link: link.map(|l| (l, self.links.clone())),
        };

        let mut env = launch.env.clone();
        env.extend(launch.secret_env.iter().map(|(name, value)| {
            use secrecy::ExposeSecret;
            (name.clone(), value.expose_secret().to_owned())
        }));
        env.push(("PATH".into(), SANDBOX_PATH.into()));
        env.push(("HOME".into(), "/data".into()));
        env.push(("LANG".into(), "C.UTF-8".into()));
        env.push(("SPINFORGE_SPINLET".into(), launch.tag.clone()));
        let plan = Plan {
            site: launch.site.clone(),
            program: program_inside(launch).inspect_err(|_| confinement.release())?,
            args: launch.args.clone(),
            env,
            root_mount: self.config.state_dir.join("root"),
            release: launch.dir.clone(),
            data,
            uid,
            gid: uid,
            tmp_bytes: limits.tmp_bytes,
            open_files: limits.open_files,
            // A warm helper is in its cgroup already.
            cgroups: match (&warm_child, &confinement.cgroup) {
                (None, Some(cgroup)) => cgroup.dirs(),
                _ => Vec::new(),
            },
            netns: confinement.netns.is_some(),
            landlock: !skipped("landlock"),
            seccomp: !skipped("seccomp"),
            seccomp_profile: settings.seccomp_profile,
            outbound: confinement.link.is_some(),
            allow_degraded: self.config.allow_degraded,
            helper_pid: 0,
            reexec: warm_child.is_some(),
        };

        let mut child = match warm_child {
            Some(child) => child,
            None => self
                .spawn_helper(launch, &plan, &confinement)
                .inspect_err(|_| confinement.release())?,
        };
        let sent = write_plan(&mut child, &plan);
        if let Err(e) = sent {
            let _ = child.start_kill();
            confinement.release();
            return Err(e);
        }
        // The next warm helper is made once this start has settled
        // (`start_settled`), not now: making it (an exec of this binary,
        // a namespace, cgroup joins) took CPU from the starting app on
        // small hosts.
        Ok(Spawned {
            child,
            confinement: Some(confinement),
        })
    }

    fn start_settled(&self) {
        if let Some(pool) = &self.warm {
            pool.refill();
        }
    }

    fn describe(&self) -> String {
        if self.plain.is_some() {
            return "none: this host cannot make namespaces (allow_degraded)".into();
        }
        let missing = self.missing_required();
        let optional: Vec<&str> = self
            .missing()
            .iter()
            .filter(|l| !l.required)
            .map(|l| l.layer)
            .collect();
        if missing.is_empty() && optional.is_empty() {
            "sandboxed".into()
        } else if missing.is_empty() {
            format!("sandboxed (host lacks optional: {})", optional.join(", "))
        } else if self.config.allow_degraded {
            format!("sandboxed, degraded (without: {})", missing.join(", "))
        } else {
            format!("refusing to start apps (missing: {})", missing.join(", "))
        }
    }

    fn site_sandbox(&self, site: &str) -> io::Result<Option<SiteSandbox>> {
        self.read_settings(site).map(Some)
    }

    fn set_site_sandbox(&self, site: &str, settings: &SiteSandbox) -> io::Result<()> {
        let path = self.settings_file(site);
        if *settings == SiteSandbox::default() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(settings).map_err(io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)
    }

    fn forget_site(&self, site: &str) {
        if let Err(e) = self.set_site_sandbox(site, &SiteSandbox::default()) {
            tracing::warn!(site, error = %e, "site sandbox settings not removed");
        }
        let data = self.data_dir(site);
        {
            let _one_at_a_time = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
            quota::remove(&self.data_image(site), &data);
        }
        if let Err(e) = std::fs::remove_dir_all(&data) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(site, error = %e, "app data folder not removed");
            }
        }
    }
}

/// Writes the plan to the helper's stdin and closes it. A plan larger than
/// the pipe's buffer (many or large secrets) blocks this write only until
/// the helper, which reads its stdin to the end as soon as it runs (a warm
/// one is already waiting in that read), has taken it; if the helper dies
/// first the write fails (EPIPE) instead of hanging.
fn write_plan(child: &mut tokio::process::Child, plan: &Plan) -> io::Result<()> {
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the helper has no stdin"))?;
    let mut pipe = std::fs::File::from(stdin.into_owned_fd()?);
    let bytes = serde_json::to_vec(plan).map_err(io::Error::other)?;
    pipe.write_all(&bytes)
}

/// Site → uid, kept in a small JSON file so that a site keeps its uid (and
/// so its data folder's owner) across restarts.
struct UidTable {
    path: PathBuf,
    base: u32,
    count: u32,
    map: Mutex<BTreeMap<String, u32>>,
}

impl UidTable {
    fn open(path: PathBuf, base: u32, count: u32) -> io::Result<UidTable> {
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(UidTable {
            path,
            base,
            count,
            map: Mutex::new(map),
        })
    }

    fn uid_for(&self, site: &str) -> io::Result<u32> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(uid) = map.get(site) {
            return Ok(*uid);
        }
        let taken: std::collections::HashSet<u32> = map.values().copied().collect();
        let uid = (self.base..self.base.saturating_add(self.count))
            .find(|u| !taken.contains(u))
            .ok_or_else(|| io::Error::other("no free site uid left in the sandbox uid range"))?;
        map.insert(site.to_owned(), uid);
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&*map).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_site_keeps_its_own_uid_across_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("uids.json");
        let table = UidTable::open(path.clone(), 1000, 3).expect("open");
        let a = table.uid_for("a.test").expect("a");
        let b = table.uid_for("b.test").expect("b");
        assert_ne!(a, b);
        assert_eq!(table.uid_for("a.test").expect("a again"), a);
        let reopened = UidTable::open(path, 1000, 3).expect("reopen");
        assert_eq!(reopened.uid_for("b.test").expect("b"), b);
        reopened.uid_for("c.test").expect("c");
        assert!(reopened.uid_for("d.test").is_err(), "the range holds three");
    }
}
