//! `spinforge install --systemd`: the service user, the data directory
//! with strict permissions, a systemd unit sandboxed as tightly as spinlet
//! isolation allows, log rotation for app logs and a default config. The
//! install is a plan of steps first; `--dry-run` prints the plan and
//! writes nothing. Every path goes through `--root`, so tests (and image
//! builders) install into a folder instead of this host.

use crate::{under, HardenError};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The capabilities a root `serve` keeps for the spinlet sandbox, in the
/// unit's order; the unit explains each one. `doctor` holds a running
/// serve's bounding set against this list.
pub const SUPERVISOR_CAPS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_DAC_OVERRIDE",
    "CAP_KILL",
    "CAP_SYS_RESOURCE",
    "CAP_NET_BIND_SERVICE",
];

/// Where and how SpinForge is installed.
#[derive(Debug, Clone)]
pub struct InstallSpec {
    /// Prefix for every path written (`/` on a real install).
    pub root: PathBuf,
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub user: String,
    /// Run `serve` as the service user with only CAP_NET_BIND_SERVICE;
    /// the spinlet sandbox needs root, so apps then run unsandboxed and
    /// the config says so (`[sandbox] enabled = false`).
    pub unprivileged: bool,
}

impl Default for InstallSpec {
    fn default() -> InstallSpec {
        InstallSpec {
            root: PathBuf::from("/"),
            binary: PathBuf::from("/usr/bin/spinforge"),
            data_dir: PathBuf::from("/var/lib/spinforge"),
            config: PathBuf::from("/etc/spinforge/spinforge.toml"),
            user: "spinforge".into(),
            unprivileged: false,
        }
    }
}

/// Where the unit and the log rotation go (host paths, before `--root`).
pub const UNIT_PATH: &str = "/etc/systemd/system/spinforge.service";
pub const LOGROTATE_PATH: &str = "/etc/logrotate.d/spinforge";

/// One step of an install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A system user and its group, unless it exists.
    CreateUser { name: String, home: PathBuf },
    /// A folder with `mode`, owned by `owner` (`None`: root) and, when
    /// set, the group of the user `group`.
    CreateDir {
        path: PathBuf,
        mode: u32,
        owner: Option<String>,
        group: Option<String>,
    },
    /// A file; `keep` leaves an existing one alone (the operator's
    /// config). `group` (`None`: root) may read it when the mode allows.
    WriteFile {
        path: PathBuf,
        mode: u32,
        content: String,
        keep: bool,
        group: Option<String>,
    },
}

fn valid_user(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

fn check_path(flag: &str, path: &Path) -> Result<String, HardenError> {
    let text = path.to_str().unwrap_or("");
    // The unit file quotes nothing: keep paths to a safe alphabet.
    let safe = path.is_absolute()
        && !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
        && !text.split('/').any(|part| part == "..");
    if !safe {
        return Err(HardenError::Invalid(format!(
            "{flag}: `{}` must be an absolute path of letters, digits, / - _ .",
            path.display()
        )));
    }
    Ok(text.to_owned())
}

/// The systemd unit. Each hardening option says why it is set the way it
/// is; the ones left out are listed too, so nobody "fixes" them blindly.
// Limitation: the unit is checked by tests as text only; no systemd runs
// here, so the sandbox under ProtectSystem/ProtectKernelTunables with
// ReadWritePaths=/sys/fs/cgroup is not exercised (a systemd-based CI job
// running `systemd-analyze verify` and an app deploy would lift it).
pub fn unit(spec: &InstallSpec) -> Result<String, HardenError> {
    let binary = check_path("--binary", &spec.binary)?;
    let data = check_path("--data-dir", &spec.data_dir)?;
    let config = check_path("--config", &spec.config)?;
    if !valid_user(&spec.user) {
        return Err(HardenError::Invalid(format!(
            "--user: `{}` is not a valid user name",
            spec.user
        )));
    }
    let mut u = String::new();
    let w = &mut u;
    let _ = writeln!(w, "# Written by `spinforge install --systemd`.");
    let _ = writeln!(w, "[Unit]");
    let _ = writeln!(w, "Description=SpinForge application platform");
    let _ = writeln!(w, "After=network-online.target");
    let _ = writeln!(w, "Wants=network-online.target");
    let _ = writeln!(w);
    let _ = writeln!(w, "[Service]");
    let _ = writeln!(w, "Type=simple");
    let _ = writeln!(
        w,
        "ExecStart={binary} serve --config {config} --data-dir {data}"
    );
    let _ = writeln!(w, "Restart=on-failure");
    let _ = writeln!(w, "RestartSec=2s");
    let _ = writeln!(
        w,
        "# SIGTERM drains connections; give it time before SIGKILL."
    );
    let _ = writeln!(w, "TimeoutStopSec=30s");
    let _ = writeln!(w, "Environment=SPINFORGE_LOG_FORMAT=json");
    let _ = writeln!(w, "UMask=0077");
    let _ = writeln!(w);
    if spec.unprivileged {
        let user = &spec.user;
        let _ = writeln!(
            w,
            "# Runs as its own user; apps run unsandboxed ([sandbox] enabled = false)."
        );
        let _ = writeln!(w, "User={user}");
        let _ = writeln!(w, "Group={user}");
        let _ = writeln!(
            w,
            "# CAP_NET_BIND_SERVICE: listen on ports 80 and 443. Nothing else."
        );
        let _ = writeln!(w, "AmbientCapabilities=CAP_NET_BIND_SERVICE");
        let _ = writeln!(w, "CapabilityBoundingSet=CAP_NET_BIND_SERVICE");
    } else {
        let _ = writeln!(
            w,
            "# The spinlet sandbox gives each app its own uid and namespaces, which"
        );
        let _ = writeln!(
            w,
            "# needs root; the bounding set keeps only these capabilities:"
        );
        let _ = writeln!(
            w,
            "#   CAP_SYS_ADMIN        new pid/mount/ipc/uts/cgroup namespaces, the app's"
        );
        let _ = writeln!(
            w,
            "#                        mounts and pivot_root into its root"
        );
        let _ = writeln!(
            w,
            "#   CAP_NET_ADMIN        bring up loopback in each app's network namespace"
        );
        let _ = writeln!(
            w,
            "#                        (and nft, when shield.nftables syncs bans)"
        );
        let _ = writeln!(
            w,
            "#   CAP_SETUID/SETGID    switch to the site's uid and gid, clear groups"
        );
        let _ = writeln!(
            w,
            "#   CAP_SETPCAP          empty the app's capability sets before exec"
        );
        let _ = writeln!(w, "#   CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE");
        let _ = writeln!(
            w,
            "#                        prepare per-site folders owned by site uids"
        );
        let _ = writeln!(
            w,
            "#   CAP_KILL             stop apps, which run under other uids"
        );
        let _ = writeln!(
            w,
            "#   CAP_SYS_RESOURCE     set app rlimits above the supervisor's own"
        );
        let _ = writeln!(w, "#   CAP_NET_BIND_SERVICE listen on ports 80 and 443");
        let _ = writeln!(w, "CapabilityBoundingSet={}", SUPERVISOR_CAPS.join(" "));
        let _ = writeln!(
            w,
            "# Limitation: serve itself stays root while the sandbox needs it (a"
        );
        let _ = writeln!(
            w,
            "# privileged spawn helper would let serve run as the service user)."
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "# The whole file system is read-only except the data directory."
    );
    let _ = writeln!(w, "ProtectSystem=strict");
    let _ = writeln!(w, "ReadWritePaths={data}");
    let _ = writeln!(w, "# /home, /root and /run/user are invisible.");
    let _ = writeln!(w, "ProtectHome=true");
    let _ = writeln!(
        w,
        "# A private /tmp; apps get their own tmpfs inside the sandbox anyway."
    );
    let _ = writeln!(w, "PrivateTmp=true");
    let _ = writeln!(
        w,
        "# /proc/sys and /sys are read-only: nothing here tunes the kernel."
    );
    let _ = writeln!(w, "ProtectKernelTunables=true");
    if !spec.unprivileged {
        let _ = writeln!(
            w,
            "# ...except the cgroup tree, where the supervisor creates one cgroup"
        );
        let _ = writeln!(
            w,
            "# per app for its memory, pids and cpu limits. ProtectControlGroups"
        );
        let _ = writeln!(
            w,
            "# stays off for the same reason; Delegate hands us our own subtree."
        );
        let _ = writeln!(w, "ReadWritePaths=/sys/fs/cgroup");
        let _ = writeln!(w, "Delegate=yes");
    } else {
        let _ = writeln!(w, "ProtectControlGroups=true");
    }
    let _ = writeln!(
        w,
        "# The edge and API speak IP; AF_UNIX for syslog/journald and the"
    );
    let _ = writeln!(
        w,
        "# supervisor's control pipes; AF_NETLINK for nft (shield.nftables)."
    );
    let _ = writeln!(
        w,
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"
    );
    let _ = writeln!(w, "ProtectKernelModules=true");
    let _ = writeln!(w, "ProtectKernelLogs=true");
    let _ = writeln!(w, "ProtectClock=true");
    let _ = writeln!(w, "NoNewPrivileges=true");
    let _ = writeln!(w, "RestrictSUIDSGID=true");
    let _ = writeln!(w, "RestrictRealtime=true");
    let _ = writeln!(w, "LockPersonality=true");
    let _ = writeln!(w, "SystemCallArchitectures=native");
    let _ = writeln!(
        w,
        "# Left out on purpose: RestrictNamespaces (the sandbox makes namespaces),"
    );
    let _ = writeln!(
        w,
        "# ProtectHostname (apps get their own UTS namespace), and"
    );
    let _ = writeln!(
        w,
        "# MemoryDenyWriteExecute (Node and other JITs in apps need W+X pages)."
    );
    let _ = writeln!(w, "LimitNOFILE=1048576");
    let _ = writeln!(w);
    let _ = writeln!(w, "[Install]");
    let _ = writeln!(w, "WantedBy=multi-user.target");
    Ok(u)
}

/// logrotate rules for app logs. Spinlet rotates `app.log` by size
/// itself; this adds daily rotation with compression and an age limit.
/// `copytruncate` because the supervisor keeps the file open for append.
pub fn logrotate(spec: &InstallSpec) -> Result<String, HardenError> {
    let data = check_path("--data-dir", &spec.data_dir)?;
    Ok(format!(
        "# Written by `spinforge install --systemd`: app logs.\n\
         {data}/spinlets/logs/*/app.log {{\n\
         \tdaily\n\
         \trotate 14\n\
         \tmaxsize 100M\n\
         \tcompress\n\
         \tdelaycompress\n\
         \tmissingok\n\
         \tnotifempty\n\
         \tcopytruncate\n\
         \tsu root root\n\
         }}\n"
    ))
}

/// The default config file: loopback API, unprivileged defaults off.
pub fn default_config(spec: &InstallSpec) -> Result<String, HardenError> {
    let data = check_path("--data-dir", &spec.data_dir)?;
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# SpinForge settings; every key is in docs/CONFIGURATION.md."
    );
    let _ = writeln!(c, "data_dir = \"{data}\"");
    let _ = writeln!(c, "listen = \"0.0.0.0:80\"");
    let _ = writeln!(c, "tls_listen = \"0.0.0.0:443\"");
    let _ = writeln!(
        c,
        "# The admin API stays on loopback; publish it through the edge."
    );
    let _ = writeln!(c, "api_listen = \"127.0.0.1:9080\"");
    if spec.unprivileged {
        let _ = writeln!(
            c,
            "\n[sandbox]\n# serve runs as an unprivileged user: no sandbox is possible."
        );
        let _ = writeln!(c, "enabled = false");
    }
    Ok(c)
}

/// The steps of an install, in order.
pub fn plan(spec: &InstallSpec) -> Result<Vec<Step>, HardenError> {
    let owner = spec.unprivileged.then(|| spec.user.clone());
    // An unprivileged serve reads its config through its group; the
    // config stays root's to change.
    let reader = owner.clone();
    let config_dir = spec
        .config
        .parent()
        .unwrap_or(Path::new("/etc/spinforge"))
        .to_path_buf();
    Ok(vec![
        Step::CreateUser {
            name: spec.user.clone(),
            home: spec.data_dir.clone(),
        },
        Step::CreateDir {
            path: spec.data_dir.clone(),
            mode: 0o700,
            owner: owner.clone(),
            group: owner.clone(),
        },
        Step::CreateDir {
            path: spec.data_dir.join("secrets"),
            mode: 0o700,
            owner: owner.clone(),
            group: owner.clone(),
        },
        Step::CreateDir {
            path: config_dir,
            mode: 0o750,
            owner: None,
            group: reader.clone(),
        },
        Step::WriteFile {
            path: spec.config.clone(),
            mode: 0o640,
            content: default_config(spec)?,
            keep: true,
            group: reader,
        },
        Step::WriteFile {
            path: PathBuf::from(UNIT_PATH),
            mode: 0o644,
            content: unit(spec)?,
            keep: false,
            group: None,
        },
        Step::WriteFile {
            path: PathBuf::from(LOGROTATE_PATH),
            mode: 0o644,
            content: logrotate(spec)?,
            keep: false,
            group: None,
        },
    ])
}

/// The plan as text (what `--dry-run` prints).
pub fn describe(spec: &InstallSpec, steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::CreateUser { name, home } => {
                let _ = writeln!(
                    out,
                    "# create system user `{name}` (if missing):\nuseradd --system --user-group --no-create-home --home-dir {} --shell /usr/sbin/nologin {name}\n",
                    home.display()
                );
            }
            Step::CreateDir {
                path,
                mode,
                owner,
                group,
            } => {
                let _ = writeln!(
                    out,
                    "# folder {} mode {mode:04o} owner {}:{}\n",
                    under(&spec.root, path).display(),
                    owner.as_deref().unwrap_or("root"),
                    group.as_deref().unwrap_or("root")
                );
            }
            Step::WriteFile {
                path,
                mode,
                content,
                keep,
                group,
            } => {
                let keep = if *keep { ", kept if it exists" } else { "" };
                let _ = writeln!(
                    out,
                    "# file {} mode {mode:04o} owner root:{}{keep}:\n{content}",
                    under(&spec.root, path).display(),
                    group.as_deref().unwrap_or("root")
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# then: systemctl daemon-reload && systemctl enable --now spinforge"
    );
    out
}

/// The uid and gid of `name` in `<root>/etc/passwd`.
fn lookup_user(root: &Path, name: &str) -> Result<Option<(u32, u32)>, HardenError> {
    let path = under(root, "/etc/passwd");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HardenError::io(&path, e)),
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let uid = fields[2].parse().ok();
            let gid = fields[3].parse().ok();
            if let (Some(uid), Some(gid)) = (uid, gid) {
                return Ok(Some((uid, gid)));
            }
        }
    }
    Ok(None)
}

/// Gives `path` the uid of `owner` and the gid of `group` (users in
/// `<root>/etc/passwd`); `None` leaves that id alone.
fn chown(
    spec: &InstallSpec,
    path: &Path,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<(), HardenError> {
    let id = |name: Option<&str>| -> Result<Option<(u32, u32)>, HardenError> {
        let Some(name) = name else { return Ok(None) };
        match lookup_user(&spec.root, name)? {
            Some(ids) => Ok(Some(ids)),
            None => Err(HardenError::Invalid(format!("user {name} does not exist"))),
        }
    };
    let uid = id(owner)?.map(|(uid, _)| uid);
    let gid = id(group)?.map(|(_, gid)| gid);
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).map_err(|e| HardenError::io(path, e))?;
    }
    Ok(())
}

/// Carries out `steps`, returning one line per thing done.
pub fn apply(spec: &InstallSpec, steps: &[Step]) -> Result<Vec<String>, HardenError> {
    let mut done = Vec::new();
    for step in steps {
        match step {
            Step::CreateUser { name, home } => {
                if lookup_user(&spec.root, name)?.is_some() {
                    done.push(format!("user {name} exists"));
                    continue;
                }
                let mut command = std::process::Command::new("useradd");
                command.args(["--system", "--user-group", "--no-create-home", "--home-dir"]);
                command.arg(home).args(["--shell", "/usr/sbin/nologin"]);
                if spec.root != Path::new("/") {
                    command.arg("--root").arg(&spec.root);
                }
                command.arg(name);
                let status = command
                    .status()
                    .map_err(|e| HardenError::io(Path::new("useradd"), e))?;
                if !status.success() {
                    return Err(HardenError::Invalid(format!(
                        "useradd could not create the user {name} ({status})"
                    )));
                }
                done.push(format!("created user {name}"));
            }
            Step::CreateDir {
                path,
                mode,
                owner,
                group,
            } => {
                let target = under(&spec.root, path);
                std::fs::create_dir_all(&target).map_err(|e| HardenError::io(&target, e))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| HardenError::io(&target, e))?;
                chown(spec, &target, owner.as_deref(), group.as_deref())?;
                done.push(format!("folder {} ({mode:04o})", target.display()));
            }
            Step::WriteFile {
                path,
                mode,
                content,
                keep,
                group,
            } => {
                let target = under(&spec.root, path);
                if *keep && target.exists() {
                    done.push(format!("kept {}", target.display()));
                    continue;
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| HardenError::io(parent, e))?;
                }
                let tmp = target.with_extension("spinforge-new");
                std::fs::write(&tmp, content).map_err(|e| HardenError::io(&tmp, e))?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| HardenError::io(&tmp, e))?;
                chown(spec, &tmp, None, group.as_deref())?;
                std::fs::rename(&tmp, &target).map_err(|e| HardenError::io(&target, e))?;
                done.push(format!("wrote {}", target.display()));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_bounds_capabilities_and_explains_each() {
        let text = unit(&InstallSpec::default()).expect("unit");
        for directive in [
            "ProtectSystem=strict",
            "ProtectHome=true",
            "PrivateTmp=true",
            "ProtectKernelTunables=true",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "ReadWritePaths=/var/lib/spinforge",
            "ExecStart=/usr/bin/spinforge serve --config /etc/spinforge/spinforge.toml --data-dir /var/lib/spinforge",
        ] {
            assert!(text.lines().any(|l| l == directive), "{directive} missing:\n{text}");
        }
        let caps = text
            .lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .expect("bounding set");
        for cap in caps.split(' ') {
            let explained = text
                .lines()
                .filter(|l| l.starts_with('#'))
                .any(|l| l.contains(cap) || l.contains(&cap.replace("CAP_", "")));
            assert!(explained, "{cap} has no comment");
        }
        assert!(!caps.contains("CAP_SYS_PTRACE") && !caps.contains("CAP_SYS_MODULE"));
    }

    #[test]
    fn unprivileged_mode_runs_as_the_user_with_one_capability() {
        let spec = InstallSpec {
            unprivileged: true,
            ..InstallSpec::default()
        };
        let text = unit(&spec).expect("unit");
        assert!(text.contains("\nUser=spinforge\n"));
        assert!(text.contains("\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"));
        assert!(default_config(&spec)
            .expect("config")
            .contains("enabled = false"));
    }

    #[test]
    fn unsafe_paths_and_user_names_are_refused_naming_the_flag() {
        let spec = InstallSpec {
            data_dir: PathBuf::from("/var/lib/x y"),
            ..InstallSpec::default()
        };
        assert!(unit(&spec)
            .expect_err("space")
            .to_string()
            .starts_with("--data-dir"));
        let spec = InstallSpec {
            binary: PathBuf::from("relative/spinforge"),
            ..InstallSpec::default()
        };
        assert!(unit(&spec)
            .expect_err("relative")
            .to_string()
            .starts_with("--binary"));
        let spec = InstallSpec {
            user: "Root\nUser=root".into(),
            ..InstallSpec::default()
        };
        assert!(unit(&spec)
            .expect_err("user")
            .to_string()
            .starts_with("--user"));
    }
}
