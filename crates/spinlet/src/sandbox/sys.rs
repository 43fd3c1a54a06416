//! The sandbox's raw system calls: the only `unsafe` code in SpinForge.
//!
//! Four calls have no safe wrapper in the crates we use: `fork` (unsafe in
//! `nix` because of threads), a `dup2` between fork and exec, the two
//! interface-flag ioctls that bring up a fresh network namespace's
//! loopback, and the Landlock version probe. Each block says why it is
//! sound. Nothing here decides policy; callers in `sandbox` do.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Forks the calling process and returns which side this is.
///
/// Only for the sandbox helper (`spinforge __spinlet-init`), which is a
/// fresh, single-threaded process when it calls this.
pub(crate) fn fork_single_threaded() -> io::Result<nix::unistd::ForkResult> {
    // SAFETY: fork is unsound in a multi-threaded process, because the
    // child inherits locks (the allocator's, stdio's) held by threads that
    // do not exist in the child. The helper never starts a thread, so its
    // child is a complete copy and may allocate and run any code.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Arranges for `fd` to be open as `target` (without close-on-exec) in
/// the program `command` starts, and nowhere else.
///
/// The caller keeps `fd` open until `spawn` has returned.
pub(crate) fn pass_fd(command: &mut tokio::process::Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child between fork and exec,
    // where only async-signal-safe functions may be called. It calls
    // dup2 and fcntl, both async-signal-safe, touches no lock and
    // allocates nothing (`last_os_error` only reads errno).
    unsafe {
        command.pre_exec(move || {
            if fd == target {
                // dup2 onto itself keeps FD_CLOEXEC; clear it instead.
                if libc::fcntl(target, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) == -1 {
                // dup2's new descriptor never has FD_CLOEXEC set.
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets the `IFF_UP` flag of `lo` in the calling thread's network
/// namespace: a new namespace starts with its loopback down.
pub(crate) fn loopback_up() -> io::Result<()> {
    // Any socket in the namespace can carry interface ioctls.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let fd = socket.as_raw_fd();

    // SAFETY: ifreq is a plain C struct of integers and byte arrays, for
    // which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }

    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into
    // the ifreq we pass, which is valid and lives across the call.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFFLAGS the union holds the flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;

    // SAFETY: SIOCSIFFLAGS reads the name and flags of the valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Landlock ABI version this kernel offers, or `None` when Landlock
/// is not built in or not enabled.
pub(crate) fn landlock_abi() -> Option<u32> {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    const VERSION_FLAG: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and only the VERSION
    // flag, the call reads no memory and returns the ABI version or -1.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            VERSION_FLAG,
        )
    };
    u32::try_from(version).ok().filter(|v| *v > 0)
}
