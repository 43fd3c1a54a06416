//! The spinlet's view of the file system, built by the namespace init in
//! its private mount namespace: a small read-only tmpfs root with the
//! host's runtime folders bound read-only, a generated /etc, the release
//! read-only at /app, the site's data folder at /data, a capped tmpfs at
//! /tmp, a minimal /dev and a fresh /proc. /sys is absent. Then the root
//! is pivoted and the host's tree detached.

use super::plan::Plan;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

/// Runtime folders of the host, bound read-only (or recreated as the
/// symlink they are, on merged-/usr systems).
const RUNTIME: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Parts of the host's /etc programs need, bound read-only: certificates,
/// OpenSSL's configuration and the alternatives symlinks (Debian's
/// `/usr/bin/node` and friends may point through them).
const ETC_DIRS: [&str; 3] = ["ssl", "ca-certificates", "alternatives"];

/// Device nodes bound from the host's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

type Result<T> = std::result::Result<T, String>;

fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| fail("cannot create", path, e))
}

// Limitation: /proc/self/mountinfo inside shows each bind mount's source
// path on the host (the release and data folders' paths, as text only;
// nothing outside the mounts is reachable). Mounting from a detached
// tree (open_tree/move_mount) would hide them.
fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail("cannot bind", source, e))?;
    // A bind mount takes its own flags only on a remount.
    let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
        .map_err(|e| fail("cannot restrict", target, e))
}

fn tmpfs(target: &Path, flags: MsFlags, options: &str) -> Result<()> {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options))
        .map_err(|e| fail("cannot mount a tmpfs on", target, e))
}

fn read_only() -> MsFlags {
    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

/// Builds the root at `plan.root_mount` and makes it `/`.
pub(crate) fn enter_root(plan: &Plan) -> Result<()> {
    // Nothing mounted from here on may reach the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mount tree private: {e}"))?;
    let root = plan.root_mount.as_path();
    tmpfs(
        root,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "size=4m,mode=755",
    )?;

    for name in RUNTIME {
        let host = Path::new("/").join(name);
        let inside = root.join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target =
                    std::fs::read_link(&host).map_err(|e| fail("cannot read", &host, e))?;
                symlink(target, &inside).map_err(|e| fail("cannot link", &inside, e))?;
            }
            Ok(meta) if meta.is_dir() => {
                mkdir(&inside)?;
                bind(&host, &inside, read_only())?;
            }
            _ => {}
        }
    }

    write_etc(plan, &root.join("etc"))?;

    let app = root.join("app");
    mkdir(&app)?;
    bind(&plan.release, &app, read_only())?;

    // The data folder is the site's own ext4 image mounted by serve
    // (quota.rs), so its size is capped like /tmp's.
    let data = root.join("data");
    mkdir(&data)?;
    bind(&plan.data, &data, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;

    let tmp_options = format!("size={},mode=1777", plan.tmp_bytes);
    let tmp = root.join("tmp");
    mkdir(&tmp)?;
    tmpfs(&tmp, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, &tmp_options)?;

    make_dev(&root.join("dev"), &tmp_options)?;

    let proc = root.join("proc");
    mkdir(&proc)?;
    // This process is the init of a new PID namespace, so this /proc
    // shows the spinlet's processes only.
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| fail("cannot mount", &proc, e))?;

    // Everything is in place: the root itself becomes read-only.
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | read_only(),
        None::<&str>,
    )
    .map_err(|e| fail("cannot make read-only", root, e))?;

    pivot(root)
}

/// Swaps the root: `pivot_root(".", ".")` stacks the old root on the new
/// one, and a lazy unmount then takes the host's whole tree away.
fn pivot(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(|e| fail("cannot enter", root, e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root failed: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("cannot detach the host root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("cannot enter the new root: {e}"))
}

fn write_etc(plan: &Plan, etc: &Path) -> Result<()> {
    mkdir(etc)?;
    let (uid, gid, site) = (plan.uid, plan.gid, &plan.site);
    let files: [(&str, String); 6] = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n\
                 app:x:{uid}:{gid}:spinlet:/data:/usr/sbin/nologin\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "group",
            format!("root:x:0:\napp:x:{gid}:\nnogroup:x:65534:\n"),
        ),
        (
            "hosts",
            format!("127.0.0.1\tlocalhost {site}\n::1\tlocalhost ip6-localhost\n"),
        ),
        ("hostname", format!("{site}\n")),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n".to_owned(),
        ),
        // Without outbound internet the namespace has only `lo`: no
        // resolver is reachable, so none is named.
        // Limitation: with it, the host's resolvers are named, which do
        // not answer when they are on the host's loopback (a resolver
        // address setting for spinlets would fix that).
        (
            "resolv.conf",
            if plan.outbound {
                std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
            } else {
                String::new()
            },
        ),
    ];
    for (name, text) in files {
        let path = etc.join(name);
        std::fs::write(&path, text).map_err(|e| fail("cannot write", &path, e))?;
    }
    // The dynamic loader's cache: without it, libraries outside the
    // default search path (multiarch folders) are not found.
    let cache = Path::new("/etc/ld.so.cache");
    if cache.exists() {
        std::fs::copy(cache, etc.join("ld.so.cache")).map_err(|e| fail("cannot copy", cache, e))?;
    }
    local_time(&etc.join("localtime"))?;
    for name in ETC_DIRS {
        let host = Path::new("/etc").join(name);
        if host.is_dir() {
            let inside = etc.join(name);
            mkdir(&inside)?;
            bind(&host, &inside, read_only())?;
        }
    }
    Ok(())
}

/// The host's time zone at `/etc/localtime`: a link into /usr (bound
/// read-only) to the same file as the host's link, made absolute if the
/// host's is relative; else a copy of the file, if it is a small regular
/// file (a zone file is a few KiB), and otherwise none (UTC).
///
/// Measured (strace of a Node start): with a copy, ICU cannot read the
/// zone's name from the link, so it compares /etc/localtime with every
/// file under /usr/share/zoneinfo (about 1,400 opens and reads per Node
/// process), which put tens of milliseconds on each sandboxed start of a
/// Node app (twice under `npm start`). A link gives the name at once.
fn local_time(inside: &Path) -> Result<()> {
    let host = Path::new("/etc/localtime");
    // Absent or a dangling link: the app gets none either (UTC).
    let Ok(resolved) = std::fs::canonicalize(host) else {
        return Ok(());
    };
    if let Some(link) = std::fs::read_link(host)
        .ok()
        .and_then(|target| zone_link(&target, &resolved))
        // Lexically in /usr is not enough when a component on the way is
        // itself a link: it must name the very file the host's names.
        .filter(|link| std::fs::canonicalize(link).is_ok_and(|file| file == resolved))
    {
        return symlink(&link, inside).map_err(|e| fail("cannot link", inside, e));
    }
    let small_file =
        std::fs::metadata(&resolved).is_ok_and(|m| m.is_file() && m.len() <= MAX_ZONE_FILE_BYTES);
    if !small_file {
        return Ok(());
    }
    std::fs::copy(host, inside)
        .map(drop)
        .map_err(|e| fail("cannot copy", host, e))
}

/// The largest /etc/localtime copied into a root; real zone files are a
/// few KiB, and the root is a small tmpfs.
const MAX_ZONE_FILE_BYTES: u64 = 64 * 1024;

/// What /etc/localtime inside links to, given the host's link text
/// `target` and the file it finally names, `resolved`; `None` for a copy.
/// The link is only useful if it resolves the same way inside, so both
/// must be in /usr, which the root binds as it is. A relative link (as
/// `timedatectl` writes, `../usr/share/zoneinfo/...`) becomes the absolute
/// path it names from /etc.
fn zone_link(target: &Path, resolved: &Path) -> Option<PathBuf> {
    let mut link = PathBuf::from("/");
    for part in Path::new("/etc").join(target).components() {
        match part {
            Component::ParentDir => {
                link.pop();
            }
            Component::Normal(name) => link.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let in_usr = |path: &Path| path.is_absolute() && path.starts_with("/usr");
    (in_usr(&link) && in_usr(resolved)).then_some(link)
}

fn make_dev(dev: &Path, shm_options: &str) -> Result<()> {
    mkdir(dev)?;
    tmpfs(
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "size=64k,mode=755",
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        let inside = dev.join(name);
        std::fs::write(&inside, b"").map_err(|e| fail("cannot create", &inside, e))?;
        bind(&host, &inside, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    tmpfs(
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        shm_options,
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let link = dev.join(name);
        symlink(target, &link).map_err(|e| fail("cannot link", &link, e))?;
    }
    // The tmpfs stays writable only through the bound nodes and /dev/shm.
    mount(
        None::<&str>,
        dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| fail("cannot make read-only", dev, e))
}

/// The paths Landlock lets the app write to (everything else is read and
/// execute only).
pub(crate) fn writable_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = ["/data", "/tmp", "/dev/shm"]
        .iter()
        .map(PathBuf::from)
        .collect();
    paths.extend(DEVICES.iter().map(|d| Path::new("/dev").join(d)));
    paths
}

#[cfg(test)]
mod tests {
    use super::zone_link;
    use std::path::{Path, PathBuf};

    fn link(target: &str, resolved: &str) -> Option<PathBuf> {
        zone_link(Path::new(target), Path::new(resolved))
    }

    #[test]
    fn a_link_into_usr_is_kept_absolute_or_made_absolute() {
        let berlin = "/usr/share/zoneinfo/Europe/Berlin";
        assert_eq!(link(berlin, berlin), Some(PathBuf::from(berlin)));
        // timedatectl writes relative links.
        for relative in [
            "../usr/share/zoneinfo/Europe/Berlin",
            "./../usr/share/zoneinfo/Europe/Berlin",
            "../../../usr/share/zoneinfo/Europe/Berlin",
        ] {
            assert_eq!(
                link(relative, berlin),
                Some(PathBuf::from(berlin)),
                "{relative}"
            );
        }
    }

    #[test]
    fn a_link_that_would_not_resolve_the_same_inside_is_copied() {
        let berlin = "/usr/share/zoneinfo/Europe/Berlin";
        // Names a file outside /usr, which the root does not bind.
        assert_eq!(link("/opt/zones/Berlin", "/opt/zones/Berlin"), None);
        assert_eq!(link("zones/Berlin", "/etc/zones/Berlin"), None);
        // The text is in /usr, but the file it finally names is not.
        assert_eq!(link(berlin, "/var/lib/zones/Berlin"), None);
        // The text leaves /usr again.
        assert_eq!(link("../usr/../etc/zones/Berlin", berlin), None);
    }
}
