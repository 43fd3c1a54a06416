//! The size quota of each site's persistent data folder.
//!
//! Each site's `/data` is an ext4 file system in a sparse image file
//! (`DATA/spinlets/volumes/SITE.ext4`), loop-mounted on the site's data
//! folder. A full image answers ENOSPC to the app, and the host's own file
//! system never holds more than the image's size for the site.
//!
//! Why an image: it needs nothing but the kernel's loop driver and the
//! standard `mkfs.ext4` and `mount` tools, it works on any host file
//! system, and its size is exact. Project quotas would need the data
//! directory's file system mounted with `prjquota` (the operator's choice,
//! not ours), and a tmpfs is not persistent.
//!
//! The mounts live in `serve`'s private mount namespace (see
//! [`private_mounts`]): they vanish with `serve`, even after a `kill -9`,
//! and the loop devices with them (`mount -o loop` sets autoclear). To
//! look at a site's files from the host while `serve` runs, enter its
//! namespace (`nsenter -t PID -m`) or mount the image read-only.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once this process has its own mount namespace.
static PRIVATE: AtomicBool = AtomicBool::new(false);

/// True iff [`private_mounts`] succeeded in this process: without it the
/// images would be mounted on the host and outlive `serve`.
pub(crate) fn in_private_namespace() -> bool {
    PRIVATE.load(Ordering::Acquire)
}

/// Folders the tools are looked for in (serve's PATH may lack sbin).
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn tool(name: &str) -> Option<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// Whether this host can give data folders a quota, and why not.
pub(crate) fn supported() -> Result<(), String> {
    if !Path::new("/dev/loop-control").exists() {
        return Err("no loop devices (/dev/loop-control is missing)".into());
    }
    for name in ["mkfs.ext4", "mount"] {
        if tool(name).is_none() {
            return Err(format!(
                "`{name}` is not installed (Debian: e2fsprogs, mount)"
            ));
        }
    }
    Ok(())
}

/// Makes `serve` the sole owner of the mounts it makes: a private mount
/// namespace that still receives the host's mounts (slave propagation)
/// but sends none back. Must run before any thread exists, because a
/// thread shares its mount namespace with its siblings.
pub fn private_mounts() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    PRIVATE.store(true, Ordering::Release);
    Ok(())
}

/// True iff `path` is the root of a mount (its device differs from its
/// parent's).
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let own = std::fs::metadata(path)?;
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::other("a data folder has no parent"))?;
    Ok(own.dev() != std::fs::metadata(parent)?.dev())
}

fn run(command: &mut Command, what: &str) -> io::Result<()> {
    let out = command.output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Mounts the site's image (made on first use, `bytes` large, its root
/// owned by `uid`) on `mount_point`, unless it is mounted already.
///
/// Callers serialise calls for one site.
// Limitation: a data folder written before quotas existed is not copied
// into the new image; its files stay on disk under the mount point,
// hidden while it is mounted (a one-time copy into the image would move
// them).
// Limitation: an image keeps the size it was made with; raising
// sandbox.data_mb later does not grow existing images (resize2fs on the
// mounted image would).
pub(crate) fn ensure_mounted(
    image: &Path,
    mount_point: &Path,
    bytes: u64,
    uid: u32,
) -> io::Result<()> {
    std::fs::create_dir_all(mount_point)?;
    if is_mount_point(mount_point)? {
        return Ok(());
    }
    if !image.exists() {
        if let Some(dir) = image.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let fresh = image.with_extension("ext4.new");
        let file = std::fs::File::create(&fresh)?;
        // Sparse: the host spends only what the app writes.
        file.set_len(bytes)?;
        drop(file);
        let mkfs = tool("mkfs.ext4").ok_or_else(|| io::Error::other("mkfs.ext4 is missing"))?;
        run(
            Command::new(mkfs)
                .args(["-q", "-F", "-m", "0", "-E"])
                .arg(format!("root_owner={uid}:{uid}"))
                .arg(&fresh),
            "mkfs.ext4",
        )
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&fresh);
        })?;
        std::fs::rename(&fresh, image)?;
    }
    let mount_tool = tool("mount").ok_or_else(|| io::Error::other("mount is missing"))?;
    run(
        Command::new(mount_tool)
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(image)
            .arg(mount_point),
        "mounting the data image",
    )
}

/// Unmounts a site's data folder (lazily: a last instance may still be
/// stopping) and deletes its image.
pub(crate) fn remove(image: &Path, mount_point: &Path) {
    if is_mount_point(mount_point).unwrap_or(false) {
        if let Err(e) = umount2(mount_point, MntFlags::MNT_DETACH) {
            tracing::warn!(folder = %mount_point.display(), error = %e, "data folder not unmounted");
        }
    }
    if let Err(e) = std::fs::remove_file(image) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(image = %image.display(), error = %e, "data image not removed");
        }
    }
}

/// Bytes in use on a mounted data folder.
pub(crate) fn used_bytes(mount_point: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(mount_point).ok()?;
    let total = stats.blocks().saturating_sub(stats.blocks_free());
    Some(total.saturating_mul(stats.fragment_size()))
}
